//go:build cuda

package cuda

import (
	"errors"

	"github.com/ollama-tune/ollama-tune/finetune"

	"gorgonia.org/cu"
)

// Kept LoRA inputs (finetune.LoRAInputKeeper, issue 8 v8). GradA += s g^T .
// bf16(dropout(x)) needs x's dropped, rounded copy, which the backward
// otherwise makes in its own pass over x (lora_prep_bf16, 13 us a call at
// Phi-3's shapes). The forward's row kernel has those very values in
// registers, so while the model says that a layer's backward comes next
// (checkpointing's recompute, the last layer's forward) it also writes them
// into a slot keyed by (linear, x, seed, T), and LinearBackward of the same
// linear, input and seed takes them instead (the same bits: tested).
// A window of KeepLoRAInputs covers one layer (4 linears, ~36 MB at
// Phi-3-mini's training shape) and voids the slots left over, so its slots
// are reused; KeepLoRAInputsForward's covers every layer of a forward
// without checkpointing (v18: 128 slots, ~1.1 GB, kept between steps). A
// slot is used once; at keptSlots, or when its memory is not there, nothing
// more is kept (the backward makes its own copy).
type keptInput struct {
	l     *finetune.Linear
	x     cu.DevicePtr
	seed  uint64
	T, in int
	buf   buffer
	ready bool
}

const keptSlots = 4 * 128

// keepReserve is the device memory a new slot leaves free for the rest of
// the step (its scratch grows in the first step too).
const keepReserve = 1 << 30

// keepOn says whether KeepLoRAInputs may keep (v8);
// OLLAMA_TUNE_CUDA_REFERENCE=keep-lora-in turns it off (the A/B).
var keepOn = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "keep-lora-in")

var _ finetune.LoRAInputKeeper = (*Backend)(nil)

// KeepLoRAInputs (finetune.LoRAInputKeeper) starts (on) or ends keeping.
func (b *Backend) KeepLoRAInputs(on bool) {
	b.keepAsked = on
	b.keepWindow(on)
}

var _ finetune.LoRAInputForwardKeeper = (*Backend)(nil)

// KeepLoRAInputsForward (finetune.LoRAInputForwardKeeper) starts (on) or
// ends keeping through a whole forward: the same slots, without
// KeepLoRAInputs' word on the weights (keepAsked: the dequantization
// cache's slots stay free for the next layer's weights).
// OLLAMA_TUNE_CUDA_REFERENCE=keep-lora-fwd turns it off (the A/B).
func (b *Backend) KeepLoRAInputsForward(on bool) {
	b.keepFwd = on // whether kept or not: a by-product is then skipped only where kept (skipByproduct)
	b.keepWindow(on && keepFwdOn)
}

var keepFwdOn = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "keep-lora-fwd")

// keepWindow opens (on: voiding the slots left over) or closes a window
// of keeping.
func (b *Backend) keepWindow(on bool) {
	b.keepLoRA = on && keepOn
	if b.keepLoRA && len(b.loraGrads.held) > 0 {
		b.flushLoRAGrads("KeepLoRAInputs") // held GradA products read the slots this window refills
	}
	if b.keepLoRA {
		for k := range b.kept {
			b.kept[k].ready = false
		}
	}
}

