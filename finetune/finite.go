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

// check records t (rows of the batch's tokens) when it is the first
// tensor of the pass with a non-finite value.
func (fc *finiteCheck) check(what string, t Tensor) {
	if fc == nil || fc.err != nil || t == nil {
		return
	}
	v := fc.m.B.Download(t)
	bad, first := 0, -1
	for k, x := range v {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			if first < 0 {
				first = k
			}
			bad++
		}
	}
	if bad == 0 {
		return
	}
	T := fc.batch.B * fc.batch.S
	msg := fmt.Sprintf("%s: %d of %d values are not finite; the first, %v, at index %d", what, bad, len(v), v[first], first)
	if T > 0 && len(v)%T == 0 {
		w := len(v) / T
		tok := first / w
		r, s := tok/fc.batch.S, tok%fc.batch.S
		msg += fmt.Sprintf(" (row %d, position %d: token id %d, position id %d, label %d; feature %d of %d)", r, s,
			fc.batch.InputIDs[tok], fc.batch.PositionIDs[tok], fc.batch.Labels[tok], first%w, w)
		var rows []string
		seen := map[int]bool{}
		for k, x := range v {
			if (math.IsNaN(float64(x)) || math.IsInf(float64(x), 0)) && !seen[k/w] && len(rows) < 8 {
				seen[k/w] = true
				rows = append(rows, fmt.Sprintf("%d/%d", (k/w)/fc.batch.S, (k/w)%fc.batch.S))
			}
		}
		msg += "; rows/positions " + strings.Join(rows, ", ")
	}
	fc.err = fmt.Errorf("non-finite values (OLLAMA_TUNE_CHECK_FINITE): %s", msg)
}
