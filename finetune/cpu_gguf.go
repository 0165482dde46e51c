package finetune

import "fmt"

var _ GGUFWeighter = (*CPUBackend)(nil)

// GGUFWeight keeps m as GGUF blocks: matmuls dequantize a tile of rows
// into scratch right before use (cpuWeight.rows), rounded to the compute
// dtype as NF4 values are.
func (b *CPUBackend) GGUFWeight(m *GGUFMatrix) (Weight, error) {
	if m == nil || m.out <= 0 || m.in <= 0 {
		return nil, fmt.Errorf("cpu backend: empty GGUF weight")
	}
	return &cpuWeight{out: m.out, in: m.in, g: m, round: b.round}, nil
}
