package gguf

import "fmt"

// Type is a ggml tensor type (enum ggml_type in ggml.h).
type Type uint32

const (
	F32     Type = 0
	F16     Type = 1
	Q4_0    Type = 2
	Q4_1    Type = 3
	Q5_0    Type = 6
	Q5_1    Type = 7
	Q8_0    Type = 8
	Q8_1    Type = 9
	Q2_K    Type = 10
	Q3_K    Type = 11
	Q4_K    Type = 12
	Q5_K    Type = 13
	Q6_K    Type = 14
	Q8_K    Type = 15
	IQ2_XXS Type = 16
	IQ2_XS  Type = 17
	IQ3_XXS Type = 18
	IQ1_S   Type = 19
	IQ4_NL  Type = 20
	IQ3_S   Type = 21
	IQ2_S   Type = 22
	IQ4_XS  Type = 23
	I8      Type = 24
	I16     Type = 25
	I32     Type = 26
	I64     Type = 27
	F64     Type = 28
	IQ1_M   Type = 29
	BF16    Type = 30
	TQ1_0   Type = 34
	TQ2_0   Type = 35
	MXFP4   Type = 39
)

// QK_K is the super-block size of the k-quants.
const QK_K = 256

// typeInfo is ggml's type_traits entry: elements per block and bytes per
// block (sizeof(block_*) in ggml-common.h).
type typeInfo struct {
	name      string
	blockSize int
	typeSize  int
}

var types = map[Type]typeInfo{
	F32:     {"F32", 1, 4},
	F16:     {"F16", 1, 2},
	Q4_0:    {"Q4_0", 32, 2 + 16},
	Q4_1:    {"Q4_1", 32, 2 + 2 + 16},
	Q5_0:    {"Q5_0", 32, 2 + 4 + 16},
	Q5_1:    {"Q5_1", 32, 2 + 2 + 4 + 16},
	Q8_0:    {"Q8_0", 32, 2 + 32},
	Q8_1:    {"Q8_1", 32, 2 + 2 + 32},
	Q2_K:    {"Q2_K", QK_K, 16 + 64 + 2 + 2},
	Q3_K:    {"Q3_K", QK_K, 32 + 64 + 12 + 2},
	Q4_K:    {"Q4_K", QK_K, 2 + 2 + 12 + 128},
	Q5_K:    {"Q5_K", QK_K, 2 + 2 + 12 + 32 + 128},
	Q6_K:    {"Q6_K", QK_K, 128 + 64 + 16 + 2},
	Q8_K:    {"Q8_K", QK_K, 4 + 256 + 32},
	IQ2_XXS: {"IQ2_XXS", QK_K, 2 + 64},
	IQ2_XS:  {"IQ2_XS", QK_K, 2 + 64 + 8},
	IQ3_XXS: {"IQ3_XXS", QK_K, 2 + 96},
	IQ1_S:   {"IQ1_S", QK_K, 2 + 32 + 16},
	IQ4_NL:  {"IQ4_NL", 32, 2 + 16},
	IQ3_S:   {"IQ3_S", QK_K, 2 + 104 + 4},
	IQ2_S:   {"IQ2_S", QK_K, 2 + 64 + 16},
	IQ4_XS:  {"IQ4_XS", QK_K, 2 + 2 + 4 + 128},
	I8:      {"I8", 1, 1},
	I16:     {"I16", 1, 2},
	I32:     {"I32", 1, 4},
	I64:     {"I64", 1, 8},
	F64:     {"F64", 1, 8},
	IQ1_M:   {"IQ1_M", QK_K, 32 + 16 + 8},
	BF16:    {"BF16", 1, 2},
	TQ1_0:   {"TQ1_0", QK_K, 2 + 4 + 48},
	TQ2_0:   {"TQ2_0", QK_K, 2 + 64},
	MXFP4:   {"MXFP4", 32, 1 + 16},
}

// String is the type's name as llama.cpp prints it, upper case ("Q4_K").
func (t Type) String() string {
	if ti, ok := types[t]; ok {
		return ti.name
	}
	return fmt.Sprintf("type(%d)", uint32(t))
}

// Known reports whether t is a ggml type this package can size (all types
// of ggml.h; not all of them can be dequantized, see CanDequantize).
func (t Type) Known() bool { _, ok := types[t]; return ok }

// BlockSize is the number of elements of one block (1 for plain types).
func (t Type) BlockSize() int { return types[t].blockSize }

// TypeSize is the number of bytes of one block.
func (t Type) TypeSize() int { return types[t].typeSize }

// RowBytes is the size in bytes of n elements of type t; n must be a
// multiple of the block size.
func (t Type) RowBytes(n int64) int64 {
	ti := types[t]
	return n / int64(ti.blockSize) * int64(ti.typeSize)
}

// FileType is general.file_type (enum llama_ftype): the quantization the
// file was made with, as a name ("Q4_0", "Q4_K_M", ...).
func FileType(v uint32) string {
	names := map[uint32]string{
		0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
		10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
		16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
		22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
		28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
		37: "TQ2_0", 38: "MXFP4_MOE",
	}
	if s, ok := names[v]; ok {
		return s
	}
	return fmt.Sprintf("file_type(%d)", v)
}
