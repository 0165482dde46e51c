package nf4

import (
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
)

// bnbFormula is create_dynamic_map evaluated in float64: the values the
// float32 map must round from (up to the float32 steps inside it).
func bnbFormula(signed bool) []float64 {
	var v []float64
	for i := 0; i < 7; i++ {
		items := 1<<i + 1
		if !signed {
			items = 1<<(i+1) + 1
		}
		for k := 0; k+1 < items; k++ {
			a := 0.1 + 0.9*float64(k)/float64(items-1)
			b := 0.1 + 0.9*float64(k+1)/float64(items-1)
			x := math.Pow10(i-6) * (a + b) / 2
			v = append(v, x)
			if signed {
				v = append(v, -x)
			}
		}
	}
	return append(v, 0, 1)
}

func TestDynamicMapShape(t *testing.T) {
	for _, signed := range []bool{true, false} {
		m := DynamicMap(signed)
		for i := 1; i < 256; i++ {
			if !(m[i-1] < m[i]) {
				t.Fatalf("signed=%v: map not strictly increasing at %d: %v, %v", signed, i, m[i-1], m[i])
			}
		}
		if m[255] != 1 {
			t.Errorf("signed=%v: last entry %v, want 1", signed, m[255])
		}
		// Every entry is within 3 float32 ulps of the float64 formula.
		want := bnbFormula(signed)
		if len(want) != 256 {
			t.Fatalf("formula gives %d values", len(want))
		}
		used := make([]bool, 256)
		for _, x := range want {
			k := -1
			for j := range m {
				if !used[j] && math.Abs(float64(m[j])-x) <= 3*ulp32(x) {
					k = j
					break
				}
			}
			if k < 0 {
				t.Fatalf("signed=%v: formula value %v has no entry within 3 ulp", signed, x)
			}
			used[k] = true
		}
	}
	s := DynamicMap(true)
	// Endpoints: -(0.98593750 + 1) / 2 (the last linspace(0.1, 1, 65) midpoint), 0 at 127, 1e-6 * 0.55 at 128.
	if s[0] != -0.99296875 && s[0] != math.Nextafter32(-0.99296875, 0) {
		t.Errorf("signed[0] = %v, want about -0.99296875", s[0])
	}
	if s[127] != 0 || math.Abs(float64(s[128])-5.5e-7) > 1e-12 || s[254] != -s[0] {
		t.Errorf("signed[127..128] = %v, %v; [254] = %v", s[127], s[128], s[254])
	}
	u := DynamicMap(false)
	if u[0] != 0 || math.Abs(float64(u[1])-3.25e-7) > 1e-12 {
		t.Errorf("unsigned[0..1] = %v, %v; want 0, 3.25e-7", u[0], u[1])
	}
}

func ulp32(x float64) float64 {
	f := float32(math.Abs(x))
	return float64(math.Nextafter32(f, 2) - f)
}

func TestQuantizeDynamicIsNearestWithMidpointTies(t *testing.T) {
	for _, signed := range []bool{true, false} {
		m := DynamicMap(signed)
		r := rand.New(rand.NewPCG(9, 10))
		check := func(x float32) {
			got := int(QuantizeDynamic(&m, x))
			best, bd := 0, math.Inf(1)
			for k, v := range m {
				if d := math.Abs(float64(x) - float64(v)); d < bd {
					best, bd = k, d
				}
			}
			if got == best {
				return
			}
			// Only a value on a float32 midpoint may go either way.
			lo, hi := min(got, best), max(got, best)
			if hi-lo != 1 || x != float32(m[lo]+m[hi])*0.5 {
				t.Fatalf("signed=%v: QuantizeDynamic(%v) = %d (%v), nearest is %d (%v)", signed, x, got, m[got], best, m[best])
			}
		}
		for range 200000 {
			x := float32(r.Float64()*2 - 1)
			if !signed {
				x = float32(r.Float64())
			}
			check(x)
			check(x * 1e-4)
		}
		for k := 0; k < 255; k++ {
			check(float32(m[k]+m[k+1]) * 0.5)
			check(m[k])
		}
		check(-1)
		check(1)
		if got := QuantizeDynamic(&m, float32(math.NaN())); got != 0 {
			t.Errorf("NaN -> %d, want 0", got)
		}
	}
}

