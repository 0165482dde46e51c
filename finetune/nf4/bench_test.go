package nf4

import (
	"math/rand/v2"
	"testing"
)

// Phi-3-mini's o_proj, [3072, 3072].
func benchWeight() []float32 {
	r := rand.New(rand.NewPCG(1, 1))
	w := make([]float32, 3072*3072)
	for i := range w {
		w[i] = float32(r.NormFloat64()) * 0.02
	}
	return w
}

func BenchmarkQuantizeDoubleQuant(b *testing.B) {
	w := benchWeight()
	b.SetBytes(int64(4 * len(w)))
	for b.Loop() {
		Quantize(w, 3072, 3072, true)
	}
}

func BenchmarkDequantizeRows(b *testing.B) {
	w := benchWeight()
	q := Quantize(w, 3072, 3072, true)
	dst := make([]float32, 64*3072)
	b.SetBytes(int64(4 * len(w))) // float32 bytes produced per op (the whole weight, 64 rows at a time)
	for b.Loop() {
		for r := 0; r < 3072; r += 64 {
			q.DequantizeRows(dst, r, 64)
		}
	}
}