// keepSlot returns where the forward's row kernel writes bf16(dropout(x))
// of l's input x [T,in], or 0 when nothing is kept.
func (b *Backend) keepSlot(op string, l *finetune.Linear, x cu.DevicePtr, seed uint64, T, in int) cu.DevicePtr {
	if !b.keepLoRA {
		return 0
	}
	// A spent slot whose buffer fits (the smallest such), else the largest
	// spent one (it grows), else a new one; none left: nothing is kept (the
	// backward makes its own). The sizes settle on one layer's (three of
	// Phi-3's in = 3072, one of 8192). An older copy of l's is spent.
	need := 2 * int64(T) * int64(in)
	s := -1
	for k := range b.kept {
		c := &b.kept[k]
		if c.l == l {
			c.ready = false
		}
		if c.ready {
			continue
		}
		if s < 0 {
			s = k
			continue
		}
		fits, best := c.buf.n >= need, b.kept[s].buf.n >= need
		if fits && (!best || c.buf.n < b.kept[s].buf.n) || !fits && !best && c.buf.n > b.kept[s].buf.n {
			s = k
		}
	}
	if s < 0 {
		if len(b.kept) == keptSlots {
			return 0
		}
		b.kept = append(b.kept, keptInput{})
		s = len(b.kept) - 1
	}
	k := &b.kept[s]
	if k.buf.n < need {
		// Grown here rather than by grow, so that memory that is not there
		// keeps nothing instead of failing the step.
		if k.buf.ptr != 0 {
			b.rawFree(k.buf.ptr, k.buf.n)
			k.buf = buffer{}
		}
		n := max(need, 256)
		if free, _, err := cu.MemInfo(); err == nil && free < n+keepReserve {
			*k = keptInput{}
			return 0
		}
		p, err := b.rawAlloc(n, "kept LoRA inputs")
		if errors.Is(err, ErrOutOfMemory) {
			*k = keptInput{}
			return 0
		}
		check(op, err)
		k.buf = buffer{ptr: p, n: n}
	}
	*k = keptInput{l: l, x: x, seed: seed, T: T, in: in, buf: k.buf, ready: true}
	return k.buf.ptr
}

// takeKept returns the kept bf16(dropout(x)) of l's input x [T,in] for seed,
// once, or 0.
func (b *Backend) takeKept(l *finetune.Linear, x cu.DevicePtr, seed uint64, T, in int) cu.DevicePtr {
	s := b.keptFor(l, x, seed, T, in)
	if s == nil {
		return 0
	}
	s.ready = false
	return s.buf.ptr
}

// keptFor is the ready slot of l's input x [T,in] for seed, or nil.
func (b *Backend) keptFor(l *finetune.Linear, x cu.DevicePtr, seed uint64, T, in int) *keptInput {
	for k := range b.kept {
		if s := &b.kept[k]; s.ready && s.l == l && s.x == x && s.seed == seed && s.T == T && s.in == in {
			return s
		}
	}
	return nil
}

// loraInput unwraps x [T,in], l's input, for LinearBackward's GradA: as
// is (unread: it may be a skipped by-product, Tensor.unwritten) when a
// kept copy for seed waits, else with tensor()'s checks and materialising.
func (b *Backend) loraInput(x finetune.Tensor, l *finetune.Linear, seed uint64, T, in int, op string) *Tensor {
	xs := unwrapRaw(x, kindF32, op)
	if xs != nil && xs.half == nil && xs.zero == nil && b.keptFor(l, xs.ptr, seed, T, in) != nil {
		return xs
	}
	return tensor(x, kindF32, op)
}

// freeKept releases the slots' buffers.
func (b *Backend) freeKept() {
	for k := range b.kept {
		if b.kept[k].buf.ptr != 0 {
			b.rawFree(b.kept[k].buf.ptr, b.kept[k].buf.n)
		}
	}
	b.kept = nil
}

var _ finetune.ByproductSkipper = (*Backend)(nil)

// SkipByproduct (finetune.ByproductSkipper) marks t: see Tensor.skip.
func (b *Backend) SkipByproduct(t finetune.Tensor) {
	defer b.enter("SkipByproduct")()
	if ct := unwrapRaw(t, kindF32, "SkipByproduct"); ct != nil && skipOn {
		ct.skip = true
	}
}

// skipOn says whether SkipByproduct marks (v10);
// OLLAMA_TUNE_CUDA_REFERENCE=skip-byproduct writes every by-product (the
// A/B).
var skipOn = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "skip-byproduct")

// skipByproduct says whether an op that writes t only as a by-product of
// its work may leave it unwritten, given kept, the slot where it keeps
// t's rounded dropout(t) (keepSlot; 0: none): t is marked and no backward
// reads t itself, because the model asked for no keeping (a forward that
// no backward follows: checkpointing drops the layer's activations) or
// the backward's GradA takes the kept copy (a window of KeepLoRAInputs or
// KeepLoRAInputsForward). It marks t unwritten when so.
func (b *Backend) skipByproduct(t *Tensor, kept cu.DevicePtr) bool {
	if t == nil || !t.skip || (b.keepAsked || b.keepFwd) && kept == 0 {
		return false
	}
	t.unwritten = true
	return true
}
