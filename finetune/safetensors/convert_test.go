package safetensors

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestBF16ToF32HandValues(t *testing.T) {
	cases := []struct {
		h    uint16
		want float32
	}{
		{0x3F80, 1}, {0xC000, -2}, {0x0000, 0}, {0x4049, 3.140625}, {0x3E80, 0.25},
		{0x7F7F, 3.3895314e38},                 // largest finite bf16
		{0x0080, float32(math.Ldexp(1, -126))}, // smallest normal
		{0x0001, float32(math.Ldexp(1, -133))}, // smallest subnormal
		{0x7F80, float32(math.Inf(1))}, {0xFF80, float32(math.Inf(-1))},
	}
	for _, c := range cases {
		if got := BF16ToF32(c.h); got != c.want {
			t.Errorf("BF16ToF32(%#04x) = %g, want %g", c.h, got, c.want)
		}
	}
	if got := BF16ToF32(0x8000); got != 0 || !math.Signbit(float64(got)) {
		t.Errorf("BF16ToF32(0x8000) = %g, want -0", got)
	}
	if got := BF16ToF32(0x7FC0); got == got {
		t.Errorf("BF16ToF32(0x7FC0) = %g, want NaN", got)
	}
}

func TestF32ToBF16RoundsToNearestEven(t *testing.T) {
	cases := []struct {
		bits uint32
		want uint16
		why  string
	}{
		{0x3F800000, 0x3F80, "1.0 exact"},
		{0x3F808000, 0x3F80, "tie between 0x3F80 and 0x3F81 goes to even 0x3F80"},
		{0x3F818000, 0x3F82, "tie between 0x3F81 and 0x3F82 goes to even 0x3F82"},
		{0x3F808001, 0x3F81, "just above a tie rounds up"},
		{0x3F807FFF, 0x3F80, "just below a tie rounds down"},
		{0xBF818000, 0xBF82, "negative tie to even"},
		{0x7F7FFFFF, 0x7F80, "max float32 rounds to +inf"},
		{0x7F7F7FFF, 0x7F7F, "largest bf16 stays"},
		{0x00018000, 0x0002, "subnormal tie to even"},
		{0x80000000, 0x8000, "-0"},
		{0x7F800000, 0x7F80, "+inf"},
		{0xFF800000, 0xFF80, "-inf"},
		{0x7F800001, 0x7FC0, "signalling NaN becomes canonical quiet NaN"},
		{0xFFC00000, 0x7FC0, "negative NaN becomes 0x7FC0 (torch drops the sign)"},
	}
	for _, c := range cases {
		if got := F32ToBF16(math.Float32frombits(c.bits)); got != c.want {
			t.Errorf("F32ToBF16(%#08x) = %#04x, want %#04x (%s)", c.bits, got, c.want, c.why)
		}
	}
}

// nearestEven picks between two neighbouring encodings lo < hi (as
// magnitudes) by float64 distance, ties to the even encoding: an
// independent statement of round-to-nearest-even.
func nearestEven(x, a, b float64, ea, eb uint16) uint16 {
	da, db := math.Abs(x-a), math.Abs(x-b)
	switch {
	case da < db:
		return ea
	case db < da:
		return eb
	case ea&1 == 0:
		return ea
	}
	return eb
}

func TestF32ToBF16MatchesDistanceRule(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		bits := r.Uint32()
		if i%4 == 0 {
			bits = bits&0xFFFF0000 | 0x8000 // force ties
		}
		f := math.Float32frombits(bits)
		if f != f || math.IsInf(float64(f), 0) {
			continue
		}
		lo := uint16(bits >> 16)
		hi := lo + 1 // next magnitude; 0x7F80/0xFF80 is infinity
		a, b := float64(BF16ToF32(lo)), float64(BF16ToF32(hi))
		want := nearestEven(float64(f), a, b, lo, hi)
		if hi&0x7FFF == 0x7F80 { // above the largest finite: IEEE overflow rule
			limit := float64(BF16ToF32(lo)) + (float64(BF16ToF32(lo))-float64(BF16ToF32(lo-1)))/2
			if math.Abs(float64(f)) >= math.Abs(limit) {
				want = hi
			} else {
				want = lo
			}
		}
		if got := F32ToBF16(f); got != want {
			t.Fatalf("F32ToBF16(%#08x = %g) = %#04x, want %#04x", bits, f, got, want)
		}
	}
}

