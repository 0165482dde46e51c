// Package gguf reads GGUF files, the single-file model format of llama.cpp
// and Ollama (the blobs under ~/.ollama/models/blobs), and dequantizes their
// tensors to float32.
//
// The layout follows ggml's gguf.cpp and docs/gguf.md (little-endian only):
//
//	header   "GGUF", version u32 (2 or 3), tensor count u64, kv count u64
//	kv       key (u64 length + bytes), value type u32, value
//	         (arrays: element type u32, count u64, elements; no nesting)
//	tensors  name, n_dims u32 (<= 4), ne[n_dims] u64 (fastest first),
//	         type u32, offset u64 (relative to the data section)
//	padding  to general.alignment (default 32)
//	data     each tensor at data + offset, offsets multiples of the alignment
//
// ne[0] is the fastest-varying dimension, so a PyTorch weight [out, in] is
// stored with ne = [in, out]; TensorInfo.Shape gives the PyTorch order.
//
// Dequantization reproduces ggml-quants.c's dequantize_row_* (and ggml's
// software fp16 conversion) bit for bit: every product and sum is rounded
// to float32 in the order the C code evaluates it. (Every intermediate
// product of those formulas is exact in float32, so a compiler that fuses
// the final multiply-add into an FMA gets the same bits as well.)
//
// Writing GGUF files is the convert package's job; this package only has
// the reference quantizers (QuantizeQ8_0, QuantizeQ4_0) that such a writer
// needs.
package gguf
