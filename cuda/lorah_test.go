//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// LoRAHForward must give LinearForward's h bit for bit (checkpointing's
// recompute of down_proj uses it, and the recomputed h feeds GradB and
// dx), on every compute type and LoRA path, and match the CPU's.
func TestLoRAHForwardIsLinearForwardsH(t *testing.T) {
	for _, fast := range []bool{true, false} {
		gpu.fastLoRA, gpuB16.fastLoRA, gpuF16.fastLoRA = fast, fast, fast
		for _, sz := range []struct{ T, in, out, r int }{{33, 64, 72, 8}, {21, 67, 45, 5}, {37, 40, 33, 20}, {10, 4168, 24, 5}} {
			for _, half := range []halfKind{halfNone, halfBF16, halfF16} {
				for _, p := range []float32{0, 0.1} {
					dc := caseOf(half)
					name := fmt.Sprintf("fast %v [%d,%d]x%d r%d %s dropout %v", fast, sz.out, sz.in, sz.T, sz.r, dc.name, p)
					g, cb := dc.g, dc.c
					gw, cw := weights(t, g, cb, randn(sz.out*sz.in, 40, 0.2), sz.out, sz.in, true)
					A := both(g, cb, randn(sz.r*sz.in, 41, 0.3), sz.r, sz.in)
					B := both(g, cb, randn(sz.out*sz.r, 42, 0.3), sz.out, sz.r)
					gl := &finetune.Linear{Name: "test", W: gw, LoRA: &finetune.LoRA{A: A.g, B: B.g, Scale: 2, Dropout: p}}
					cl := &finetune.Linear{Name: "test", W: cw, LoRA: &finetune.LoRA{A: A.c, B: B.c, Scale: 2, Dropout: p}}
					x := both(g, cb, randn(sz.T*sz.in, 43, 1), sz.T, sz.in)
					y := g.Alloc(sz.T, sz.out)
					h1, h2 := g.Alloc(sz.T, sz.r), g.Alloc(sz.T, sz.r)
					hc := cb.Alloc(sz.T, sz.r)
					const seed = 0xbeef
					g.LinearForward(y, x.g, gl, h1, seed)
					g.LoRAHForward(h2, x.g, gl, seed)
					cb.(finetune.LoRAHForwarder).LoRAHForward(hc, x.c, cl, seed)
					a, b := g.Download(h1), g.Download(h2)
					for k := range a {
						if math.Float32bits(a[k]) != math.Float32bits(b[k]) {
							t.Fatalf("%s: h[%d] = %v from LoRAHForward, %v from LinearForward", name, k, b[k], a[k])
						}
					}
					checkRel(t, name+" h vs cpu", b, cb.Download(hc), dc.tol)
					for _, x := range []finetune.Tensor{y, h1, h2, x.g, A.g, B.g} {
						g.Free(x)
					}
					g.FreeWeight(gw)
				}
			}
		}
	}
	gpu.fastLoRA, gpuB16.fastLoRA, gpuF16.fastLoRA = true, true, true
}

// nf4LoRA returns an NF4 weight [out,in] (double quant) and LoRA factors A
// [r,in], B [out,r] drawn with seeds seed, seed+1, seed+2.
func nf4LoRA(t *testing.T, g *Backend, out, in, r int, seed uint64) (finetune.Weight, finetune.Tensor, finetune.Tensor) {
	t.Helper()
	w, err := g.NF4Weight(randn(out*in, seed, 0.2), out, in, true)
	if err != nil {
		t.Fatal(err)
	}
	A, B := g.Alloc(r, in), g.Alloc(out, r)
	g.Upload(A, randn(r*in, seed+1, 0.3))
	g.Upload(B, randn(out*r, seed+2, 0.3))
	return w, A, B
}

