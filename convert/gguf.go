package convert

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/ollama/ollama/fs/ggml"

	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
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
		return QuantizeQ8_0(v)
	case Q4_0:
		return QuantizeQ4_0(v)
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
func writeGGUFFile(path string, kv ggml.KV, ts []*ggml.Tensor) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := ggml.WriteGGUF(f, kv, ts); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
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

// QuantizeQ8_0 is ggml's quantize_row_q8_0_ref over whole blocks of 32:
// d = max|x| / 127 stored as fp16, then 32 int8 round(x / d) (roundf,
// half away from zero). Every float32 operation is rounded as the C code
// rounds it (no fused multiply-add).
func QuantizeQ8_0(x []float32) ([]byte, error) {
	if len(x)%32 != 0 {
		return nil, fmt.Errorf("q8_0: %d values is not a whole number of 32-value blocks", len(x))
	}
	out := make([]byte, len(x)/32*34)
	for b := 0; b < len(x)/32; b++ {
		blk := x[b*32 : b*32+32]
		var amax float32
		for _, v := range blk {
			amax = max(amax, float32(math.Abs(float64(v))))
		}
		d := amax / 127
		var id float32
		if d != 0 {
			id = 1 / d
		}
		o := out[b*34:]
		binary.LittleEndian.PutUint16(o, safetensors.F32ToF16(d))
		for j, v := range blk {
			x0 := float32(v * id)
			o[2+j] = byte(int8(math.Round(float64(x0))))
		}
	}
	return out, nil
}

// QuantizeQ4_0 is ggml's quantize_row_q4_0_ref: per block of 32, the
// value of largest magnitude m (the first one on ties) gives d = m / -8
// (fp16); element j is min(15, trunc(x*id + 8.5)), the first 16 in the
// low nibbles, the last 16 in the high nibbles.
func QuantizeQ4_0(x []float32) ([]byte, error) {
	if len(x)%32 != 0 {
		return nil, fmt.Errorf("q4_0: %d values is not a whole number of 32-value blocks", len(x))
	}
	out := make([]byte, len(x)/32*18)
	for b := 0; b < len(x)/32; b++ {
		blk := x[b*32 : b*32+32]
		var amax, mx float32
		for _, v := range blk {
			if a := float32(math.Abs(float64(v))); amax < a {
				amax, mx = a, v
			}
		}
		d := mx / -8
		var id float32
		if d != 0 {
			id = 1 / d
		}
		o := out[b*18:]
		binary.LittleEndian.PutUint16(o, safetensors.F32ToF16(d))
		q := func(v float32) byte {
			x0 := float32(v * id)
			return byte(min(15, int8(float32(x0+8.5))))
		}
		for j := 0; j < 16; j++ {
			o[2+j] = q(blk[j]) | q(blk[16+j])<<4
		}
	}
	return out, nil
}
