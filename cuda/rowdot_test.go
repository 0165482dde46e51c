//go:build cuda

package cuda

import (
	"bytes"
	"fmt"
	"math"
	"testing"
	"unsafe"

	"gorgonia.org/cu"
)

// TestRowdotAhead: lora_rowdot8u (v23: two of a thread's steps loaded at
// once) writes the bytes lora_rowdot8 writes: with and without dropout
// (the host takes it without), A [r,K] and B [K,r] read as B^T, rank 5
// and 8, T not a multiple of the rows a block, K with and without a tail
// past the unrolled steps, a NaN and infinities in x; and at Phi-3-mini's
// shapes, where it logs each kernel's time (the profile's events), on the
// float32 inputs float32 and float16 compute give them.
func TestRowdotAhead(t *testing.T) {
	g := gpu
	type rowdotCase struct {
		T, K, r int
		p       float32
		bt      bool // W is B [K,r] read as B^T (wsj 1, wsi r)
		special bool
		timed   bool
	}
	cases := []rowdotCase{
		{33, 40, 8, 0.1, false, true, false},
		{9, 2056, 5, 0.1, false, false, false},
		{7, 1024 + 300, 8, 0, true, true, false},
		{1024, 3072, 8, 0.05, false, false, true},
		{1024, 8192, 8, 0.05, false, false, true},
		{1024, 9216, 8, 0, true, false, true},
		{1024, 16384, 8, 0, true, false, true},
		{1024, 3072, 8, 0, true, false, true},
	}
	kernels := []struct {
		name string
		rows int
	}{{"lora_rowdot8", 4}, {"lora_rowdot8u", 4}}
	if rowdotAheadKernel != kernels[1].name || rowdotAheadRows != kernels[1].rows {
		t.Fatalf("loraRowdot takes %s (%d rows), which this test does not time", rowdotAheadKernel, rowdotAheadRows)
	}
	const reps = 20
	for _, c := range cases {
		name := fmt.Sprintf("T%d K%d r%d p%g B^T %v", c.T, c.K, c.r, c.p, c.bt)
		xv := randn(c.T*c.K, 31, 2)
		if c.special {
			xv[3*c.K+5] = float32(math.NaN())
			xv[4*c.K+9] = float32(math.Inf(1))
			xv[5*c.K+1] = float32(math.Inf(-1))
		}
		x, W, y := g.Alloc(c.T, c.K), g.Alloc(c.K, c.r), g.Alloc(c.T, c.r)
		g.Upload(x, xv)
		g.Upload(W, randn(c.K*c.r, 32, 0.05))
		wsj, wsi := c.K, 1
		if c.bt {
			wsj, wsi = 1, c.r
		}
		var want []byte
		for _, k := range kernels {
			launch := func(n int) {
				defer g.enter("test")()
				for range n {
					g.launch("test", k.name, grid1((c.T+k.rows-1)/k.rows), 256, 0, ptrArg(y.(*Tensor).ptr), ptrArg(x.(*Tensor).ptr),
						ptrArg(W.(*Tensor).ptr), intArg(c.T), intArg(c.K), intArg(c.r), intArg(wsj), intArg(wsi), 0x5eed,
						f32Arg(c.p), dropThreshold(c.p), f32Arg(keepScale(c.p)))
				}
			}
			func() { // NaN-filled output: every value must be written
				defer g.enter("test")()
				check("test", cu.MemsetD32Async(y.(*Tensor).ptr, 0x7fc00001, int64(c.T*c.r), g.stream))
			}()
			launch(1)
			got := g.Download(y)
			b := unsafe.Slice((*byte)(unsafe.Pointer(&got[0])), 4*len(got))
			if want == nil {
				want = bytes.Clone(b)
			} else if !bytes.Equal(b, want) {
				for i := range got {
					w := math.Float32frombits(uint32(want[4*i]) | uint32(want[4*i+1])<<8 | uint32(want[4*i+2])<<16 | uint32(want[4*i+3])<<24)
					if math.Float32bits(got[i]) != math.Float32bits(w) {
						t.Fatalf("%s: %s's value %d is %v, lora_rowdot8's %v", name, k.name, i, got[i], w)
					}
				}
			}
			if c.timed {
				launch(3)
				g.StartProfile()
				launch(reps)
				p, err := g.StopProfile()
				if err != nil {
					t.Fatal(err)
				}
				us := 1000 * p.BusyMs / reps
				t.Logf("%s %-15s %7.2f us/call, %.2f TB/s of x", name, k.name, us, float64(4*c.T*c.K)/us/1e6)
			}
		}
		g.Free(x)
		g.Free(W)
		g.Free(y)
	}
}
