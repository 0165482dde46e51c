package finetune

import (
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/data"
)

// The trainer's row-per-sequence layout of a padding-free batch
// (data.Collator.RowPerSequence) trains exactly what TRL's single
// flattened row trains: the same loss and LoRA gradients (dropout off; to
// float32 rounding: the sums run in another order).
func TestRowPerSequenceEqualsFlattenedRow(t *testing.T) {
	seqs := []data.Sequence{
		{InputIDs: []int32{1, 5, 9, 3, 7, 7, 20}, CompletionMask: []uint8{0, 1, 1, 0, 1, 1, 1}, SeqLengths: []int{3, 4}},
		{InputIDs: []int32{4, 8, 15, 16, 22}, CompletionMask: []uint8{1, 1, 1, 1, 1}, SeqLengths: []int{5}},
		{InputIDs: []int32{2, 6, 11}, CompletionMask: []uint8{0, 1, 1}, SeqLengths: []int{1, 2}},
	}
	for _, completionOnly := range []bool{true, false} {
		c := data.Collator{Pad: 0, PaddingFree: true, CompletionOnlyLoss: completionOnly}
		fb := c.Collate(seqs)
		c.RowPerSequence = true
		rb := c.Collate(seqs)
		flat, rows := Batch(fb), Batch(rb)
		b := testBackend()
		m := testModel(t, b, ModelOptions{Quantize: true, DoubleQuant: true, LoRA: allLinear(4, 8, 0)})
		l1, g1 := lossAndGrads(t, m, &flat, 3)
		l2, g2 := lossAndGrads(t, m, &rows, 3)
		if e := (l1 - l2) / l1; e > 1e-6 || e < -1e-6 {
			t.Errorf("completion-only %v: loss %v in rows, %v in the flattened row", completionOnly, l2, l1)
		}
		for name, g := range g1 {
			want := make([]float64, len(g))
			for k, v := range g {
				want[k] = float64(v)
			}
			checkRel(t, name, g2[name], want, 1e-5)
		}
	}
}

// A batch's NextLabels must have one entry a row, each IgnoreIndex or in
// the vocabulary: a clear error otherwise.
func TestBatchNextLabelsAreValidated(t *testing.T) {
	m := testModel(t, testBackend(), ModelOptions{LoRA: allLinear(2, 4, 0)})
	for _, c := range []struct {
		next []int32
		frag string
	}{
		{[]int32{5}, "need 2 next labels, got 1"},
		{[]int32{5, 1 << 20}, "the label after row 1"},
	} {
		b := testBatch()
		b.NextLabels = c.next
		if _, _, _, err := m.Forward(b, false, 0); err == nil || !strings.Contains(err.Error(), c.frag) {
			t.Errorf("next labels %v: %v, want %q", c.next, err, c.frag)
		}
	}
	b := testBatch()
	b.NextLabels = []int32{5, IgnoreIndex}
	if got := b.Targets(); got[7] != 5 || got[15] != IgnoreIndex {
		t.Errorf("targets %v: the last of row 0 should be 5", got)
	}
}
