//go:build cuda

package cuda

// A per-kernel profile of the work queued between StartProfile and
// StopProfile: every kernel launch, GEMM, memset and device copy is
// bracketed by two CUDA events on the stream, and StopProfile adds up the
// times by name. The events cost a little GPU time each, so profile a step
// apart from the steps you time.

import (
	"fmt"
	"slices"

	"gorgonia.org/cu"
)

// ProfileEntry is the GPU time of one kind of work.
type ProfileEntry struct {
	Name  string  // kernel name, "gemm bf16 MxNxK", "memset", "memcpy"
	Calls int     // how many times it ran
	Ms    float64 // GPU milliseconds in total
}

// Profile is what StopProfile returns.
type Profile struct {
	Entries []ProfileEntry // largest first
	// BusyMs is the sum of the entries; WallMs the time from the first
	// event to the last, so WallMs - BusyMs is time the GPU waited (for
	// launches, host copies or synchronisations).
	BusyMs, WallMs float64
}

type profSpan struct {
	name       string
	start, end int
}

type profiler struct {
	eventPool
	spans []profSpan
}

// eventPool is a reusable set of timing events (the profile's; the
// stall probe's, waits.go).
type eventPool struct {
	op     string // named in errors
	events []cu.Event
	used   int
}

// mark records the pool's next event on the stream and returns its index.
func (p *eventPool) mark(s cu.Stream) int {
	if p.used == len(p.events) {
		ev, err := cu.MakeEvent(cu.DefaultEvent)
		if err != nil {
			panic(&Error{Op: p.op, Err: fmt.Errorf("create event: %w", err)})
		}
		p.events = append(p.events, ev)
	}
	check(p.op, p.events[p.used].Record(s))
	p.used++
	return p.used - 1
}

func (p *eventPool) destroy() {
	for k := range p.events {
		cu.DestroyEvent(&p.events[k])
	}
	p.events = nil
}

// span brackets f with events when profiling.
func (b *Backend) span(name string, f func()) {
	if b.prof == nil {
		f()
		return
	}
	s := b.prof.mark(b.stream)
	f()
	b.prof.spans = append(b.prof.spans, profSpan{name: name, start: s, end: b.prof.mark(b.stream)})
}

// StartProfile starts recording (see Profile).
func (b *Backend) StartProfile() {
	defer b.enter("StartProfile")()
	if b.prof == nil {
		b.prof, b.profPool = b.profPool, nil
	}
	if b.prof == nil {
		b.prof = &profiler{eventPool: eventPool{op: "profile"}}
	}
	b.prof.used, b.prof.spans = 0, b.prof.spans[:0]
}

// StopProfile waits for the recorded work and returns the times.
func (b *Backend) StopProfile() (prof Profile, err error) {
	defer Recover(&err)
	defer b.enter("StopProfile")()
	p := b.prof
	if p == nil {
		return prof, fmt.Errorf("cuda backend: StopProfile without StartProfile")
	}
	check("StopProfile", b.stream.Synchronize())
	byName := map[string]*ProfileEntry{}
	for _, s := range p.spans {
		ms, err := p.events[s.start].Elapsed(p.events[s.end])
		check("StopProfile", err)
		e := byName[s.name]
		if e == nil {
			e = &ProfileEntry{Name: s.name}
			byName[s.name] = e
		}
		e.Calls++
		e.Ms += ms
		prof.BusyMs += ms
	}
	if len(p.spans) > 0 {
		prof.WallMs, err = p.events[p.spans[0].start].Elapsed(p.events[p.spans[len(p.spans)-1].end])
		check("StopProfile", err)
	}
	for _, e := range byName {
		prof.Entries = append(prof.Entries, *e)
	}
	slices.SortFunc(prof.Entries, func(a, c ProfileEntry) int {
		switch {
		case a.Ms > c.Ms:
			return -1
		case a.Ms < c.Ms:
			return 1
		}
		return 0
	})
	// Stop recording; keep the events for the next profile.
	p.used, p.spans = 0, p.spans[:0]
	b.prof, b.profPool = nil, p
	return prof, nil
}
