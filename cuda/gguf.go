//go:build cuda

package cuda

// A GGUF base kept in its own quantization (quantization.keep_gguf). Each
// part of a finetune.GGUFMatrix (a GGUF tensor's rows: llama's q, k and v
// of a fused qkv_proj, or a whole tensor) is uploaded once as its raw
// blocks; a GEMM that needs the weight dequantizes it into the same place
// an NF4 weight goes (the dequantization cache's slot for its shape, or
// the sWeight scratch) with kernels/gguf.cu, whose float32 values equal
// finetune/gguf's bit for bit and are rounded to the compute type as the
// CPU backend rounds them. So the base the adapter trains on is the very
// blocks Ollama serves, on the GPU as on the CPU.

import (
	"fmt"
	"math"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/gguf"
)

var _ finetune.GGUFWeighter = (*Backend)(nil)

// ggufWeight is a weight's GGUF blocks on the device, part by part in row
// order.
type ggufWeight struct {
	name  string
	parts []ggufPart
	bytes int64
}

type ggufPart struct {
	tensor   string
	typ      gguf.Type
	data     cu.DevicePtr // rows*rowBytes bytes
	size     int64
	rows     int
	rowBytes int
	heads    int // > 0: llama.cpp permuted the rows (finetune.GGUFPart)
}

// ggufKernels names the dequantization kernel of each type and the values
// one thread expands (kernels/gguf.cu).
var ggufKernels = map[gguf.Type]struct {
	name string
	per  int64
}{
	gguf.F32:  {"gguf_dequant_f32", 1},
	gguf.F16:  {"gguf_dequant_f16", 1},
	gguf.BF16: {"gguf_dequant_bf16", 1},
	gguf.Q4_0: {"gguf_dequant_q4_0", 8},
	gguf.Q4_1: {"gguf_dequant_q4_1", 8},
	gguf.Q5_0: {"gguf_dequant_q5_0", 8},
	gguf.Q5_1: {"gguf_dequant_q5_1", 8},
	gguf.Q8_0: {"gguf_dequant_q8_0", 8},
	gguf.Q2_K: {"gguf_dequant_q2_k", 8},
	gguf.Q3_K: {"gguf_dequant_q3_k", 8},
	gguf.Q4_K: {"gguf_dequant_q4_k", 8},
	gguf.Q5_K: {"gguf_dequant_q5_k", 8},
	gguf.Q6_K: {"gguf_dequant_q6_k", 8},
}

// checkGGUFType says whether the CUDA backend dequantizes t.
func checkGGUFType(t gguf.Type) error {
	if _, ok := ggufKernels[t]; ok {
		return nil
	}
	var have []gguf.Type
	for _, k := range gguf.DequantizableTypes() {
		if _, ok := ggufKernels[k]; ok {
			have = append(have, k)
		}
	}
	return fmt.Errorf("dequantizing %s is not implemented on CUDA (supported: %v); set quantization.keep_gguf: false (with load_in_4bit: true to re-quantize the base to NF4)", t, have)
}

// GGUFWeight uploads m's blocks as a frozen weight. The host bytes are not
// kept: the GGUF base may be closed once the model is built.
func (b *Backend) GGUFWeight(m *finetune.GGUFMatrix) (w finetune.Weight, err error) {
	if m == nil || m.Out() <= 0 || m.In() <= 0 {
		return nil, fmt.Errorf("cuda backend: empty GGUF weight")
	}
	out, in := m.Out(), m.In()
	parts := m.Parts()
	for _, p := range parts {
		if err := checkGGUFType(p.Type); err != nil {
			return nil, fmt.Errorf("cuda backend: GGUF weight %s: tensor %q: %w", m.Name, p.Tensor, err)
		}
		// The kernels index a part's values (or 8-value groups) in 32 bits.
		if int64(p.Rows)*int64(in)/ggufKernels[p.Type].per >= math.MaxInt32 {
			return nil, fmt.Errorf("cuda backend: GGUF weight %s: tensor %q of %d x %d values is too large for the dequantization kernels", m.Name, p.Tensor, p.Rows, in)
		}
	}
	defer Recover(&err)
	const op = "GGUFWeight"
	defer b.enter(op)()
	cw := &weight{out: out, in: in, half: b.half, g: &ggufWeight{name: m.Name}}
	ok := false
	defer func() {
		if !ok {
			b.freeWeight(cw)
		}
	}()
	for _, p := range parts {
		size := int64(len(p.Data))
		ptr, err := b.rawAlloc(size, fmt.Sprintf("GGUF weight %s (tensor %q, %s)", m.Name, p.Tensor, p.Type))
		check(op, err)
		cw.g.parts = append(cw.g.parts, ggufPart{tensor: p.Tensor, typ: p.Type, data: ptr, size: size, rows: p.Rows, rowBytes: p.RowBytes, heads: p.Heads})
		cw.g.bytes += size
		// Pageable memory: the copy has left p.Data when this returns.
		b.upload(op, ptr, unsafe.Pointer(&p.Data[0]), size)
	}
	ok = true
	return cw, nil
}

// ggufMatrix is matrix for a GGUF weight: its parts dequantized, in the
// compute type, into the dequantization cache's slot for its shape (left
// as it is when the slot still holds w) or into the sWeight scratch.
func (b *Backend) ggufMatrix(w *weight, op string) (p cu.DevicePtr, abType int) {
	n := w.n()
	elem, abType := b.half.elem(), b.half.blasType()
	if s := b.dequantSlot(w, elem*n, op); s != nil {
		if s.w == w {
			return s.ptr, abType
		}
		s.w, p = w, s.ptr
	} else {
		p = b.scratchBuf(sWeight, elem*n, op)
	}
	row := int64(0)
	for _, part := range w.g.parts {
		k := ggufKernels[part.typ]
		dst := p + cu.DevicePtr(row*int64(w.in)*elem)
		b.launchN(op, k.name, int64(part.rows)*int64(w.in)/k.per, ptrArg(dst), ptrArg(part.data),
			intArg(part.rows), intArg(w.in), intArg(part.rowBytes), intArg(part.heads), uint64(b.half))
		row += int64(part.rows)
	}
	return p, abType
}

// freeGGUF releases a GGUF weight's blocks.
func (b *Backend) freeGGUF(w *weight) {
	if w.g == nil {
		return
	}
	for _, p := range w.g.parts {
		b.rawFree(p.data, p.size)
	}
	w.g = nil
}
