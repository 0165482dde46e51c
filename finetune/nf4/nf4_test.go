package nf4

import (
	"math"
	"math/rand/v2"
	"testing"
)

// countRule is the decision tree restated: the code is the number of
// thresholds that x exceeds (what testdata/nf4_ref.py computes).
func countRule(x float32) byte {
	var c byte
	for _, t := range thresholds {
		if x > t {
			c++
		}
	}
	return c
}

func TestThresholdsAreMidpointsAndTreeIsNearestCode(t *testing.T) {
	for k, th := range thresholds {
		mid := (float64(Codebook[k]) + float64(Codebook[k+1])) / 2
		if math.Abs(float64(th)-mid) > 1e-6 {
			t.Errorf("threshold %d = %v, midpoint of codes %d,%d is %v", k, th, k, k+1, mid)
		}
		if !(Codebook[k] < th && th < Codebook[k+1]) {
			t.Errorf("threshold %d = %v not between its codes", k, th)
		}
	}
	var xs []float32
	for _, th := range thresholds {
		xs = append(xs, th, math.Nextafter32(th, 2), math.Nextafter32(th, -2))
	}
	xs = append(xs, Codebook[:]...)
	xs = append(xs, -2, 2, float32(math.Inf(1)), float32(math.Inf(-1)), 0, float32(math.Copysign(0, -1)))
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		xs = append(xs, float32(r.Float64()*2.2-1.1))
	}
	for _, x := range xs {
		got := quantizeNF4(x)
		if want := countRule(x); got != want {
			t.Fatalf("quantizeNF4(%v) = %d, threshold count %d", x, got, want)
		}
		// Away from ties the tree picks the nearest code.
		best, bd := 0, math.Inf(1)
		for k, c := range Codebook {
			if d := math.Abs(float64(x) - float64(c)); d < bd {
				best, bd = k, d
			}
		}
		onTie := false
		for _, th := range thresholds {
			onTie = onTie || x == th
		}
		if !onTie && x >= -1 && x <= 1 && int(got) != best {
			t.Fatalf("quantizeNF4(%v) = %d, nearest code is %d", x, got, best)
		}
	}
	for k, th := range thresholds {
		if got := quantizeNF4(th); got != byte(k) {
			t.Errorf("x exactly on threshold %d: code %d, want the lower code %d (bitsandbytes' strict >)", k, got, k)
		}
	}
	if got := quantizeNF4(float32(math.NaN())); got != 0 {
		t.Errorf("NaN -> code %d, want 0 as on the GPU", got)
	}
}

func TestBlockHittingEveryCodeRoundTripsExactly(t *testing.T) {
	w := make([]float32, 64)
	for j := range w {
		w[j] = Codebook[j%16] * 0.75
	}
	q := Quantize(w, 1, 64, false)
	if q.Absmax[0] != 0.75 {
		t.Fatalf("absmax %v, want 0.75", q.Absmax[0])
	}
	for k := 0; k < 32; k++ {
		hi, lo := byte(2*k%16), byte((2*k+1)%16)
		if q.Codes[k] != hi<<4|lo {
			t.Fatalf("byte %d = %#02x, want %#02x (codes %d then %d, first in the high nibble)", k, q.Codes[k], hi<<4|lo, hi, lo)
		}
	}
	got := make([]float32, 64)
	q.Dequantize(got)
	for j := range w {
		// Codebook[c] * 0.75 is exactly how w was built.
		if got[j] != w[j] {
			t.Fatalf("value %d: %v, want %v", j, got[j], w[j])
		}
	}
}

func TestNibbleOrderAndOddLength(t *testing.T) {
	// 3 x 7 = 21 values: 1 block, 11 bytes, the last low nibble is padding.
	w := make([]float32, 21)
	w[0] = 1     // code 15
	w[1] = -1    // code 0
	w[2] = 0.5   // 0.5 -> nearest 0.44070982 (12) or 0.5626170 (13): threshold 0.50166, so 12
	w[20] = -0.3 // -0.3 -> code 4 (-0.2844) since -0.3397 < -0.3 <= -0.2346
	q := Quantize(w, 3, 7, false)
	if len(q.Codes) != 11 {
		t.Fatalf("%d bytes, want ceil(21/2) = 11", len(q.Codes))
	}
	if q.Codes[0] != 0xF0 {
		t.Errorf("byte 0 = %#02x, want 0xF0 (element 0 high, element 1 low)", q.Codes[0])
	}
	if q.Codes[1]>>4 != 12 {
		t.Errorf("element 2 -> code %d, want 12", q.Codes[1]>>4)
	}
	if q.Codes[10] != 4<<4|7 {
		t.Errorf("last byte %#02x, want 0x47: element 20 -> 4, padding (0 * 1/absmax) -> 7", q.Codes[10])
	}
	got := make([]float32, 21)
	q.Dequantize(got)
	want := []float32{1, -1, Codebook[12]}
	for i, v := range want {
		if got[i] != v {
			t.Errorf("value %d = %v, want %v", i, got[i], v)
		}
	}
	if got[20] != Codebook[4] {
		t.Errorf("value 20 = %v, want %v", got[20], Codebook[4])
	}
}

