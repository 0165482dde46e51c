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
// instantiation for, with a packed W and without one (their fallback),
// with and without dropout, at a partial row block and chunk, rank 5, a
// NaN, infinities and an overflowing exp in the input, and at Phi-3-mini's
// shapes.
func TestRowsLean(t *testing.T) {
	g := gpuB16
	if !loraRowsW32 {
		t.Skip("the lean row kernels are 32-warp ones (OLLAMA_TUNE_CUDA_ROWS=w16)")
	}
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
			ptrs := map[string]cu.DevicePtr{}
			for _, k := range all {
				p, err := g.rawAlloc(sizes[k], "test")
				if err != nil {
					t.Fatal(err)
				}
				check("test", cu.MemsetD8Async(p, 0xa5, sizes[k], g.stream)) // poison: what is not written stays so
				ptrs[k] = p
			}
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
			func() {
				defer g.enter("test")()
				g.loraRowsLaunch("test", kernel, on("yh"), ldyh, ptrs["P"], ptrs["p16"], ldp, scale,
					Y.(*Tensor).ptr, W, c.T, c.K, c.r, c.p, 0x5eed, prepJob{}, extra...)
			}()
			res := map[string][]byte{}
			for _, k := range all {
				buf := make([]byte, sizes[k])
				func() {
					defer g.enter("test")()
					g.download("test", unsafe.Pointer(&buf[0]), ptrs[k], sizes[k])
				}()
				res[k] = buf
				g.rawFree(ptrs[k], sizes[k])
			}
			return res
		}
		for _, packed := range []bool{false, true} {
			if packed {
				g.PackLoRA([]*finetune.Linear{l})
				if g.packedW(W) == 0 {
					t.Fatalf("%s: PackLoRA packed nothing", name)
				}
			}
			for mask := 0; mask < 1<<len(c.outs); mask++ {
				want, got := run(c.kernel, mask), run(c.lean, mask)
				for _, k := range all {
					if !bytes.Equal(got[k], want[k]) {
						i := 0
						for i < len(got[k]) && got[k][i] == want[k][i] {
							i++
						}
						t.Fatalf("%s packed %v outputs %b of %v: %s differs from %s's at byte %d of %d",
							name, packed, mask, c.outs, k, c.kernel, i, len(got[k]))
					}
				}
			}
		}
		for _, z := range []finetune.Tensor{A, B, Y} {
			g.Free(z)
		}
		g.FreeWeight(w)
	}
}