// LinearBackward into a pending Zero (lazy zeroing: the GEMMs' beta 0)
// must give the same backward as into uploaded zeros, for dx and both
// LoRA gradients, on every compute type (to float32 rounding: cuBLAS may
// pick another kernel for beta 0).
func TestLinearBackwardIntoPendingZero(t *testing.T) {
	const T, in, out, r = 33, 64, 72, 8
	for _, half := range []halfKind{halfNone, halfBF16, halfF16} {
		g := caseOf(half).g
		w, A, B := nf4LoRA(t, g, out, in, r, 50)
		x, dout, h := g.Alloc(T, in), g.Alloc(T, out), g.Alloc(T, r)
		g.Upload(x, randn(T*in, 53, 1))
		g.Upload(dout, randn(T*out, 54, 1))
		run := func(lazy bool) [][]float32 {
			dx, gA, gB := g.Alloc(T, in), g.Alloc(r, in), g.Alloc(out, r)
			for _, z := range []finetune.Tensor{dx, gA, gB} {
				if lazy {
					g.Zero(z)
				} else {
					g.Upload(z, make([]float32, z.Numel()))
				}
			}
			l := &finetune.Linear{Name: "test", W: w, LoRA: &finetune.LoRA{A: A, B: B, GradA: gA, GradB: gB, Scale: 2, Dropout: 0.1}}
			g.LinearForward(g.Alloc(T, out), x, l, h, 7)
			g.LinearBackward(dx, dout, x, l, h, 7)
			// A second backward accumulates onto the first.
			g.LinearBackward(dx, dout, x, l, h, 7)
			res := [][]float32{g.Download(dx), g.Download(gA), g.Download(gB)}
			for _, z := range []finetune.Tensor{dx, gA, gB} {
				g.Free(z)
			}
			return res
		}
		want, got := run(false), run(true)
		for k, name := range []string{"dx", "gradA", "gradB"} {
			checkRel(t, caseOf(half).name+" "+name, got[k], want[k], 1e-6)
		}
		g.FreeWeight(w)
	}
}

// SwiGLULinearBackward must give SwiGLUBackward + LinearBackward's dx and
// LoRA gradients: fused (lora_rows_swiglu_bf16_t, BF16 with I % 8 == 0 and
// d gate_up a pending Zero) against the two ops on the GPU and on the CPU,
// into pending zeros and accumulating; and the two ops themselves where it
// does not fuse (float32 compute, I % 8 != 0).
func TestSwiGLULinearBackward(t *testing.T) {
	forEachRowsKernel(t, testSwiGLULinearBackward)
}

func testSwiGLULinearBackward(t *testing.T) {
	for _, c := range []struct {
		T, I, in, r int
		half        halfKind
	}{
		{33, 40, 64, 8, halfBF16},  // fused; a partial row block and 32-feature chunk
		{9, 2056, 40, 5, halfBF16}, // fused; more chunks than warps, rank 5
		{21, 30, 64, 8, halfBF16},  // I % 8 != 0: the two ops
		{17, 36, 64, 8, halfNone},  // float32: the two ops
	} {
		dc := caseOf(c.half)
		g, cb := dc.g, dc.c
		out := 2 * c.I
		name := fmt.Sprintf("%s T%d I%d in%d r%d", dc.name, c.T, c.I, c.in, c.r)
		gw, cw := weights(t, g, cb, randn(out*c.in, 60, 0.2), out, c.in, true)
		A := both(g, cb, randn(c.r*c.in, 61, 0.3), c.r, c.in)
		B := both(g, cb, randn(out*c.r, 62, 0.3), out, c.r)
		x := both(g, cb, randn(c.T*c.in, 63, 1), c.T, c.in)
		gu := both(g, cb, randn(c.T*out, 64, 2), c.T, out)
		dact := both(g, cb, randn(c.T*c.I, 65, 1), c.T, c.I)
		h := both(g, cb, randn(c.T*c.r, 66, 1), c.T, c.r)
		const seed = 0x5eed
		run := func(be finetune.Backend, W finetune.Weight, A, B, x, gu, dact, h finetune.Tensor, fused bool) [][]float32 {
			dx, gA, gB, dgu := be.Alloc(c.T, c.in), be.Alloc(c.r, c.in), be.Alloc(out, c.r), be.Alloc(c.T, out)
			for _, z := range []finetune.Tensor{dx, gA, gB, dgu} {
				be.Zero(z)
			}
			l := &finetune.Linear{Name: "gate_up_proj", W: W, LoRA: &finetune.LoRA{A: A, B: B, GradA: gA, GradB: gB, Scale: 2, Dropout: 0.1}}
			for range 2 { // the second accumulates onto the first
				be.Zero(dgu) // the contract: d gate_up starts at zero
				if fused {
					be.(finetune.SwiGLULinearBackwarder).SwiGLULinearBackward(dx, dgu, dact, gu, x, l, h, seed)
				} else {
					be.SwiGLUBackward(dgu, dact, gu)
					be.LinearBackward(dx, dgu, x, l, h, seed)
				}
			}
			if fused {
				// Fused, d gate_up is never written: its pending Zero stays.
				if pending := dgu.(*Tensor).zero != nil; pending != (c.half == halfBF16 && c.I%8 == 0) {
					t.Fatalf("%s: fused %v, want %v", name, pending, !pending)
				}
			}
			res := [][]float32{be.Download(dx), be.Download(gA), be.Download(gB)}
			for _, z := range []finetune.Tensor{dx, gA, gB, dgu} {
				be.Free(z)
			}
			return res
		}
		fused := run(g, gw, A.g, B.g, x.g, gu.g, dact.g, h.g, true)
		twoOps := run(g, gw, A.g, B.g, x.g, gu.g, dact.g, h.g, false)
		cpuRef := run(cb, cw, A.c, B.c, x.c, gu.c, dact.c, h.c, false)
		for k, what := range []string{"dx", "gradA", "gradB"} {
			checkRel(t, name+" "+what+" vs the two ops", fused[k], twoOps[k], dc.tol)
			checkRel(t, name+" "+what+" vs cpu", fused[k], cpuRef[k], dc.tol)
		}
		for _, p := range []pair{A, B, x, gu, dact, h} {
			g.Free(p.g)
		}
		g.FreeWeight(gw)
	}
}

