package gguf

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/ollama-tune/ollama-tune/internal/parallel"
)

// dequantizers are ggml-quants.c's dequantize_row_* for whole blocks: src
// holds len(dst)/blockSize blocks. Every product that the C code adds to
// something is converted to float32 first, so that no compiler fuses it
// into an FMA (Go may fuse x*y+z; an explicit conversion forbids it), and
// every operation happens in the C code's order.
var dequantizers = map[Type]func(src []byte, dst []float32){
	F32:  dequantF32,
	F16:  dequantF16,
	BF16: dequantBF16,
	Q4_0: dequantQ4_0,
	Q4_1: dequantQ4_1,
	Q5_0: dequantQ5_0,
	Q5_1: dequantQ5_1,
	Q8_0: dequantQ8_0,
	Q2_K: dequantQ2_K,
	Q3_K: dequantQ3_K,
	Q4_K: dequantQ4_K,
	Q5_K: dequantQ5_K,
	Q6_K: dequantQ6_K,
}

// DequantizableTypes lists the types Dequantize implements.
func DequantizableTypes() []Type {
	return []Type{F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K}
}

// CanDequantize reports whether Dequantize implements t.
func CanDequantize(t Type) bool { _, ok := dequantizers[t]; return ok }

// Dequantize converts len(dst) elements of type t from src to float32.
// len(dst) must be a multiple of t's block size and src exactly
// t.RowBytes(len(dst)) bytes.
func Dequantize(t Type, src []byte, dst []float32) error {
	fn, ok := dequantizers[t]
	if !ok {
		if !t.Known() {
			return fmt.Errorf("unknown ggml type %d", uint32(t))
		}
		return fmt.Errorf("dequantizing %s is not implemented (supported: %v); re-quantize the model to one of those, e.g. Q4_K_M or Q8_0", t, DequantizableTypes())
	}
	bs := t.BlockSize()
	if len(dst)%bs != 0 {
		return fmt.Errorf("%d elements of %s: not a multiple of the block size %d", len(dst), t, bs)
	}
	if want := t.RowBytes(int64(len(dst))); int64(len(src)) != want {
		return fmt.Errorf("%d elements of %s need %d bytes, got %d", len(dst), t, want, len(src))
	}
	fn(src, dst)
	return nil
}

// DequantizeParallel is Dequantize split over GOMAXPROCS goroutines on
// block boundaries (the result is the same: blocks are independent).
func DequantizeParallel(t Type, src []byte, dst []float32) error {
	const minChunk = 1 << 16 // elements; smaller jobs are not worth a goroutine
	if len(dst) < 2*minChunk || !CanDequantize(t) || len(dst)%t.BlockSize() != 0 ||
		int64(len(src)) != t.RowBytes(int64(len(dst))) {
		return Dequantize(t, src, dst)
	}
	bs, ts := t.BlockSize(), t.TypeSize()
	fn := dequantizers[t]
	parallel.For(len(dst)/bs, max(1, minChunk/bs), func(b0, b1 int) {
		fn(src[b0*ts:b1*ts], dst[b0*bs:b1*bs])
	})
	return nil
}

func le16(b []byte) uint16  { return binary.LittleEndian.Uint16(b) }
func half(b []byte) float32 { return FP16ToFP32(binary.LittleEndian.Uint16(b)) }

func dequantF32(src []byte, dst []float32) {
	for i := range dst {
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))
	}
}

func dequantF16(src []byte, dst []float32) {
	for i := range dst {
		dst[i] = FP16ToFP32(le16(src[2*i:]))
	}
}

func dequantBF16(src []byte, dst []float32) {
	for i := range dst {
		dst[i] = BF16ToFP32(le16(src[2*i:]))
	}
}

// Q4_0: {fp16 d; u8 qs[16]}; y[j] = (lo nibble - 8)*d, y[j+16] = (hi - 8)*d.
func dequantQ4_0(src []byte, dst []float32) {
	for i := 0; i < len(dst)/32; i++ {
		b := src[i*18 : i*18+18]
		d := half(b)
		qs := b[2:18]
		y := dst[i*32 : i*32+32]
		for j := 0; j < 16; j++ {
			x0 := int32(qs[j]&0x0F) - 8
			x1 := int32(qs[j]>>4) - 8
			y[j] = float32(x0) * d
			y[j+16] = float32(x1) * d
		}
	}
}

// Q4_1: {fp16 d, m; u8 qs[16]}; y = q*d + m.
func dequantQ4_1(src []byte, dst []float32) {
	for i := 0; i < len(dst)/32; i++ {
		b := src[i*20 : i*20+20]
		d, m := half(b), half(b[2:])
		qs := b[4:20]
		y := dst[i*32 : i*32+32]
		for j := 0; j < 16; j++ {
			x0 := int32(qs[j] & 0x0F)
			x1 := int32(qs[j] >> 4)
			y[j] = float32(float32(x0)*d) + m
			y[j+16] = float32(float32(x1)*d) + m
		}
	}
}

