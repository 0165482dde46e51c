//go:build cuda

package cuda

import (
	"fmt"
	"os"
)

// waitTimer measures how long the main stream stalls on the prefetch
// stream's dequantizations (issue 8, v21, a development probe:
// OLLAMA_TUNE_CUDA_WAITS=1): awaitSlot records an event on the main
// stream before its wait and one after; the time between them is the
// stall beyond the main stream's own work. The probe's events cost ~2 us a
// wait; no step's numbers change.
type waitTimer struct {
	eventPool          // in pairs: before and after a wait
	shapes    []string // each pair's weight shape ("out x in")
}

// newWaitTimer returns the probe where OLLAMA_TUNE_CUDA_WAITS=1, else nil.
func newWaitTimer() *waitTimer {
	if os.Getenv("OLLAMA_TUNE_CUDA_WAITS") != "1" {
		return nil
	}
	return &waitTimer{eventPool: eventPool{op: "waits"}}
}

// MainStreamWaits returns the main stream's stalls on the prefetch stream
// since the last call (their number, total milliseconds and milliseconds
// by weight shape) and starts again; 0, 0, nil without
// OLLAMA_TUNE_CUDA_WAITS=1. It synchronises.
func (b *Backend) MainStreamWaits() (n int, ms float64, byShape map[string]float64, err error) {
	defer Recover(&err)
	defer b.enter("MainStreamWaits")()
	w := b.waits
	if w == nil {
		return 0, 0, nil, nil
	}
	check("MainStreamWaits", b.stream.Synchronize())
	byShape = map[string]float64{}
	for k := 0; k+1 < w.used; k += 2 {
		t, err := w.events[k].Elapsed(w.events[k+1])
		if err != nil {
			return 0, 0, nil, fmt.Errorf("MainStreamWaits: %w", err)
		}
		ms += float64(t)
		byShape[w.shapes[k/2]] += float64(t)
		n++
	}
	w.used, w.shapes = 0, w.shapes[:0]
	return n, ms, byShape, nil
}