// SwiGLULinearForward must give SwiGLUForward + LinearForward (or, out nil,
// + LoRAHForward) bit for bit on the GPU, fused (lora_rows_swiglu_bf16,
// BF16 with I % 8 == 0) or not, and the CPU's to its tolerance.
func TestSwiGLULinearForward(t *testing.T) {
	forEachRowsKernel(t, testSwiGLULinearForward)
}

func testSwiGLULinearForward(t *testing.T) {
	for _, c := range []struct {
		T, I, out, r int
		half         halfKind
	}{
		{33, 40, 24, 8, halfBF16},  // fused; a partial row block and 32-feature chunk
		{9, 2056, 16, 5, halfBF16}, // fused; more chunks than warps, rank 5
		{21, 30, 24, 8, halfBF16},  // I % 8 != 0: the two ops
		{17, 40, 24, 8, halfNone},  // float32: the two ops
	} {
		dc := caseOf(c.half)
		g, cb := dc.g, dc.c
		name := fmt.Sprintf("%s T%d I%d out%d r%d", dc.name, c.T, c.I, c.out, c.r)
		gw, cw := weights(t, g, cb, randn(c.out*c.I, 70, 0.2), c.out, c.I, true)
		A := both(g, cb, randn(c.r*c.I, 71, 0.3), c.r, c.I)
		B := both(g, cb, randn(c.out*c.r, 72, 0.3), c.out, c.r)
		gu := both(g, cb, randn(c.T*2*c.I, 73, 2), c.T, 2*c.I)
		const seed = 0xf00d
		run := func(be finetune.Backend, W finetune.Weight, A, B, gu finetune.Tensor, fused, withOut bool) [][]float32 {
			act, h := be.Alloc(c.T, c.I), be.Alloc(c.T, c.r)
			var y finetune.Tensor
			if withOut {
				y = be.Alloc(c.T, c.out)
			}
			l := &finetune.Linear{Name: "down_proj", W: W, LoRA: &finetune.LoRA{A: A, B: B, Scale: 2, Dropout: 0.1}}
			switch {
			case fused:
				be.(finetune.SwiGLULinearForwarder).SwiGLULinearForward(y, act, gu, l, h, seed)
			case withOut:
				be.SwiGLUForward(act, gu)
				be.LinearForward(y, act, l, h, seed)
			default:
				be.SwiGLUForward(act, gu)
				be.(finetune.LoRAHForwarder).LoRAHForward(h, act, l, seed)
			}
			res := [][]float32{be.Download(act), be.Download(h)}
			if withOut {
				res = append(res, be.Download(y))
				be.Free(y)
			}
			be.Free(act)
			be.Free(h)
			return res
		}
		for _, withOut := range []bool{true, false} {
			fused := run(g, gw, A.g, B.g, gu.g, true, withOut)
			twoOps := run(g, gw, A.g, B.g, gu.g, false, withOut)
			cpuRef := run(cb, cw, A.c, B.c, gu.c, false, withOut)
			for k, what := range []string{"act", "h", "out"}[:len(fused)] {
				for i := range fused[k] {
					if math.Float32bits(fused[k][i]) != math.Float32bits(twoOps[k][i]) {
						t.Fatalf("%s out %v: %s[%d] = %v fused, %v from the two ops", name, withOut, what, i, fused[k][i], twoOps[k][i])
					}
				}
				checkRel(t, fmt.Sprintf("%s out %v %s vs cpu", name, withOut, what), fused[k], cpuRef[k], dc.tol)
			}
		}
		for _, p := range []pair{A, B, gu} {
			g.Free(p.g)
		}
		g.FreeWeight(gw)
	}
}

