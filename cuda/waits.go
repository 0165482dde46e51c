//go:build cuda

package cuda

import (
	"fmt"
	"os"

	"gorgonia.org/cu"
)

// waitTimer measures how long the main stream stalls on the prefetch
// stream's dequantizations (issue 8, v21, a development probe:
// OLLAMA_TUNE_CUDA_WAITS=1): awaitSlot records an event on the main
// stream before its wait and one after; the time between them is the
// stall beyond the main stream's own work. The probe's events cost ~2 us a
// wait; no step's numbers change.
type waitTimer struct {
	events []cu.Event // pool, in pairs
	used   int
	shapes []string // each pair's weight shape ("out x in")
}

// newWaitTimer returns the probe where OLLAMA_TUNE_CUDA_WAITS=1, else nil.
func newWaitTimer() *waitTimer {
	if os.Getenv("OLLAMA_TUNE_CUDA_WAITS") != "1" {
		return nil
	}
	return &waitTimer{}
}

func (w *waitTimer) mark(s cu.Stream) {
	if w.used == len(w.events) {
		ev, err := cu.MakeEvent(cu.DefaultEvent)
		if err != nil {
			panic(&Error{Op: "waits", Err: fmt.Errorf("create event: %w", err)})
		}
		w.events = append(w.events, ev)
	}
	check("waits", w.events[w.used].Record(s))
	w.used++
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

func (w *waitTimer) destroy() {
	for k := range w.events {
		cu.DestroyEvent(&w.events[k])
	}
	w.events = nil
}
