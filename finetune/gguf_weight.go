package finetune

import (
	"fmt"

	"github.com/ollama-tune/ollama-tune/finetune/gguf"
)

// Keeping a GGUF base in its own quantization (quantization.keep_gguf).
//
// GGUF stores a matrix [out, in] row by row, each row a whole number of
// blocks (ggml requires in to be a multiple of the block size), so any row
// can be dequantized alone from its bytes. A GGUFMatrix is one frozen
// linear weight under its Hugging Face name, as rows of one or more GGUF
// tensors (llama's q, k and v fused into qkv_proj, with llama.cpp's q/k row
// permutation undone row by row); a backend that implements GGUFWeighter
// dequantizes a tile of rows right before a matmul uses it, as it does for
// NF4, so the full-precision matrix never exists and the base the adapter
// trains on is the very blocks Ollama serves. The dequantization is the
// bit-exact port of ggml-quants.c (finetune/gguf).

// GGUFMatrix is a frozen [out, in] weight kept as GGUF blocks. Its bytes
// alias the GGUF file: they are valid until the GGUFBase is closed.
type GGUFMatrix struct {
	Name    string // Hugging Face name, e.g. model.layers.0.mlp.down_proj.weight
	out, in int
	parts   []ggufMatrixPart
}

type ggufMatrixPart struct {
	tensor   string
	typ      gguf.Type
	data     []byte
	rows     int
	rowBytes int
	heads    int // > 0: llama.cpp permuted the rows of this q or k weight
}

// GGUFWeighter is implemented by backends that can keep a base weight in
// its GGUF quantization. The CPU backend does; a backend without it cannot
// train with quantization.keep_gguf.
type GGUFWeighter interface {
	GGUFWeight(m *GGUFMatrix) (Weight, error)
}

// Out is the number of rows.
func (m *GGUFMatrix) Out() int { return m.out }

// In is the number of columns.
func (m *GGUFMatrix) In() int { return m.in }

// Bytes is the size of the GGUF blocks.
func (m *GGUFMatrix) Bytes() int64 {
	var n int64
	for _, p := range m.parts {
		n += int64(len(p.data))
	}
	return n
}

// Types lists the GGUF types of the matrix's parts, in order.
func (m *GGUFMatrix) Types() []gguf.Type {
	out := make([]gguf.Type, len(m.parts))
	for i, p := range m.parts {
		out[i] = p.typ
	}
	return out
}

// DequantizeRows writes rows [row0, row0+n) as float32 into dst[:n*In()].
func (m *GGUFMatrix) DequantizeRows(dst []float32, row0, n int) {
	if row0 < 0 || n < 0 || row0+n > m.out || len(dst) < n*m.in {
		panic(fmt.Sprintf("gguf matrix %s [%d, %d]: rows [%d, %d) into %d values", m.Name, m.out, m.in, row0, row0+n, len(dst)))
	}
	p, base := 0, 0 // the part holding row r, and its first row
	for k := 0; k < n; k++ {
		r := row0 + k
		for r >= base+m.parts[p].rows {
			base += m.parts[p].rows
			p++
		}
		part := &m.parts[p]
		g := r - base
		if part.heads > 0 {
			// Hugging Face row h*D + half*D/2 + j is GGUF row h*D + 2j + half
			// (see unpermuteRows).
			d := part.rows / part.heads
			h, rem := g/d, g%d
			half, j := rem/(d/2), rem%(d/2)
			g = h*d + 2*j + half
		}
		src := part.data[g*part.rowBytes : (g+1)*part.rowBytes]
		if err := gguf.Dequantize(part.typ, src, dst[k*m.in:(k+1)*m.in]); err != nil {
			// The types and sizes were checked when the matrix was made.
			panic(fmt.Sprintf("gguf matrix %s: tensor %q row %d: %v", m.Name, part.tensor, g, err))
		}
	}
}

// Matrix returns a linear weight by its Hugging Face name as GGUF blocks,
// checking that every part can be dequantized row by row.
func (b *GGUFBase) Matrix(name string) (*GGUFMatrix, error) {
	s, ok := b.sources[name]
	if !ok {
		return nil, fmt.Errorf("GGUF file %s: no weight %q in a %s model", b.Path, name, b.Arch)
	}
	m := &GGUFMatrix{Name: name}
	for _, sp := range s.parts {
		t, data, err := b.file.TensorData(sp.name)
		if err != nil {
			return nil, err
		}
		if len(t.Dims) != 2 {
			return nil, fmt.Errorf("GGUF file %s: tensor %q has ne %v; a linear weight is 2-D", b.Path, t.Name, t.Dims)
		}
		if !gguf.CanDequantize(t.Type) {
			return nil, fmt.Errorf("GGUF file %s: tensor %q: dequantizing %s is not implemented (supported: %v); re-quantize the model to one of those, e.g. Q4_K_M or Q8_0", b.Path, t.Name, t.Type, gguf.DequantizableTypes())
		}
		in, rows := int(t.Dims[0]), int(t.Dims[1])
		if m.in != 0 && in != m.in {
			return nil, fmt.Errorf("GGUF file %s: tensor %q has %d columns, the other parts of %s %d", b.Path, t.Name, in, name, m.in)
		}
		if in%t.Type.BlockSize() != 0 {
			return nil, fmt.Errorf("GGUF file %s: tensor %q: rows of %d values are not whole %s blocks of %d", b.Path, t.Name, in, t.Type, t.Type.BlockSize())
		}
		rb := int(t.Type.RowBytes(int64(in)))
		if len(data) != rb*rows {
			return nil, fmt.Errorf("GGUF file %s: tensor %q holds %d bytes; %d rows of %s need %d", b.Path, t.Name, len(data), rows, t.Type, rb*rows)
		}
		if sp.heads > 0 && (rows%sp.heads != 0 || (rows/sp.heads)%2 != 0) {
			return nil, fmt.Errorf("GGUF file %s: tensor %q has %d rows, not a multiple of 2 x %d heads", b.Path, t.Name, rows, sp.heads)
		}
		m.in = in
		m.out += rows
		m.parts = append(m.parts, ggufMatrixPart{tensor: t.Name, typ: t.Type, data: data, rows: rows, rowBytes: rb, heads: sp.heads})
	}
	return m, nil
}

// LinearBytes is what the decoder linears take in the file: the storage
// of a model that keeps them as GGUF blocks.
func (b *GGUFBase) LinearBytes() int64 {
	var n int64
	for l := 0; l < b.Config.NumLayers; l++ {
		for _, mod := range LinearModules {
			for _, p := range b.sources[LayerName(l, mod)+".weight"].parts {
				if t, ok := b.file.Tensor(p.name); ok {
					n += t.Size
				}
			}
		}
	}
	return n
}