// SwiGLULinearAddForward must give SwiGLULinearForward then Add(out, out,
// product) bit for bit where it adds (the fused BF16 path with the LoRA's
// up-projection folded into the GEMM, whose epilogue then adds: beta 1),
// also at Phi-3-mini's down_proj shape (cuBLAS's beta-1 algorithm must sum
// as its beta-0 one does), and decline elsewhere, leaving out as it was.
func TestSwiGLULinearAddForward(t *testing.T) {
	for _, c := range []struct {
		T, I, out, r int
		half         halfKind
		adds         bool
	}{
		{33, 40, 24, 8, halfBF16, true},
		{9, 2056, 16, 5, halfBF16, true},
		{1024, 8192, 3072, 8, halfBF16, true}, // Phi-3-mini's down_proj, 1,024 tokens
		{21, 30, 24, 8, halfBF16, false},      // I % 8 != 0: the row kernels do not take it
		{17, 40, 24, 8, halfNone, false},      // float32 compute
	} {
		g := caseOf(c.half).g
		name := fmt.Sprintf("%s T%d I%d out%d r%d", caseOf(c.half).name, c.T, c.I, c.out, c.r)
		W, err := g.NF4Weight(randn(c.out*c.I, 80, 0.2), c.out, c.I, true)
		if err != nil {
			t.Fatal(err)
		}
		up := func(data []float32, shape ...int) finetune.Tensor {
			x := g.Alloc(shape...)
			g.Upload(x, data)
			return x
		}
		A, B := up(randn(c.r*c.I, 81, 0.3), c.r, c.I), up(randn(c.out*c.r, 82, 0.3), c.out, c.r)
		gu, res := up(randn(c.T*2*c.I, 83, 2), c.T, 2*c.I), randn(c.T*c.out, 84, 1)
		l := &finetune.Linear{Name: "down_proj", W: W, LoRA: &finetune.LoRA{A: A, B: B, Scale: 2, Dropout: 0.1}}
		const seed = 0xbeef
		run := func(add bool) (out, h []float32, added bool) {
			act, hh, y := g.Alloc(c.T, c.I), g.Alloc(c.T, c.r), up(res, c.T, c.out)
			defer func() { g.Free(act); g.Free(hh); g.Free(y) }()
			if add {
				added = g.SwiGLULinearAddForward(y, act, gu, l, hh, seed)
			} else {
				p := g.Alloc(c.T, c.out)
				g.SwiGLULinearForward(p, act, gu, l, hh, seed)
				g.Add(y, y, p)
				g.Free(p)
			}
			return g.Download(y), g.Download(hh), added
		}
		got, gotH, added := run(true)
		want, wantH, _ := run(false)
		if added != c.adds {
			t.Fatalf("%s: SwiGLULinearAddForward added %v, want %v", name, added, c.adds)
		}
		if !added {
			want, wantH = res, make([]float32, c.T*c.r) // untouched
		}
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Fatalf("%s: out[%d] = %v, want %v", name, i, got[i], want[i])
			}
		}
		for i := range wantH {
			if math.Float32bits(gotH[i]) != math.Float32bits(wantH[i]) {
				t.Fatalf("%s: h[%d] = %v, want %v", name, i, gotH[i], wantH[i])
			}
		}
		for _, x := range []finetune.Tensor{A, B, gu} {
			g.Free(x)
		}
		g.FreeWeight(W)
	}
}