// Q5_0: {fp16 d; u8 qh[4]; u8 qs[16]}; the fifth bits of element j and
// j+16 are bits j and j+16 of qh (a little-endian u32); y = (q - 16)*d.
func dequantQ5_0(src []byte, dst []float32) {
	for i := 0; i < len(dst)/32; i++ {
		b := src[i*22 : i*22+22]
		d := half(b)
		qh := binary.LittleEndian.Uint32(b[2:])
		qs := b[6:22]
		y := dst[i*32 : i*32+32]
		for j := 0; j < 16; j++ {
			xh0 := uint8(((qh >> j) << 4) & 0x10)
			xh1 := uint8((qh >> (j + 12)) & 0x10)
			x0 := int32((qs[j]&0x0F)|xh0) - 16
			x1 := int32((qs[j]>>4)|xh1) - 16
			y[j] = float32(x0) * d
			y[j+16] = float32(x1) * d
		}
	}
}

// Q5_1: {fp16 d, m; u8 qh[4]; u8 qs[16]}; y = q*d + m.
func dequantQ5_1(src []byte, dst []float32) {
	for i := 0; i < len(dst)/32; i++ {
		b := src[i*24 : i*24+24]
		d, m := half(b), half(b[2:])
		qh := binary.LittleEndian.Uint32(b[4:])
		qs := b[8:24]
		y := dst[i*32 : i*32+32]
		for j := 0; j < 16; j++ {
			xh0 := uint8(((qh >> j) << 4) & 0x10)
			xh1 := uint8((qh >> (j + 12)) & 0x10)
			x0 := int32((qs[j] & 0x0F) | xh0)
			x1 := int32((qs[j] >> 4) | xh1)
			y[j] = float32(float32(x0)*d) + m
			y[j+16] = float32(float32(x1)*d) + m
		}
	}
}

// Q8_0: {fp16 d; i8 qs[32]}; y = q*d.
func dequantQ8_0(src []byte, dst []float32) {
	for i := 0; i < len(dst)/32; i++ {
		b := src[i*34 : i*34+34]
		d := half(b)
		y := dst[i*32 : i*32+32]
		for j := 0; j < 32; j++ {
			y[j] = float32(int8(b[2+j])) * d
		}
	}
}

// Q2_K: {u8 scales[16]; u8 qs[64]; fp16 d, dmin}: 16 groups of 16, each
// with a 4-bit scale (low nibble) and a 4-bit min (high nibble).
func dequantQ2_K(src []byte, dst []float32) {
	for i := 0; i < len(dst)/QK_K; i++ {
		b := src[i*84 : i*84+84]
		scales, q := b[0:16], b[16:80]
		d, dmin := half(b[80:]), half(b[82:])
		y := dst[i*QK_K : i*QK_K+QK_K]
		is, yi := 0, 0
		for n := 0; n < QK_K; n += 128 {
			shift := uint(0)
			for j := 0; j < 4; j++ {
				sc := scales[is]
				is++
				dl, ml := d*float32(sc&0xF), dmin*float32(sc>>4)
				for l := 0; l < 16; l++ {
					y[yi] = float32(dl*float32(int8((q[l]>>shift)&3))) - ml
					yi++
				}
				sc = scales[is]
				is++
				dl, ml = d*float32(sc&0xF), dmin*float32(sc>>4)
				for l := 0; l < 16; l++ {
					y[yi] = float32(dl*float32(int8((q[l+16]>>shift)&3))) - ml
					yi++
				}
				shift += 2
			}
			q = q[32:]
		}
	}
}

// Q3_K: {u8 hmask[32]; u8 qs[64]; u8 scales[12]; fp16 d}: 16 groups of
// 16 with 6-bit signed scales (offset 32) packed as in the C code's aux
// words; the third bit is hmask's, set meaning "no -4".
func dequantQ3_K(src []byte, dst []float32) {
	const kmask1, kmask2 = uint32(0x03030303), uint32(0x0f0f0f0f)
	for i := 0; i < len(dst)/QK_K; i++ {
		b := src[i*110 : i*110+110]
		hm, q := b[0:32], b[32:96]
		dAll := half(b[108:])
		var aux [4]uint32
		for k := 0; k < 3; k++ {
			aux[k] = binary.LittleEndian.Uint32(b[96+4*k:])
		}
		tmp := aux[2]
		aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4)
		aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4)
		aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4)
		aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4)
		var scales [16]int8
		for k := range scales {
			scales[k] = int8(aux[k/4] >> (8 * (k % 4)))
		}
		y := dst[i*QK_K : i*QK_K+QK_K]
		is, yi := 0, 0
		m := uint8(1)
		for n := 0; n < QK_K; n += 128 {
			shift := uint(0)
			for j := 0; j < 4; j++ {
				dl := dAll * float32(int32(scales[is])-32)
				is++
				for l := 0; l < 16; l++ {
					h := int32(4)
					if hm[l]&m != 0 {
						h = 0
					}
					y[yi] = dl * float32(int32(int8((q[l]>>shift)&3))-h)
					yi++
				}
				dl = dAll * float32(int32(scales[is])-32)
				is++
				for l := 0; l < 16; l++ {
					h := int32(4)
					if hm[l+16]&m != 0 {
						h = 0
					}
					y[yi] = dl * float32(int32(int8((q[l+16]>>shift)&3))-h)
					yi++
				}
				shift += 2
				m <<= 1
			}
			q = q[32:]
		}
	}
}

