//go:build cuda

package cuda

import (
	"fmt"
	"os"
	"strconv"
	"time"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// The activation stash (finetune.ActivationStasher; issue 8, v16): under
// gradient checkpointing the model stashes qkv_proj's and gate_up_proj's
// outputs of the layers whose outputs fit in Model.CheckpointKeepBytes,
// and the backward's recompute of those layers takes them back instead of
// running the two largest GEMMs again (~220 us a Phi-3-mini layer on an
// H100 for 52 MB in bfloat16).
//
// Where the values go: every hostEvery-th output of a size to page-
// locked host memory (host entries, which cost the budget only a staging
// buffer a size, made first), the others to device memory while the
// budget lasts (device entries), the rest nowhere (recomputed); where
// the budget holds every output of a step (PrepareStash says what a step
// offers), all of them on the device and none in host memory. The
// step's forward produces ~52 MB of those outputs a Phi-3-mini layer
// every ~0.53 ms and PCIe moves ~55 GB/s a direction, so about every
// other one fits through it. Every decision is made at a key's first
// Stash, never from timing: the results are the same bits whatever was
// stashed where. Measured (BENCHMARKS.md, v16): -2.3 to -3.0 ms a step
// at 0.34 GB, 3.48 GiB in all. The page-locked memory (~0.4 s for a
// Phi-3-mini step) is made beside the model's load where the trainer says
// what a step will stash (PrepareStash).
//
// Streams: device copies and the staging copies run on s, host transfers
// on pcie; both are ordered against the main stream by events only. A
// Stash is queued after the work that wrote the tensor, and the tensor's
// next use on the main stream waits for the copy out of it (so the next
// layer's GEMM does not overwrite it early: a host entry's tensor is
// copied to its staging buffer first, which the next such Stash waits
// for). An Unstash is queued after the work queued so far (the layer
// above's last read of the buffer), and the tensor's next use waits for
// it. PrefetchStash moves a host entry's values to its staging buffer
// ahead of the Unstash (the model asks two layers ahead), so that an
// Unstash is a device copy.

// stash is the backend's ActivationStasher state.
type stash struct {
	s, pcie cu.Stream
	ok      bool     // streams made
	fence   cu.Event // the main stream's point a copy waits for
	budget  int64
	used    int64 // device bytes: device entries and staging buffers
	entries map[int]*stashEntry
	staging map[int64]*stagingBuf // by size in bytes
	// hostBytes: page-locked bytes of host entries.
	hostBytes int64
	// pool: page-locked buffers made ahead (PrepareStash) for the first
	// step's host entries; hostAllocs counts those made in a step instead.
	pool       *hostPool
	hostAllocs int
	poolTook   time.Duration // making pool's buffers (the trainer's log)
	// stepBytes: the bytes of every output a step offers, as PrepareStash
	// was told (0: not told). A budget that holds them all keeps them all
	// on the device (hostless): no staging buffers, no host turns, no
	// page-locked memory, no PCIe.
	stepBytes int64
}

// hostless says whether the budget holds every output a step offers
// (PrepareStash's sizes), so that host entries would only cost PCIe.
func (st *stash) hostless() bool { return st.stepBytes > 0 && st.stepBytes <= st.budget }

// hostPool is page-locked memory made on a goroutine of its own, beside
// the model's load (PrepareStash): bufs[size] are free buffers of size
// bytes, ready once done is closed.
type hostPool struct {
	done chan struct{}
	bufs map[int64][]unsafe.Pointer
	took time.Duration
}

// stashEntry is one key's stashed values, in device memory (ptr) or
// page-locked host memory (host), or neither (refused: the key's outputs
// are recomputed, decided at its first Stash so that every step stashes
// the same keys where it did: the host entries' pattern holds).
type stashEntry struct {
	b       *Backend
	refused bool
	ptr     cu.DevicePtr
	host    unsafe.Pointer
	bytes   int64       // allocated
	size    int64       // stashed: an epoch's last, smaller batch takes less
	sb      *stagingBuf // a host entry's staging buffer
	n       int         // values stashed
	half    bool        // held in bfloat16 (Tensor.half): 2n bytes, else 4n
	done    cu.Event
	// staged: a host entry's values are in its staging buffer (queued by
	// PrefetchStash), for the next Unstash.
	staged bool
}

// stagingBuf is the device buffer host entries of one size pass through.
type stagingBuf struct {
	ptr    cu.DevicePtr
	bytes  int64
	free   cu.Event    // after the last copy that reads it
	loaded cu.Event    // after a prefetch's transfer into it
	used   bool        // free has been recorded
	owner  *stashEntry // whose prefetched values it holds, nil
	turn   int         // outputs of its size seen (hostEvery)
	phase  int         // buffers made before it: sizes take turns apart
}

// stashHostEvery: a size's host entries are every stashHostEvery-th of
// the outputs past the device budget (0: none); -1: by compute type
// (Backend.hostEvery). OLLAMA_TUNE_CUDA_STASH_HOST sets it (a development
// switch; the tests set it too).
var stashHostEvery = func() int {
	if v, err := strconv.Atoi(os.Getenv("OLLAMA_TUNE_CUDA_STASH_HOST")); err == nil && v >= 0 {
		return v
	}
	return -1
}()

// hostEvery is the host entries' share: finetune.StashHostEvery's for the
// compute type (the plan's estimate counts the same), unless
// stashHostEvery says otherwise. Every other output fits through PCIe in
// time; under float16 every other one kept the main stream waiting (v26,
// H200: 0.0755 s a step at 0.34 GB against 0.0725 with nothing kept;
// every third 0.0706, every fourth 0.0708). Float32 compute's layers take
// ~10x longer, and every other one fits.
func (b *Backend) hostEvery() int {
	if stashHostEvery >= 0 {
		return stashHostEvery
	}
	return finetune.StashHostEvery(b.dtype)
}

// stashHostOnly leaves out the device entries (tests).
var stashHostOnly = false

// wait makes the main stream wait for e's last copy (Tensor.busy).
func (e *stashEntry) wait(op string) {
	check(op, e.b.stream.Wait(e.done, 0))
}

var _ finetune.ActivationStasher = (*Backend)(nil)

// SetStashBudget (finetune.ActivationStasher) bounds the stash's device
// bytes; another budget than before frees it all, to decide anew, and 0
// also forgets what PrepareStash said a step offers.
func (b *Backend) SetStashBudget(bytes int64) {
	const op = "SetStashBudget"
	defer b.enter(op)()
	bytes = max(bytes, 0)
	if bytes != b.stash.budget {
		b.freeStash()
	}
	b.stash.budget = bytes
	if bytes == 0 {
		b.stash.stepBytes = 0 // the stash is off: PrepareStash's sizes are forgotten too
	}
}

// Stash (finetune.ActivationStasher) copies t's values (bfloat16 ones as
// they are) to key's entry: in device memory while the budget lasts, else
// perhaps through a staging buffer to host memory; false when neither.
func (b *Backend) Stash(key int, t finetune.Tensor) bool {
	const op = "Stash"
	defer b.enter(op)()
	ct := unwrapRaw(t, kindF32, op)
	ct.readable(op)
	if ct.zero != nil {
		ct.zero.fillZero(ct, op)
	}
	half := ct.half != nil
	size := ct.bytes()
	if half {
		size = 2 * int64(ct.n)
	}
	st := &b.stash
	e := st.entries[key]
	if e != nil && (e.bytes < size || e.staged) {
		// a larger batch than the entry's; or staged values nobody took
		// back (a smaller one, an epoch's last, takes the entry as it is)
		b.dropEntry(key)
		e = nil
	}
	if e == nil {
		e = b.newEntry(op, size)
		if st.entries == nil {
			st.entries = map[int]*stashEntry{}
		}
		st.entries[key] = e
	}
	if e.refused {
		return false
	}
	e.n, e.half, e.size = ct.n, half, size
	b.stashStart(op)
	if e.host == nil {
		check(op, cu.MemcpyDtoDAsync(e.ptr, ct.ptr, size, st.s))
		check(op, e.done.Record(st.s))
	} else {
		// tensor -> staging (s), staging -> host (pcie)
		sb := e.sb
		if o := sb.owner; o != nil { // staged values nobody took back
			o.staged, sb.owner = false, nil
		}
		if sb.used {
			check(op, st.s.Wait(sb.free, 0))
		}
		check(op, cu.MemcpyDtoDAsync(sb.ptr, ct.ptr, size, st.s))
		check(op, e.done.Record(st.s))
		check(op, st.pcie.Wait(e.done, 0))
		check(op, cu.MemcpyDtoHAsync(e.host, sb.ptr, size, st.pcie))
		check(op, sb.free.Record(st.pcie))
		sb.used = true
	}
	ct.busy = e // its next writer waits for the copy out of it
	return true
}

// newEntry makes an entry for size bytes: device memory within the
// budget, else a host entry where its size's staging buffer fits (or is
// there) and it is this size's turn; else a refused one.
func (b *Backend) newEntry(op string, size int64) *stashEntry {
	e := b.newEntryMem(op, size)
	if e == nil {
		return &stashEntry{b: b, bytes: size, refused: true}
	}
	return e
}

// newEntryMem is newEntry's entry with memory, or nil. A size's staging
// buffer comes first (while the budget has room for it), then every
// hostEvery-th output of the size goes to host memory and the others
// to device memory while the budget lasts: PCIe carries its share from
// the first layer on, and the budget's outputs fill the turns between.
// The sizes take their turns in different layers (phase: qkv_proj's
// outputs of layers 0, 2, 4, ... and gate_up_proj's of 1, 3, 5, ... with
// every other), so that each layer's transfer is about the same.
func (b *Backend) newEntryMem(op string, size int64) *stashEntry {
	st := &b.stash
	e := &stashEntry{b: b, bytes: size}
	sb := st.staging[size]
	every := b.hostEvery()
	if sb == nil && every > 0 && !st.hostless() && st.used+size <= st.budget {
		sb = b.newStaging(size)
	}
	host := false
	if sb != nil {
		sb.turn++
		host = hostTurn(sb.turn, sb.phase, every)
	}
	switch {
	case host:
		h, err := b.hostAlloc(size)
		if err != nil {
			return nil
		}
		e.host, e.sb = h, sb
		st.hostBytes += size
	case !stashHostOnly && st.used+size <= st.budget:
		p, err := b.rawAlloc(size, "the activation stash")
		if err != nil {
			return nil // a speed-up, not a need: recompute instead
		}
		e.ptr = p
		st.used += size
	default:
		return nil
	}
	ev, err := cu.MakeEvent(cu.DisableTiming)
	if err != nil {
		b.freeEntryMem(e)
		return nil
	}
	e.done = ev
	return e
}

// hostTurn says whether a size's turn-th output (from 1) goes to host
// memory, its staging buffer made phase-th (newEntryMem's rule, which
// PrepareStash follows ahead).
func hostTurn(turn, phase, every int) bool { return (turn-1+phase)%every == 0 }

var _ finetune.StashPreparer = (*Backend)(nil)

// PrepareStash (finetune.StashPreparer) starts making the page-locked
// buffers of the host entries the first step will make: by newEntryMem's
// turns (every hostEvery-th output of each size, the sizes' phases
// in the order they first come; none for a size whose staging buffer
// would not fit the budget). Made on a goroutine of its own, beside the
// model's load: made in the first step instead, the ~0.8 GB of a
// Phi-3-mini step took 0.44 s of it (H200, v17). A buffer no entry takes
// is freed at the first Unstash, once the forward has decided every entry.
// A budget that holds every one of sizes makes no host entries at all
// (hostless): every output is kept on the device.
func (b *Backend) PrepareStash(budget int64, sizes []int64) {
	const op = "PrepareStash"
	defer b.enter(op)()
	st := &b.stash
	if st.pool != nil || len(st.entries) > 0 {
		return
	}
	st.stepBytes = 0
	for _, size := range sizes {
		st.stepBytes += size
	}
	every := b.hostEvery()
	if every <= 0 || budget <= 0 || st.stepBytes <= budget {
		return
	}
	phase, turn, counts := map[int64]int{}, map[int64]int{}, map[int64]int{}
	var order []int64
	var staging int64
	for _, size := range sizes {
		if _, ok := phase[size]; !ok {
			if staging+size > budget {
				phase[size] = -1 // no staging buffer: no host entries of this size
			} else {
				phase[size], staging = len(order), staging+size
				order = append(order, size)
			}
		}
		if phase[size] < 0 {
			continue
		}
		turn[size]++
		if hostTurn(turn[size], phase[size], every) {
			counts[size]++
		}
	}
	p := &hostPool{done: make(chan struct{}), bufs: map[int64][]unsafe.Pointer{}}
	st.pool = p
	goInContext(b.ctx, p.done, func() {
		t0 := time.Now()
		defer func() { p.took = time.Since(t0) }()
		for _, size := range order {
			for range counts[size] {
				h, err := memAllocHost(size)
				if err != nil {
					return // the step makes what is missing, or does without
				}
				p.bufs[size] = append(p.bufs[size], h)
			}
		}
	})
}

// hostAlloc is a page-locked buffer of size bytes for a host entry: one
// PrepareStash made (waiting for it), else a new one.
func (b *Backend) hostAlloc(size int64) (unsafe.Pointer, error) {
	st := &b.stash
	if p := st.pool; p != nil {
		<-p.done
		if l := p.bufs[size]; len(l) > 0 {
			p.bufs[size] = l[:len(l)-1]
			return l[len(l)-1], nil
		}
	}
	st.hostAllocs++
	return memAllocHost(size)
}

// freePool frees the buffers PrepareStash made that no entry took.
func (b *Backend) freePool() {
	p := b.stash.pool
	if p == nil {
		return
	}
	<-p.done
	for _, l := range p.bufs {
		for _, h := range l {
			cu.MemFreeHost(h)
		}
	}
	b.stash.pool, b.stash.poolTook = nil, p.took
}

// newStaging makes size's staging buffer (nil when the memory is not
// there).
func (b *Backend) newStaging(size int64) *stagingBuf {
	st := &b.stash
	p, err := b.rawAlloc(size, "the activation stash's staging buffer")
	if err != nil {
		return nil
	}
	sb := &stagingBuf{ptr: p, bytes: size, phase: len(st.staging)}
	if sb.free, err = cu.MakeEvent(cu.DisableTiming); err == nil {
		if sb.loaded, err = cu.MakeEvent(cu.DisableTiming); err != nil {
			cu.DestroyEvent(&sb.free)
		}
	}
	if err != nil {
		b.rawFree(p, size)
		return nil
	}
	st.used += size
	if st.staging == nil {
		st.staging = map[int64]*stagingBuf{}
	}
	st.staging[size] = sb
	return sb
}

// StashReport says what the stash holds (the trainer logs it after the
// first step).
func (b *Backend) StashReport() string {
	st := &b.stash
	var dev, host int64
	kept := 0
	for _, e := range st.entries {
		switch {
		case e.refused:
			continue
		case e.host != nil:
			host += e.bytes
		default:
			dev += e.bytes
		}
		kept++
	}
	r := fmt.Sprintf("%.2f GB of activations kept on the device and %.2f GB in host memory, through %.2f GB of staging buffers (%d of %d outputs; the others are recomputed)",
		float64(dev)/1e9, float64(host)/1e9, float64(st.used-dev)/1e9, kept, len(st.entries))
	if st.poolTook > 0 {
		r += fmt.Sprintf("; the host memory was made beside the load in %.2f s", st.poolTook.Seconds())
	}
	return r
}

// PrefetchStash (finetune.ActivationStasher) queues the transfer of a host
// entry's values to its staging buffer (a no-op for a device entry, an
// entry already staged, or while the buffer holds another entry's).
func (b *Backend) PrefetchStash(key int) {
	const op = "PrefetchStash"
	defer b.enter(op)()
	st := &b.stash
	e := st.entries[key]
	if e == nil || e.host == nil || e.staged {
		return
	}
	sb := e.sb
	if sb.owner != nil {
		return
	}
	if sb.used {
		check(op, st.pcie.Wait(sb.free, 0))
	}
	check(op, cu.MemcpyHtoDAsync(sb.ptr, e.host, e.size, st.pcie))
	check(op, sb.loaded.Record(st.pcie))
	e.staged, sb.owner = true, e
}

// Unstash (finetune.ActivationStasher) copies key's values back into t,
// which then holds them as they were stashed (bfloat16 ones in bfloat16).
func (b *Backend) Unstash(key int, t finetune.Tensor) {
	const op = "Unstash"
	defer b.enter(op)()
	ct := unwrapRaw(t, kindF32, op)
	st := &b.stash
	e := st.entries[key]
	switch {
	case e == nil || e.refused:
		panic(&Error{Op: op, Err: fmt.Errorf("nothing is stashed under key %d", key)})
	case e.n != ct.n:
		panic(&Error{Op: op, Err: fmt.Errorf("key %d holds %d values, the tensor %v %d", key, e.n, ct.shape, ct.n)})
	}
	if st.pool != nil { // the forward has decided every entry
		b.freePool()
	}
	size := ct.bytes()
	ct.zero, ct.half = nil, nil
	if e.half {
		size, ct.half = 2*int64(ct.n), b
	}
	b.touch(ct)
	b.stashStart(op)
	switch {
	case e.host == nil:
		check(op, cu.MemcpyDtoDAsync(ct.ptr, e.ptr, size, st.s))
		check(op, e.done.Record(st.s))
	case e.staged:
		sb := e.sb
		check(op, st.s.Wait(sb.loaded, 0))
		check(op, cu.MemcpyDtoDAsync(ct.ptr, sb.ptr, size, st.s))
		check(op, e.done.Record(st.s))
		check(op, sb.free.Record(st.s))
		e.staged, sb.owner = false, nil
	default: // not prefetched: straight from host memory
		check(op, st.pcie.Wait(st.fence, 0))
		check(op, cu.MemcpyHtoDAsync(ct.ptr, e.host, size, st.pcie))
		check(op, e.done.Record(st.pcie))
	}
	ct.busy = e // its next reader waits for the copy into it
}

// stashStart makes the streams on first use and has s wait for the work
// queued on the main stream so far.
func (b *Backend) stashStart(op string) {
	st := &b.stash
	if !st.ok {
		s, err := makeStream("stash")
		check(op, err)
		pcie, err := makeStream("stash")
		if err != nil {
			s.Destroy()
			check(op, err)
		}
		ev, err := cu.MakeEvent(cu.DisableTiming)
		if err != nil {
			s.Destroy()
			pcie.Destroy()
			check(op, err)
		}
		st.s, st.pcie, st.fence, st.ok = s, pcie, ev, true
	}
	check(op, st.fence.Record(b.stream))
	check(op, st.s.Wait(st.fence, 0))
}

// syncStash waits for the stash's copies (rawFree: they may read or write
// what is freed).
func (b *Backend) syncStash() {
	if b.stash.ok {
		b.stash.s.Synchronize()
		b.stash.pcie.Synchronize()
	}
}

// dropEntry frees key's entry.
func (b *Backend) dropEntry(key int) {
	e := b.stash.entries[key]
	if e == nil {
		return
	}
	if e.staged {
		e.sb.owner = nil
	}
	b.freeEntryMem(e)
	if !e.refused {
		cu.DestroyEvent(&e.done)
	}
	delete(b.stash.entries, key)
}

// freeEntryMem frees e's memory (after the copies in flight).
func (b *Backend) freeEntryMem(e *stashEntry) {
	st := &b.stash
	if e.ptr != 0 {
		b.rawFree(e.ptr, e.bytes) // waits for the streams
		st.used -= e.bytes
		e.ptr = 0
	}
	if e.host != nil {
		b.syncStash()
		cu.MemFreeHost(e.host)
		st.hostBytes -= e.bytes
		e.host = nil
	}
}

// freeStash frees every entry and staging buffer.
func (b *Backend) freeStash() {
	st := &b.stash
	for k := range st.entries {
		b.dropEntry(k)
	}
	for k, sb := range st.staging {
		b.rawFree(sb.ptr, sb.bytes)
		st.used -= sb.bytes
		cu.DestroyEvent(&sb.free)
		cu.DestroyEvent(&sb.loaded)
		delete(st.staging, k)
	}
}

// releaseStash frees the stash and its streams (Close).
func (b *Backend) releaseStash() {
	b.freeStash()
	b.freePool()
	if b.stash.ok {
		b.stash.s.Destroy()
		b.stash.pcie.Destroy()
		cu.DestroyEvent(&b.stash.fence)
	}
	b.stash = stash{}
}