// forEachRowsKernel runs test with the row kernels' 16-warp and 32-warp
// entry points (loraRowsW32), as subtests.
func forEachRowsKernel(t *testing.T, test func(t *testing.T)) {
	defer func(v bool) { loraRowsW32 = v }(loraRowsW32)
	for _, w32 := range []bool{false, true} {
		loraRowsW32 = w32
		t.Run(fmt.Sprintf("w32 %v", w32), test)
	}
}

// RMSNormLinearForward must give RMSNormForward (or AddRMSNormForward) +
// LinearForward bit for bit on the GPU, fused (lora_rows_norm_bf16: BF16
// LoRA with C % 32 == 0, C <= 4096, the 32-warp row kernels) or not, and
// the CPU's to its tolerance: out, the norm's output, rstd, the sum and h.
func TestRMSNormLinearForward(t *testing.T) {
	forEachRowsKernel(t, testRMSNormLinearForward)
}

func testRMSNormLinearForward(t *testing.T) {
	for _, c := range []struct {
		T, C, out, r int
		half         halfKind
	}{
		{33, 64, 72, 8, halfBF16},   // fused; fewer chunks than warps, a partial row block
		{9, 4096, 40, 5, halfBF16},  // fused (4 chunks a lane), rank 5
		{21, 3072, 24, 8, halfBF16}, // fused at Phi-3's width (3 chunks a lane)
		{17, 40, 24, 8, halfBF16},   // C % 32 != 0: the two ops
		{17, 64, 24, 8, halfNone},   // float32: the two ops
	} {
		for _, add := range []bool{false, true} {
			dc := caseOf(c.half)
			g, cb := dc.g, dc.c
			name := fmt.Sprintf("%s T%d C%d out%d r%d add %v", dc.name, c.T, c.C, c.out, c.r, add)
			gw, cw := weights(t, g, cb, randn(c.out*c.C, 80, 0.2), c.out, c.C, true)
			A := both(g, cb, randn(c.r*c.C, 81, 0.3), c.r, c.C)
			B := both(g, cb, randn(c.out*c.r, 82, 0.3), c.out, c.r)
			a := both(g, cb, randn(c.T*c.C, 83, 1), c.T, c.C)
			bb := both(g, cb, randn(c.T*c.C, 84, 1), c.T, c.C)
			nw := both(g, cb, randn(c.C, 85, 1), c.C)
			const seed, eps = 0xabc, 1e-5
			run := func(be finetune.Backend, W finetune.Weight, A, B, a, bb, nw finetune.Tensor, fused bool) [][]float32 {
				y, xn, rstd, sum, h := be.Alloc(c.T, c.out), be.Alloc(c.T, c.C), be.Alloc(c.T), be.Alloc(c.T, c.C), be.Alloc(c.T, c.r)
				l := &finetune.Linear{Name: "qkv_proj", W: W, LoRA: &finetune.LoRA{A: A, B: B, Scale: 2, Dropout: 0.1}}
				var b2, s2 finetune.Tensor
				if add {
					b2, s2 = bb, sum
				}
				switch {
				case fused:
					be.(finetune.RMSNormLinearForwarder).RMSNormLinearForward(y, xn, rstd, s2, a, b2, nw, eps, l, h, seed)
				case add:
					be.Add(sum, a, bb)
					be.RMSNormForward(xn, rstd, sum, nw, eps)
					be.LinearForward(y, xn, l, h, seed)
				default:
					be.RMSNormForward(xn, rstd, a, nw, eps)
					be.LinearForward(y, xn, l, h, seed)
				}
				res := [][]float32{be.Download(y), be.Download(xn), be.Download(rstd), be.Download(h)}
				if add {
					res = append(res, be.Download(sum))
				}
				for _, z := range []finetune.Tensor{y, xn, rstd, sum, h} {
					be.Free(z)
				}
				return res
			}
			fused := run(g, gw, A.g, B.g, a.g, bb.g, nw.g, true)
			twoOps := run(g, gw, A.g, B.g, a.g, bb.g, nw.g, false)
			cpuRef := run(cb, cw, A.c, B.c, a.c, bb.c, nw.c, false)
			for k, what := range []string{"out", "xn", "rstd", "h", "sum"}[:len(fused)] {
				checkBits(t, name+" "+what+" fused vs the ops", fused[k], twoOps[k])
				checkRel(t, name+" "+what+" vs cpu", fused[k], cpuRef[k], dc.tol)
			}
			for _, p := range []pair{A, B, a, bb, nw} {
				g.Free(p.g)
			}
			g.FreeWeight(gw)
		}
	}
}