func TestZeroBlockGivesZerosNotNaN(t *testing.T) {
	for _, dq := range []bool{false, true} {
		w := make([]float32, 3*64+5)
		for i := 64; i < 128; i++ {
			w[i] = float32(i-100) / 64 // block 1 is not zero, blocks 0, 2, 3 are
		}
		q := Quantize(w, 1, len(w), dq)
		if q.BlockAbsmax(0) != 0 && !dq {
			t.Errorf("dq=%v: absmax of a zero block = %v", dq, q.BlockAbsmax(0))
		}
		for _, b := range q.Codes[:32] {
			if b != 0 {
				t.Fatalf("dq=%v: zero block codes %#02x, want 0 (0 * Inf = NaN takes code 0, as in bitsandbytes)", dq, b)
			}
		}
		got := make([]float32, len(w))
		q.Dequantize(got)
		for i, v := range got {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("dq=%v: value %d is %v", dq, i, v)
			}
			if (i < 64 || i >= 128) && v != 0 && !dq {
				t.Fatalf("dq=%v: value %d of a zero block is %v", dq, i, v)
			}
		}
	}
}

func TestDoubleQuantHandComputed(t *testing.T) {
	// Four blocks with absmax 1, 2, 3, 6: mean 3, centred -2, -1, 0, 3, one
	// 256-block with scale 3, normalized by * float32(1/3).
	w := make([]float32, 4*64)
	for b, a := range []float32{1, 2, 3, 6} {
		w[b*64+7] = -a
		w[b*64+8] = a / 2
	}
	q := Quantize(w, 4, 64, true)
	if q.AbsmaxOffset != 3 {
		t.Fatalf("offset %v, want 3", q.AbsmaxOffset)
	}
	if len(q.AbsmaxScales) != 1 || q.AbsmaxScales[0] != 3 {
		t.Fatalf("scales %v, want [3]", q.AbsmaxScales)
	}
	m := DynamicMap(true)
	third := float32(1) / 3
	for b, c := range []float32{-2, -1, 0, 3} {
		x := c * third
		// the nearest entry of the map, found by brute force
		best, bd := 0, math.Inf(1)
		for k, v := range m {
			if d := math.Abs(float64(x) - float64(v)); d < bd {
				best, bd = k, d
			}
		}
		if int(q.AbsmaxCodes[b]) != best {
			t.Errorf("block %d: absmax code %d, nearest map entry to %v is %d (%v)", b, q.AbsmaxCodes[b], x, best, m[best])
		}
		want := float32(m[best]*3) + 3
		if got := q.BlockAbsmax(b); got != want {
			t.Errorf("block %d: dequantized absmax %v, want %v", b, got, want)
		}
	}
	if q.AbsmaxCodes[3] != 255 || q.BlockAbsmax(3) != 6 {
		t.Errorf("largest absmax: code %d -> %v, want 255 -> 6 exactly", q.AbsmaxCodes[3], q.BlockAbsmax(3))
	}
	if q.AbsmaxCodes[2] != 127 || q.BlockAbsmax(2) != 3 {
		t.Errorf("absmax equal to the mean: code %d -> %v, want 127 (zero) -> 3", q.AbsmaxCodes[2], q.BlockAbsmax(2))
	}
	// Values dequantize with the dequantized absmax.
	got := make([]float32, len(w))
	q.Dequantize(got)
	for b := range 4 {
		if want := -q.BlockAbsmax(b); got[b*64+7] != want {
			t.Errorf("block %d: -absmax dequantizes to %v, want %v", b, got[b*64+7], want)
		}
	}
}