// scaleMinK4 is get_scale_min_k4: the j-th 6-bit scale and min of a Q4_K
// or Q5_K block's 12 packed bytes (j < 4: low 6 bits of bytes j and j+4;
// else 4 bits from byte j+4 and the top 2 bits of bytes j-4 and j).
func scaleMinK4(j int, q []byte) (sc, m uint8) {
	if j < 4 {
		return q[j] & 63, q[j+4] & 63
	}
	return (q[j+4] & 0xF) | ((q[j-4] >> 6) << 4), (q[j+4] >> 4) | ((q[j] >> 6) << 4)
}

// Q4_K: {fp16 d, dmin; u8 scales[12]; u8 qs[128]}: 8 groups of 32; each
// 32 bytes of qs hold two groups (low nibbles, then high nibbles).
func dequantQ4_K(src []byte, dst []float32) {
	for i := 0; i < len(dst)/QK_K; i++ {
		b := src[i*144 : i*144+144]
		d, dmin := half(b), half(b[2:])
		scales, q := b[4:16], b[16:144]
		y := dst[i*QK_K : i*QK_K+QK_K]
		is, yi := 0, 0
		for j := 0; j < QK_K; j += 64 {
			sc, m := scaleMinK4(is, scales)
			d1, m1 := d*float32(sc), dmin*float32(m)
			sc, m = scaleMinK4(is+1, scales)
			d2, m2 := d*float32(sc), dmin*float32(m)
			for l := 0; l < 32; l++ {
				y[yi] = float32(d1*float32(q[l]&0xF)) - m1
				yi++
			}
			for l := 0; l < 32; l++ {
				y[yi] = float32(d2*float32(q[l]>>4)) - m2
				yi++
			}
			q = q[32:]
			is += 2
		}
	}
}

// Q5_K: {fp16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: Q4_K plus a
// fifth bit per element from qh (bit 2k for the low nibbles of pair k,
// bit 2k+1 for the high ones).
func dequantQ5_K(src []byte, dst []float32) {
	for i := 0; i < len(dst)/QK_K; i++ {
		b := src[i*176 : i*176+176]
		d, dmin := half(b), half(b[2:])
		scales, qh, ql := b[4:16], b[16:48], b[48:176]
		y := dst[i*QK_K : i*QK_K+QK_K]
		is, yi := 0, 0
		u1, u2 := uint8(1), uint8(2)
		for j := 0; j < QK_K; j += 64 {
			sc, m := scaleMinK4(is, scales)
			d1, m1 := d*float32(sc), dmin*float32(m)
			sc, m = scaleMinK4(is+1, scales)
			d2, m2 := d*float32(sc), dmin*float32(m)
			for l := 0; l < 32; l++ {
				h := int32(0)
				if qh[l]&u1 != 0 {
					h = 16
				}
				y[yi] = float32(d1*float32(int32(ql[l]&0xF)+h)) - m1
				yi++
			}
			for l := 0; l < 32; l++ {
				h := int32(0)
				if qh[l]&u2 != 0 {
					h = 16
				}
				y[yi] = float32(d2*float32(int32(ql[l]>>4)+h)) - m2
				yi++
			}
			ql = ql[32:]
			is += 2
			u1 <<= 2
			u2 <<= 2
		}
	}
}

// Q6_K: {u8 ql[128]; u8 qh[64]; i8 scales[16]; fp16 d}: 16 groups of 16
// with 8-bit scales; each element is 4 low bits from ql and 2 high bits
// from qh, minus 32.
func dequantQ6_K(src []byte, dst []float32) {
	for i := 0; i < len(dst)/QK_K; i++ {
		b := src[i*210 : i*210+210]
		ql, qh, sc := b[0:128], b[128:192], b[192:208]
		d := half(b[208:])
		y := dst[i*QK_K : i*QK_K+QK_K]
		for n := 0; n < QK_K; n += 128 {
			for l := 0; l < 32; l++ {
				is := l / 16
				q1 := int8((ql[l]&0xF)|((qh[l]>>0)&3)<<4) - 32
				q2 := int8((ql[l+32]&0xF)|((qh[l]>>2)&3)<<4) - 32
				q3 := int8((ql[l]>>4)|((qh[l]>>4)&3)<<4) - 32
				q4 := int8((ql[l+32]>>4)|((qh[l]>>6)&3)<<4) - 32
				y[l] = float32(d*float32(int8(sc[is]))) * float32(q1)
				y[l+32] = float32(d*float32(int8(sc[is+2]))) * float32(q2)
				y[l+64] = float32(d*float32(int8(sc[is+4]))) * float32(q3)
				y[l+96] = float32(d*float32(int8(sc[is+6]))) * float32(q4)
			}
			y = y[128:]
			ql = ql[64:]
			qh = qh[32:]
			sc = sc[8:]
		}
	}
}
