package finetune

import "fmt"

var _ ActivationStasher = (*CPUBackend)(nil)

// cpuStash is the CPU backend's ActivationStasher: copies of the stashed
// float32 values by key, at most budget bytes (4 a value) in all.
type cpuStash struct {
	budget, used int64
	vals         map[int][]float32
}

// SetStashBudget (ActivationStasher) bounds the stash; another budget than
// before drops what it holds (0 too).
func (b *CPUBackend) SetStashBudget(bytes int64) {
	bytes = max(bytes, 0)
	if bytes != b.stash.budget {
		b.stash = cpuStash{budget: bytes}
	}
}

// Stash (ActivationStasher) copies t's values under key unless they do
// not fit in the budget (a key's earlier copy is reused or replaced).
func (b *CPUBackend) Stash(key int, t Tensor) bool {
	src := f32(t)
	s := &b.stash
	old := s.vals[key]
	if cap(old) < len(src) {
		if s.used-4*int64(cap(old))+4*int64(len(src)) > s.budget {
			return false
		}
		s.used += 4 * int64(len(src)-cap(old))
		old = make([]float32, len(src))
	}
	if s.vals == nil {
		s.vals = map[int][]float32{}
	}
	s.vals[key] = append(old[:0], src...)
	return true
}

// StashReport says what the stash holds (the trainer logs it).
func (b *CPUBackend) StashReport() string {
	return fmt.Sprintf("%.2f GB of activations kept (%d outputs; the others are recomputed)", float64(b.stash.used)/1e9, len(b.stash.vals))
}

// PrefetchStash (ActivationStasher) has nothing to move.
func (b *CPUBackend) PrefetchStash(key int) {}

// Unstash (ActivationStasher) copies key's values back into t.
func (b *CPUBackend) Unstash(key int, t Tensor) {
	dst := f32(t)
	v, ok := b.stash.vals[key]
	if !ok || len(v) != len(dst) {
		panic(fmt.Sprintf("cpu backend: unstash of key %d (%d values stashed) into a tensor of %d", key, len(v), len(dst)))
	}
	copy(dst, v)
}
