//go:build cuda

package cuda

import (
	"fmt"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// rowdotHost is lora_rowdot8's y[t,j] computed on the host in the kernel's
// order: thread i of 256 adds its k = i, i + 256, ... in order, the lanes
// of each warp are summed by shuffles down 16, 8, 4, 2, 1 (a lane past the
// warp's end reads its own value), and the 8 warps' sums are added in
// order; every product and sum rounded to float32 (the conversions keep Go
// from fusing them).
func rowdotHost(x, W []float32, t, j, K, wsj, wsi int, p float32, seed uint64) float32 {
	ks := keepScale(p)
	var lanes [256]float32
	for i := range lanes {
		var a float32
		for k := i; k < K; k += 256 {
			v := x[t*K+k]
			if p > 0 {
				if finetune.DropoutKeep(seed, uint64(t*K+k), p) {
					v = float32(v * ks)
				} else {
					v = 0
				}
			}
			a = float32(a + float32(v*W[j*wsj+k*wsi]))
		}
		lanes[i] = a
	}
	var s float32
	for w := 0; w < 8; w++ {
		l := lanes[32*w : 32*w+32]
		for o := 16; o > 0; o >>= 1 {
			var n [32]float32
			for lane := range n {
				src := lane + o
				if src >= 32 {
					src = lane
				}
				n[lane] = float32(l[lane] + l[src])
			}
			l = n[:]
		}
		s = float32(s + l[0])
	}
	return s
}

// TestRowdot: lora_rowdot8, the float32 LoRA products of float32 and
// float16 compute (h = dropout(x) . A^T, g = dout . B read as B^T), writes
// the bits rowdotHost computes: with and without dropout (its hashes
// shared by four lanes where K % 4 == 0, else one a value), A and B^T,
// rank 5 and 8 (and 12 and 16: lora_rowdot16; B^T at full rank loads W
// as float4s), T not a multiple of the rows a block, K not a multiple of
// 256, a NaN and infinities in x, and Phi-3-mini's shapes (some rows),
// where it logs its time a call (the profile's events; v23).
func TestRowdot(t *testing.T) {
	g := gpu
	cases := []struct {
		T, K, r int
		p       float32
		bt      bool // W is B [K,r] read as B^T (wsj 1, wsi r)
		special bool
	}{
		{33, 40, 8, 0.1, false, true},
		{9, 2056, 5, 0.1, false, false},
		{7, 1030, 8, 0.1, false, true}, // K % 4 != 0: a hash a value
		{7, 1024 + 300, 8, 0, true, true},
		{9, 1030, 16, 0.1, false, true}, // lora_rowdot16
		{5, 2056, 12, 0, true, false},
		{11, 1300, 16, 0, true, true}, // B^T at full rank 16: float4 loads of W
		{1024, 3072, 8, 0.05, false, false},
		{1024, 8192, 8, 0.05, false, false},
		{1024, 9216, 8, 0, true, false},
		{1024, 16384, 8, 0, true, false},
		{1024, 3072, 8, 0, true, false},
	}
	const reps, seed = 20, 0x5eed
	for _, c := range cases {
		name := fmt.Sprintf("T%d K%d r%d p%g B^T %v", c.T, c.K, c.r, c.p, c.bt)
		xv, wv := randn(c.T*c.K, 31, 2), randn(c.K*c.r, 32, 0.05)
		if c.special {
			putSpecials(xv, c.K)
		}
		x, W, y := g.Alloc(c.T, c.K), g.Alloc(c.K, c.r), g.Alloc(c.T, c.r)
		g.Upload(x, xv)
		g.Upload(W, wv)
		wsj, wsi := c.K, 1
		if c.bt {
			wsj, wsi = 1, c.r
		}
		launch := func(n int) {
			defer g.enter("test")()
			for range n {
				g.loraRowdot("test", y.(*Tensor).ptr, x.(*Tensor).ptr, W.(*Tensor).ptr, c.T, c.K, c.r, wsj, wsi, c.p, seed)
			}
		}
		launch(1)
		got := g.Download(y)
		rows := []int{0, 1, 2, 3, c.T / 2, c.T - 1}
		if c.T < 64 {
			rows = rows[:0]
			for r := range c.T {
				rows = append(rows, r)
			}
		}
		for _, row := range rows {
			for j := range c.r {
				want := rowdotHost(xv, wv, row, j, c.K, wsj, wsi, c.p, seed)
				if v := got[row*c.r+j]; !sameBits(v, want) {
					t.Fatalf("%s: y[%d,%d] = %v, the kernel's order on the host gives %v", name, row, j, v, want)
				}
			}
		}
		if c.T == 1024 {
			us := 1000 * profileCalls(t, g, launch, reps).BusyMs / reps
			t.Logf("%s lora_rowdot8 %7.2f us/call, %.2f TB/s of x", name, us, float64(4*c.T*c.K)/us/1e6)
		}
		g.Free(x)
		g.Free(W)
		g.Free(y)
	}
}
