package finetune

// Optimizer ops of the CPU backend. The arithmetic lives in finetune/optim
// (shared with the tests of every backend); these wrappers only unwrap the
// tensors.

// Scale multiplies t by s in place.
func (b *CPUBackend) Scale(t Tensor, s float32) {
	for k := range f32(t) {
		f32(t)[k] *= s
	}
}

// SumSquares returns sum(t^2), accumulated in float64.
func (b *CPUBackend) SumSquares(t Tensor) float64 {
	var s float64
	for _, v := range f32(t) {
		s += float64(v) * float64(v)
	}
	return s
}

// AdamW updates p in place from g with float32 moments m, v.
func (b *CPUBackend) AdamW(p, g, m, v Tensor, hp AdamParams) {
	panic("cpu backend: AdamW waits for finetune/optim")
}

// AdamW8bit is bitsandbytes' blockwise 8-bit AdamW.
func (b *CPUBackend) AdamW8bit(p, g Tensor, st *Adam8State, hp AdamParams) {
	panic("cpu backend: AdamW8bit waits for finetune/optim")
}
