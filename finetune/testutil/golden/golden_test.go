package golden_test

import (
	"math"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/testutil/golden"
)

func TestRelErr(t *testing.T) {
	nan := float32(math.NaN())
	for _, c := range []struct {
		got, want []float32
		e         float64
	}{
		{[]float32{3, 4}, []float32{3, 4}, 0},
		{[]float32{3, 5}, []float32{3, 4}, 0.2}, // |(0,1)| / |(3,4)|
		{[]float32{3, 4}, []float32{0, 0}, 5},   // no scale: the plain norm
		{[]float32{3, nan}, []float32{3, 4}, math.Inf(1)},
		{[]float32{3}, []float32{3, 4}, math.Inf(1)},
	} {
		if e := golden.RelErr(c.got, c.want); math.Abs(e-c.e) > 1e-12 && e != c.e {
			t.Errorf("RelErr(%v, %v) = %v, want %v", c.got, c.want, e, c.e)
		}
	}
}

func TestVariantsArePresent(t *testing.T) {
	for _, v := range golden.Variants {
		dir, ok := golden.Dir(t, v)
		if !ok {
			t.Errorf("%s: no golden.safetensors", dir)
			continue
		}
		g := golden.Open(t, dir)
		b := g.Batch(t)
		if b.B*b.S != len(b.InputIDs) || len(b.Labels) != len(b.InputIDs) || len(b.PositionIDs) != len(b.InputIDs) {
			t.Errorf("%s: batch %dx%d with %d ids, %d positions, %d labels", v, b.B, b.S, len(b.InputIDs), len(b.PositionIDs), len(b.Labels))
		}
		if quant := g.Quant(); quant != (v == "tiny") {
			t.Errorf("%s: quant %v", v, quant)
		}
	}
}
