package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/ollama-tune/ollama-tune/internal/parallel"
)

// BF16ToF32 widens a bfloat16 (its bit pattern) to float32. Exact: bf16 is
// the top half of a float32.
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F32ToBF16 rounds a float32 to bfloat16 to nearest, ties to even, as
// PyTorch's c10::BFloat16 does (round_to_nearest_even): NaN becomes the
// canonical quiet NaN 0x7FC0, overflow rounds to infinity.
func F32ToBF16(f float32) uint16 {
	if f != f {
		return 0x7FC0
	}
	b := math.Float32bits(f)
	return uint16((b + 0x7FFF + (b>>16)&1) >> 16)
}

// F16ToF32 widens an IEEE 754 half (its bit pattern) to float32, exactly,
// subnormals, infinities and NaN payloads included.
func F16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1F
	mant := uint32(h & 0x3FF)
	switch {
	case exp == 0x1F: // inf or NaN, payload kept
		return math.Float32frombits(sign | 0x7F800000 | mant<<13)
	case exp == 0 && mant == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal: mant * 2^-24; normalise into a float32
		e := int32(-14)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		mant &= 0x3FF
		return math.Float32frombits(sign | uint32(e+127)<<23 | mant<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// F32ToF16 rounds a float32 to an IEEE 754 half to nearest, ties to even,
// as PyTorch's c10::Half does: values beyond the half range become
// infinity, tiny ones round into the subnormals or to signed zero, and NaN
// becomes the quiet NaN 0x7E00 (sign kept).
func F32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xFF
	mant := b & 0x7FFFFF
	if exp == 0xFF {
		if mant != 0 {
			return sign | 0x7E00
		}
		return sign | 0x7C00
	}
	e := exp - 127 + 15 // the half's biased exponent
	if e >= 0x1F {
		return sign | 0x7C00
	}
	if e <= 0 {
		// Half subnormal: units of 2^-24. |f| < 2^-25 rounds to zero
		// (2^-25 itself is a tie and goes to the even zero).
		if e < -10 {
			return sign
		}
		m := mant | 0x800000 // 24-bit significand of a normal float32
		shift := uint32(14 - e)
		half := m >> shift
		rem := m & (1<<shift - 1)
		mid := uint32(1) << (shift - 1)
		if rem > mid || (rem == mid && half&1 == 1) {
			half++ // may carry into the smallest normal: still the right encoding
		}
		return sign | uint16(half)
	}
	half := uint32(e)<<10 | mant>>13
	rem := mant & 0x1FFF
	if rem > 0x1000 || (rem == 0x1000 && half&1 == 1) {
		half++ // a carry into the exponent is right, up to infinity
	}
	return sign | uint16(half)
}

// convertGrain is the smallest piece of a conversion worth a goroutine
// (converting a 100M-element embedding is ~0.1 s per core).
const convertGrain = 1 << 20

// ToFloat32 converts a floating-point tensor (F32, F16, BF16, F64) to a new
// float32 slice. F16 and BF16 widen exactly; F64 rounds to nearest.
func ToFloat32(t TensorInfo) ([]float32, error) {
	if err := t.checkData(); err != nil {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	dst := make([]float32, t.Numel())
	if err := ToFloat32Into(dst, t); err != nil {
		return nil, err
	}
	return dst, nil
}

// ToFloat32Into is ToFloat32 into a caller's buffer of exactly Numel
// elements (to fill one slice from several tensors, or reuse a buffer).
func ToFloat32Into(dst []float32, t TensorInfo) error {
	if err := t.checkData(); err != nil {
		return fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	n := t.Numel()
	if len(dst) != n {
		return fmt.Errorf("tensor %q: destination holds %d floats, the tensor %d", t.Name, len(dst), n)
	}
	src := t.Data
	le := binary.LittleEndian
	switch t.DType {
	case F32:
		parallel.For(n, convertGrain, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				dst[i] = math.Float32frombits(le.Uint32(src[4*i:]))
			}
		})
	case BF16:
		parallel.For(n, convertGrain, func(lo, hi int) {
			d, s := dst[lo:hi], src[2*lo:2*hi]
			for i := range d { // bounds-check-free form of BF16ToF32(le.Uint16(s[2*i:]))
				d[i] = math.Float32frombits(uint32(s[2*i])<<16 | uint32(s[2*i+1])<<24)
			}
		})
	case F16:
		parallel.For(n, convertGrain, func(lo, hi int) {
			d, s := dst[lo:hi], src[2*lo:2*hi]
			for i := range d {
				d[i] = F16ToF32(uint16(s[2*i]) | uint16(s[2*i+1])<<8)
			}
		})
	case F64:
		parallel.For(n, convertGrain, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				dst[i] = float32(math.Float64frombits(le.Uint64(src[8*i:])))
			}
		})
	default:
		return fmt.Errorf("tensor %q has dtype %s; a floating-point tensor (F32, F16, BF16, F64) is needed", t.Name, t.DType)
	}
	return nil
}

