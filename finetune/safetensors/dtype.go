// Package safetensors reads and writes Hugging Face's .safetensors format:
// an 8-byte little-endian header length N, N bytes of JSON describing each
// tensor (dtype, shape, data_offsets into the data section) plus an optional
// "__metadata__" map of strings, then the raw little-endian tensor bytes.
//
// Files are memory-mapped, so opening an 8 GB checkpoint costs nothing until
// a tensor is touched, and the header is validated as strictly as the
// reference Rust implementation does (and a little more: duplicate names and
// unknown dtypes are errors), so a file this package accepts is one
// safetensors.torch.load_file accepts too.
package safetensors

import "fmt"

// DType is a safetensors element type, spelled as in the header ("BF16").
type DType string

// The element types this package knows. Only the first block is converted
// by ToFloat32/Int64s/Int32s; the rest can be read as raw bytes.
const (
	F32  DType = "F32"
	F16  DType = "F16"
	BF16 DType = "BF16"
	F64  DType = "F64"
	I64  DType = "I64"
	I32  DType = "I32"
	I16  DType = "I16"
	I8   DType = "I8"
	U8   DType = "U8"
	BOOL DType = "BOOL"

	U16     DType = "U16"
	U32     DType = "U32"
	U64     DType = "U64"
	F8E5M2  DType = "F8_E5M2"
	F8E4M3  DType = "F8_E4M3"
	F8E8M0  DType = "F8_E8M0"
	Complex DType = "C64"
)

// dtypeRank is the Rust crate's Dtype enum order (increasing alignment).
// The Python library writes tensors sorted by descending rank, then name;
// Write does the same so our files are byte-identical to save_file's.
var dtypeRank = map[DType]int{
	BOOL: 0, U8: 1, I8: 2, F8E5M2: 3, F8E4M3: 4, F8E8M0: 5, I16: 6, U16: 7,
	F16: 8, BF16: 9, I32: 10, U32: 11, F32: 12, Complex: 13, F64: 14, I64: 15, U64: 16,
}

// Size is the number of bytes of one element, 0 for an unknown dtype.
func (d DType) Size() int {
	switch d {
	case BOOL, U8, I8, F8E5M2, F8E4M3, F8E8M0:
		return 1
	case I16, U16, F16, BF16:
		return 2
	case I32, U32, F32:
		return 4
	case I64, U64, F64, Complex:
		return 8
	}
	return 0
}

// Valid reports whether d is a dtype this package can read.
func (d DType) Valid() bool { return d.Size() > 0 }

// IsFloat reports whether ToFloat32 converts d (F32, F16, BF16, F64).
func (d DType) IsFloat() bool { return d == F32 || d == F16 || d == BF16 || d == F64 }

// subByte are dtypes of the format that pack several elements per byte;
// named so the error says "not supported" instead of "unknown".
var subByte = map[DType]bool{"F4": true, "F6_E2M3": true, "F6_E3M2": true}

func checkDType(d DType) error {
	if d.Valid() {
		return nil
	}
	if subByte[d] {
		return fmt.Errorf("dtype %s (packed sub-byte floats) is not supported", d)
	}
	return fmt.Errorf("unknown dtype %q (known: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL, U16, U32, U64, F8_E5M2, F8_E4M3, F8_E8M0, C64)", string(d))
}

// numel multiplies out a shape, refusing negative dimensions and products
// whose byte size (times elemSize) would overflow an int.
func numel(shape []int, elemSize int) (int, error) {
	n := 1
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("shape %v has a negative dimension", shape)
		}
		if d != 0 && n > maxInt/elemSize/d {
			return 0, fmt.Errorf("shape %v is too large (its byte size overflows)", shape)
		}
		n *= d
	}
	return n, nil
}

const maxInt = int(^uint(0) >> 1)

// TensorInfo is one tensor: its name, element type, shape and raw
// little-endian, row-major bytes. For a tensor read from a File, Data is a
// view into the file's memory map: valid until the File is closed, and
// read-only (writing to it faults).
type TensorInfo struct {
	Name  string
	DType DType
	Shape []int
	Data  []byte
}

// Numel is the number of elements (1 for a scalar, shape []).
func (t TensorInfo) Numel() int {
	n := 1
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// checkData verifies that len(Data) is what DType and Shape imply.
func (t TensorInfo) checkData() error {
	if err := checkDType(t.DType); err != nil {
		return err
	}
	n, err := numel(t.Shape, t.DType.Size())
	if err != nil {
		return err
	}
	if want := n * t.DType.Size(); len(t.Data) != want {
		return fmt.Errorf("has %d bytes of data, but dtype %s shape %v needs %d", len(t.Data), t.DType, t.Shape, want)
	}
	return nil
}
