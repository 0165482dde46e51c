//go:build cuda

package cuda

import (
	"fmt"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"

	"gorgonia.org/cu"
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

// TestSkippedByproducts (finetune.ByproductSkipper, v10): where x is
// marked, the fused SwiGLULinearForward and RMSNormLinearForward leave it
// unwritten when a kept copy serves the backward (the same bits as
// without the mark) and in a forward no backward follows, but write it
// when the model asked to keep and no copy was kept; a read of the
// unwritten x (Download, a LinearBackward without the kept copy) fails
// with an error naming the cause, and a write makes it readable again.
func TestSkippedByproducts(t *testing.T) {
	g := gpuB16
	const T, in, r, I = 37, 64, 8, 40
	panics := func(f func()) (msg string) {
		defer func() {
			if p := recover(); p != nil {
				msg = fmt.Sprint(p)
			}
		}()
		f()
		return ""
	}
	// out 70: dout's rows do not take the backward's row kernel, which
	// then takes the kept input on its other path.
	for _, c := range []struct {
		fwd string
		out int
	}{{"SwiGLULinearForward", 72}, {"RMSNormLinearForward", 72}, {"SwiGLULinearForward", 70}, {"RMSNormLinearForward", 70}} {
		fwd, out := c.fwd, c.out
		name := fmt.Sprintf("%s, out %d", fwd, out)
		K := in
		if fwd == "SwiGLULinearForward" {
			K = I
		}
		w, A, B := nf4LoRA(t, g, out, K, r, 70)
		x, xm, gu, dout, h, y := g.Alloc(T, K), g.Alloc(T, K), g.Alloc(T, 2*K), g.Alloc(T, out), g.Alloc(T, r), g.Alloc(T, out)
		src, nw, rstd := g.Alloc(T, K), g.Alloc(K), g.Alloc(T)
		g.Upload(gu, randn(T*2*K, 71, 1))
		g.Upload(src, randn(T*K, 72, 1))
		g.Upload(nw, randn(K, 73, 1))
		g.Upload(dout, randn(T*out, 74, 1))
		g.SkipByproduct(xm)
		l := &finetune.Linear{Name: "test", W: w, LoRA: &finetune.LoRA{A: A, B: B, Scale: 2, Dropout: 0.1}}
		forward := func(x finetune.Tensor, keep bool) {
			g.KeepLoRAInputs(keep)
			if fwd == "SwiGLULinearForward" {
				g.SwiGLULinearForward(y, x, gu, l, h, 7) // x becomes act
			} else {
				g.RMSNormLinearForward(y, x, rstd, nil, src, nil, nw, 1e-5, l, h, 7) // x becomes the norm of src
			}
			g.KeepLoRAInputs(false)
		}
		unwritten := func(x finetune.Tensor) bool { return x.(*Tensor).unwritten }
		// Kept: skipped, the same outputs and gradients.
		forward(x, true)
		wantY, wantH := g.Download(y), g.Download(h)
		want := zeroBackward(g, l, dout, x, h, T, 7)
		forward(xm, true)
		if !unwritten(xm) {
			t.Errorf("%s: the marked by-product was written though its LoRA input was kept", name)
		}
		checkBits(t, name+" y", g.Download(y), wantY)
		checkBits(t, name+" h", g.Download(h), wantH)
		got := zeroBackward(g, l, dout, xm, h, T, 7)
		for k, what := range []string{"dx", "gradA", "gradB"} {
			checkBits(t, name+" "+what, got[k], want[k])
		}
		// No backward follows: skipped; reading it fails.
		forward(xm, false)
		if !unwritten(xm) {
			t.Errorf("%s: the marked by-product was written in a forward no backward follows", name)
		}
		if msg := panics(func() { g.Download(xm) }); !strings.Contains(msg, "left unwritten") {
			t.Errorf("%s: Download of an unwritten tensor: %q, want an error", name, msg)
		}
		if msg := panics(func() { zeroBackward(g, l, dout, xm, h, T, 7) }); !strings.Contains(msg, "left unwritten") {
			t.Errorf("%s: LinearBackward reading an unwritten input: %q, want an error", name, msg)
		}
		// Keeping asked but no slot (all spent on other linears): written.
		g.KeepLoRAInputs(true)
		for k := range keptSlots {
			g.keepSlot("test", &finetune.Linear{}, cu.DevicePtr(16*(k+1)), 1, T, K)
		}
		if fwd == "SwiGLULinearForward" {
			g.SwiGLULinearForward(y, xm, gu, l, h, 7)
		} else {
			g.RMSNormLinearForward(y, xm, rstd, nil, src, nil, nw, 1e-5, l, h, 7)
		}
		g.KeepLoRAInputs(false)
		if unwritten(xm) {
			t.Errorf("%s: the by-product was skipped though nothing was kept for the backward", name)
		}
		checkBits(t, name+" written by-product", g.Download(xm), g.Download(x))
		for _, z := range []finetune.Tensor{A, B, x, xm, gu, dout, h, y, src, nw, rstd} {
			g.Free(z)
		}
		g.FreeWeight(w)
	}
}