// Int64s converts an integer or boolean tensor to int64 (U64 values above
// the int64 range are an error).
func Int64s(t TensorInfo) ([]int64, error) {
	if err := t.checkData(); err != nil {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	n, src, le := t.Numel(), t.Data, binary.LittleEndian
	out := make([]int64, n)
	for i := range out {
		switch t.DType {
		case I64:
			out[i] = int64(le.Uint64(src[8*i:]))
		case U64:
			u := le.Uint64(src[8*i:])
			if u > math.MaxInt64 {
				return nil, fmt.Errorf("tensor %q: element %d (%d) does not fit in int64", t.Name, i, u)
			}
			out[i] = int64(u)
		case I32:
			out[i] = int64(int32(le.Uint32(src[4*i:])))
		case U32:
			out[i] = int64(le.Uint32(src[4*i:]))
		case I16:
			out[i] = int64(int16(le.Uint16(src[2*i:])))
		case U16:
			out[i] = int64(le.Uint16(src[2*i:]))
		case I8:
			out[i] = int64(int8(src[i]))
		case U8, BOOL:
			out[i] = int64(src[i])
		default:
			return nil, fmt.Errorf("tensor %q has dtype %s; an integer tensor is needed", t.Name, t.DType)
		}
	}
	return out, nil
}

// Int32s converts an integer or boolean tensor to int32; wider values (I64
// token ids and labels, as PyTorch saves them) must fit.
func Int32s(t TensorInfo) ([]int32, error) {
	wide, err := Int64s(t)
	if err != nil {
		return nil, err
	}
	out := make([]int32, len(wide))
	for i, v := range wide {
		if v < math.MinInt32 || v > math.MaxInt32 {
			return nil, fmt.Errorf("tensor %q: element %d (%d) does not fit in int32", t.Name, i, v)
		}
		out[i] = int32(v)
	}
	return out, nil
}

// EncodeFloat32 rounds float32 values to dtype (F32, F16, BF16 or F64) and
// returns their little-endian bytes, ready for a TensorInfo's Data.
func EncodeFloat32(dtype DType, src []float32) ([]byte, error) {
	size := dtype.Size()
	if !dtype.IsFloat() {
		return nil, fmt.Errorf("cannot encode float32 values as dtype %s; use F32, F16, BF16 or F64", dtype)
	}
	out := make([]byte, len(src)*size)
	le := binary.LittleEndian
	parallel.For(len(src), convertGrain, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			switch dtype {
			case F32:
				le.PutUint32(out[4*i:], math.Float32bits(src[i]))
			case BF16:
				le.PutUint16(out[2*i:], F32ToBF16(src[i]))
			case F16:
				le.PutUint16(out[2*i:], F32ToF16(src[i]))
			case F64:
				le.PutUint64(out[8*i:], math.Float64bits(float64(src[i])))
			}
		}
	})
	return out, nil
}

// FromFloat32 builds a tensor of the given dtype from float32 values.
func FromFloat32(name string, dtype DType, shape []int, v []float32) (TensorInfo, error) {
	t := TensorInfo{Name: name, DType: dtype, Shape: append([]int(nil), shape...)}
	if n, err := numel(shape, 8); err != nil || n != len(v) {
		if err == nil {
			err = fmt.Errorf("shape %v holds %d elements, got %d values", shape, n, len(v))
		}
		return TensorInfo{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	data, err := EncodeFloat32(dtype, v)
	if err != nil {
		return TensorInfo{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	t.Data = data
	return t, nil
}

// FromInt64 builds an I64 tensor (token ids, labels) from int64 values.
func FromInt64(name string, shape []int, v []int64) (TensorInfo, error) {
	if n, err := numel(shape, 8); err != nil || n != len(v) {
		if err == nil {
			err = fmt.Errorf("shape %v holds %d elements, got %d values", shape, n, len(v))
		}
		return TensorInfo{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	data := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(data[8*i:], uint64(x))
	}
	return TensorInfo{Name: name, DType: I64, Shape: append([]int(nil), shape...), Data: data}, nil
}

// FromInt32 builds an I32 tensor from int32 values.
func FromInt32(name string, shape []int, v []int32) (TensorInfo, error) {
	if n, err := numel(shape, 4); err != nil || n != len(v) {
		if err == nil {
			err = fmt.Errorf("shape %v holds %d elements, got %d values", shape, n, len(v))
		}
		return TensorInfo{}, fmt.Errorf("tensor %q: %w", name, err)
	}
	data := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(data[4*i:], uint32(x))
	}
	return TensorInfo{Name: name, DType: I32, Shape: append([]int(nil), shape...), Data: data}, nil
}
