package finetune

import (
	"fmt"
	"strconv"

	"github.com/ollama-tune/ollama-tune/finetune/optim"
)

// Optimizer ops of the CPU backend. The arithmetic lives in finetune/optim
// (the reference the CUDA kernels mirror); these wrappers unwrap tensors.

// Scale multiplies t by s in place.
func (b *CPUBackend) Scale(t Tensor, s float32) {
	x := f32(t)
	for k := range x {
		x[k] *= s
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

// OptimParams converts the float32 hyper-parameters to optim's float64
// ones through their shortest decimal form, so lr 1e-3 becomes the Python
// float 0.001 torch computes with, not float32(1e-3) widened. Every backend
// derives its optimizer scalars from these.
func (hp AdamParams) OptimParams() optim.Params {
	f := func(x float32) float64 {
		v, _ := strconv.ParseFloat(strconv.FormatFloat(float64(x), 'g', -1, 32), 64)
		return v
	}
	return optim.Params{LR: f(hp.LR), Beta1: f(hp.Beta1), Beta2: f(hp.Beta2), Eps: f(hp.Eps), WeightDecay: f(hp.WeightDecay), Step: hp.Step}
}

// AdamW updates p in place from g with float32 moments m, v
// (torch.optim.AdamW).
func (b *CPUBackend) AdamW(p, g, m, v Tensor, hp AdamParams) {
	if err := optim.AdamW(f32(p), f32(g), f32(m), f32(v), hp.OptimParams()); err != nil {
		panic(fmt.Sprintf("cpu backend: AdamW: %v", err))
	}
}

// AdamW8bit is bitsandbytes' blockwise 8-bit AdamW.
func (b *CPUBackend) AdamW8bit(p, g Tensor, st *Adam8State, hp AdamParams) {
	if err := optim.AdamW8bit(f32(p), f32(g), u8(st.M), u8(st.V), f32(st.AbsmaxM), f32(st.AbsmaxV), hp.OptimParams()); err != nil {
		panic(fmt.Sprintf("cpu backend: AdamW8bit: %v", err))
	}
}