// bitsandbytes' test_4bit_quant (nf4, blocksize 64, float32) measured mean
// |error| 0.072792 and mean relative error 0.203299 over 1k randn(1024,
// 1024) samples; it asserts err < 0.1 and relerr < 0.28.
func TestQualityOnRandnMatchesBitsandbytes(t *testing.T) {
	const n = 1024
	r := rand.New(rand.NewPCG(42, 7))
	w := make([]float32, n*n)
	for i := range w {
		w[i] = float32(r.NormFloat64())
	}
	got := make([]float32, len(w))
	for _, dq := range []bool{false, true} {
		q := Quantize(w, n, n, dq)
		q.Dequantize(got)
		var errSum, relSum float64
		for i := range w {
			e := math.Abs(float64(w[i]) - float64(got[i]))
			errSum += e
			relSum += e / (math.Abs(float64(w[i])) + 1e-8)
		}
		errMean, relMean := errSum/float64(len(w)), relSum/float64(len(w))
		t.Logf("double_quant=%v: mean |err| %.6f (bitsandbytes 0.072792), mean rel err %.6f (bitsandbytes 0.203299)", dq, errMean, relMean)
		if errMean >= 0.1 || relMean >= 0.28 {
			t.Errorf("dq=%v: fails bitsandbytes' bar err < 0.1, relerr < 0.28", dq)
		}
		if math.Abs(errMean/0.072792-1) > 0.02 || math.Abs(relMean/0.203299-1) > 0.03 {
			t.Errorf("dq=%v: err %.6f / relerr %.6f not within 2%%/3%% of bitsandbytes' 0.072792 / 0.203299", dq, errMean, relMean)
		}
	}
}

func TestDequantizeRowsMatchesDequantize(t *testing.T) {
	const out, in = 13, 45 // rows straddle block boundaries
	r := rand.New(rand.NewPCG(3, 4))
	w := make([]float32, out*in)
	for i := range w {
		w[i] = float32(r.NormFloat64())
	}
	for _, dq := range []bool{false, true} {
		q := Quantize(w, out, in, dq)
		all := make([]float32, out*in)
		q.Dequantize(all)
		for row0 := 0; row0 < out; row0 += 3 {
			nrows := min(4, out-row0)
			part := make([]float32, nrows*in)
			q.DequantizeRows(part, row0, nrows)
			for i, v := range part {
				if v != all[row0*in+i] {
					t.Fatalf("dq=%v rows %d+%d: value %d = %v, Dequantize has %v", dq, row0, nrows, i, v, all[row0*in+i])
				}
			}
		}
	}
}

func TestParallelQuantizeIsDeterministic(t *testing.T) {
	// Large enough to be split over goroutines; compared with a serial pass.
	const out, in = 64, 3000
	r := rand.New(rand.NewPCG(5, 6))
	w := make([]float32, out*in)
	for i := range w {
		w[i] = float32(r.NormFloat64())
	}
	q := Quantize(w, out, in, true)
	codes := make([]byte, len(q.Codes))
	absmax := make([]float32, NumBlocks(len(w)))
	for b := range absmax {
		quantizeBlock(codes, absmax, w, b)
	}
	for i := range codes {
		if codes[i] != q.Codes[i] {
			t.Fatalf("byte %d: parallel %#02x, serial %#02x", i, q.Codes[i], codes[i])
		}
	}
}

func TestSizesAndBadShapes(t *testing.T) {
	w := make([]float32, 3*1000)
	w[5] = 1
	q := Quantize(w, 3, 1000, true)
	if q.PackedBytes() != 1500 {
		t.Errorf("PackedBytes %d, want 1500", q.PackedBytes())
	}
	nb := int64(NumBlocks(3000)) // 47 blocks, 1 absmax block
	if want := 64 + nb + 4 + 4 + 1024; q.StateBytes() != want {
		t.Errorf("double-quant StateBytes %d, want %d", q.StateBytes(), want)
	}
	q = Quantize(w, 3, 1000, false)
	if want := 64 + 4*nb; q.StateBytes() != want {
		t.Errorf("plain StateBytes %d, want %d", q.StateBytes(), want)
	}
	if Quantize(w, 4, 1000, true) != nil || Check(3000, 4, 1000) == nil {
		t.Error("a shape that does not match the data must be refused")
	}
	if Quantize(nil, 0, 5, true) != nil || Check(0, 0, 5) == nil {
		t.Error("an empty shape must be refused")
	}
}