func TestF16ToF32AllValues(t *testing.T) {
	// Every half against the definition: (-1)^s * 2^(e-15) * (1 + m/1024),
	// or 2^-14 * m/1024 for subnormals.
	for h := 0; h < 1<<16; h++ {
		s, e, m := h>>15, (h>>10)&0x1F, h&0x3FF
		got := F16ToF32(uint16(h))
		if e == 0x1F {
			if m == 0 && !math.IsInf(float64(got), 1-2*s) {
				t.Fatalf("F16ToF32(%#04x) = %g, want infinity", h, got)
			}
			if m != 0 && got == got {
				t.Fatalf("F16ToF32(%#04x) = %g, want NaN", h, got)
			}
			continue
		}
		var want float64
		if e == 0 {
			want = math.Ldexp(float64(m), -24)
		} else {
			want = math.Ldexp(1+float64(m)/1024, e-15)
		}
		if s == 1 {
			want = -want
		}
		if float64(got) != want || math.Signbit(float64(got)) != (s == 1) {
			t.Fatalf("F16ToF32(%#04x) = %g, want %g", h, got, want)
		}
	}
	// Hand values the brief names.
	if got := F16ToF32(0x0001); got != 5.9604645e-08 {
		t.Errorf("F16ToF32(0x0001) = %g, want 5.96e-8", got)
	}
	if got := F16ToF32(0x3C00); got != 1 {
		t.Errorf("F16ToF32(0x3C00) = %g", got)
	}
	if got := F16ToF32(0x7BFF); got != 65504 {
		t.Errorf("F16ToF32(0x7BFF) = %g", got)
	}
}

func TestF32ToF16RoundTripAndTies(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := F16ToF32(uint16(h))
		got := F32ToF16(f)
		if f != f {
			if got&0x7C00 != 0x7C00 || got&0x3FF == 0 {
				t.Fatalf("F32ToF16(NaN from %#04x) = %#04x, not a NaN", h, got)
			}
			continue
		}
		if got != uint16(h) {
			t.Fatalf("F32ToF16(F16ToF32(%#04x)) = %#04x", h, got)
		}
	}
	// Midpoints between every pair of neighbouring finite halves (exact in
	// float32) go to the even one; a float32 ulp either side decides.
	for h := 0; h < 0x7BFF; h++ {
		for _, sign := range []uint16{0, 0x8000} {
			lo, hi := uint16(h)|sign, uint16(h+1)|sign
			m := (F16ToF32(lo) + F16ToF32(hi)) / 2
			even := lo
			if lo&1 == 1 {
				even = hi
			}
			if got := F32ToF16(m); got != even {
				t.Fatalf("F32ToF16(midpoint %g of %#04x,%#04x) = %#04x, want even %#04x", m, lo, hi, got, even)
			}
			away := math.Nextafter32(m, float32(math.Copysign(math.Inf(1), float64(m))))
			if sign == 0 && m == 0 {
				continue
			}
			if got := F32ToF16(away); got != hi {
				t.Fatalf("F32ToF16(%g, just past the midpoint) = %#04x, want %#04x", away, got, hi)
			}
			toward := math.Nextafter32(m, 0)
			if got := F32ToF16(toward); got != lo {
				t.Fatalf("F32ToF16(%g, just short of the midpoint) = %#04x, want %#04x", toward, got, lo)
			}
		}
	}
	cases := []struct {
		f    float32
		want uint16
	}{
		{1, 0x3C00}, {-2, 0xC000}, {65504, 0x7BFF}, {65519.996, 0x7BFF},
		{65520, 0x7C00}, // the tie between 65504 and 2^16 goes to the even: infinity
		{1e6, 0x7C00}, {-1e6, 0xFC00},
		{float32(math.Ldexp(1, -24)), 0x0001},
		{float32(math.Ldexp(1, -25)), 0x0000}, // tie between 0 and the smallest subnormal
		{float32(math.Ldexp(1.0000001, -25)), 0x0001},
		{float32(math.Ldexp(3, -25)), 0x0002}, // tie between 1 and 2 subnormal units
		{1e-10, 0x0000}, {-1e-10, 0x8000},
		{float32(math.Inf(1)), 0x7C00}, {float32(math.Inf(-1)), 0xFC00},
		{float32(math.NaN()), 0x7E00},
		{math.Float32frombits(0xFFC00001), 0xFE00},
	}
	for _, c := range cases {
		if got := F32ToF16(c.f); got != c.want {
			t.Errorf("F32ToF16(%g) = %#04x, want %#04x", c.f, got, c.want)
		}
	}
}