// bitsandbytes' test_dynamic_blockwise_quantization (blocksize 256): on
// randn(1024, 1024) with the default (signed) map mean |err| < 0.011 and
// mean rel err < 0.018; on rand(1024, 1024) with the signed map abserr <
// 0.0036 and relerr < 0.015, with the unsigned map abserr < 0.0023 and
// relerr < 0.012.
func TestBlockwise8RoundTripMeetsBitsandbytesBars(t *testing.T) {
	const n = 1024 * 1024
	r := rand.New(rand.NewPCG(11, 12))
	normal := make([]float32, n)
	uniform := make([]float32, n)
	for i := range normal {
		normal[i] = float32(r.NormFloat64())
		uniform[i] = float32(r.Float64())
	}
	signed, unsigned := DynamicMap(true), DynamicMap(false)
	cases := []struct {
		name           string
		x              []float32
		code           *[256]float32
		maxErr, maxRel float64
	}{
		{"randn signed", normal, &signed, 0.011, 0.018},
		{"rand signed", uniform, &signed, 0.0036, 0.015},
		{"rand unsigned", uniform, &unsigned, 0.0023, 0.012},
	}
	back := make([]float32, n)
	for _, c := range cases {
		codes, absmax := QuantizeBlockwise8(c.x, c.code, 256)
		if len(absmax) != n/256 {
			t.Fatalf("%s: %d absmax values, want %d", c.name, len(absmax), n/256)
		}
		DequantizeBlockwise8(codes, absmax, c.code, 256, back)
		var es, rs float64
		for i, v := range c.x {
			e := math.Abs(float64(v) - float64(back[i]))
			es += e
			rs += e / math.Abs(float64(v)+1e-8)
		}
		es, rs = es/n, rs/n
		t.Logf("%s: mean |err| %.6f (bar %g), mean rel err %.6f (bar %g)", c.name, es, c.maxErr, rs, c.maxRel)
		if es >= c.maxErr || rs >= c.maxRel {
			t.Errorf("%s: fails bitsandbytes' bar", c.name)
		}
	}
}

func TestBlockwise8PartialBlockAndZeroBlock(t *testing.T) {
	m := DynamicMap(true)
	x := make([]float32, 300) // one full block of zeros, one partial block of 44
	x[256] = -2
	x[299] = 1
	codes, absmax := QuantizeBlockwise8(x, &m, 256)
	if len(codes) != 300 || len(absmax) != 2 || absmax[0] != 0 || absmax[1] != 2 {
		t.Fatalf("codes %d, absmax %v", len(codes), absmax)
	}
	if codes[256] != 0 || codes[299] != QuantizeDynamic(&m, 0.5) {
		t.Errorf("partial block codes %d, %d; want 0 (-1) and the code of 0.5", codes[256], codes[299])
	}
	back := make([]float32, 300)
	DequantizeBlockwise8(codes, absmax, &m, 256, back)
	for i := 0; i < 256; i++ {
		if back[i] != 0 {
			t.Fatalf("zero block value %d dequantizes to %v", i, back[i])
		}
	}
	if back[256] != float32(m[0]*2) {
		t.Errorf("-absmax dequantizes to %v, want %v", back[256], m[0]*2)
	}
}

func exactMeanRat(x []float32) float32 {
	s := new(big.Rat)
	for _, v := range x {
		s.Add(s, new(big.Rat).SetFloat64(float64(v)))
	}
	sum, _ := s.Float64() // nearest float64 to the exact sum
	return float32(sum / float64(len(x)))
}

func TestMeanIsOrderIndependentAndExact(t *testing.T) {
	// float32 accumulation would lose the ones next to 2^24.
	x := []float32{1 << 24, 1, 1}
	if got, want := Mean(x), float32(16777218.0/3); got != want {
		t.Errorf("Mean(%v) = %v, want %v", x, got, want)
	}
	r := rand.New(rand.NewPCG(13, 14))
	for trial := range 20 {
		n := 1 + r.IntN(5000)
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(math.Abs(r.NormFloat64()) * math.Pow(2, float64(r.IntN(60)-30)))
			if trial == 0 && i%3 == 0 {
				v[i] = math.Float32frombits(uint32(r.IntN(1 << 23))) // subnormals
			}
		}
		want := exactMeanRat(v)
		if got := Mean(v); got != want {
			t.Fatalf("trial %d: Mean = %v, exact %v", trial, got, want)
		}
		r.Shuffle(n, func(i, j int) { v[i], v[j] = v[j], v[i] })
		if got := Mean(v); got != want {
			t.Fatalf("trial %d: Mean depends on order: %v vs %v", trial, got, want)
		}
	}
	if !math.IsInf(float64(Mean([]float32{1, float32(math.Inf(1))})), 1) {
		t.Error("Mean with +Inf should be +Inf")
	}
}
