//go:build cuda

package cuda

import (
	"math"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// TestTF32: training.tf32 (SetTF32) puts a float32 linear's GEMM on TF32
// tensor cores: its error against a float64 reference grows from IEEE
// float32's (~1e-7 of sum |x w|) to TF32's (at most 2^-10, inputs rounded
// to a 10-bit mantissa) and the output differs from IEEE's; switched off,
// the output is IEEE's again, bit for bit. bfloat16 compute is the same
// with it on or off.
func TestTF32(t *testing.T) {
	const T, in, out = 256, 1024, 512
	x, w := randn(T*in, 41, 1), randn(out*in, 42, 0.05)
	run := func(g *Backend, on bool) []float32 {
		t.Helper()
		if err := g.SetTF32(on); err != nil {
			t.Fatal(err)
		}
		gw, err := g.DenseWeight(w, out, in)
		if err != nil {
			t.Fatal(err)
		}
		defer g.FreeWeight(gw)
		gx, y := g.Alloc(T, in), g.Alloc(T, out)
		defer g.Free(gx)
		defer g.Free(y)
		g.Upload(gx, x)
		g.LinearForward(y, gx, &finetune.Linear{Name: "tf32", W: gw}, nil, 0)
		return g.Download(y)
	}
	defer gpu.SetTF32(false)
	ieee, tf32, again := run(gpu, false), run(gpu, true), run(gpu, false)
	worst := func(y []float32) float64 {
		var m float64
		for i := 0; i < T; i++ {
			for j := 0; j < out; j++ {
				var ref, mag float64
				for k := 0; k < in; k++ {
					p := float64(x[i*in+k]) * float64(w[j*in+k])
					ref, mag = ref+p, mag+math.Abs(p)
				}
				m = max(m, math.Abs(float64(y[i*out+j])-ref)/mag)
			}
		}
		return m
	}
	eI, eT := worst(ieee), worst(tf32)
	t.Logf("error / sum |x w|: IEEE float32 %.2e, TF32 %.2e", eI, eT)
	if eI > 1e-6 {
		t.Errorf("IEEE float32 error %.2e: the GEMM is not IEEE float32", eI)
	}
	if eT <= 4*eI || eT > math.Ldexp(1, -10) {
		t.Errorf("TF32 error %.2e against IEEE's %.2e: not TF32's (at most 2^-10 and well above float32's)", eT, eI)
	}
	checkBits(t, "IEEE again after TF32", again, ieee)
	defer gpuB16.SetTF32(false)
	checkBits(t, "bfloat16 with TF32", run(gpuB16, true), run(gpuB16, false))
}