func TestToFloat32AndIntegers(t *testing.T) {
	vals := []float32{1, -2, 0.5, float32(math.Inf(1)), 65504, 1.0 / 3}
	for _, dt := range []DType{F32, F16, BF16, F64} {
		ti, err := FromFloat32("x", dt, []int{2, 3}, vals)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ToFloat32(ti)
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range vals {
			want := v
			switch dt {
			case F16:
				want = F16ToF32(F32ToF16(v))
			case BF16:
				want = BF16ToF32(F32ToBF16(v))
			}
			if got[i] != want {
				t.Errorf("%s element %d: got %g want %g", dt, i, got[i], want)
			}
		}
	}
	// Large enough to take the parallel path.
	big := make([]float32, 3<<20)
	for i := range big {
		big[i] = float32(i%256) - 128 // exact in bf16
	}
	ti, _ := FromFloat32("big", BF16, []int{len(big)}, big)
	got, err := ToFloat32(ti)
	if err != nil {
		t.Fatal(err)
	}
	for i := range big {
		if got[i] != big[i] {
			t.Fatalf("big[%d] = %g, want %g", i, got[i], big[i])
		}
	}

	i64, _ := FromInt64("ids", []int{3}, []int64{-100, 32000, 1 << 40})
	if v, err := Int64s(i64); err != nil || v[0] != -100 || v[1] != 32000 || v[2] != 1<<40 {
		t.Errorf("Int64s = %v, %v", v, err)
	}
	if _, err := Int32s(i64); err == nil {
		t.Errorf("Int32s accepted 2^40")
	}
	small, _ := FromInt64("labels", []int{2}, []int64{-100, 7})
	if v, err := Int32s(small); err != nil || v[0] != -100 || v[1] != 7 {
		t.Errorf("Int32s = %v, %v", v, err)
	}
	b := TensorInfo{Name: "mask", DType: BOOL, Shape: []int{2}, Data: []byte{1, 0}}
	if v, err := Int32s(b); err != nil || v[0] != 1 || v[1] != 0 {
		t.Errorf("Int32s(BOOL) = %v, %v", v, err)
	}
	i8 := TensorInfo{Name: "q", DType: I8, Shape: []int{1}, Data: []byte{0x80}}
	if v, _ := Int64s(i8); v[0] != -128 {
		t.Errorf("I8 0x80 = %d, want -128", v[0])
	}
	if _, err := ToFloat32(i64); err == nil {
		t.Errorf("ToFloat32 accepted an I64 tensor")
	}
	if _, err := Int64s(ti); err == nil {
		t.Errorf("Int64s accepted a BF16 tensor")
	}
	short := TensorInfo{Name: "s", DType: F32, Shape: []int{2}, Data: make([]byte, 4)}
	if _, err := ToFloat32(short); err == nil {
		t.Errorf("ToFloat32 accepted 4 bytes for F32 [2]")
	}
}
