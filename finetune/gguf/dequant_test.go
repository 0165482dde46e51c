package gguf

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"
)

// The references below are a second implementation of ggml-quants.c's
// dequantize_row_* written from the block layouts in ggml-common.h: each
// element's quant, scale and min are computed from its index alone, in
// float64, and rounded to float32 once.
//
// Why one rounding at the end equals the C code's float32 steps: every
// intermediate product in these formulas is exact in float32 (an fp16
// significand of 11 bits times integers of at most 8 + 6 bits), so the C
// code rounds only its last operation, a product or a sum of two exact
// terms; float64 holds that exact result as long as the terms' exponents
// are within 53 - 24 bits of each other, which the test data guarantee by
// keeping d and dmin in [2^-14, 2^3) for the types with a min.

func halfRef(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1F
	mant := float64(h & 0x3FF)
	switch exp {
	case 0:
		return sign * mant * math.Pow(2, -24)
	case 31:
		if mant == 0 {
			return sign * math.Inf(1)
		}
		return math.NaN()
	}
	return sign * (1024 + mant) * math.Pow(2, float64(exp-25))
}

func halfAt(b []byte, off int) float64 { return halfRef(binary.LittleEndian.Uint16(b[off:])) }

// refElement returns element e of one block of type t.
func refElement(t Type, b []byte, e int) float64 {
	switch t {
	case Q4_0, Q4_1, Q5_0, Q5_1:
		var d, m float64
		var qs []byte
		var qh uint32
		switch t {
		case Q4_0:
			d, qs = halfAt(b, 0), b[2:]
		case Q4_1:
			d, m, qs = halfAt(b, 0), halfAt(b, 2), b[4:]
		case Q5_0:
			d, qh, qs = halfAt(b, 0), binary.LittleEndian.Uint32(b[2:]), b[6:]
		case Q5_1:
			d, m, qh, qs = halfAt(b, 0), halfAt(b, 2), binary.LittleEndian.Uint32(b[4:]), b[8:]
		}
		q := int(qs[e%16] & 0xF)
		if e >= 16 {
			q = int(qs[e%16] >> 4)
		}
		q += 16 * int((qh>>e)&1) // the fifth bit of element e is bit e of qh
		switch t {
		case Q4_0:
			return float64(q-8) * d
		case Q5_0:
			return float64(q-16) * d
		}
		return float64(q)*d + m
	case Q8_0:
		return float64(int8(b[2+e])) * halfAt(b, 0)
	case Q2_K:
		scales, qs := b[0:16], b[16:80]
		d, dmin := halfAt(b, 80), halfAt(b, 82)
		n, r := e/128, e%128
		j, sub, l := r/32, (r%32)/16, r%16
		sc := scales[n*8+j*2+sub]
		q := (qs[n*32+sub*16+l] >> (2 * j)) & 3
		return d*float64(sc&0xF)*float64(q) - dmin*float64(sc>>4)
	case Q3_K:
		hm, qs, sb := b[0:32], b[32:96], b[96:108]
		d := halfAt(b, 108)
		n, r := e/128, e%128
		j, sub, l := r/32, (r%32)/16, r%16
		k := n*8 + j*2 + sub
		var low int
		if k < 8 {
			low = int(sb[k] & 0xF)
		} else {
			low = int(sb[k-8] >> 4)
		}
		high := int(sb[8+k%4]>>(2*(k/4))) & 3
		scale := low | high<<4
		q := int(qs[n*32+sub*16+l]>>(2*j)) & 3
		if hm[sub*16+l]&(1<<(n*4+j)) == 0 {
			q -= 4
		}
		return d * float64(scale-32) * float64(q)
	case Q4_K, Q5_K:
		d, dmin, sb := halfAt(b, 0), halfAt(b, 2), b[4:16]
		g, l := e/32, e%32
		p, hi := g/2, g%2
		var sc, m int
		if g < 4 {
			sc, m = int(sb[g]&63), int(sb[g+4]&63)
		} else {
			sc = int(sb[g+4]&0xF) | int(sb[g-4]>>6)<<4
			m = int(sb[g+4]>>4) | int(sb[g]>>6)<<4
		}
		var ql []byte
		q := 0
		if t == Q4_K {
			ql = b[16:144]
		} else {
			ql = b[48:176]
			q = 16 * int((b[16+l]>>(2*p+hi))&1)
		}
		if hi == 0 {
			q += int(ql[p*32+l] & 0xF)
		} else {
			q += int(ql[p*32+l] >> 4)
		}
		return d*float64(sc)*float64(q) - dmin*float64(m)
	case Q6_K:
		ql, qh, sc := b[0:128], b[128:192], b[192:208]
		d := halfAt(b, 208)
		n, r := e/128, e%128
		quarter, l := r/32, r%32
		lo := ql[n*64+l+32*(quarter%2)]
		if quarter >= 2 {
			lo >>= 4
		}
		q := int(lo&0xF) | int((qh[n*32+l]>>(2*quarter))&3)<<4 - 32
		return d * float64(int8(sc[n*8+l/16+2*quarter])) * float64(q)
	}
	panic("refElement: " + t.String())
}

