package gguf

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// The quantizer references use float64 for each float32 operation of the C
// code and round the result to float32: for a single +, -, *, / of float32
// operands this equals the float32 operation (float64 has more than twice
// float32's precision plus two bits, so the double rounding is harmless).

func f32op(v float64) float64 { return float64(float32(v)) }

func refQ8_0(x []float32) []byte {
	out := make([]byte, 0, len(x)/32*34)
	for i := 0; i < len(x); i += 32 {
		amax := 0.0
		for _, v := range x[i : i+32] {
			amax = math.Max(amax, math.Abs(float64(v)))
		}
		d := f32op(amax / 127)
		id := 0.0
		if d != 0 {
			id = f32op(1 / d)
		}
		out = binary.LittleEndian.AppendUint16(out, nearestHalf(float32(d)))
		for _, v := range x[i : i+32] {
			out = append(out, byte(int8(math.Round(f32op(float64(v)*id)))))
		}
	}
	return out
}

func refQ4_0(x []float32) []byte {
	out := make([]byte, 0, len(x)/32*18)
	for i := 0; i < len(x); i += 32 {
		amax, maxv := 0.0, 0.0
		for _, v := range x[i : i+32] {
			if a := math.Abs(float64(v)); a > amax {
				amax, maxv = a, float64(v)
			}
		}
		d := f32op(maxv / -8)
		id := 0.0
		if d != 0 {
			id = f32op(1 / d)
		}
		out = binary.LittleEndian.AppendUint16(out, nearestHalf(float32(d)))
		for j := 0; j < 16; j++ {
			q := func(v float32) byte {
				t := math.Trunc(f32op(f32op(float64(v)*id) + 8.5))
				return byte(math.Min(15, t))
			}
			out = append(out, q(x[i+j])|q(x[i+16+j])<<4)
		}
	}
	return out
}

func randomValues(r *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.NormFloat64() * math.Pow(10, float64(r.IntN(7)-4)))
	}
	// Some special blocks: all zero, one spike, exact halves, ties.
	for j := 0; j < 32; j++ {
		x[j] = 0
		x[32+j] = float32(j) - 16
		x[64+j] = float32(j%3) * 0.5
	}
	// Equal magnitudes of both signs: Q4_0 takes the first as max.
	for j := 96; j < 128; j++ {
		x[j] = float32(j-112) / 8
	}
	x[96], x[110] = 5, -5
	x[200] = 1e4
	return x
}

func TestQuantizeMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	x := randomValues(r, 32*4096)
	for _, c := range []struct {
		typ  Type
		q    func([]float32) ([]byte, error)
		ref  func([]float32) []byte
		name string
	}{{Q8_0, QuantizeQ8_0, refQ8_0, "Q8_0"}, {Q4_0, QuantizeQ4_0, refQ4_0, "Q4_0"}} {
		got, err := c.q(x)
		if err != nil {
			t.Fatal(err)
		}
		want := c.ref(x)
		if len(got) != len(want) {
			t.Fatalf("%s: %d bytes, want %d", c.name, len(got), len(want))
		}
		bs := c.typ.TypeSize()
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s: block %d byte %d: %#x, want %#x", c.name, i/bs, i%bs, got[i], want[i])
			}
		}
		// The round trip error is bounded by the block scale: half a step for
		// Q8_0 (plus the fp16 rounding of d), one step for Q4_0 (the code for
		// -max clips from 16 to 15).
		y := make([]float32, len(x))
		if err := Dequantize(c.typ, got, y); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(x); i += 32 {
			d := math.Abs(float64(FP16ToFP32(binary.LittleEndian.Uint16(got[i/32*bs:]))))
			bound := 0.5*d + 127*d/1024
			if c.typ == Q4_0 {
				bound = 1.01 * d
			}
			for j := i; j < i+32; j++ {
				if e := math.Abs(float64(x[j]) - float64(y[j])); e > bound+1e-30 {
					t.Fatalf("%s element %d: %v -> %v, error %g > %g", c.name, j, x[j], y[j], e, bound)
				}
			}
		}
		// The zero block has d = 0 (-0 for Q4_0: 0.0f / -8 in C) and decodes to zeros.
		if FP16ToFP32(binary.LittleEndian.Uint16(got)) != 0 || y[0] != 0 || y[31] != 0 {
			t.Errorf("%s: zero block", c.name)
		}
	}
}

func TestQuantizeHandValues(t *testing.T) {
	// Q8_0 of 0, 1, ..., 31 scaled by 127/31: amax = 127 -> d = 1 exactly
	// and q = round(x); the fp16 d is 0x3C00.
	x := make([]float32, 32)
	for j := range x {
		x[j] = float32(j) * 127 / 31
	}
	b, _ := QuantizeQ8_0(x)
	if binary.LittleEndian.Uint16(b) != 0x3C00 || int8(b[2+31]) != 127 || int8(b[2+1]) != 4 || int8(b[2+0]) != 0 {
		t.Errorf("Q8_0: d %#x q %v", binary.LittleEndian.Uint16(b), b[2:])
	}
	// Q4_0 of a block whose largest magnitude is -8: d = 1, q = x + 8 (with
	// 8.5 truncated: 0.49 -> 8, -0.5 -> 8 since -0.5+8.5 = 8), x = 7.6 -> 15.
	x = make([]float32, 32)
	x[0], x[1], x[2], x[16] = -8, 0.49, -0.5, 7.6
	b, _ = QuantizeQ4_0(x)
	if binary.LittleEndian.Uint16(b) != 0x3C00 || b[2] != 0xF0 || b[3] != 0x88 || b[4] != 0x88 {
		t.Errorf("Q4_0: d %#x qs % x", binary.LittleEndian.Uint16(b), b[2:])
	}
	if _, err := QuantizeQ8_0(make([]float32, 31)); err == nil {
		t.Error("Q8_0 of 31 values")
	}
	if _, err := Quantize(Q4_K, make([]float32, 256)); err == nil || !strings.Contains(err.Error(), "Q4_K") {
		t.Errorf("Quantize(Q4_K): %v", err)
	}
	for _, typ := range []Type{F32, F16, BF16} {
		in := []float32{1.5, -2, 0.1}
		b, err := Quantize(typ, in)
		if err != nil {
			t.Fatal(err)
		}
		y := make([]float32, 3)
		if err := Dequantize(typ, b, y); err != nil || y[0] != 1.5 || y[1] != -2 || math.Abs(float64(y[2])-0.1) > 1e-3 {
			t.Errorf("%v round trip: %v %v", typ, y, err)
		}
	}
}
