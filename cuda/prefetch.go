//go:build cuda

package cuda

import (
	"os"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// Prefetching dequantization (issue 8, v7). NF4 dequantization is
// memory-bound and the base GEMMs are compute-bound, so the model tells the
// backend which linears come next (finetune.WeightPrefetcher) and their
// weights are dequantized into the dequantization cache's slots on a second
// stream while the main stream computes. Ordering: the side stream first
// waits for everything queued on the main stream so far (the slots' old
// contents' last readers among it), and each prefetched slot records an
// event that the main stream waits for before it reads or overwrites the
// slot (matrixLD's awaitSlot). The values are the same bits either way.
// OLLAMA_TUNE_CUDA_REFERENCE=prefetch turns it off; profiling does too
// (the profile times one stream).
var prefetchOn = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "prefetch")

// sideStream is the prefetch stream and the event that orders it after the
// main stream.
type sideStream struct {
	s     cu.Stream
	fence cu.Event
	ok    bool
}

// makeStream makes a non-blocking stream, with the greatest scheduling
// priority for the one streamPrio names. v12: the main stream first, so
// that when both streams have blocks waiting the block scheduler serves
// the step's critical path and the prefetch's dequantization takes the
// multiprocessors left over (-0.1 to -0.5 ms a step against the same
// priority for both, H200; the same bits: ordering is by events only).
func makeStream(which string) (cu.Stream, error) {
	if streamPrio == which {
		if _, greatest, err := cu.StreamPriorityRange(); err == nil {
			return cu.MakeStreamWithPriority(greatest, cu.NonBlocking)
		}
	}
	return cu.MakeStream(cu.NonBlocking)
}

// streamPrio is "main" unless OLLAMA_TUNE_CUDA_PRIO says "side" (the
// prefetch stream first) or OLLAMA_TUNE_CUDA_REFERENCE has "prio" (v11:
// both streams at the default priority).
var streamPrio = func() string {
	if envHas("OLLAMA_TUNE_CUDA_REFERENCE", "prio") {
		return ""
	}
	if v := os.Getenv("OLLAMA_TUNE_CUDA_PRIO"); v != "" {
		return v
	}
	return "main"
}()

// ensureSide makes the side stream on first use.
func (b *Backend) ensureSide(op string) {
	if b.side.ok {
		return
	}
	s, err := makeStream("side")
	check(op, err)
	ev, err := cu.MakeEvent(cu.DisableTiming)
	if err != nil {
		s.Destroy()
		check(op, err)
	}
	b.side = sideStream{s: s, fence: ev, ok: true}
}

// releaseSide waits for and destroys the side stream (Close).
func (b *Backend) releaseSide() {
	if !b.side.ok {
		return
	}
	b.side.s.Synchronize()
	b.side.s.Destroy()
	cu.DestroyEvent(&b.side.fence)
	b.side = sideStream{}
}

// launchSide is launch on the side stream (no profiling).
func (b *Backend) launchSide(op, name string, grid [3]int, threads, smem int, args ...uint64) {
	b.launchOn(b.side.s, false, op, name, name, grid, threads, smem, args...)
}

var _ finetune.WeightPrefetcher = (*Backend)(nil)

// PrefetchLinears (finetune.WeightPrefetcher) queues the dequantization of
// the linears' NF4 weights (at the row stride their next LinearForward or
// LinearBackward asks for) into their cache slots on the side stream.
func (b *Backend) PrefetchLinears(ls ...*finetune.Linear) {
	const op = "PrefetchLinears"
	defer b.enter(op)()
	if !prefetchOn || b.prof != nil || b.dequantMax <= 0 {
		return
	}
	fenced := false
	for _, l := range ls {
		if l == nil {
			continue
		}
		w := cudaW(l.W, op)
		if w.q == nil || w.g != nil {
			continue
		}
		ld := b.linearLD(w, l)
		bytes := b.half.elem() * int64(w.out) * int64(ld)
		if !b.dequantLDOK(w, ld) || w.deq != nil || b.keepRoom(bytes) {
			continue // kept, or to be kept at its first use (keptDequant)
		}
		s := b.dequantSlotLD(w, ld, bytes, op, true)
		if s == nil || s.w == w {
			continue
		}
		if !fenced {
			b.ensureSide(op)
			check(op, b.side.fence.Record(b.stream))
			check(op, b.side.s.Wait(b.side.fence, 0))
			fenced = true
		}
		if !s.hasEv {
			ev, err := cu.MakeEvent(cu.DisableTiming)
			check(op, err)
			s.ready, s.hasEv = ev, true
		}
		// A prefetch still pending in s was queued on the side stream
		// before this one: the stream's order keeps them apart.
		s.w, s.kept = w, false
		b.dequantInto(op, w, s.ptr, ld, true)
		check(op, s.ready.Record(b.side.s))
		s.pending = true
	}
}
