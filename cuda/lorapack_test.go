//go:build cuda

package cuda

import (
	"fmt"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// TestPackedLoRA (finetune.LoRAPacker, v11): after PackLoRA the row
// kernels read the packed bfloat16 A and B^T and give the same bits as
// with the float32 matrices, in every fused forward (LinearForward,
// LoRAHForward, SwiGLULinearForward, RMSNormLinearForward) and backward
// (LinearBackward from a float32 and a bfloat16 dout, the fused
// SwiGLULinearBackward); a write to A or B (Upload, an optimizer step)
// drops the pack, so the next op sees the new values; ranks above 8 and
// float32 compute pack nothing.
func TestPackedLoRA(t *testing.T) {
	g := gpuB16
	const T, in, out, r, I = 37, 64, 72, 8, 40
	for _, op := range []string{"LinearForward", "LoRAHForward", "SwiGLULinearForward", "RMSNormLinearForward",
		"LinearBackward", "LinearBackward bf16 dout", "SwiGLULinearBackward"} {
		K, O := in, out
		switch op {
		case "SwiGLULinearForward":
			K = I
		case "SwiGLULinearBackward":
			O = 2 * I
		}
		w, A, B := nf4LoRA(t, g, O, K, r, 60)
		x, gu, h, y := g.Alloc(T, K), g.Alloc(T, 2*I), g.Alloc(T, r), g.Alloc(T, O)
		src, nw, rstd, dact := g.Alloc(T, K), g.Alloc(K), g.Alloc(T), g.Alloc(T, I)
		dout, dh := g.Alloc(T, O), g.AllocHalf(T, O)
		g.Upload(x, randn(T*K, 63, 1))
		g.Upload(gu, randn(T*2*I, 64, 1))
		g.Upload(src, randn(T*K, 66, 1))
		g.Upload(nw, randn(K, 67, 1))
		g.Upload(dout, randn(T*O, 65, 1))
		g.Upload(dact, randn(T*I, 68, 1))
		g.Upload(h, randn(T*r, 69, 1))
		uploadHalf(g, dh, randn(T*O, 70, 1))
		l := &finetune.Linear{Name: "test", W: w, LoRA: &finetune.LoRA{A: A, B: B, Scale: 2, Dropout: 0.1}}
		run := func() [][]float32 {
			switch op {
			case "LinearForward":
				g.LinearForward(y, x, l, h, 7)
				return [][]float32{g.Download(y), g.Download(h)}
			case "LoRAHForward":
				g.LoRAHForward(h, x, l, 7)
				return [][]float32{g.Download(h)}
			case "SwiGLULinearForward":
				g.SwiGLULinearForward(y, x, gu, l, h, 7)
				return [][]float32{g.Download(y), g.Download(h)}
			case "RMSNormLinearForward":
				g.RMSNormLinearForward(y, x, rstd, nil, src, nil, nw, 1e-5, l, h, 7)
				return [][]float32{g.Download(y), g.Download(h)}
			case "LinearBackward":
				return zeroBackward(g, l, dout, x, h, T, 7)
			case "LinearBackward bf16 dout":
				return zeroBackward(g, l, dh, x, h, T, 7)
			}
			dx, gA, gB, dgu := g.Alloc(T, K), g.Alloc(r, K), g.Alloc(O, r), g.Alloc(T, O)
			l.LoRA.GradA, l.LoRA.GradB = gA, gB
			for _, z := range []finetune.Tensor{dx, gA, gB, dgu} {
				g.Zero(z)
			}
			g.SwiGLULinearBackward(dx, dgu, dact, gu, x, l, h, 7)
			res := [][]float32{g.Download(dx), g.Download(gA), g.Download(gB)}
			for _, z := range []finetune.Tensor{dx, gA, gB, dgu} {
				g.Free(z)
			}
			return res
		}
		want := run()
		g.PackLoRA([]*finetune.Linear{l})
		if g.packedW(unwrap(A, kindF32, "test").ptr) == 0 || g.packedW(unwrap(B, kindF32, "test").ptr) == 0 {
			t.Fatalf("%s: PackLoRA packed nothing", op)
		}
		got := run()
		for k := range want {
			checkBits(t, fmt.Sprintf("%s packed, output %d", op, k), got[k], want[k])
		}
		// A write drops the pack: the kernels then read the new values.
		a2 := randn(r*K, 71, 0.3)
		g.Upload(A, a2)
		if g.packedW(unwrap(A, kindF32, "test").ptr) != 0 {
			t.Errorf("%s: A's pack survived an upload", op)
		}
		stale := run()
		g.PackLoRA([]*finetune.Linear{l})
		fresh := run()
		for k := range stale {
			checkBits(t, fmt.Sprintf("%s after a write to A, output %d", op, k), fresh[k], stale[k])
		}
		pa, pb := unwrap(A, kindF32, "test").ptr, unwrap(B, kindF32, "test").ptr
		for _, z := range []finetune.Tensor{A, B, x, gu, h, y, src, nw, rstd, dact, dout, dh} {
			g.Free(z)
		}
		g.FreeWeight(w)
		if g.packs[pa] != nil || g.packs[pb] != nil {
			t.Errorf("%s: a pack outlived its matrix", op)
		}
	}

	// An optimizer step writes the parameter: its pack goes.
	w, A, B := nf4LoRA(t, g, out, in, r, 80)
	l := &finetune.Linear{Name: "test", W: w, LoRA: &finetune.LoRA{A: A, B: B, Scale: 2}}
	g.PackLoRA([]*finetune.Linear{l})
	gr, m, v := g.Alloc(r, in), g.Alloc(r, in), g.Alloc(r, in)
	g.AdamW(A, gr, m, v, finetune.AdamParams{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Step: 1})
	if g.packedW(unwrap(A, kindF32, "test").ptr) != 0 || g.packedW(unwrap(B, kindF32, "test").ptr) == 0 {
		t.Errorf("after AdamW on A: A packed %v (want false), B packed %v (want true)",
			g.packedW(unwrap(A, kindF32, "test").ptr) != 0, g.packedW(unwrap(B, kindF32, "test").ptr) != 0)
	}
	for _, z := range []finetune.Tensor{A, B, gr, m, v} {
		g.Free(z)
	}
	g.FreeWeight(w)

	// Rank 12 (the row kernels take r <= 8) and float32 compute: nothing.
	for _, c := range []struct {
		name string
		g    *Backend
		r    int
	}{{"rank 12", g, 12}, {"float32 compute", gpu, r}} {
		w, A, B := nf4LoRA(t, c.g, out, in, c.r, 90)
		c.g.PackLoRA([]*finetune.Linear{{Name: c.name, W: w, LoRA: &finetune.LoRA{A: A, B: B, Scale: 2}}})
		if c.g.packs[unwrap(A, kindF32, "test").ptr] != nil || c.g.packs[unwrap(B, kindF32, "test").ptr] != nil {
			t.Errorf("%s: packed", c.name)
		}
		c.g.Free(A)
		c.g.Free(B)
		c.g.FreeWeight(w)
	}
}
