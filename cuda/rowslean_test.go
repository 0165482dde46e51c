//go:build cuda

package cuda

import (
	"bytes"
	"fmt"
	"math"
	"testing"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// TestRowsLean: the lean row kernels (v19, rowsLean: lora_rows_swiglu_bf16_hl,
// lora_rows_bf16_l, lora_rows_bf16_t_l, 32 warps) write the bytes the
// kernels they replace write (h or g, its rounding, the bfloat16 copy, act,
// the dropout copy), for each set of outputs their entry points pick an
// instantiation for (the host takes them with a packed W only), with and
// without dropout, at a partial row block and chunk, rank 5, a
// NaN, infinities and an overflowing exp in the input, and at Phi-3-mini's
// shapes.
func TestRowsLean(t *testing.T) {
	g := leanBackend(t)
	type rowsCase struct {
		kernel   string // the replaced kernel; the lean one is lean
		lean     string
		T, K, r  int
		p        float32
		special  bool
		outs     []string // the optional outputs, each on or off (the mask's bits)
		extra    []string // extra arguments after LORA_ROWS_PARAMS
		gateUp   bool     // Y is a bfloat16 gate_up [T,2K]
		transpos bool     // W is B [K,r] (g = Y . B)
	}
	cases := []rowsCase{
		{"lora_rows_swiglu_bf16_h", "lora_rows_swiglu_bf16_hl", 33, 40, 8, 0.1, true, []string{"act", "yh", "xd16"}, []string{"act", "xd16"}, true, false},
		{"lora_rows_swiglu_bf16_h", "lora_rows_swiglu_bf16_hl", 9, 2056, 5, 0.1, false, []string{"act", "yh", "xd16"}, []string{"act", "xd16"}, true, false},
		{"lora_rows_swiglu_bf16_h", "lora_rows_swiglu_bf16_hl", 21, 48, 8, 0, false, []string{"act", "yh", "xd16"}, []string{"act", "xd16"}, true, false},
		{"lora_rows_swiglu_bf16_h", "lora_rows_swiglu_bf16_hl", 1024, 8192, 8, 0.05, false, []string{"act", "yh", "xd16"}, []string{"act", "xd16"}, true, false},
		{"lora_rows_bf16", "lora_rows_bf16_l", 33, 40, 8, 0.1, true, []string{"yh", "xd16"}, []string{"xd16"}, false, false},
		{"lora_rows_bf16", "lora_rows_bf16_l", 9, 2056, 5, 0.1, false, []string{"yh", "xd16"}, []string{"xd16"}, false, false},
		{"lora_rows_bf16", "lora_rows_bf16_l", 1024, 3072, 8, 0.05, false, []string{"yh", "xd16"}, []string{"xd16"}, false, false},
		{"lora_rows_bf16_t", "lora_rows_bf16_t_l", 33, 40, 8, 0, true, []string{"yh"}, nil, false, true},
		{"lora_rows_bf16_t", "lora_rows_bf16_t_l", 1024, 3072, 8, 0, false, []string{"yh"}, nil, false, true},
	}
	for _, c := range cases {
		name := fmt.Sprintf("%s T%d K%d r%d p%g", c.lean, c.T, c.K, c.r, c.p)
		out, in := 16, c.K
		if c.transpos {
			out, in = c.K, 16
		}
		w, A, B := nf4LoRA(t, g, out, in, c.r, 120)
		l := &finetune.Linear{Name: "rows", W: w, LoRA: &finetune.LoRA{A: A, B: B, Scale: 2, Dropout: c.p}}
		W := unwrap(A, kindF32, "test").ptr
		if c.transpos {
			W = unwrap(B, kindF32, "test").ptr
		}
		width := c.K
		if c.gateUp {
			width = 2 * c.K
		}
		vals := randn(c.T*width, 121, 2)
		if c.special {
			vals[3*width+5] = float32(math.NaN())
			vals[4*width+c.K+9] = float32(math.Inf(1))
			vals[7*width+11] = -100 // a gate whose exp(100) overflows: silu -0
			vals[8*width+12] = float32(math.Inf(-1))
			vals[9*width+c.K+1] = float32(math.Copysign(0, -1))
		}
		var Y finetune.Tensor
		if c.gateUp {
			Y = g.AllocHalf(c.T, width)
			uploadHalf(g, Y, vals)
		} else {
			Y = g.Alloc(c.T, width)
			g.Upload(Y, vals)
		}
		ldyh, ldp := c.K+8, 8
		sizes := map[string]int64{"act": 4 * int64(c.T*c.K), "yh": 2 * int64(c.T*ldyh), "P": 4 * int64(c.T*c.r),
			"p16": 2 * int64(c.T*ldp), "xd16": 2 * int64(c.T*c.K)}
		all := append([]string{"P", "p16"}, c.outs...)
		run := func(kernel string, mask int) map[string][]byte {
			ptrs := leanOutputs(t, g, sizes, all)
			on := func(k string) cu.DevicePtr { // output k of c.outs, when mask has its bit
				for i, o := range c.outs {
					if o == k && mask&(1<<i) != 0 {
						return ptrs[k]
					}
				}
				return 0
			}
			var extra []uint64
			for _, k := range c.extra {
				extra = append(extra, ptrArg(on(k)))
			}
			scale := float32(2)
			if c.transpos {
				scale = 1
			}
			leanLaunch(g, func() {
				g.loraRowsLaunch("test", kernel, on("yh"), ldyh, ptrs["P"], ptrs["p16"], ldp, scale,
					Y.(*Tensor).ptr, W, c.T, c.K, c.r, c.p, 0x5eed, prepJob{}, extra...)
			})
			return leanCollect(g, ptrs, sizes)
		}
		// The host takes the lean kernels only with a packed W.
		if g.leanFits(c.T, width, ldyh, W) {
			t.Fatalf("%s: leanFits without a packed W", name)
		}
		g.PackLoRA([]*finetune.Linear{l})
		if g.packedW(W) == 0 || !g.leanFits(c.T, width, ldyh, W) {
			t.Fatalf("%s: no packed W after PackLoRA, or leanFits refuses", name)
		}
		for mask := 0; mask < 1<<len(c.outs); mask++ {
			want, got := run(c.kernel, mask), run(c.lean, mask)
			leanCompare(t, fmt.Sprintf("%s outputs %b of %v", name, mask, c.outs), c.kernel, got, want, all)
		}
		leanFree(g, w, A, B, Y)
	}
}

// TestRowsLeanNorm: the lean norm row kernels (v19,
// lora_rows_norm_bf16[_add]_l_q3) write the bytes lora_rows_norm_bf16[_add]_q3
// write (h, its rounding, the bfloat16 copy, the dropout copy, xn, rstd,
// the sum), for each set of optional outputs, with and without the
// residual add, with a NaN and infinities in the input, and at
// Phi-3-mini's width.
func TestRowsLeanNorm(t *testing.T) {
	g := leanBackend(t)
	for _, c := range []struct {
		T, K, r int
		p       float32
		special bool
	}{
		{33, 64, 8, 0.1, true},
		{9, 3072, 5, 0, false},
		{1024, 3072, 8, 0.05, false},
	} {
		for _, add := range []bool{false, true} {
			name := fmt.Sprintf("T%d K%d r%d p%g add %v", c.T, c.K, c.r, c.p, add)
			w, A, B := nf4LoRA(t, g, 16, c.K, c.r, 130)
			l := &finetune.Linear{Name: "rows", W: w, LoRA: &finetune.LoRA{A: A, B: B, Scale: 2, Dropout: c.p}}
			g.PackLoRA([]*finetune.Linear{l})
			Ap := unwrap(A, kindF32, "test").ptr
			a, bb, nw := g.Alloc(c.T, c.K), g.Alloc(c.T, c.K), g.Alloc(c.K)
			va := randn(c.T*c.K, 131, 1)
			if c.special {
				va[3*c.K+5] = float32(math.NaN())
				va[5*c.K+7] = float32(math.Inf(1))
			}
			g.Upload(a, va)
			g.Upload(bb, randn(c.T*c.K, 132, 1))
			g.Upload(nw, randn(c.K, 133, 1))
			ldyh, ldp := c.K+8, 8
			sizes := map[string]int64{"yh": 2 * int64(c.T*ldyh), "P": 4 * int64(c.T*c.r), "p16": 2 * int64(c.T*ldp),
				"xd16": 2 * int64(c.T*c.K), "xn": 4 * int64(c.T*c.K), "rstd": 4 * int64(c.T), "sum": 4 * int64(c.T*c.K)}
			all := []string{"yh", "P", "p16", "xd16", "xn", "rstd", "sum"}
			run := func(lean bool, mask int) map[string][]byte {
				rowsLean = lean
				ptrs := leanOutputs(t, g, sizes, all)
				on := func(bit int, k string) cu.DevicePtr {
					if mask&bit != 0 {
						return ptrs[k]
					}
					return 0
				}
				src := &normSrc{xn: on(4, "xn"), rstd: ptrs["rstd"], a: a.(*Tensor).ptr, w: nw.(*Tensor).ptr, eps: 1e-5}
				if add {
					src.b, src.sum = bb.(*Tensor).ptr, ptrs["sum"]
				}
				leanLaunch(g, func() {
					g.loraRowsNorm("test", src, on(2, "yh"), ldyh, ptrs["P"], ptrs["p16"], ldp, 2, Ap, c.T, c.K, c.r, c.p, 0x5eed,
						prepJob{}, on(1, "xd16"))
				})
				return leanCollect(g, ptrs, sizes)
			}
			if !g.leanFits(c.T, c.K, ldyh, Ap) {
				t.Fatalf("%s: leanFits refuses", name)
			}
			for mask := 0; mask < 8; mask++ {
				want, got := run(false, mask), run(true, mask)
				leanCompare(t, fmt.Sprintf("%s outputs %03b (xn, yh, xd16)", name, mask), "lora_rows_norm_bf16", got, want, all)
			}
			leanFree(g, w, A, B, a, bb, nw)
		}
	}
}

// TestRowsLeanSwiGLUBackward: the lean backward SwiGLU row kernel (v19,
// lora_rows_swiglu_bf16_t_hl) writes the bytes lora_rows_swiglu_bf16_t_h
// writes (bf16(d gate_up), g and its rounding), with a NaN, infinities and
// an overflowing exp in gate_up, rank 5, and at Phi-3-mini's gate_up.
func TestRowsLeanSwiGLUBackward(t *testing.T) {
	g := leanBackend(t)
	for _, c := range []struct {
		T, I, r int
		special bool
	}{
		{33, 40, 8, true},
		{9, 2056, 5, false},
		{1024, 8192, 8, false},
	} {
		name := fmt.Sprintf("T%d I%d r%d", c.T, c.I, c.r)
		w, A, B := nf4LoRA(t, g, 2*c.I, 16, c.r, 140)
		l := &finetune.Linear{Name: "gate_up_proj", W: w, LoRA: &finetune.LoRA{A: A, B: B, Scale: 2, Dropout: 0.1}}
		g.PackLoRA([]*finetune.Linear{l})
		Bp := unwrap(B, kindF32, "test").ptr
		dact, gu := g.Alloc(c.T, c.I), g.AllocHalf(c.T, 2*c.I)
		vals := randn(c.T*2*c.I, 141, 2)
		if c.special {
			row := 2 * c.I
			vals[3*row+5] = float32(math.NaN())
			vals[4*row+c.I+9] = float32(math.Inf(1))
			vals[7*row+11] = -100
			vals[8*row+12] = float32(math.Inf(-1))
		}
		uploadHalf(g, gu, vals)
		g.Upload(dact, randn(c.T*c.I, 142, 1))
		sizes := map[string]int64{"dh": 2 * int64(c.T*2*c.I), "g": 4 * int64(c.T*c.r), "g16": 2 * int64(c.T*c.r)}
		all := []string{"dh", "g", "g16"}
		run := func(lean bool) map[string][]byte {
			rowsLean = lean
			ptrs := leanOutputs(t, g, sizes, all)
			sw := &swigluSrc{dact: dact.(*Tensor).ptr, gu: gu.(*Tensor).ptr, half: true, I: c.I}
			leanLaunch(g, func() { g.loraRowsSwiGLU("test", ptrs["dh"], ptrs["g"], ptrs["g16"], sw, Bp, c.T, c.r, prepJob{}) })
			return leanCollect(g, ptrs, sizes)
		}
		if !g.leanFits(c.T, 2*c.I, 2*c.I, Bp) {
			t.Fatalf("%s: leanFits refuses", name)
		}
		want, got := run(false), run(true)
		leanCompare(t, name, "lora_rows_swiglu_bf16_t_h", got, want, all)
		leanFree(g, w, A, B, dact, gu)
	}
}

// leanOutputs allocates each named output of sizes, poisoned (0xa5 bytes:
// what a kernel does not write stays so).
func leanOutputs(t *testing.T, g *Backend, sizes map[string]int64, names []string) map[string]cu.DevicePtr {
	t.Helper()
	ptrs := map[string]cu.DevicePtr{}
	for _, k := range names {
		p, err := g.rawAlloc(sizes[k], "test")
		if err != nil {
			t.Fatal(err)
		}
		check("test", cu.MemsetD8Async(p, 0xa5, sizes[k], g.stream))
		ptrs[k] = p
	}
	return ptrs
}

// leanCollect downloads the outputs' bytes and frees them.
func leanCollect(g *Backend, ptrs map[string]cu.DevicePtr, sizes map[string]int64) map[string][]byte {
	res := map[string][]byte{}
	for k, p := range ptrs {
		buf := make([]byte, sizes[k])
		func() {
			defer g.enter("test")()
			g.download("test", unsafe.Pointer(&buf[0]), p, sizes[k])
		}()
		res[k] = buf
		g.rawFree(p, sizes[k])
	}
	return res
}

// leanCompare fails at the first named output whose bytes differ.
func leanCompare(t *testing.T, what, ref string, got, want map[string][]byte, names []string) {
	t.Helper()
	for _, k := range names {
		if !bytes.Equal(got[k], want[k]) {
			i := 0
			for i < len(got[k]) && got[k][i] == want[k][i] {
				i++
			}
			t.Fatalf("%s: %s differs from %s's at byte %d of %d", what, k, ref, i, len(got[k]))
		}
	}
}

// leanLaunch runs launch inside the backend's op bracket.
func leanLaunch(g *Backend, launch func()) {
	defer g.enter("test")()
	launch()
}

// leanBackend is the bfloat16 backend for the lean kernels' tests, which
// need the 32-warp row kernels; rowsLean is restored after the test.
func leanBackend(t *testing.T) *Backend {
	t.Helper()
	if !loraRowsW32 {
		t.Skip("the lean row kernels are 32-warp ones (OLLAMA_TUNE_CUDA_ROWS=w16)")
	}
	v := rowsLean
	t.Cleanup(func() { rowsLean = v })
	return gpuB16
}

// leanFree frees a test's weight and tensors.
func leanFree(g *Backend, w finetune.Weight, ts ...finetune.Tensor) {
	for _, z := range ts {
		g.Free(z)
	}
	g.FreeWeight(w)
}
