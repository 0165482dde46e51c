package convert

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/ollama/ollama/fs/ggml"

	"github.com/ollama-tune/ollama-tune/finetune/gguf"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
	"github.com/ollama-tune/ollama-tune/internal/atomicfile"
)

// GGUF files are written with Ollama's own writer (fs/ggml.WriteGGUF, the
// one its converter uses) so the layout is the one Ollama and llama.cpp
// read every day; this file adds what it lacks: atomic replacement of the
// output, tensor payloads made on demand, and the element types.

// DType is a GGUF tensor element type this package writes.
type DType string

const (
	F32  DType = "f32"
	F16  DType = "f16"
	Q8_0 DType = "q8_0"
	Q4_0 DType = "q4_0"
)

// ParseDType reads a --dtype/--quant value.
func ParseDType(s string) (DType, error) {
	switch d := DType(strings.ToLower(s)); d {
	case F32, F16, Q8_0, Q4_0:
		return d, nil
	}
	return "", fmt.Errorf("unknown type %q: want f32, f16, q8_0 or q4_0", s)
}

// ggmlType is ggml's enum ggml_type of d.
func (d DType) ggmlType() uint32 {
	switch d {
	case F16:
		return uint32(ggml.TensorTypeF16)
	case Q8_0:
		return uint32(ggml.TensorTypeQ8_0)
	case Q4_0:
		return uint32(ggml.TensorTypeQ4_0)
	}
	return uint32(ggml.TensorTypeF32)
}

// fileType is general.file_type (enum llama_ftype: ALL_F32 0, MOSTLY_F16
// 1, MOSTLY_Q4_0 2, MOSTLY_Q8_0 7).
func (d DType) fileType() uint32 {
	switch d {
	case F16:
		return 1
	case Q4_0:
		return 2
	case Q8_0:
		return 7
	}
	return 0
}

// blockSize is the number of elements a block of d holds.
func (d DType) blockSize() int {
	if d == Q8_0 || d == Q4_0 {
		return 32
	}
	return 1
}

// encode turns a row-major float32 tensor into d's bytes. Quantized types
// quantize along the rows, whose length must be a multiple of 32.
func (d DType) encode(v []float32) ([]byte, error) {
	switch d {
	case F32:
		return safetensors.EncodeFloat32(safetensors.F32, v)
	case F16:
		return safetensors.EncodeFloat32(safetensors.F16, v)
	case Q8_0:
		return gguf.QuantizeQ8_0(v) // ggml's quantize_row_q8_0_ref
	case Q4_0:
		return gguf.QuantizeQ4_0(v) // ggml's quantize_row_q4_0_ref
	}
	return nil, fmt.Errorf("cannot encode tensors as %q", d)
}

// lazyTensor makes its payload only when the writer asks for it, so a
// merged model is never all in memory at once.
type lazyTensor func() ([]byte, error)

func (f lazyTensor) WriteTo(w io.Writer) (int64, error) {
	b, err := f()
	if err != nil {
		return 0, err
	}
	n, err := w.Write(b)
	return int64(n), err
}

// ggufShape is the GGUF dimension list (fastest first) of a row-major
// PyTorch shape.
func ggufShape(shape ...int) []uint64 {
	out := make([]uint64, len(shape))
	for i, s := range shape {
		out[len(shape)-1-i] = uint64(s)
	}
	return out
}

// writeGGUFFile writes kv and the tensors to path through a temporary file
// in the same folder, synced and renamed, so a reader never sees half a
// file and a failure leaves the old file in place. Ollama's writer orders
// the tensors by block, then by name.
func writeGGUFFile(path string, kv ggml.KV, ts []*ggml.Tensor) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return atomicfile.Write(path, func(f *os.File) error { return ggml.WriteGGUF(f, kv, ts) })
}

// ReadGGUF decodes a GGUF file's metadata and tensor list with Ollama's
// reader (arrays of any length are kept).
func ReadGGUF(path string) (*ggml.GGML, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	g, err := ggml.Decode(f, -1)
	if err != nil {
		return nil, fmt.Errorf("read GGUF %s: %w", path, err)
	}
	return g, nil
}