// randomHalf is a finite fp16; limited keeps it in [2^-14, 2^3) (random
// sign), the range for which the float64 reference is exact.
func randomHalf(r *rand.Rand, limited bool) uint16 {
	sign := uint16(r.IntN(2)) << 15
	mant := uint16(r.IntN(1024))
	if limited {
		return sign | uint16(1+r.IntN(17))<<10 | mant
	}
	return sign | uint16(r.IntN(31))<<10 | mant // exponents 0..30: zero, subnormals, normals
}

// halfOffsets are the fp16 fields of each block type and whether the type
// has a min (which limits the range of d and dmin, see above).
var halfOffsets = map[Type]struct {
	offs    []int
	withMin bool
}{
	Q4_0: {[]int{0}, false}, Q4_1: {[]int{0, 2}, true}, Q5_0: {[]int{0}, false}, Q5_1: {[]int{0, 2}, true},
	Q8_0: {[]int{0}, false}, Q2_K: {[]int{80, 82}, true}, Q3_K: {[]int{108}, false},
	Q4_K: {[]int{0, 2}, true}, Q5_K: {[]int{0, 2}, true}, Q6_K: {[]int{208}, false},
}

func TestDequantizeMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for typ, h := range halfOffsets {
		const blocks = 64
		bs, ts := typ.BlockSize(), typ.TypeSize()
		src := make([]byte, blocks*ts)
		for i := range src {
			src[i] = byte(r.IntN(256))
		}
		for i := 0; i < blocks; i++ {
			for _, o := range h.offs {
				binary.LittleEndian.PutUint16(src[i*ts+o:], randomHalf(r, h.withMin))
			}
		}
		// Block 0: all bits set in the quants (extreme codes); block 1: all clear.
		for i := range ts {
			src[i], src[ts+i] = 0xFF, 0
		}
		for _, o := range h.offs {
			binary.LittleEndian.PutUint16(src[o:], 0x3C00)    // 1.0
			binary.LittleEndian.PutUint16(src[ts+o:], 0xB800) // -0.5
		}
		dst := make([]float32, blocks*bs)
		if err := Dequantize(typ, src, dst); err != nil {
			t.Fatal(err)
		}
		bad := 0
		for i := 0; i < blocks; i++ {
			for e := 0; e < bs; e++ {
				want := float32(refElement(typ, src[i*ts:(i+1)*ts], e))
				got := dst[i*bs+e]
				if math.Float32bits(got) != math.Float32bits(want) && !(got == 0 && want == 0) {
					if bad++; bad <= 5 {
						t.Errorf("%v block %d element %d: got %v (%#x), want %v (%#x)", typ, i, e, got, math.Float32bits(got), want, math.Float32bits(want))
					}
				}
			}
		}
		if bad > 5 {
			t.Errorf("%v: %d mismatches", typ, bad)
		}
	}
}

