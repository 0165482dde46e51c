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
		for _, sz := range []struct{ T, in, out, r int }{{33, 64, 72, 8}, {21, 67, 45, 5}, {37, 40, 33, 20}} {
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
