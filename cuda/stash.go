//go:build cuda

package cuda

import (
	"fmt"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// The activation stash (finetune.ActivationStasher; issue 8, v16): under
// gradient checkpointing the model stashes qkv_proj's and gate_up_proj's
// outputs of the layers whose outputs fit in Model.CheckpointKeepBytes,
// and the backward's recompute of those layers takes them back instead of
// running the two largest GEMMs again (~220 us a Phi-3-mini layer on an
// H100 for 52 MB in bfloat16). The copies run on a stream of their own,
// beside the step: a Stash is queued after the work that wrote the tensor
// and the tensor's next use on the main stream waits for the copy (so
// the next layer's GEMM does not overwrite it early); an Unstash is
// queued after the work queued so far (the layer above's last read of
// the buffer) and the tensor's next use waits for it.

// stash is the backend's ActivationStasher state.
type stash struct {
	s       cu.Stream
	ok      bool // s made
	budget  int64
	used    int64 // bytes of entries
	entries map[int]*stashEntry
	fence   cu.Event // the main stream's point a copy waits for
}

// stashEntry is one key's stashed values.
type stashEntry struct {
	b     *Backend
	ptr   cu.DevicePtr
	bytes int64 // allocated
	n     int   // values stashed
	half  bool  // held in bfloat16 (Tensor.half): 2n bytes, else 4n
	done  cu.Event
}

// wait makes the main stream wait for e's last copy (Tensor.busy).
func (e *stashEntry) wait(op string) {
	check(op, e.b.stream.Wait(e.done, 0))
}

var _ finetune.ActivationStasher = (*Backend)(nil)

// SetStashBudget (finetune.ActivationStasher) bounds the stash's bytes; a
// smaller budget than it holds frees it all (0 too).
func (b *Backend) SetStashBudget(bytes int64) {
	const op = "SetStashBudget"
	defer b.enter(op)()
	if bytes < b.stash.used {
		b.freeStash()
	}
	b.stash.budget = max(bytes, 0)
}

// Stash (finetune.ActivationStasher) copies t's values (bfloat16 ones as
// they are) to key's entry, which grows within the budget; false when
// they do not fit or the memory is not there.
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
	if e == nil || e.bytes < size {
		var old int64
		if e != nil {
			old = e.bytes
		}
		if st.used-old+size > st.budget {
			return false
		}
		if e != nil {
			b.rawFree(e.ptr, e.bytes)
			st.used -= e.bytes
			e.ptr, e.bytes = 0, 0
		}
		p, err := b.rawAlloc(size, "the activation stash")
		if err != nil {
			return false // a speed-up, not a need: recompute instead
		}
		if e == nil {
			ev, err := cu.MakeEvent(cu.DisableTiming)
			if err != nil {
				b.rawFree(p, size)
				return false
			}
			e = &stashEntry{b: b, done: ev}
			if st.entries == nil {
				st.entries = map[int]*stashEntry{}
			}
			st.entries[key] = e
		}
		e.ptr, e.bytes = p, size
		st.used += size
	}
	e.n, e.half = ct.n, half
	b.stashCopy(op, e.ptr, ct.ptr, size, e)
	ct.busy = e // its next writer waits for the copy
	return true
}

// Unstash (finetune.ActivationStasher) copies key's values back into t,
// which then holds them as they were stashed (bfloat16 ones in bfloat16).
func (b *Backend) Unstash(key int, t finetune.Tensor) {
	const op = "Unstash"
	defer b.enter(op)()
	ct := unwrapRaw(t, kindF32, op)
	e := b.stash.entries[key]
	switch {
	case e == nil:
		panic(&Error{Op: op, Err: fmt.Errorf("nothing is stashed under key %d", key)})
	case e.n != ct.n:
		panic(&Error{Op: op, Err: fmt.Errorf("key %d holds %d values, the tensor %v %d", key, e.n, ct.shape, ct.n)})
	}
	size := ct.bytes()
	ct.zero, ct.half = nil, nil
	if e.half {
		size, ct.half = 2*int64(ct.n), b
	}
	b.touch(ct)
	b.stashCopy(op, ct.ptr, e.ptr, size, e)
	ct.busy = e // its next reader waits for the copy
}

// stashCopy queues dst <- src (n bytes) on the stash stream after the
// work queued on the main stream so far, and records e.done after it.
func (b *Backend) stashCopy(op string, dst, src cu.DevicePtr, n int64, e *stashEntry) {
	st := &b.stash
	if !st.ok {
		s, err := makeStream("stash")
		check(op, err)
		ev, err := cu.MakeEvent(cu.DisableTiming)
		if err != nil {
			s.Destroy()
			check(op, err)
		}
		st.s, st.fence, st.ok = s, ev, true
	}
	check(op, st.fence.Record(b.stream))
	check(op, st.s.Wait(st.fence, 0))
	check(op, cu.MemcpyDtoDAsync(dst, src, n, st.s))
	check(op, e.done.Record(st.s))
}

// freeStash frees every entry (after the copies in flight).
func (b *Backend) freeStash() {
	st := &b.stash
	for k, e := range st.entries {
		b.rawFree(e.ptr, e.bytes) // waits for the streams
		cu.DestroyEvent(&e.done)
		delete(st.entries, k)
	}
	st.used = 0
}

// releaseStash frees the stash and its stream (Close).
func (b *Backend) releaseStash() {
	b.freeStash()
	if b.stash.ok {
		b.stash.s.Destroy()
		cu.DestroyEvent(&b.stash.fence)
	}
	b.stash = stash{}
}