// TestDequantizeHandBlocks checks blocks written byte by byte against
// values worked out by hand from the layouts.
func TestDequantizeHandBlocks(t *testing.T) {
	one, half := []byte{0x00, 0x3C}, []byte{0x00, 0x38} // fp16 1.0, 0.5
	check := func(typ Type, b []byte, want map[int]float32) {
		t.Helper()
		y := make([]float32, typ.BlockSize())
		if err := Dequantize(typ, b, y); err != nil {
			t.Fatal(err)
		}
		for e, w := range want {
			if y[e] != w {
				t.Errorf("%v element %d = %v, want %v", typ, e, y[e], w)
			}
		}
	}

	b := make([]byte, 18)
	copy(b, one)
	b[2], b[3] = 0xF0, 0x88 // element 0: 0-8, element 16: 15-8; element 1 and 17: 8-8
	check(Q4_0, b, map[int]float32{0: -8, 16: 7, 1: 0, 17: 0, 2: -8})

	b = make([]byte, 34)
	copy(b, half)
	b[2], b[33] = 0x81, 0x7F // -127 and 127
	check(Q8_0, b, map[int]float32{0: -63.5, 31: 63.5, 1: 0})

	b = make([]byte, 20)
	copy(b, one)
	copy(b[2:], half) // m = 0.5
	b[4] = 0x3A       // element 0: 10, element 16: 3
	check(Q4_1, b, map[int]float32{0: 10.5, 16: 3.5, 1: 0.5})

	b = make([]byte, 22)
	copy(b, one)
	binary.LittleEndian.PutUint32(b[2:], 1<<0|1<<17) // fifth bits of elements 0 and 17
	b[6], b[7] = 0x01, 0x20                          // element 0: 1|16, 16: 0, 1: 0, 17: 2|16
	check(Q5_0, b, map[int]float32{0: 1, 16: -16, 1: -16, 17: 2})

	// Q4_K: d = 1, dmin = 0.5; group 0 scale 2 min 3; group 1 scale 1 min 0;
	// group 4 scale (0x21 & 0xF) | (0xC2 >> 6) << 4 = 49, min (0x21 >> 4) | (3 >> 6) << 4 = 2.
	b = make([]byte, 144)
	copy(b, one)
	copy(b[2:], half)
	sc := b[4:16]
	sc[0], sc[4], sc[1], sc[5], sc[8] = 0xC2, 3, 1, 0, 0x21
	qs := b[16:]
	qs[0] = 0x5A  // element 0 (group 0): 10; element 32 (group 1): 5
	qs[64] = 0x03 // element 128 (group 4): 3
	check(Q4_K, b, map[int]float32{0: 2*10 - 1.5, 32: 5, 128: 49*3 - 1, 1: -1.5})

	// Q5_K: the same block with qh: bit 0 of qh[0] is element 0's fifth bit,
	// bit 1 element 32's, bit 4 element 128's.
	b5 := make([]byte, 176)
	copy(b5, b[:16])
	b5[16] = 1 | 2 | 16
	copy(b5[48:], qs)
	check(Q5_K, b5, map[int]float32{0: 2*26 - 1.5, 32: 21, 128: 49*19 - 1, 1: -1.5})

	// Q6_K: d = 1, scales[0] = -2, scales[2] = 3; element 0: ql[0] low 15,
	// qh[0] bits 0-1 = 2 -> 47 - 32 = 15; element 32: ql[32] low 1, qh[0]
	// bits 2-3 = 1 -> 17 - 32 = -15 with scale sc[2].
	b = make([]byte, 210)
	copy(b[208:], one)
	b[192], b[194] = 0xFE, 3
	b[0], b[32], b[128] = 0x0F, 0x01, 2|1<<2
	check(Q6_K, b, map[int]float32{0: -30, 32: -45, 1: 64})
}

func TestHalfExhaustive(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		got := FP16ToFP32(uint16(h))
		want := halfRef(uint16(h))
		if math.IsNaN(want) {
			if !math.IsNaN(float64(got)) {
				t.Fatalf("%#04x: got %v, want NaN", h, got)
			}
			continue
		}
		if float64(got) != want || math.Signbit(float64(got)) != math.Signbit(want) {
			t.Fatalf("%#04x: got %v, want %v", h, got, want)
		}
		if back := FP32ToFP16(got); back != uint16(h) {
			t.Fatalf("%#04x: FP32ToFP16(%v) = %#04x", h, got, back)
		}
		bf := BF16ToFP32(uint16(h))
		if w := math.Float32frombits(uint32(h) << 16); math.Float32bits(bf) != math.Float32bits(w) {
			t.Fatalf("bf16 %#04x: %v", h, bf)
		}
	}
	var f16, bf16 [2]byte
	for _, typ := range []Type{F16, BF16} {
		for h := 0; h < 1<<16; h += 257 {
			binary.LittleEndian.PutUint16(f16[:], uint16(h))
			copy(bf16[:], f16[:])
			y := make([]float32, 1)
			if err := Dequantize(typ, f16[:], y); err != nil {
				t.Fatal(err)
			}
			want := FP16ToFP32(uint16(h))
			if typ == BF16 {
				want = BF16ToFP32(uint16(h))
			}
			if math.Float32bits(y[0]) != math.Float32bits(want) && !math.IsNaN(float64(want)) {
				t.Fatalf("%v %#04x: %v, want %v", typ, h, y[0], want)
			}
		}
	}
}

