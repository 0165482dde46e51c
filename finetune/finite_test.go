package finetune

import (
	"math"
	"strings"
	"testing"
)

// With CheckFinite, a NaN planted in one layer's post-attention norm
// weight is reported at that layer and tensor, with its row and position,
// instead of surfacing later as a non-finite loss or gradient norm.
func TestCheckFiniteNamesTheFirstNonFiniteActivation(t *testing.T) {
	b := testBackend()
	m := testModel(t, b, ModelOptions{LoRA: allLinear(2, 4, 0)})
	batch := testBatch()
	m.CheckFinite = true
	if _, _, _, err := m.Forward(batch, true, 1); err != nil {
		t.Fatalf("finite model: %v", err)
	}
	if err := m.Backward(); err != nil {
		t.Fatalf("finite model, backward: %v", err)
	}
	w := b.Download(m.Layers[1].PostAttnNorm)
	w[3] = float32(math.NaN())
	b.Upload(m.Layers[1].PostAttnNorm, w)
	_, _, _, err := m.Forward(batch, true, 1)
	if err == nil {
		t.Fatal("Forward with a NaN norm weight: no error")
	}
	for _, want := range []string{"layer 1 post_attention_layernorm", "row 0, position 0", "feature 3"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	// Off, the same forward runs (and the NaN shows in the loss).
	m.CheckFinite = false
	loss, _, _, err := m.Forward(batch, false, 1)
	if err != nil || !math.IsNaN(loss) {
		t.Errorf("unchecked forward: loss %v, error %v; want NaN, nil", loss, err)
	}
}
