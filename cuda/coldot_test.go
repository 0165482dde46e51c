//go:build cuda

package cuda

import (
	"fmt"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// coldotHost is loraColdot's G(j,k) computed on the host in the kernels'
// order: lora_coldot_partial sums a[t,j] * xd[t,k] over each chunk of
// loraChunk tokens in token order, lora_coldot_finish adds the chunks'
// sums in chunk order and then g0 + scale * s (g0 0 for beta 0); every
// product and sum rounded to float32 (the conversions keep Go from fusing
// them).
func coldotHost(g0 float32, a, x []float32, j, k, T, K, r int, scale, p float32, seed uint64) float32 {
	ks := keepScale(p)
	var s float32
	for c := 0; c*loraChunk < T; c++ {
		var part float32
		for t := c * loraChunk; t < min(T, (c+1)*loraChunk); t++ {
			v := x[t*K+k]
			if p > 0 {
				if finetune.DropoutKeep(seed, uint64(t*K+k), p) {
					v = float32(v * ks)
				} else {
					v = 0
				}
			}
			part = float32(part + float32(a[t*r+j]*v))
		}
		s = float32(s + part)
	}
	return float32(g0 + float32(scale*s))
}

// TestColdot: loraColdot, the float32 LoRA weight gradients of float32 and
// float16 compute (GradA += scale * g^T . dropout(x), GradB += scale *
// dout^T . h), writes the bits coldotHost computes: with dropout where K %
// 4 == 0 (the _s kernels: hashes shared by four lanes) and where not (a
// hash a value), without dropout, ranks 5, 8, 12 and 16, GradA's and
// GradB's layouts, accumulating and overwriting (beta 0: G, full of NaNs,
// is not read), T not a multiple of the chunk, K not a multiple of the
// block, a NaN and infinities in x, and Phi-3-mini's shapes (sampled
// columns), where it logs its time a call (v24).
func TestColdot(t *testing.T) {
	g := gpu
	cases := []struct {
		T, K, r int
		p       float32
		gradB   bool // G is [K,r] (gsj 1, gsk r), else [r,K]
		special bool
		zero    bool // beta 0: G a pending Zero, overwritten
	}{
		{33, 40, 8, 0.1, false, true, false},
		{70, 1030, 8, 0.1, false, true, false}, // K % 4 != 0: a hash a value
		{9, 2056, 5, 0.1, false, false, true},
		{40, 300, 16, 0.1, false, true, false},
		{40, 302, 12, 0.1, false, false, true},
		{7, 1324, 8, 0, true, true, true},
		{65, 520, 16, 0, true, false, false},
		{1024, 3072, 8, 0.05, false, false, false},
		{1024, 8192, 8, 0.05, false, false, false},
		{1024, 9216, 8, 0, true, false, false},
		{1024, 16384, 8, 0, true, false, false},
		{1024, 3072, 8, 0, true, false, true},
	}
	const reps, seed, scale = 20, 0x5eed, float32(2)
	for _, c := range cases {
		name := fmt.Sprintf("T%d K%d r%d p%g GradB %v beta0 %v", c.T, c.K, c.r, c.p, c.gradB, c.zero)
		xv, av, gv := randn(c.T*c.K, 41, 2), randn(c.T*c.r, 42, 0.5), randn(c.K*c.r, 43, 0.1)
		if c.special {
			putSpecials(xv, c.K)
		}
		x, a, G := g.Alloc(c.T, c.K), g.Alloc(c.T, c.r), g.Alloc(c.K, c.r)
		g.Upload(x, xv)
		g.Upload(a, av)
		beta := float32(1)
		if c.zero {
			beta = 0
			g.Upload(G, nanSlice(c.K*c.r))
			gv = make([]float32, c.K*c.r) // what the kernels must add to
		} else {
			g.Upload(G, gv)
		}
		gsj, gsk := c.K, 1
		if c.gradB {
			gsj, gsk = 1, c.r
		}
		launch := func(n int) {
			defer g.enter("test")()
			for range n {
				g.loraColdot("test", G.(*Tensor).ptr, a.(*Tensor).ptr, x.(*Tensor).ptr, c.T, c.K, c.r, gsj, gsk, scale, beta, c.p, seed)
			}
		}
		launch(1)
		got := g.Download(G)
		step := 1
		if c.T == 1024 {
			step = 7
		}
		for k := 0; k < c.K; k += step {
			for j := range c.r {
				i := j*gsj + k*gsk
				want := coldotHost(gv[i], av, xv, j, k, c.T, c.K, c.r, scale, c.p, seed)
				if v := got[i]; !sameBits(v, want) {
					t.Fatalf("%s: G(%d,%d) = %v, the kernels' order on the host gives %v", name, j, k, v, want)
				}
			}
		}
		if c.T == 1024 {
			p := profileCalls(t, g, launch, reps)
			var split string
			for _, e := range p.Entries {
				split += fmt.Sprintf(" %s %.2f", e.Name, 1000*e.Ms/reps)
			}
			us := 1000 * p.BusyMs / reps
			t.Logf("%s loraColdot %7.2f us/call (%s), %.2f TB/s of x", name, us, split[1:], float64(4*c.T*c.K)/us/1e6)
		}
		g.Free(x)
		g.Free(a)
		g.Free(G)
	}
}
