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

// LinearBackward into a pending Zero (lazy zeroing: the GEMMs' beta 0)
// must give the same backward as into uploaded zeros, for dx and both
// LoRA gradients, on every compute type (to float32 rounding: cuBLAS may
// pick another kernel for beta 0).
func TestLinearBackwardIntoPendingZero(t *testing.T) {
	const T, in, out, r = 33, 64, 72, 8
	for _, half := range []halfKind{halfNone, halfBF16, halfF16} {
		g := caseOf(half).g
		w, err := g.NF4Weight(randn(out*in, 50, 0.2), out, in, true)
		if err != nil {
			t.Fatal(err)
		}
		A, B := g.Alloc(r, in), g.Alloc(out, r)
		g.Upload(A, randn(r*in, 51, 0.3))
		g.Upload(B, randn(out*r, 52, 0.3))
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
