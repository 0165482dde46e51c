package gguf

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// BenchmarkDequantize: float32 elements per second of one core (Serial)
// and of all cores (Parallel) for the types Ollama ships Phi-3 in.
func BenchmarkDequantize(b *testing.B) {
	const n = 1 << 22
	for _, typ := range []Type{Q4_0, Q8_0, Q4_K, Q5_K, Q6_K, F16} {
		r := rand.New(rand.NewPCG(1, 2))
		src := make([]byte, typ.RowBytes(n))
		for i := range src {
			src[i] = byte(r.IntN(256))
		}
		if h, ok := halfOffsets[typ]; ok {
			for i := 0; i < len(src); i += typ.TypeSize() {
				for _, o := range h.offs {
					binary.LittleEndian.PutUint16(src[i+o:], randomHalf(r, true))
				}
			}
		}
		dst := make([]float32, n)
		for _, par := range []bool{false, true} {
			name := typ.String() + "/Serial"
			f := Dequantize
			if par {
				name, f = typ.String()+"/Parallel", DequantizeParallel
			}
			b.Run(name, func(b *testing.B) {
				b.SetBytes(4 * n)
				for b.Loop() {
					if err := f(typ, src, dst); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
