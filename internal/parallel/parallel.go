// Package parallel splits a loop over [0, n) into contiguous ranges run on
// their own goroutines: the one helper behind the CPU kernels, the
// optimizers, NF4 and blockwise quantization, and dtype conversion.
package parallel

import (
	"runtime"
	"sync"
)

// For is ForWorkers on GOMAXPROCS goroutines.
func For(n, grain int, body func(lo, hi int)) {
	ForWorkers(runtime.GOMAXPROCS(0), n, grain, body)
}

// ForWorkers runs body over [0, n) split into at most workers contiguous
// ranges, each on its own goroutine, and returns when all are done. Every
// range but the last is a multiple of grain items, so grain is both the
// smallest piece worth a goroutine and the alignment a blocked kernel
// needs. With one range (n <= grain, or workers <= 1) body runs on the
// caller's goroutine; with n <= 0 it does not run.
func ForWorkers(workers, n, grain int, body func(lo, hi int)) {
	if n <= 0 {
		return
	}
	grain = max(grain, 1)
	chunks := (n + grain - 1) / grain
	workers = min(workers, chunks)
	if workers <= 1 {
		body(0, n)
		return
	}
	per := (chunks + workers - 1) / workers * grain
	var wg sync.WaitGroup
	for lo := 0; lo < n; lo += per {
		hi := min(lo+per, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			body(lo, hi)
		}()
	}
	wg.Wait()
}