// nearestHalf is round-to-nearest-even to fp16 by search over the
// (monotone) positive codes, with float64 distances (exact).
func nearestHalf(x float32) uint16 {
	if math.IsNaN(float64(x)) {
		return 0x7E00
	}
	sign := uint16(0)
	v := float64(x)
	if v < 0 || (v == 0 && math.Signbit(v)) {
		sign, v = 0x8000, -v
	}
	if v >= 65520 { // halfway between 65504 and 65536 and beyond
		return sign | 0x7C00
	}
	lo, hi := uint16(0), uint16(0x7BFF)
	for lo < hi { // the largest code whose value is <= v
		mid := (lo + hi + 1) / 2
		if halfRef(mid) <= v {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	if lo == 0x7BFF {
		return sign | lo
	}
	dl, du := v-halfRef(lo), halfRef(lo+1)-v
	if du < dl || (du == dl && lo%2 == 1) {
		lo++
	}
	return sign | lo
}

func TestFP32ToFP16(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	cases := []float32{0, float32(math.Copysign(0, -1)), 1, -1, 65504, 65519.996, 65520, 1e10, float32(math.Inf(-1)),
		5.9604645e-08, 2.9802322e-08, 2.9802326e-08, 8.940697e-08, 1e-10, 0.1, 1.0009766, 1.0004883, 1.0014648}
	for i := 0; i < 200000; i++ {
		// Random bit patterns over the half range and beyond.
		exp := uint32(100 + r.IntN(60))
		cases = append(cases, math.Float32frombits(uint32(r.IntN(2))<<31|exp<<23|uint32(r.IntN(1<<23))))
	}
	for _, x := range cases {
		if got, want := FP32ToFP16(x), nearestHalf(x); got != want {
			t.Fatalf("FP32ToFP16(%g = %#08x) = %#04x, want %#04x", x, math.Float32bits(x), got, want)
		}
	}
	if got := FP32ToFP16(float32(math.NaN())); got&0x7FFF != 0x7E00 {
		t.Errorf("NaN -> %#04x", got)
	}
}

func TestFP32ToBF16(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 200000; i++ {
		u := r.Uint32()
		x := math.Float32frombits(u)
		got := FP32ToBF16(x)
		if math.IsNaN(float64(x)) {
			if y := BF16ToFP32(got); !math.IsNaN(float64(y)) || got&0x40 == 0 {
				t.Fatalf("NaN %#08x -> %#04x", u, got)
			}
			continue
		}
		// Nearest of the two bf16 neighbours by exact float64 distance; ties to even.
		lo := uint16(u >> 16)
		vlo, vhi := float64(BF16ToFP32(lo)), float64(BF16ToFP32(lo+1))
		v := float64(x)
		dl, du := math.Abs(v-vlo), math.Abs(vhi-v)
		want := lo
		if math.IsInf(v, 0) {
			du = math.Inf(1) // infinity stays infinity
		} else if math.IsInf(vhi, 0) {
			// Past the largest finite bf16 the rounding behaves as if the
			// exponent went on: the halfway point is half an ulp above it.
			ulp := math.Abs(vlo - float64(BF16ToFP32(lo-1)))
			du = math.Abs(math.Copysign(math.Abs(vlo)+ulp, vlo) - v)
		}
		if du < dl || (du == dl && lo%2 == 1) {
			want = lo + 1
		}
		if got != want {
			t.Fatalf("FP32ToBF16(%g = %#08x) = %#04x, want %#04x", x, u, got, want)
		}
	}
}

func TestDequantizeParallel(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	for _, typ := range []Type{Q4_K, Q8_0, F16} {
		n := 1 << 18
		src := make([]byte, typ.RowBytes(int64(n)))
		for i := range src {
			src[i] = byte(r.IntN(256))
		}
		if typ != F16 {
			for i := 0; i < len(src); i += typ.TypeSize() {
				binary.LittleEndian.PutUint16(src[i:], randomHalf(r, true))
				if typ == Q4_K {
					binary.LittleEndian.PutUint16(src[i+2:], randomHalf(r, true))
				}
			}
		}
		a, b := make([]float32, n), make([]float32, n)
		if err := Dequantize(typ, src, a); err != nil {
			t.Fatal(err)
		}
		if err := DequantizeParallel(typ, src, b); err != nil {
			t.Fatal(err)
		}
		for i := range a {
			if math.Float32bits(a[i]) != math.Float32bits(b[i]) && !math.IsNaN(float64(a[i])) {
				t.Fatalf("%v element %d: serial %v, parallel %v", typ, i, a[i], b[i])
			}
		}
	}
}