// A gate_up output allocated by AllocHalf (finetune.HalfAllocator) is
// written in bfloat16 by the folded BF16 LinearForward (Tensor.half): read
// back it is that linear's float32 output rounded to bfloat16 values (to
// the rounding of a GEMM that may sum in another order); the fused SwiGLU
// forward and backward read it as bfloat16 and give the same bits as from
// a float32 tensor holding the same values; an op that cannot read
// bfloat16 (the unfused SwiGLU) gets the values widened.
func TestHalfGateUp(t *testing.T) {
	g := gpuB16
	if !loraRowsW32 || !halfOutputs {
		t.Skip("gate_up is written in float32 (OLLAMA_TUNE_CUDA_ROWS=w16 or OLLAMA_TUNE_CUDA_REFERENCE=gu-half)")
	}
	const T, C, I, out, r = 37, 64, 40, 24, 8
	wGU, AGU, BGU := nf4LoRA(t, g, 2*I, C, r, 90)
	wD, AD, BD := nf4LoRA(t, g, out, I, r, 94)
	x, hGU := g.Alloc(T, C), g.Alloc(T, r)
	g.Upload(x, randn(T*C, 98, 1))
	gateUp := &finetune.Linear{Name: "gate_up_proj", W: wGU, LoRA: &finetune.LoRA{A: AGU, B: BGU, Scale: 2, Dropout: 0.1}}
	down := &finetune.Linear{Name: "down_proj", W: wD, LoRA: &finetune.LoRA{A: AD, B: BD, Scale: 2, Dropout: 0.1}}
	half, full := g.AllocHalf(T, 2*I), g.Alloc(T, 2*I)
	g.LinearForward(half, x, gateUp, hGU, 3)
	if half.(*Tensor).half == nil {
		t.Fatal("LinearForward wrote the AllocHalf output in float32")
	}
	g.LinearForward(full, x, gateUp, hGU, 3)
	wide := g.Download(full)
	got := g.Download(half) // widened: Tensor.half is gone
	if half.(*Tensor).half != nil {
		t.Fatal("Download left the tensor in bfloat16")
	}
	for i, v := range got {
		if math.Float32bits(v)&0xffff != 0 {
			t.Fatalf("gate_up[%d] = %v is not a bfloat16 value", i, v)
		}
		if d := math.Abs(float64(v - wide[i])); d > math.Abs(float64(wide[i]))/128+1e-6 {
			t.Fatalf("gate_up[%d] = %v in bfloat16, %v in float32", i, v, wide[i])
		}
	}
	g.Upload(full, got) // float32, the same values
	dact := g.Alloc(T, I)
	g.Upload(dact, randn(T*I, 99, 1))
	// run: the fused forward (act, h, out) and backward (dx, GradA, GradB) from gu.
	run := func(gu finetune.Tensor, rewrite bool) [][]float32 {
		if rewrite {
			g.LinearForward(gu, x, gateUp, hGU, 3) // bfloat16 again
		}
		act, hD, y, dx, dgu := g.Alloc(T, I), g.Alloc(T, r), g.Alloc(T, out), g.Alloc(T, C), g.Alloc(T, 2*I)
		gA, gB := g.Alloc(r, C), g.Alloc(2*I, r)
		gateUp.LoRA.GradA, gateUp.LoRA.GradB = gA, gB
		g.SwiGLULinearForward(y, act, gu, down, hD, 5)
		for _, z := range []finetune.Tensor{dx, dgu, gA, gB} {
			g.Zero(z)
		}
		g.SwiGLULinearBackward(dx, dgu, dact, gu, x, gateUp, hGU, 3)
		res := [][]float32{g.Download(act), g.Download(hD), g.Download(y), g.Download(dx), g.Download(gA), g.Download(gB)}
		for _, z := range []finetune.Tensor{act, hD, y, dx, dgu, gA, gB} {
			g.Free(z)
		}
		return res
	}
	fromFull := run(full, false)
	fromHalf := run(half, true)
	for k, what := range []string{"act", "h", "out", "dx", "gradA", "gradB"} {
		checkBits(t, "fused SwiGLU from a bfloat16 gate_up: "+what, fromHalf[k], fromFull[k])
	}
	// The unfused SwiGLU widens it first.
	g.LinearForward(half, x, gateUp, hGU, 3)
	a1, a2 := g.Alloc(T, I), g.Alloc(T, I)
	g.SwiGLUForward(a1, half)
	g.SwiGLUForward(a2, full)
	checkBits(t, "SwiGLUForward of a bfloat16 gate_up", g.Download(a1), g.Download(a2))
	for _, z := range []finetune.Tensor{AGU, BGU, AD, BD, x, hGU, half, full, dact, a1, a2} {
		g.Free(z)
	}
	g.FreeWeight(wGU)
	g.FreeWeight(wD)
}

