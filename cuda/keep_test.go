//go:build cuda

package cuda

import (
	"fmt"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// TestKeptLoRAInputs: a LinearBackward that takes the forward's kept
// bf16(dropout(x)) (finetune.LoRAInputKeeper) gives the same bits (dx and
// both LoRA gradients) as one that computes it, after LinearForward,
// LoRAHForward, the fused SwiGLULinearForward (out nil: checkpointing's
// recompute of down_proj) and the fused RMSNormLinearForward; a slot is used once, and another linear, input
// or seed finds nothing.
func TestKeptLoRAInputs(t *testing.T) {
	g := gpuB16
	const T, in, out, r, I = 37, 64, 72, 8, 40
	for _, fwd := range []string{"LinearForward", "LoRAHForward", "SwiGLULinearForward", "RMSNormLinearForward"} {
		for _, p := range []float32{0, 0.1} {
			name := fmt.Sprintf("%s dropout %v", fwd, p)
			K := in
			if fwd == "SwiGLULinearForward" {
				K = I
			}
			w, A, B := nf4LoRA(t, g, out, K, r, 60)
			x, gu, dout, h, y := g.Alloc(T, K), g.Alloc(T, 2*K), g.Alloc(T, out), g.Alloc(T, r), g.Alloc(T, out)
			src, nw, rstd := g.Alloc(T, K), g.Alloc(K), g.Alloc(T)
			g.Upload(x, randn(T*K, 63, 1))
			g.Upload(gu, randn(T*2*K, 64, 1))
			g.Upload(src, randn(T*K, 66, 1))
			g.Upload(nw, randn(K, 67, 1))
			g.Upload(dout, randn(T*out, 65, 1))
			l := &finetune.Linear{Name: "test", W: w, LoRA: &finetune.LoRA{A: A, B: B, Scale: 2, Dropout: p}}
			run := func(keep bool, seed uint64) [][]float32 {
				g.KeepLoRAInputs(keep)
				switch fwd {
				case "LinearForward":
					g.LinearForward(y, x, l, h, 7)
				case "LoRAHForward":
					g.LoRAHForward(h, x, l, 7)
				case "SwiGLULinearForward":
					g.SwiGLULinearForward(nil, x, gu, l, h, 7) // x becomes act
				default:
					g.RMSNormLinearForward(y, x, rstd, nil, src, nil, nw, 1e-5, l, h, 7) // x becomes the norm of src
				}
				g.KeepLoRAInputs(false)
				return zeroBackward(g, l, dout, x, h, T, seed)
			}
			want := run(false, 7)
			got := run(true, 7)
			for k, what := range []string{"dx", "gradA", "gradB"} {
				checkBits(t, name+" "+what, got[k], want[k])
			}
			if g.takeKept(l, unwrap(x, kindF32, "test").ptr, 7, T, K) != 0 {
				t.Errorf("%s: the kept input is still there after its backward", name)
			}
			run(true, 8) // another seed: not taken
			if g.takeKept(l, unwrap(x, kindF32, "test").ptr, 7, T, K) == 0 {
				t.Errorf("%s: a backward with another seed took the kept input", name)
			}
			for _, z := range []finetune.Tensor{A, B, x, gu, dout, h, y, src, nw, rstd} {
				g.Free(z)
			}
			g.FreeWeight(w)
		}
	}
}
