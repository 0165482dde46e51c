package gguf

import (
	"encoding/binary"
	"fmt"
	"math"
)

// The reference quantizers of ggml-quants.c ("reference implementation for
// deterministic creation of model files"), step for step, for writers of
// GGUF files (the merged-model export). Each product is rounded to float32
// before it is used, as in the C code without FP contraction.

// QuantizeQ8_0 is quantize_row_q8_0_ref: per block of 32, d = amax/127
// (stored as fp16), q = roundf(x/d) using the float32 reciprocal of d.
// len(src) must be a multiple of 32.
func QuantizeQ8_0(src []float32) ([]byte, error) {
	if len(src)%32 != 0 {
		return nil, fmt.Errorf("quantize Q8_0: %d values is not a multiple of the block size 32", len(src))
	}
	out := make([]byte, len(src)/32*34)
	for i := 0; i < len(src)/32; i++ {
		x := src[i*32 : i*32+32]
		b := out[i*34 : i*34+34]
		amax := float32(0)
		for _, v := range x {
			if a := abs32(v); a > amax {
				amax = a
			}
		}
		d := amax / 127
		id := float32(0)
		if d != 0 {
			id = 1 / d
		}
		binary.LittleEndian.PutUint16(b, FP32ToFP16(d))
		for j, v := range x {
			b[2+j] = byte(int8(roundf(float32(v * id))))
		}
	}
	return out, nil
}

// QuantizeQ4_0 is quantize_row_q4_0_ref: per block of 32, the value of
// largest magnitude max gives d = max / -8; q = min(15, int8(x/d + 8.5)),
// element j in the low nibble of byte j and element j+16 in its high
// nibble. len(src) must be a multiple of 32.
func QuantizeQ4_0(src []float32) ([]byte, error) {
	if len(src)%32 != 0 {
		return nil, fmt.Errorf("quantize Q4_0: %d values is not a multiple of the block size 32", len(src))
	}
	out := make([]byte, len(src)/32*18)
	for i := 0; i < len(src)/32; i++ {
		x := src[i*32 : i*32+32]
		b := out[i*18 : i*18+18]
		amax, maxv := float32(0), float32(0)
		for _, v := range x {
			if a := abs32(v); amax < a {
				amax, maxv = a, v
			}
		}
		d := maxv / -8
		id := float32(0)
		if d != 0 {
			id = 1 / d
		}
		binary.LittleEndian.PutUint16(b, FP32ToFP16(d))
		for j := 0; j < 16; j++ {
			x0 := float32(x[j] * id)
			x1 := float32(x[16+j] * id)
			xi0 := min(15, truncInt8(x0+8.5))
			xi1 := min(15, truncInt8(x1+8.5))
			b[2+j] = uint8(xi0) | uint8(xi1)<<4
		}
	}
	return out, nil
}

// Quantize encodes src as type t for the types a writer of merged models
// needs: F32, F16, BF16 (ggml's rounding), Q8_0 and Q4_0.
func Quantize(t Type, src []float32) ([]byte, error) {
	switch t {
	case F32:
		out := make([]byte, 4*len(src))
		for i, v := range src {
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(v))
		}
		return out, nil
	case F16:
		out := make([]byte, 2*len(src))
		for i, v := range src {
			binary.LittleEndian.PutUint16(out[2*i:], FP32ToFP16(v))
		}
		return out, nil
	case BF16:
		out := make([]byte, 2*len(src))
		for i, v := range src {
			binary.LittleEndian.PutUint16(out[2*i:], FP32ToBF16(v))
		}
		return out, nil
	case Q8_0:
		return QuantizeQ8_0(src)
	case Q4_0:
		return QuantizeQ4_0(src)
	}
	return nil, fmt.Errorf("quantizing to %s is not implemented (F32, F16, BF16, Q8_0 and Q4_0 are)", t)
}

func abs32(v float32) float32 { return math.Float32frombits(math.Float32bits(v) &^ 0x80000000) }

// roundf is C's roundf: halfway cases away from zero.
func roundf(v float32) float32 { return float32(math.Round(float64(v))) }

// truncInt8 is C's (int8_t) conversion of a float in range: toward zero.
func truncInt8(v float32) int8 {
	if v != v || v >= 128 || v <= -129 {
		// Out of range is undefined in C; finite blocks never get here.
		if v > 0 {
			return 127
		}
		return -128
	}
	return int8(int32(v))
}