// LinearBackward from a dout held in bfloat16 (Tensor.half: d qkv from
// attn_bwd_bf16_hh; lora_rows_bf16_t_h) gives the bits of a float32 dout
// holding the same values (dx, GradA, GradB), and leaves dout so; where
// the row kernels do not take the shapes (r > 8) dout is widened first.
func TestHalfDout(t *testing.T) {
	g := gpuB16
	const T, in, out = 37, 64, 96
	for _, r := range []int{8, 12} {
		w, A, B := nf4LoRA(t, g, out, in, r, 110)
		x, h := g.Alloc(T, in), g.Alloc(T, r)
		g.Upload(x, randn(T*in, 113, 1))
		g.Upload(h, randn(T*r, 114, 1))
		l := &finetune.Linear{Name: "qkv_proj", W: w, LoRA: &finetune.LoRA{A: A, B: B, Scale: 2, Dropout: 0.1}}
		hd, fd := g.AllocHalf(T, out), g.Alloc(T, out)
		vals := uploadHalf(g, hd, randn(T*out, 115, 1))
		g.Upload(fd, vals)
		want, got := zeroBackward(g, l, fd, x, h, T, 7), zeroBackward(g, l, hd, x, h, T, 7)
		for k, what := range []string{"dx", "gradA", "gradB"} {
			checkBits(t, fmt.Sprintf("r %d %s from a bfloat16 dout", r, what), got[k], want[k])
		}
		if held := hd.(*Tensor).half != nil; held != (r <= 8) {
			t.Errorf("r %d: dout held in bfloat16 after the backward: %v, want %v", r, held, r <= 8)
		}
		for _, z := range []finetune.Tensor{A, B, x, h, hd, fd} {
			g.Free(z)
		}
		g.FreeWeight(w)
	}
}

// zeroBackward runs l's LinearBackward from dout at x, h (T tokens) into
// zeroed dx, GradA and GradB, and returns them (freed on the device).
func zeroBackward(g *Backend, l *finetune.Linear, dout, x, h finetune.Tensor, T int, seed uint64) [][]float32 {
	in, out, r := l.W.In(), l.W.Out(), l.LoRA.A.Shape()[0]
	dx, gA, gB := g.Alloc(T, in), g.Alloc(r, in), g.Alloc(out, r)
	l.LoRA.GradA, l.LoRA.GradB = gA, gB
	for _, z := range []finetune.Tensor{dx, gA, gB} {
		g.Zero(z)
	}
	g.LinearBackward(dx, dout, x, l, h, seed)
	res := [][]float32{g.Download(dx), g.Download(gA), g.Download(gB)}
	for _, z := range []finetune.Tensor{dx, gA, gB} {
		g.Free(z)
	}
	return res
}
