package finetune

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/gguf"
)

// TestNewGGUFMatrix: a matrix made from parts in memory hands its parts
// back unchanged, and its rows are the parts' rows, a permuted part's put
// back in Hugging Face order (checked against the permutation written out
// here, not the one DequantizeRows uses).
func TestNewGGUFMatrix(t *testing.T) {
	const in = 64
	vals := func(rows int, seed uint64) []float32 {
		v := make([]float32, rows*in)
		for k := range v {
			v[k] = Normal(seed, uint64(k))
		}
		return v
	}
	qv, vv := vals(8, 1), vals(2, 2)
	q, err := gguf.Quantize(gguf.Q8_0, qv)
	if err != nil {
		t.Fatal(err)
	}
	v, err := gguf.Quantize(gguf.F16, vv)
	if err != nil {
		t.Fatal(err)
	}
	parts := []GGUFPart{
		{Tensor: "q", Type: gguf.Q8_0, Data: q, Rows: 8, RowBytes: 68, Heads: 2},
		{Tensor: "v", Type: gguf.F16, Data: v, Rows: 2, RowBytes: 128},
	}
	m, err := NewGGUFMatrix("w", in, parts)
	if err != nil {
		t.Fatal(err)
	}
	if m.Out() != 10 || m.In() != in || m.Bytes() != int64(len(q)+len(v)) || !slices.Equal(m.Types(), []gguf.Type{gguf.Q8_0, gguf.F16}) {
		t.Errorf("matrix [%d, %d] of %d bytes, types %v", m.Out(), m.In(), m.Bytes(), m.Types())
	}
	got := m.Parts()
	for k := range parts {
		g, w := got[k], parts[k]
		if g.Tensor != w.Tensor || g.Type != w.Type || &g.Data[0] != &w.Data[0] || g.Rows != w.Rows || g.RowBytes != w.RowBytes || g.Heads != w.Heads {
			t.Errorf("part %d: %+v, want %+v", k, g, w)
		}
	}
	stored := make([]float32, 8*in)
	if err := gguf.Dequantize(gguf.Q8_0, q, stored); err != nil {
		t.Fatal(err)
	}
	// Head h of D = 4 rows: HF rows (h*4 + 0, 1, 2, 3) are stored rows
	// (h*4 + 0, 2, 1, 3): the first half of a head's rows is stored at the
	// even positions.
	order := []int{0, 2, 1, 3, 4, 6, 5, 7}
	var want []float32
	for _, s := range order {
		want = append(want, stored[s*in:(s+1)*in]...)
	}
	tail := make([]float32, 2*in)
	if err := gguf.Dequantize(gguf.F16, v, tail); err != nil {
		t.Fatal(err)
	}
	want = append(want, tail...)
	rows := make([]float32, 10*in)
	m.DequantizeRows(rows, 0, 10)
	for k := range want {
		if math.Float32bits(rows[k]) != math.Float32bits(want[k]) {
			t.Fatalf("value %d (row %d): %v, want %v", k, k/in, rows[k], want[k])
		}
	}
}

func TestNewGGUFMatrixErrors(t *testing.T) {
	ok := GGUFPart{Tensor: "t", Type: gguf.Q8_0, Data: make([]byte, 2*68), Rows: 2, RowBytes: 68}
	for _, c := range []struct {
		in    int
		edit  func(p *GGUFPart)
		parts int
		want  string
	}{
		{0, func(p *GGUFPart) {}, 1, "columns"},
		{64, func(p *GGUFPart) {}, 0, "parts"},
		{64, func(p *GGUFPart) { p.Type = gguf.IQ2_XXS }, 1, "not implemented"},
		{48, func(p *GGUFPart) {}, 1, "not whole Q8_0 blocks"},
		{64, func(p *GGUFPart) { p.RowBytes = 64 }, 1, "is 68 bytes, not 64"},
		{64, func(p *GGUFPart) { p.Data = p.Data[1:] }, 1, "holds 135 bytes"},
		{64, func(p *GGUFPart) { p.Heads = 2 }, 1, "multiple of 2 x 2 heads"},
		{64, func(p *GGUFPart) { p.Heads = -1 }, 1, "heads"},
	} {
		p := ok
		c.edit(&p)
		parts := []GGUFPart{p}[:c.parts]
		_, err := NewGGUFMatrix("w", c.in, parts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("want an error with %q, got %v", c.want, err)
		}
	}
}
