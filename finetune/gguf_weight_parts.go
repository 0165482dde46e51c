package finetune

import (
	"fmt"

	"github.com/ollama-tune/ollama-tune/finetune/gguf"
)

// A GGUFMatrix's parts, for backends that keep the blocks in their own
// memory: the CUDA backend uploads each part's bytes once and dequantizes
// them on the device with the same arithmetic as finetune/gguf.

// GGUFPart is the rows of one GGUF tensor in a GGUFMatrix, in order.
type GGUFPart struct {
	Tensor   string    // the GGUF tensor's name
	Type     gguf.Type // its ggml type
	Data     []byte    // Rows*RowBytes bytes; from GGUFBase.Matrix they alias the file
	Rows     int
	RowBytes int // Type.RowBytes(In()): a row is a whole number of blocks
	// Heads > 0: llama.cpp permuted the rows of this q or k weight, so
	// Hugging Face row h*D + half*D/2 + j is stored as row h*D + 2j + half
	// (D = Rows/Heads); 0: the rows are in order.
	Heads int
}

// Parts returns the matrix's parts in row order (a copy of the list; the
// Data slices are shared).
func (m *GGUFMatrix) Parts() []GGUFPart {
	out := make([]GGUFPart, len(m.parts))
	for i, p := range m.parts {
		out[i] = GGUFPart{Tensor: p.tensor, Type: p.typ, Data: p.data, Rows: p.rows, RowBytes: p.rowBytes, Heads: p.heads}
	}
	return out
}

// NewGGUFMatrix makes a GGUFMatrix of in columns from parts already in
// memory (GGUFBase.Matrix makes them from a file), with the same checks:
// a type finetune/gguf dequantizes, rows of whole blocks, Data of exactly
// Rows*RowBytes bytes, and a permuted part of whole pairs of rows per head.
func NewGGUFMatrix(name string, in int, parts []GGUFPart) (*GGUFMatrix, error) {
	if in <= 0 || len(parts) == 0 {
		return nil, fmt.Errorf("GGUF matrix %s: %d columns and %d parts; both must be positive", name, in, len(parts))
	}
	m := &GGUFMatrix{Name: name, in: in}
	for _, p := range parts {
		if !gguf.CanDequantize(p.Type) {
			return nil, fmt.Errorf("GGUF matrix %s: tensor %q: dequantizing %s is not implemented (supported: %v)", name, p.Tensor, p.Type, gguf.DequantizableTypes())
		}
		if in%p.Type.BlockSize() != 0 {
			return nil, fmt.Errorf("GGUF matrix %s: tensor %q: rows of %d values are not whole %s blocks of %d", name, p.Tensor, in, p.Type, p.Type.BlockSize())
		}
		if rb := int(p.Type.RowBytes(int64(in))); p.RowBytes != rb {
			return nil, fmt.Errorf("GGUF matrix %s: tensor %q: a row of %d %s values is %d bytes, not %d", name, p.Tensor, in, p.Type, rb, p.RowBytes)
		}
		if p.Rows <= 0 || len(p.Data) != p.Rows*p.RowBytes {
			return nil, fmt.Errorf("GGUF matrix %s: tensor %q holds %d bytes; %d rows of %s need %d", name, p.Tensor, len(p.Data), p.Rows, p.Type, p.Rows*p.RowBytes)
		}
		if p.Heads < 0 || p.Heads > 0 && (p.Rows%p.Heads != 0 || (p.Rows/p.Heads)%2 != 0) {
			return nil, fmt.Errorf("GGUF matrix %s: tensor %q has %d rows, not a multiple of 2 x %d heads", name, p.Tensor, p.Rows, p.Heads)
		}
		m.out += p.Rows
		m.parts = append(m.parts, ggufMatrixPart{tensor: p.Tensor, typ: p.Type, data: p.Data, rows: p.Rows, rowBytes: p.RowBytes, heads: p.Heads})
	}
	return m, nil
}
