package finetune

import (
	"fmt"
	"math"
	"os"
	"strings"
)

// Finite checks: with OLLAMA_TUNE_CHECK_FINITE=1 (or Model.CheckFinite),
// Forward and Backward download every layer's activations and gradients
// and stop at the first non-finite value, naming the layer, the tensor,
// the row and position: torch.autograd.detect_anomaly's job, for "the loss
// or the gradient norm is not finite" errors. Slow (a download per tensor
// and layer); off by default.

var checkFiniteEnv = os.Getenv("OLLAMA_TUNE_CHECK_FINITE") != ""

// finiteCheck collects the first non-finite tensor of a pass.
type finiteCheck struct {
	m     *Model
	batch *Batch
	err   error
}

func (m *Model) newFiniteCheck(batch *Batch) *finiteCheck {
	if !m.CheckFinite && !checkFiniteEnv {
		return nil
	}
	return &finiteCheck{m: m, batch: batch}
}

// nonFinite reports a NaN or an infinity.
func nonFinite(x float32) bool { return math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) }

// check records t (rows of the batch's tokens) when it is the first
// tensor of the pass with a non-finite value.
func (fc *finiteCheck) check(what string, t Tensor) {
	if fc == nil || fc.err != nil || t == nil {
		return
	}
	v := fc.m.B.Download(t)
	T := fc.batch.B * fc.batch.S
	w := 0 // values a token, when t is one row a token
	if T > 0 && len(v)%T == 0 {
		w = len(v) / T
	}
	bad, first, last := 0, -1, -1
	var tokens []string // the first few tokens holding one, as row/position
	for k, x := range v {
		if !nonFinite(x) {
			continue
		}
		if first < 0 {
			first = k
		}
		bad++
		if w > 0 && k/w != last && len(tokens) < 8 {
			last = k / w
			tokens = append(tokens, fmt.Sprintf("%d/%d", last/fc.batch.S, last%fc.batch.S))
		}
	}
	if bad == 0 {
		return
	}
	msg := fmt.Sprintf("%s: %d of %d values are not finite; the first, %v, at index %d", what, bad, len(v), v[first], first)
	if w > 0 {
		tok := first / w
		msg += fmt.Sprintf(" (row %d, position %d: token id %d, position id %d, label %d; feature %d of %d); rows/positions %s",
			tok/fc.batch.S, tok%fc.batch.S, fc.batch.InputIDs[tok], fc.batch.PositionIDs[tok], fc.batch.Labels[tok], first%w, w,
			strings.Join(tokens, ", "))
	}
	fc.err = fmt.Errorf("non-finite values (OLLAMA_TUNE_CHECK_FINITE): %s", msg)
}
