//go:build cuda

package cuda

// Page-locked host memory (gorgonia.org/cu has cuMemFreeHost but not
// cuMemAllocHost) and the staged upload of large host buffers through it.

/*
#cgo LDFLAGS: -lcuda
#include <cuda.h>

static int pinned_alloc(void** p, size_t n) { return (int)cuMemAllocHost(p, n); }
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"gorgonia.org/cu"
)

// memAllocHost allocates n bytes of page-locked host memory (the context
// must be current); free it with cu.MemFreeHost.
func memAllocHost(n int64) (unsafe.Pointer, error) {
	var p unsafe.Pointer
	if r := C.pinned_alloc(&p, C.size_t(n)); r != 0 {
		return nil, fmt.Errorf("cuMemAllocHost(%d bytes): CUresult %d", n, int(r))
	}
	return p, nil
}

// stagerChunk is the size of each pinned buffer: large enough that one
// transfer's fixed cost is negligible, small enough that two of them are a
// modest amount of locked memory.
const stagerChunk = 64 << 20

// hostStager uploads host memory (for instance a memory-mapped checkpoint)
// to the device through two pinned buffers: while the GPU copies one
// buffer, the CPUs fill the other (a parallel memcpy, which also takes the
// page faults of a memory mapping on several cores). Copies from pageable
// memory go through the driver's own staging one core at a time, several
// times slower.
type hostStager struct {
	bufs   [2]unsafe.Pointer
	events [2]cu.Event
	used   [2]bool
	next   int
	// what the uploads took (LoadTimes): bytes, the host's copies into
	// the pinned buffers, and its waits for a buffer the GPU still reads
	bytes          int64
	copied, waited time.Duration
}

// newHostStager allocates the pinned buffers (with the context current).
func newHostStager() (*hostStager, error) {
	s := &hostStager{}
	for k := range s.bufs {
		p, err := memAllocHost(stagerChunk)
		if err != nil {
			s.free()
			return nil, err
		}
		s.bufs[k] = p
		ev, err := cu.MakeEvent(cu.DisableTiming)
		if err != nil {
			s.free()
			return nil, fmt.Errorf("create event: %w", err)
		}
		s.events[k] = ev
	}
	return s, nil
}

// upload queues the copy of src to dst on stream. It returns once src has
// been read (src may change afterwards); the device copies finish in
// stream order.
func (s *hostStager) upload(stream cu.Stream, dst cu.DevicePtr, src []byte) error {
	for off := 0; off < len(src); off += stagerChunk {
		k := s.next
		s.next ^= 1
		t0 := time.Now()
		if s.used[k] {
			if err := s.events[k].Synchronize(); err != nil {
				return fmt.Errorf("wait for a staging buffer: %w", err)
			}
		}
		t1 := time.Now()
		n := min(stagerChunk, len(src)-off)
		parallelCopy(unsafe.Slice((*byte)(s.bufs[k]), n), src[off:off+n])
		s.waited += t1.Sub(t0)
		s.copied += time.Since(t1)
		s.bytes += int64(n)
		if err := cu.MemcpyHtoDAsync(dst+cu.DevicePtr(off), s.bufs[k], int64(n), stream); err != nil {
			return fmt.Errorf("copy %d bytes to the GPU: %w", n, err)
		}
		if err := s.events[k].Record(stream); err != nil {
			return fmt.Errorf("record event: %w", err)
		}
		s.used[k] = true
	}
	return nil
}

// free waits for the pending copies and releases the buffers.
func (s *hostStager) free() {
	for k := range s.bufs {
		if s.used[k] {
			s.events[k].Synchronize()
		}
		if s.events[k] != (cu.Event{}) {
			cu.DestroyEvent(&s.events[k])
		}
		if s.bufs[k] != nil {
			cu.MemFreeHost(s.bufs[k])
			s.bufs[k] = nil
		}
	}
}

// parallelCopy is copy(dst, src) split over the CPUs in pieces of at
// least 4 MiB.
func parallelCopy(dst, src []byte) {
	const grain = 4 << 20
	workers := min(runtime.GOMAXPROCS(0), (len(src)+grain-1)/grain)
	if workers <= 1 {
		copy(dst, src)
		return
	}
	piece := (len(src) + workers - 1) / workers
	var wg sync.WaitGroup
	for lo := 0; lo < len(src); lo += piece {
		hi := min(lo+piece, len(src))
		wg.Add(1)
		go func() {
			defer wg.Done()
			copy(dst[lo:hi], src[lo:hi])
		}()
	}
	wg.Wait()
}

// stagerAhead is the hostStager New starts making on another goroutine:
// pinning its 128 MiB of host memory (0.05-0.06 s on an H100 machine) then
// overlaps what comes before a load (the job's preparation) instead of
// the load.
type stagerAhead struct {
	done   chan struct{}
	s      *hostStager // nil: failed (the load goes through pageable memory)
	took   time.Duration
	taken  bool
	waited time.Duration
}

// startStager starts making the stager of the backend's first load.
func (b *Backend) startStager() {
	a := &stagerAhead{done: make(chan struct{})}
	b.stagerAhead = a
	goInContext(b.ctx, a.done, func() {
		t0 := time.Now()
		if s, err := newHostStager(); err == nil {
			a.s = s
		}
		a.took = time.Since(t0)
	})
}

// goInContext runs f on a goroutine of its own, locked to its thread with
// ctx current (CUDA work beside the backend's), and closes done after it;
// f does not run where ctx cannot be made current.
func goInContext(ctx cu.CUContext, done chan struct{}, f func()) {
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if cu.SetCurrentContext(ctx) == nil {
			f()
		}
	}()
}

// takeStager is the stager made ahead for the first load (waiting for it),
// a new one for a later load; nil when there is none (pageable uploads).
func (b *Backend) takeStager() *hostStager {
	if a := b.stagerAhead; a != nil && !a.taken {
		t0 := time.Now()
		<-a.done
		a.taken, a.waited = true, time.Since(t0)
		return a.s
	}
	s, err := newHostStager()
	if err != nil {
		return nil
	}
	return s
}

// freeStagerAhead frees a stager made ahead that no load took (with the
// context current).
func (b *Backend) freeStagerAhead() {
	if a := b.stagerAhead; a != nil && !a.taken {
		<-a.done
		a.taken = true
		if a.s != nil {
			a.s.free()
		}
	}
}
