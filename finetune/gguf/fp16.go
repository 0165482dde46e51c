package gguf

import "math"

// FP16ToFP32 is ggml_compute_fp16_to_fp32 (ggml-impl.h), ggml's software
// IEEE half to single conversion, step for step: exact for every finite
// half, subnormals included.
func FP16ToFP32(h uint16) float32 {
	w := uint32(h) << 16
	sign := w & 0x80000000
	twoW := w + w

	const expOffset = uint32(0xE0) << 23
	expScale := math.Float32frombits(0x07800000) // 0x1.0p-112f
	normalized := math.Float32frombits((twoW>>4)+expOffset) * expScale

	const magicMask = uint32(126) << 23
	const magicBias = float32(0.5)
	denormalized := math.Float32frombits((twoW>>17)|magicMask) - magicBias

	const denormalizedCutoff = uint32(1) << 27
	if twoW < denormalizedCutoff {
		return math.Float32frombits(sign | math.Float32bits(denormalized))
	}
	return math.Float32frombits(sign | math.Float32bits(normalized))
}

// FP32ToFP16 is ggml_compute_fp32_to_fp16 (ggml-impl.h): round to nearest
// even, overflow to infinity, NaN to 0x7E00 (with the sign kept).
func FP32ToFP16(f float32) uint16 {
	scaleToInf := math.Float32frombits(0x77800000)  // 0x1.0p+112f
	scaleToZero := math.Float32frombits(0x08800000) // 0x1.0p-110f
	abs := math.Float32frombits(math.Float32bits(f) &^ 0x80000000)
	base := float32(abs*scaleToInf) * scaleToZero

	w := math.Float32bits(f)
	shl1W := w + w
	sign := w & 0x80000000
	bias := shl1W & 0xFF000000
	if bias < 0x71000000 {
		bias = 0x71000000
	}
	base = math.Float32frombits((bias>>1)+0x07800000) + base
	b := math.Float32bits(base)
	expBits := (b >> 13) & 0x00007C00
	mantissaBits := b & 0x00000FFF
	nonsign := expBits + mantissaBits
	if shl1W > 0xFF000000 {
		nonsign = 0x7E00
	}
	return uint16(sign>>16) | uint16(nonsign)
}

// BF16ToFP32 widens a bfloat16 (ggml_compute_bf16_to_fp32): the bits move
// to the top half.
func BF16ToFP32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// FP32ToBF16 is ggml_compute_fp32_to_bf16: round to nearest even; a NaN
// keeps its top bits and is forced quiet.
func FP32ToBF16(f float32) uint16 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 {
		return uint16(u>>16) | 64
	}
	return uint16((u + (0x7fff + ((u >> 16) & 1))) >> 16)
}
