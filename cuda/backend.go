//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/nf4"
	"github.com/ollama-tune/ollama-tune/finetune/optim"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
)

// ---------------------------------------------------------------------------
// Frozen weights

// weight is a frozen [out, in] matrix: dense (float32, or the 16-bit
// compute type under BF16 or F16 compute) or NF4 in bitsandbytes' layout.
type weight struct {
	out, in int
	dense   cu.DevicePtr
	half    halfKind // the 16-bit type dense holds, or halfNone (float32)
	q       *nf4Weight
	g       *ggufWeight // GGUF blocks (gguf.go)
}

// halfKind is the 16-bit type of the frozen weights and of the GEMM
// inputs under a 16-bit compute dtype (finetune.CPUBackend emulates the
// same roundings).
type halfKind int

const (
	halfNone halfKind = iota // float32 compute
	halfBF16
	halfF16
)

// halfOf is the 16-bit type of a compute dtype.
func halfOf(d finetune.DType) halfKind {
	switch d {
	case finetune.BF16:
		return halfBF16
	case finetune.F16:
		return halfF16
	}
	return halfNone
}

// kernel suffix, cuBLAS data type and name of a 16-bit type.
func (h halfKind) suffix() string { return [...]string{"f32", "bf16", "f16"}[h] }
func (h halfKind) blasType() int  { return [...]int{dataR32F, dataR16BF, dataR16F}[h] }
func (h halfKind) elem() int64 {
	if h == halfNone {
		return 4
	}
	return 2
}

// nf4Weight is NF4 storage on the GPU: packed codes and either one float32
// absmax per 64-block or, double-quantized, one uint8 code per 64-block
// with one float32 scale per 256 of them and a float32 offset.
type nf4Weight struct {
	codes   cu.DevicePtr // (n+1)/2 bytes
	absmax  cu.DevicePtr // float32 [blocks], without double quantization
	acodes  cu.DevicePtr // uint8 [blocks], with it
	ascales cu.DevicePtr // float32 [ceil(blocks/256)]
	offset  float32
	double  bool
}

func (w *weight) Out() int { return w.out }
func (w *weight) In() int  { return w.in }

func (w *weight) n() int64 { return int64(w.out) * int64(w.in) }

// Bytes is the storage size: the packed codes of an NF4 weight, the
// elements of a dense one.
func (w *weight) Bytes() int64 {
	if w.g != nil {
		return w.g.bytes
	}
	if w.q != nil {
		return (w.n() + 1) / 2
	}
	return w.half.elem() * w.n()
}

func (q *nf4Weight) blocks(n int64) int64 { return (n + nf4.BlockSize - 1) / nf4.BlockSize }

func cudaW(w finetune.Weight, op string) *weight {
	cw, ok := w.(*weight)
	if !ok || cw == nil {
		panic(&Error{Op: op, Err: fmt.Errorf("expected a cuda weight, got %T", w)})
	}
	if cw.dense == 0 && cw.q == nil && cw.g == nil {
		panic(&Error{Op: op, Err: fmt.Errorf("weight [%d, %d] was freed", cw.out, cw.in)})
	}
	return cw
}

func checkWeightData(data []float32, out, in int) error {
	if out <= 0 || in <= 0 {
		return fmt.Errorf("weight shape [%d, %d]: both dimensions must be positive", out, in)
	}
	if len(data) != out*in {
		return fmt.Errorf("weight shape [%d, %d] needs %d values, got %d", out, in, out*in, len(data))
	}
	return nil
}

// DenseWeight uploads data, rounded to bfloat16 (float16) under BF16 (F16)
// compute.
func (b *Backend) DenseWeight(data []float32, out, in int) (w finetune.Weight, err error) {
	if err := checkWeightData(data, out, in); err != nil {
		return nil, fmt.Errorf("cuda backend: dense %w", err)
	}
	defer Recover(&err)
	defer b.enter("DenseWeight")()
	cw := &weight{out: out, in: in, half: b.half}
	what := fmt.Sprintf("a dense weight [%d, %d]", out, in)
	n := cw.n()
	if cw.half == halfNone {
		p, err := b.rawAlloc(4*n, what)
		if err != nil {
			return nil, &Error{Op: "DenseWeight", Err: err}
		}
		cw.dense = p
		b.upload("DenseWeight", p, unsafe.Pointer(&data[0]), 4*n)
		return cw, nil
	}
	p, err := b.rawAlloc(2*n, what)
	if err != nil {
		return nil, &Error{Op: "DenseWeight", Err: err}
	}
	cw.dense = p
	stage := b.scratchBuf(sUpload, 4*n, "DenseWeight")
	b.upload("DenseWeight", stage, unsafe.Pointer(&data[0]), 4*n)
	b.launchN("DenseWeight", "f32_to_"+cw.half.suffix()+"_kernel", n, ptrArg(p), ptrArg(stage), uint64(n))
	return cw, nil
}

// NF4Weight quantizes data on the GPU with bitsandbytes' algorithm; the
// codes are identical to finetune/nf4's, and so is the double-quantization
// offset (the correctly rounded mean of the absmax values, computed exactly
// on the device; see kernels/exactsum.cuh).
func (b *Backend) NF4Weight(data []float32, out, in int, doubleQuant bool) (w finetune.Weight, err error) {
	if err := checkWeightData(data, out, in); err != nil {
		return nil, fmt.Errorf("cuda backend: nf4 %w", err)
	}
	for k, v := range data {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("cuda backend: nf4 weight [%d, %d]: value %d (row %d, column %d) is %v; NF4 needs finite weights", out, in, k, k/in, k%in, v)
		}
	}
	defer Recover(&err)
	defer b.enter("NF4Weight")()
	const op = "NF4Weight"
	n := int64(out) * int64(in)
	stage := b.scratchBuf(sUpload, 4*n, op)
	b.upload(op, stage, unsafe.Pointer(&data[0]), 4*n)
	offset := b.scratchBuf(sNF4Offset, 4, op)
	cw := b.nf4FromDevice(op, stage, srcF32, out, in, doubleQuant, offset, 0)
	if doubleQuant {
		var off float32
		b.download(op, unsafe.Pointer(&off), offset, 4)
		cw.q.offset = off
	}
	return cw, nil
}

// srcKind is the element type of weight values staged on the device.
type srcKind int

const (
	srcF32 srcKind = iota
	srcBF16
	srcF16
)

func (k srcKind) size() int64 {
	if k == srcF32 {
		return 4
	}
	return 2
}

func (k srcKind) String() string { return [...]string{"float32", "bfloat16", "float16"}[k] }

// nf4FromDevice quantizes the out*in values of type kind at src (device
// memory, left unchanged) into a new NF4 weight. With double quantization
// the offset is computed on the device into the float32 at offset, and the
// caller must copy it into the weight's offset field before the weight is
// used (the loaders download all of a model's offsets at once). nonfinite,
// when not 0, is an int32 set to 1 if a value is NaN or Inf. It panics with
// a *Error on failure and frees what it allocated.
func (b *Backend) nf4FromDevice(op string, src cu.DevicePtr, kind srcKind, out, in int, doubleQuant bool, offset, nonfinite cu.DevicePtr) *weight {
	cw := &weight{out: out, in: in, q: &nf4Weight{double: doubleQuant}}
	q := cw.q
	n := cw.n()
	nb := q.blocks(n)
	ok := false
	defer func() {
		if !ok {
			b.freeWeight(cw)
		}
	}()
	what := fmt.Sprintf("an NF4 weight [%d, %d]", out, in)
	alloc := func(bytes int64) cu.DevicePtr {
		p, err := b.rawAlloc(bytes, what)
		check(op, err)
		return p
	}
	q.codes = alloc((n + 1) / 2)
	var absmax cu.DevicePtr
	if doubleQuant {
		absmax = b.scratchBuf(sAbsmax, 4*nb, op)
	} else {
		q.absmax = alloc(4 * nb)
		absmax = q.absmax
	}
	quant := [...]string{"nf4_quantize_f32", "nf4_quantize_bf16", "nf4_quantize_f16"}[kind]
	b.launchN(op, quant, 32*nb, ptrArg(src), uint64(n), ptrArg(q.codes), ptrArg(absmax), ptrArg(nonfinite))
	if doubleQuant {
		bins := b.scratchBuf(sBins, 256*8, op)
		check(op, cu.MemsetD8Async(bins, 0, 256*8, b.stream))
		b.launchN(op, "exact_sum_bins", nb, ptrArg(absmax), uint64(nb), ptrArg(bins))
		b.launch(op, "exact_mean_from_bins", grid1(1), 32, 0, ptrArg(bins), uint64(nb), ptrArg(offset))
		na := (nb + nf4.AbsmaxBlockSize - 1) / nf4.AbsmaxBlockSize
		q.acodes = alloc(nb)
		q.ascales = alloc(4 * na)
		b.launch(op, "quantize_blockwise8_devoff", grid1(int(na)), 256, 0,
			ptrArg(absmax), uint64(nb), ptrArg(offset), ptrArg(b.smap), ptrArg(q.acodes), ptrArg(q.ascales))
	}
	ok = true
	return cw
}

// denseFromDevice makes a dense weight from the out*in values of type kind
// at src: a copy or a conversion into the compute type's storage.
func (b *Backend) denseFromDevice(op string, src cu.DevicePtr, kind srcKind, out, in int) *weight {
	cw := &weight{out: out, in: in, half: b.half}
	n := cw.n()
	p, err := b.rawAlloc(cw.Bytes(), fmt.Sprintf("a dense weight [%d, %d]", out, in))
	check(op, err)
	cw.dense = p
	from := [...]string{srcF32: "f32", srcBF16: "bf16", srcF16: "f16"}[kind]
	if to := cw.half.suffix(); from == to {
		check(op, cu.MemcpyDtoDAsync(p, src, cw.Bytes(), b.stream))
	} else {
		// f32_to_bf16, f32_to_f16, bf16_to_f32, bf16_to_f16, f16_to_f32, f16_to_bf16.
		b.launchN(op, from+"_to_"+to+"_kernel", n, ptrArg(p), ptrArg(src), uint64(n))
	}
	return cw
}

// nf4Args are the kernel arguments that describe an NF4 weight's state:
// absmax, acodes, ascales, smap, offset.
func (b *Backend) nf4Args(q *nf4Weight) []uint64 {
	return []uint64{ptrArg(q.absmax), ptrArg(q.acodes), ptrArg(q.ascales), ptrArg(b.smap), f32Arg(q.offset)}
}

// matrix returns w as a dense device matrix in the GEMM input type:
// the weight itself when dense, else its NF4 values dequantized (rounded
// to the 16-bit type under BF16 or F16 compute) into the dequantization
// cache's slot for its shape, or into the sWeight scratch.
func (b *Backend) matrix(w *weight, op string) (p cu.DevicePtr, abType int) {
	if w.g != nil {
		return b.ggufMatrix(w, op)
	}
	if w.q == nil {
		return w.dense, w.half.blasType()
	}
	n := w.n()
	elem, abType, kernel := b.half.elem(), b.half.blasType(), "nf4_dequant_"+b.half.suffix()
	if s := b.dequantSlot(w, elem*n, op); s != nil {
		if s.w == w {
			return s.ptr, abType // still there from the last use
		}
		s.w, p = w, s.ptr
	} else {
		p = b.scratchBuf(sWeight, elem*n, op)
	}
	// The dequantization kernels expand 8 (16-bit) or 4 (f32) values a
	// thread, then the rest one a thread.
	per := 16 / elem
	threads := max(n/per, n%per, 1)
	b.launchN(op, kernel, threads, append([]uint64{ptrArg(p), uint64(n), ptrArg(w.q.codes)}, b.nf4Args(w.q)...)...)
	return p, abType
}

// The dequantization cache keeps the last dequantized weight of each
// shape, up to Options.DequantCache shapes (4 by default: one decoder
// layer's qkv, o, gate_up and down). With gradient checkpointing a layer's
// backward then reuses what its recomputed forward just dequantized, which
// saves a third of the dequantization passes for one layer's worth of
// extra memory (126 MB for Phi-3-mini in bf16). Slots are never resized,
// so the cache never synchronises.
type dequantSlot struct {
	out, in int
	ptr     cu.DevicePtr
	bytes   int64
	w       *weight // whose values the slot holds, or nil
	used    uint64  // b.dequantClock at the last use
}

// dequantSlot returns the cache slot for w's shape, making one when
// needed; a new shape beyond the limit replaces the least recently used
// (which synchronises, but a training step uses the same few shapes over
// and over). nil when the cache is off.
func (b *Backend) dequantSlot(w *weight, bytes int64, op string) *dequantSlot {
	if b.dequantMax <= 0 {
		return nil
	}
	b.dequantClock++
	for _, s := range b.dequant {
		if s.out == w.out && s.in == w.in {
			s.used = b.dequantClock
			return s
		}
	}
	if len(b.dequant) >= b.dequantMax {
		lru := 0
		for k, s := range b.dequant {
			if s.used < b.dequant[lru].used {
				lru = k
			}
		}
		b.rawFree(b.dequant[lru].ptr, b.dequant[lru].bytes)
		b.dequant = append(b.dequant[:lru], b.dequant[lru+1:]...)
	}
	p, err := b.rawAlloc(bytes, fmt.Sprintf("the dequantization cache's [%d, %d] slot", w.out, w.in))
	check(op, err)
	s := &dequantSlot{out: w.out, in: w.in, ptr: p, bytes: bytes, used: b.dequantClock}
	b.dequant = append(b.dequant, s)
	return s
}

// freeDequantCache releases the cache's slots.
func (b *Backend) freeDequantCache() {
	for _, s := range b.dequant {
		b.rawFree(s.ptr, s.bytes)
	}
	b.dequant = nil
}

// DequantizeWeight returns w as float32 [out*in] on the host.
func (b *Backend) DequantizeWeight(w finetune.Weight) []float32 {
	defer b.enter("DequantizeWeight")()
	const op = "DequantizeWeight"
	cw := cudaW(w, op)
	n := cw.n()
	out := make([]float32, n)
	p, t := b.matrix(cw, op)
	if t == dataR32F {
		b.download(op, unsafe.Pointer(&out[0]), p, 4*n)
		return out
	}
	bits := make([]uint16, n)
	b.download(op, unsafe.Pointer(&bits[0]), p, 2*n)
	widen := safetensors.BF16ToF32
	if t == dataR16F {
		widen = safetensors.F16ToF32
	}
	for k, v := range bits {
		out[k] = widen(v)
	}
	return out
}

func (b *Backend) FreeWeight(w finetune.Weight) {
	cw, ok := w.(*weight)
	if !ok || cw == nil || b.closed {
		return
	}
	defer b.enter("FreeWeight")()
	b.freeWeight(cw)
}

func (b *Backend) freeWeight(w *weight) {
	n := w.n()
	for _, s := range b.dequant {
		if s.w == w {
			s.w = nil
		}
	}
	b.freeGGUF(w)
	if w.dense != 0 {
		b.rawFree(w.dense, w.Bytes())
		w.dense = 0
	}
	if q := w.q; q != nil {
		nb := q.blocks(n)
		b.rawFree(q.codes, (n+1)/2)
		b.rawFree(q.absmax, 4*nb)
		b.rawFree(q.acodes, nb)
		b.rawFree(q.ascales, 4*((nb+nf4.AbsmaxBlockSize-1)/nf4.AbsmaxBlockSize))
		w.q = nil
	}
}

// ---------------------------------------------------------------------------
// GEMMs

// gemm runs g (operands of type g.abType, float32 result).
func (b *Backend) gemm(op string, g gemmArgs) {
	if b.prof == nil {
		check(op, b.blas.run(g))
		return
	}
	t := map[int]string{dataR32F: "f32", dataR16BF: "bf16", dataR16F: "f16"}[g.abType]
	b.span(fmt.Sprintf("gemm %s %dx%dx%d", t, g.M, g.N, g.K), func() { check(op, b.blas.run(g)) })
}

// toHalf converts n float32 values at p to the GEMM input type t (a 16-bit
// type) in the sAct scratch; a float32 t leaves p as it is.
func (b *Backend) toHalf(op string, p cu.DevicePtr, n int64, t int) cu.DevicePtr {
	kernel := ""
	switch t {
	case dataR16BF:
		kernel = "f32_to_bf16_v4"
	case dataR16F:
		kernel = "f32_to_f16_v4"
	default:
		return p
	}
	dst := b.scratchBuf(sAct, 2*n, op)
	b.launchN(op, kernel, max(n/4, n%4, 1), ptrArg(dst), ptrArg(p), uint64(n))
	return dst
}

// xwT computes out[T,O] = alpha * x[T,I] . W[O,I]^T + beta * out.
func (b *Backend) xwT(op string, out, x cu.DevicePtr, T int, w *weight, alpha, beta float32) {
	wp, t := b.matrix(w, op)
	x = b.toHalf(op, x, int64(T)*int64(w.in), t)
	b.gemm(op, gemmArgs{transB: true, M: T, N: w.out, K: w.in, alpha: alpha, beta: beta,
		A: uintptr(x), lda: w.in, B: uintptr(wp), ldb: w.in, C: uintptr(out), ldc: w.out, abType: t})
}

// dW accumulates dx[T,I] += alpha * dout[T,O] . W[O,I].
func (b *Backend) dW(op string, dx, dout cu.DevicePtr, T int, w *weight, alpha float32) {
	wp, t := b.matrix(w, op)
	dout = b.toHalf(op, dout, int64(T)*int64(w.out), t)
	b.gemm(op, gemmArgs{M: T, N: w.in, K: w.out, alpha: alpha, beta: 1,
		A: uintptr(dout), lda: w.out, B: uintptr(wp), ldb: w.in, C: uintptr(dx), ldc: w.in, abType: t})
}

// sgemm is an all-float32 row-major GEMM (the LoRA products).
func (b *Backend) sgemm(op string, transA, transB bool, M, N, K int, alpha float32, A cu.DevicePtr, lda int, B cu.DevicePtr, ldb int, beta float32, C cu.DevicePtr, ldc int) {
	b.gemm(op, gemmArgs{transA: transA, transB: transB, M: M, N: N, K: K, alpha: alpha, beta: beta,
		A: uintptr(A), lda: lda, B: uintptr(B), ldb: ldb, C: uintptr(C), ldc: ldc, abType: dataR32F})
}

// ---------------------------------------------------------------------------
// Embedding, Linear, Logits

func (b *Backend) EmbeddingForward(out, ids finetune.Tensor, table finetune.Weight) {
	const op = "EmbeddingForward"
	defer b.enter(op)()
	o, id, w := tensor(out, kindF32, op), tensor(ids, kindI32, op), cudaW(table, op)
	T, C, V := id.n, w.in, w.out
	if o.n != T*C {
		panic(&Error{Op: op, Err: fmt.Errorf("output has %d values, want %d x %d", o.n, T, C)})
	}
	n := int64(T) * int64(C)
	switch {
	case w.q != nil:
		args := []uint64{ptrArg(o.ptr), ptrArg(id.ptr), intArg(T), intArg(C), intArg(V), ptrArg(w.q.codes)}
		args = append(args, b.nf4Args(w.q)...)
		b.launchN(op, "embedding_nf4", n, append(args, intArg(int(b.half)))...)
	default:
		b.launchN(op, "embedding_"+w.half.suffix(), n, ptrArg(o.ptr), ptrArg(id.ptr), ptrArg(w.dense), intArg(T), intArg(C), intArg(V))
	}
}

func loraRank(l *finetune.Linear) int {
	if l.LoRA == nil {
		return 0
	}
	return l.LoRA.A.Shape()[0]
}

// keepScale is dropout's 1/(1-p) in float32, as the CPU computes it.
func keepScale(p float32) float32 { return 1 / (1 - p) }

// dropout returns dropout(x) for x [n]: x itself when p == 0, else the
// masked, rescaled copy in the sDrop scratch.
func (b *Backend) dropout(op string, x cu.DevicePtr, n int64, p float32, seed uint64) cu.DevicePtr {
	if p == 0 {
		return x
	}
	xd := b.scratchBuf(sDrop, 4*n, op)
	b.launchN(op, "dropout_fwd", n, ptrArg(xd), ptrArg(x), uint64(n), seed, f32Arg(p), f32Arg(keepScale(p)))
	return xd
}

// LinearForward: out [T,out] = x . W^T + scale * (dropout(x) . A^T) . B^T,
// h [T,r] = dropout(x) . A^T.
func (b *Backend) LinearForward(out, x finetune.Tensor, l *finetune.Linear, h finetune.Tensor, seed uint64) {
	const op = "LinearForward"
	defer b.enter(op)()
	w := cudaW(l.W, op)
	o, xs := tensor(out, kindF32, op), tensor(x, kindF32, op)
	T := xs.n / w.in
	if xs.n != T*w.in || o.n != T*w.out {
		panic(&Error{Op: op, Err: fmt.Errorf("%s: x has %d values and out %d for a [%d, %d] weight", l.Name, xs.n, o.n, w.out, w.in)})
	}
	if l.LoRA != nil && b.loraBF16(w) {
		b.linearForwardBF16(op, o.ptr, xs.ptr, T, w, l, tensor(h, kindF32, op), seed)
		return
	}
	b.xwT(op, o.ptr, xs.ptr, T, w, 1, 0)
	if l.LoRA == nil {
		return
	}
	lo, r := l.LoRA, loraRank(l)
	A, B, hs := tensor(lo.A, kindF32, op), tensor(lo.B, kindF32, op), tensor(h, kindF32, op)
	if b.fastLoRA && r <= loraMaxR {
		// h = dropout(x) . A^T in one pass over x.
		b.loraRowdot(op, hs.ptr, xs.ptr, A.ptr, T, w.in, r, w.in, 1, lo.Dropout, seed)
	} else {
		xd := b.dropout(op, xs.ptr, int64(xs.n), lo.Dropout, seed)
		b.sgemm(op, false, true, T, r, w.in, 1, xd, w.in, A.ptr, w.in, 0, hs.ptr, r)
	}
	b.sgemm(op, false, true, T, w.out, r, lo.Scale, hs.ptr, r, B.ptr, r, 1, o.ptr, w.out)
}

// loraMaxR is the largest rank the fused LoRA kernels take (kernels/lora.cu).
const loraMaxR = 16

// loraChunk is the tokens per partial sum of the fused LoRA backward (at
// most 64, kernels/lora.cu).
const loraChunk = 32

// dropThreshold is ceil(p * 2^24): Uniform(seed, i) >= p exactly when the
// hash's top 24 bits are >= it (kernels/lora.cu).
func dropThreshold(p float32) uint64 { return uint64(math.Ceil(float64(p) * (1 << 24))) }

// loraRowdot computes y [T,r] = dropout(x) . W(j,k)^T over x [T,K], with
// W(j,k) at W + 4*(j*wsj + k*wsi).
func (b *Backend) loraRowdot(op string, y, x, W cu.DevicePtr, T, K, r, wsj, wsi int, p float32, seed uint64) {
	kernel, rows := "lora_rowdot8", 4
	if r > 8 {
		kernel, rows = "lora_rowdot16", 2
	}
	b.launch(op, kernel, grid1((T+rows-1)/rows), 256, 0, ptrArg(y), ptrArg(x), ptrArg(W), intArg(T), intArg(K), intArg(r),
		intArg(wsj), intArg(wsi), seed, f32Arg(p), dropThreshold(p), f32Arg(keepScale(p)))
}

// loraColdot accumulates G(j,k) += scale * sum_t a[t,j] * xd[t,k] for a
// [T,r] and x [T,K] (xd its dropout with p, seed; p = 0: x itself), G(j,k)
// at G + 4*(j*gsj + k*gsk).
func (b *Backend) loraColdot(op string, G, a, x cu.DevicePtr, T, K, r, gsj, gsk int, scale, p float32, seed uint64) {
	nc := (T + loraChunk - 1) / loraChunk
	part := b.scratchBuf(sLoRAPart, 4*int64(nc)*int64(r)*int64(K), op)
	gx := (K + 255) / 256
	b.launch(op, "lora_coldot_partial", [3]int{gx, nc, 1}, 256, 0, ptrArg(part), ptrArg(a), ptrArg(x), intArg(T), intArg(K), intArg(r),
		intArg(loraChunk), seed, f32Arg(p), dropThreshold(p), f32Arg(keepScale(p)))
	b.launch(op, "lora_coldot_finish", [3]int{gx, r, 1}, 256, 0, ptrArg(G), ptrArg(part), intArg(nc), intArg(K), intArg(r),
		intArg(gsj), intArg(gsk), f32Arg(scale))
}

// LinearBackward: dx += dout . W + scale * ((dout . B) . A) * mask;
// GradB += scale * dout^T . h; GradA += scale * (dout . B)^T . dropout(x).
func (b *Backend) LinearBackward(dx, dout, x finetune.Tensor, l *finetune.Linear, h finetune.Tensor, seed uint64) {
	const op = "LinearBackward"
	defer b.enter(op)()
	w := cudaW(l.W, op)
	do := tensor(dout, kindF32, op)
	T := do.n / w.out
	d := tensor(dx, kindF32, op)
	if l.LoRA != nil && b.loraBF16(w) {
		b.linearBackwardBF16(op, d, do.ptr, tensor(x, kindF32, op), T, w, l, tensor(h, kindF32, op), seed)
		return
	}
	if d != nil {
		b.dW(op, d.ptr, do.ptr, T, w, 1)
	}
	if l.LoRA == nil {
		return
	}
	lo, r := l.LoRA, loraRank(l)
	xs, hs := tensor(x, kindF32, op), tensor(h, kindF32, op)
	A, B := tensor(lo.A, kindF32, op), tensor(lo.B, kindF32, op)
	gA, gB := tensor(lo.GradA, kindF32, op), tensor(lo.GradB, kindF32, op)
	n := int64(T) * int64(w.in)
	g := b.scratchBuf(sLoRAG, 4*int64(T)*int64(r), op)
	if b.fastLoRA && r <= loraMaxR {
		// GradB [out,r] += scale * dout^T . h
		b.loraColdot(op, gB.ptr, hs.ptr, do.ptr, T, w.out, r, 1, r, lo.Scale, 0, 0)
		// g [T,r] = dout . B
		b.loraRowdot(op, g, do.ptr, B.ptr, T, w.out, r, 1, r, 0, 0)
		// GradA [r,in] += scale * g^T . dropout(x)
		b.loraColdot(op, gA.ptr, g, xs.ptr, T, w.in, r, w.in, 1, lo.Scale, lo.Dropout, seed)
		if d != nil {
			b.launch(op, "lora_dx", [3]int{(w.in + 255) / 256, min(T, 64), 1}, 256, 0, ptrArg(d.ptr), ptrArg(g), ptrArg(A.ptr),
				intArg(T), intArg(w.in), intArg(r), f32Arg(lo.Scale), seed, f32Arg(lo.Dropout), dropThreshold(lo.Dropout),
				f32Arg(keepScale(lo.Dropout)))
		}
		return
	}
	xd := b.dropout(op, xs.ptr, n, lo.Dropout, seed)
	// GradB [out,r] += scale * dout^T . h
	b.sgemm(op, true, false, w.out, r, T, lo.Scale, do.ptr, w.out, hs.ptr, r, 1, gB.ptr, r)
	// g [T,r] = dout . B
	b.sgemm(op, false, false, T, r, w.out, 1, do.ptr, w.out, B.ptr, r, 0, g, r)
	// GradA [r,in] += scale * g^T . dropout(x)
	b.sgemm(op, true, false, r, w.in, T, lo.Scale, g, r, xd, w.in, 1, gA.ptr, w.in)
	if d == nil {
		return
	}
	if lo.Dropout == 0 {
		b.sgemm(op, false, false, T, w.in, r, lo.Scale, g, r, A.ptr, w.in, 1, d.ptr, w.in)
		return
	}
	tmp := b.scratchBuf(sLoRATmp, 4*n, op)
	b.sgemm(op, false, false, T, w.in, r, lo.Scale, g, r, A.ptr, w.in, 0, tmp, w.in)
	b.launchN(op, "dropout_bwd_acc", n, ptrArg(d.ptr), ptrArg(tmp), uint64(n), seed, f32Arg(lo.Dropout), f32Arg(keepScale(lo.Dropout)))
}

// Logits: out [T,V] = x [T,C] . lmHead^T.
func (b *Backend) Logits(out, x finetune.Tensor, lmHead finetune.Weight) {
	const op = "Logits"
	defer b.enter(op)()
	w := cudaW(lmHead, op)
	o, xs := tensor(out, kindF32, op), tensor(x, kindF32, op)
	T := xs.n / w.in
	if o.n != T*w.out {
		panic(&Error{Op: op, Err: fmt.Errorf("output has %d values, want %d x %d", o.n, T, w.out)})
	}
	b.xwT(op, o.ptr, xs.ptr, T, w, 1, 0)
}

// ---------------------------------------------------------------------------
// Norms, RoPE, SwiGLU, Add

func (b *Backend) RMSNormForward(out, rstd, x, w finetune.Tensor, eps float32) {
	const op = "RMSNormForward"
	defer b.enter(op)()
	o, rs, xs, ws := tensor(out, kindF32, op), tensor(rstd, kindF32, op), tensor(x, kindF32, op), tensor(w, kindF32, op)
	C := ws.n
	if xs.n != rs.n*C || o.n != xs.n {
		panic(&Error{Op: op, Err: fmt.Errorf("x %v, out %v, rstd %v, w %v do not agree", xs.shape, o.shape, rs.shape, ws.shape)})
	}
	b.launch(op, "rmsnorm_fwd", grid1(rs.n), 256, 0, ptrArg(o.ptr), ptrArg(rs.ptr), ptrArg(xs.ptr), ptrArg(ws.ptr), intArg(C), f32Arg(eps))
}

func (b *Backend) RMSNormBackward(dx, dout, x, w, rstd finetune.Tensor) {
	const op = "RMSNormBackward"
	defer b.enter(op)()
	d, do, xs := tensor(dx, kindF32, op), tensor(dout, kindF32, op), tensor(x, kindF32, op)
	ws, rs := tensor(w, kindF32, op), tensor(rstd, kindF32, op)
	if xs.n != rs.n*ws.n || d.n != xs.n || do.n != xs.n {
		panic(&Error{Op: op, Err: fmt.Errorf("dx %v, dout %v, x %v, w %v, rstd %v do not agree", d.shape, do.shape, xs.shape, ws.shape, rs.shape)})
	}
	b.launch(op, "rmsnorm_bwd", grid1(rs.n), 256, 0, ptrArg(d.ptr), ptrArg(do.ptr), ptrArg(xs.ptr), ptrArg(ws.ptr), ptrArg(rs.ptr), intArg(ws.n))
}

func (b *Backend) rope(op string, qkv, pos finetune.Tensor, nHead, nKV, headDim, rotaryDim int, theta float32, inverse bool) {
	x, ps := tensor(qkv, kindF32, op), tensor(pos, kindI32, op)
	T, width := ps.n, (nHead+2*nKV)*headDim
	if x.n != T*width || rotaryDim > headDim || rotaryDim%2 != 0 {
		panic(&Error{Op: op, Err: fmt.Errorf("qkv %v for %d tokens of %d+2x%d heads of %d (rotary %d)", x.shape, T, nHead, nKV, headDim, rotaryDim)})
	}
	half := rotaryDim / 2
	if T == 0 || half == 0 {
		return
	}
	// The angles' cos and sin once per token, then the rotation.
	cs := b.scratchBuf(sRope, 8*int64(T)*int64(half), op)
	b.launchN(op, "rope_table", int64(T)*int64(half), ptrArg(cs), ptrArg(ps.ptr), intArg(T), intArg(half), intArg(rotaryDim), f32Arg(theta))
	b.launch(op, "rope_apply", [3]int{((nHead+nKV)*half + 255) / 256, min(T, 65535), 1}, 256, 0, ptrArg(x.ptr), ptrArg(cs), intArg(T),
		intArg(nHead+nKV), intArg(headDim), intArg(width), intArg(half), boolArg(inverse))
}

func (b *Backend) RoPEForward(qkv, pos finetune.Tensor, nHead, nKV, headDim, rotaryDim int, theta float32) {
	defer b.enter("RoPEForward")()
	b.rope("RoPEForward", qkv, pos, nHead, nKV, headDim, rotaryDim, theta, false)
}

func (b *Backend) RoPEBackward(dqkv, pos finetune.Tensor, nHead, nKV, headDim, rotaryDim int, theta float32) {
	defer b.enter("RoPEBackward")()
	b.rope("RoPEBackward", dqkv, pos, nHead, nKV, headDim, rotaryDim, theta, true)
}

// lastDim is a tensor's innermost dimension.
func lastDim(t *Tensor) int {
	if len(t.shape) == 0 {
		return 1
	}
	return t.shape[len(t.shape)-1]
}

// swigluGrid covers I features by T tokens (kernels/elementwise.cu); a
// zero dimension launches nothing.
func swigluGrid(T, I int) [3]int {
	if T == 0 || I == 0 {
		return [3]int{0, 0, 0}
	}
	return [3]int{(I + 255) / 256, min(T, 65535), 1}
}

func (b *Backend) SwiGLUForward(out, gateUp finetune.Tensor) {
	const op = "SwiGLUForward"
	defer b.enter(op)()
	o, gu := tensor(out, kindF32, op), tensor(gateUp, kindF32, op)
	I := lastDim(o)
	T := o.n / max(I, 1)
	if gu.n != 2*o.n {
		panic(&Error{Op: op, Err: fmt.Errorf("gate_up %v for out %v", gu.shape, o.shape)})
	}
	b.launch(op, "swiglu_fwd", swigluGrid(T, I), 256, 0, ptrArg(o.ptr), ptrArg(gu.ptr), intArg(T), intArg(I))
}

func (b *Backend) SwiGLUBackward(dgateUp, dout, gateUp finetune.Tensor) {
	const op = "SwiGLUBackward"
	defer b.enter(op)()
	dgu, do, gu := tensor(dgateUp, kindF32, op), tensor(dout, kindF32, op), tensor(gateUp, kindF32, op)
	I := lastDim(do)
	T := do.n / max(I, 1)
	if gu.n != 2*do.n || dgu.n != gu.n {
		panic(&Error{Op: op, Err: fmt.Errorf("dgate_up %v, gate_up %v for dout %v", dgu.shape, gu.shape, do.shape)})
	}
	b.launch(op, "swiglu_bwd", swigluGrid(T, I), 256, 0, ptrArg(dgu.ptr), ptrArg(do.ptr), ptrArg(gu.ptr), intArg(T), intArg(I))
}

func (b *Backend) Add(out, a, bt finetune.Tensor) {
	const op = "Add"
	defer b.enter(op)()
	o, as, bs := tensor(out, kindF32, op), tensor(a, kindF32, op), tensor(bt, kindF32, op)
	if as.n != o.n || bs.n != o.n {
		panic(&Error{Op: op, Err: fmt.Errorf("shapes %v + %v into %v", as.shape, bs.shape, o.shape)})
	}
	b.launchN(op, "add_f32", int64(o.n), ptrArg(o.ptr), ptrArg(as.ptr), ptrArg(bs.ptr), intArg(o.n))
}

// ---------------------------------------------------------------------------
// Attention

const attnThreads = 128

// attnScale is 1/sqrt(D) in float32, as the CPU computes it.
func attnScale(D int) float32 { return float32(1 / math.Sqrt(float64(D))) }

// attnSmem is the dynamic shared memory for the scores of n keys.
func (b *Backend) attnSmem(op string, n, D int) int {
	if D > 4*attnThreads {
		panic(&Error{Op: op, Err: fmt.Errorf("head dimension %d is above the kernels' %d", D, 4*attnThreads)})
	}
	smem := 4 * n
	// The kernels' static shared memory is about 3 KiB.
	if limit := b.info.MaxSharedMemPerBlock - 4096; smem > limit {
		panic(&Error{Op: op, Err: fmt.Errorf("%d keys need %d bytes of shared memory for their scores, above %d: sequences this long need the tiled attention of issue 8", n, smem, limit)})
	}
	return smem
}

// shortAttn says whether rows of S tokens with head dimension D take the
// one-block-per-(head, row) kernels (attn_fwd_s64, attn_bwd_s64), and
// their dynamic shared memory: the row's keys or values [S][D+1] and the
// probabilities [S][S+1] in float32, within the 48 KiB a block gets
// without opting in to more.
func (b *Backend) shortAttn(S, D int) (smem int, ok bool) {
	smem = 4 * (S*(D+1) + S*(S+1))
	return smem, b.fastAttn && S <= 64 && D <= 128 && smem <= min(b.info.MaxSharedMemPerBlock, 48<<10)
}

func (b *Backend) checkAttn(op string, qkv, pos *Tensor, B, S, H, K, D int) {
	if H <= 0 || K <= 0 || H%K != 0 || D <= 0 {
		panic(&Error{Op: op, Err: fmt.Errorf("%d query heads, %d KV heads of %d: the query heads must be a multiple of the KV heads", H, K, D)})
	}
	if qkv.n != B*S*(H+2*K)*D || (pos != nil && pos.n != B*S) {
		panic(&Error{Op: op, Err: fmt.Errorf("qkv %v for %d x %d tokens of %d+2x%d heads of %d", qkv.shape, B, S, H, K, D)})
	}
}

func (b *Backend) AttentionForward(out, lse, qkv, pos finetune.Tensor, B, S, nHead, nKV, headDim, window int) {
	const op = "AttentionForward"
	defer b.enter(op)()
	o, ls, x, ps := tensor(out, kindF32, op), tensor(lse, kindF32, op), tensor(qkv, kindF32, op), tensor(pos, kindI32, op)
	b.checkAttn(op, x, ps, B, S, nHead, nKV, headDim)
	if smem, ok := b.shortAttn(S, headDim); ok {
		b.launch(op, "attn_fwd_s64", [3]int{nHead, B, 1}, 256, smem, ptrArg(o.ptr), ptrArg(ls.ptr), ptrArg(x.ptr), ptrArg(ps.ptr),
			intArg(B), intArg(S), intArg(nHead), intArg(nKV), intArg(headDim), intArg(window), f32Arg(attnScale(headDim)))
		return
	}
	smem := b.attnSmem(op, S, headDim)
	b.launch(op, "attn_fwd", [3]int{S, nHead, B}, attnThreads, smem, ptrArg(o.ptr), ptrArg(ls.ptr), ptrArg(x.ptr), ptrArg(ps.ptr),
		intArg(B), intArg(S), intArg(nHead), intArg(nKV), intArg(headDim), intArg(window), f32Arg(attnScale(headDim)))
}

func (b *Backend) AttentionBackward(dqkv, dout, out, lse, qkv, pos finetune.Tensor, B, S, nHead, nKV, headDim, window int) {
	const op = "AttentionBackward"
	defer b.enter(op)()
	dx, do, o := tensor(dqkv, kindF32, op), tensor(dout, kindF32, op), tensor(out, kindF32, op)
	ls, x, ps := tensor(lse, kindF32, op), tensor(qkv, kindF32, op), tensor(pos, kindI32, op)
	b.checkAttn(op, x, ps, B, S, nHead, nKV, headDim)
	T := B * S
	di := b.scratchBuf(sAttn, 4*int64(T)*int64(nHead), op)
	b.launchN(op, "attn_bwd_di", int64(T)*int64(nHead), ptrArg(di), ptrArg(do.ptr), ptrArg(o.ptr), intArg(T), intArg(nHead), intArg(headDim))
	args := []uint64{ptrArg(dx.ptr), ptrArg(do.ptr), ptrArg(ls.ptr), ptrArg(di), ptrArg(x.ptr), ptrArg(ps.ptr),
		intArg(B), intArg(S), intArg(nHead), intArg(nKV), intArg(headDim), intArg(window), f32Arg(attnScale(headDim))}
	if smem, ok := b.shortAttn(S, headDim); ok {
		b.launch(op, "attn_bwd_s64", [3]int{nKV, B, 1}, 256, smem, args...)
		return
	}
	b.launch(op, "attn_bwd_dq", [3]int{S, nHead, B}, attnThreads, 0, args...)
	b.launch(op, "attn_bwd_dkdv", [3]int{S, nKV, B}, attnThreads, 0, args...)
}

func (b *Backend) AttentionCached(out, qkv, kCache, vCache finetune.Tensor, start, nHead, nKV, headDim, window int) {
	const op = "AttentionCached"
	defer b.enter(op)()
	o, x := tensor(out, kindF32, op), tensor(qkv, kindF32, op)
	kc, vc := tensor(kCache, kindF32, op), tensor(vCache, kindF32, op)
	width := (nHead + 2*nKV) * headDim
	T := x.n / width
	b.checkAttn(op, x, nil, 1, T, nHead, nKV, headDim)
	if kc.n < (start+T)*nKV*headDim || vc.n != kc.n {
		panic(&Error{Op: op, Err: fmt.Errorf("caches %v, %v cannot hold %d+%d positions", kc.shape, vc.shape, start, T)})
	}
	b.launchN(op, "attn_cache_store", int64(T)*int64(nKV*headDim), ptrArg(kc.ptr), ptrArg(vc.ptr), ptrArg(x.ptr),
		intArg(T), intArg(nHead), intArg(nKV), intArg(headDim), intArg(start))
	smem := b.attnSmem(op, start+T, headDim)
	b.launch(op, "attn_cached", [3]int{T, nHead, 1}, attnThreads, smem, ptrArg(o.ptr), ptrArg(x.ptr), ptrArg(kc.ptr), ptrArg(vc.ptr),
		intArg(nHead), intArg(nKV), intArg(headDim), intArg(start), intArg(window), f32Arg(attnScale(headDim)))
}

// ---------------------------------------------------------------------------
// Cross-entropy

// ceChunkBytes bounds one chunk of logits (the CPU takes 64 tokens at a
// time; any chunking gives the same numbers, since rows are independent).
const ceChunkBytes = 64 << 20

// CrossEntropy: see finetune.Backend. The targets are read back to pick
// the predicted tokens; the per-token losses come back in float64 and are
// summed on the host in token order, as the CPU does.
func (b *Backend) CrossEntropy(dx, x finetune.Tensor, lmHead finetune.Weight, targets finetune.Tensor, gradScale float32) (lossSum float64, correct int) {
	const op = "CrossEntropy"
	defer b.enter(op)()
	w := cudaW(lmHead, op)
	xs, tg := tensor(x, kindF32, op), tensor(targets, kindI32, op)
	d := tensor(dx, kindF32, op)
	C, V := w.in, w.out
	T := tg.n
	if xs.n != T*C || (d != nil && d.n != xs.n) {
		panic(&Error{Op: op, Err: fmt.Errorf("x %v for %d targets and lm_head [%d, %d]", xs.shape, T, V, C)})
	}
	host := make([]int32, T)
	if T > 0 {
		b.download(op, unsafe.Pointer(&host[0]), tg.ptr, 4*int64(T))
	}
	var idx, tgt []int32 // predicted tokens and their targets
	for t, v := range host {
		if v == finetune.IgnoreIndex {
			continue
		}
		if v < 0 || int(v) >= V {
			panic(&Error{Op: op, Err: fmt.Errorf("target %d at token %d is outside the vocabulary [0, %d)", v, t, V)})
		}
		idx = append(idx, int32(t))
		tgt = append(tgt, v)
	}
	N := len(idx)
	if N == 0 {
		return 0, 0
	}
	ib := b.scratchBuf(sCEIdx, 8*int64(N), op)
	idxP, tgtP := ib, ib+cu.DevicePtr(4*N)
	b.upload(op, idxP, unsafe.Pointer(&idx[0]), 4*int64(N))
	b.upload(op, tgtP, unsafe.Pointer(&tgt[0]), 4*int64(N))
	lb := b.scratchBuf(sCELoss, 12*int64(N), op)
	lossP, hitP := lb, lb+cu.DevicePtr(8*N)
	chunk := max(1, min(N, ceChunkBytes/(4*V)))
	xc := b.scratchBuf(sCEX, 4*int64(chunk)*int64(C), op)
	logits := b.scratchBuf(sCELogits, 4*int64(chunk)*int64(V), op)
	var dxc cu.DevicePtr
	if d != nil {
		dxc = b.scratchBuf(sCEDx, 4*int64(chunk)*int64(C), op)
	}
	for c0 := 0; c0 < N; c0 += chunk {
		n := min(chunk, N-c0)
		ic, tc := idxP+cu.DevicePtr(4*c0), tgtP+cu.DevicePtr(4*c0)
		b.launchN(op, "gather_rows", int64(n)*int64(C), ptrArg(xc), ptrArg(xs.ptr), ptrArg(ic), intArg(n), intArg(C))
		b.xwT(op, logits, xc, n, w, 1, 0)
		b.launch(op, "ce_rows", grid1(n), 256, 0, ptrArg(logits), ptrArg(tc), intArg(V),
			ptrArg(lossP+cu.DevicePtr(8*c0)), ptrArg(hitP+cu.DevicePtr(4*c0)), boolArg(d != nil), f32Arg(gradScale))
		if d == nil {
			continue
		}
		check(op, cu.MemsetD8Async(dxc, 0, 4*int64(n)*int64(C), b.stream))
		b.dW(op, dxc, logits, n, w, 1)
		b.launchN(op, "scatter_add_rows", int64(n)*int64(C), ptrArg(d.ptr), ptrArg(dxc), ptrArg(ic), intArg(n), intArg(C))
	}
	losses := make([]float64, N)
	hits := make([]int32, N)
	b.download(op, unsafe.Pointer(&losses[0]), lossP, 8*int64(N))
	b.download(op, unsafe.Pointer(&hits[0]), hitP, 4*int64(N))
	for k := range losses {
		lossSum += losses[k]
		if hits[k] != 0 {
			correct++
		}
	}
	return lossSum, correct
}

// ---------------------------------------------------------------------------
// Optimizer ops

func (b *Backend) Scale(t finetune.Tensor, s float32) {
	const op = "Scale"
	defer b.enter(op)()
	x := tensor(t, kindF32, op)
	b.launchN(op, "scale_f32", int64(x.n), ptrArg(x.ptr), intArg(x.n), f32Arg(s))
}

// SumSquares returns sum(t^2) in float64: one partial sum per block on the
// GPU, added on the host in block order.
func (b *Backend) SumSquares(t finetune.Tensor) float64 {
	const op = "SumSquares"
	defer b.enter(op)()
	x := tensor(t, kindF32, op)
	if x.n == 0 {
		return 0
	}
	blocks := int(min((int64(x.n)+255)/256, 1024))
	p := b.scratchBuf(sReduce, 8*int64(blocks), op)
	b.launch(op, "sum_squares_partial", grid1(blocks), 256, 0, ptrArg(p), ptrArg(x.ptr), intArg(x.n))
	parts := make([]float64, blocks)
	b.download(op, unsafe.Pointer(&parts[0]), p, 8*int64(blocks))
	var s float64
	for _, v := range parts {
		s += v
	}
	return s
}

// AdamW is torch.optim.AdamW; the scalars are computed here exactly as
// finetune/optim.AdamW computes them.
func (b *Backend) AdamW(p, g, m, v finetune.Tensor, hp finetune.AdamParams) {
	const op = "AdamW"
	defer b.enter(op)()
	ps, gs, ms, vs := tensor(p, kindF32, op), tensor(g, kindF32, op), tensor(m, kindF32, op), tensor(v, kindF32, op)
	if gs.n != ps.n || ms.n != ps.n || vs.n != ps.n {
		panic(&Error{Op: op, Err: fmt.Errorf("parameter has %d values but gradient %d, first moment %d, second moment %d", ps.n, gs.n, ms.n, vs.n)})
	}
	if hp.Step < 1 {
		panic(&Error{Op: op, Err: fmt.Errorf("step %d: the first update is step 1", hp.Step)})
	}
	q := hp.OptimParams()
	t := float64(q.Step)
	bc1 := 1 - math.Pow(q.Beta1, t)
	bc2 := 1 - math.Pow(q.Beta2, t)
	negStep := float32(-(q.LR / bc1))
	bc2Sqrt := float32(math.Sqrt(bc2))
	decay := float32(1 - q.LR*q.WeightDecay)
	w1 := float32(1 - q.Beta1)
	lerpCoef, fromG := w1, false
	if !(float32(math.Abs(float64(w1))) < 0.5) {
		lerpCoef, fromG = w1-1, true
	}
	b2, w2 := float32(q.Beta2), float32(1-q.Beta2)
	b.launchN(op, "adamw", int64(ps.n), ptrArg(ps.ptr), ptrArg(gs.ptr), ptrArg(ms.ptr), ptrArg(vs.ptr), intArg(ps.n),
		f32Arg(decay), boolArg(q.WeightDecay != 0), f32Arg(lerpCoef), boolArg(fromG), f32Arg(b2), f32Arg(w2),
		f32Arg(bc2Sqrt), f32Arg(float32(q.Eps)), f32Arg(negStep))
}

// AdamW8bit is bitsandbytes' blockwise 8-bit AdamW; the float32 scalars
// are finetune/optim's (newBnbConsts).
func (b *Backend) AdamW8bit(p, g finetune.Tensor, st *finetune.Adam8State, hp finetune.AdamParams) {
	const op = "AdamW8bit"
	defer b.enter(op)()
	ps, gs := tensor(p, kindF32, op), tensor(g, kindF32, op)
	mc, vc := tensor(st.M, kindU8, op), tensor(st.V, kindU8, op)
	am, av := tensor(st.AbsmaxM, kindF32, op), tensor(st.AbsmaxV, kindF32, op)
	n := ps.n
	nb := optim.Blocks8bit(n)
	if gs.n != n || mc.n != n || vc.n != n || am.n != nb || av.n != nb {
		panic(&Error{Op: op, Err: fmt.Errorf("parameter has %d values: gradient %d, codes %d and %d, absmax %d and %d (want %d)", n, gs.n, mc.n, vc.n, am.n, av.n, nb)})
	}
	if hp.Step < 1 {
		panic(&Error{Op: op, Err: fmt.Errorf("step %d: the first update is step 1", hp.Step)})
	}
	k := newBnbConsts(hp)
	b.launch(op, "adamw8bit", grid1(nb), 256, 0, ptrArg(ps.ptr), ptrArg(gs.ptr), ptrArg(mc.ptr), ptrArg(vc.ptr),
		ptrArg(am.ptr), ptrArg(av.ptr), intArg(n), ptrArg(b.smap), ptrArg(b.umap), f32Arg(k.b1), f32Arg(k.b2), f32Arg(k.w1), f32Arg(k.w2),
		f32Arg(k.stepSize), f32Arg(k.epsC2), boolArg(k.decay), f32Arg(k.decayFactor))
}

// BnbAdamW32 is bitsandbytes' 32-bit Adam (kOptimizer32bit2State), which
// the 8-bit optimizers apply to parameters under optim.Min8bitSize values;
// bit-identical to finetune/optim.BnbAdam32.
func (b *Backend) BnbAdamW32(p, g, m, v finetune.Tensor, hp finetune.AdamParams) {
	const op = "BnbAdamW32"
	defer b.enter(op)()
	ps, gs, ms, vs := tensor(p, kindF32, op), tensor(g, kindF32, op), tensor(m, kindF32, op), tensor(v, kindF32, op)
	if gs.n != ps.n || ms.n != ps.n || vs.n != ps.n {
		panic(&Error{Op: op, Err: fmt.Errorf("parameter has %d values but gradient %d, first moment %d, second moment %d", ps.n, gs.n, ms.n, vs.n)})
	}
	if hp.Step < 1 {
		panic(&Error{Op: op, Err: fmt.Errorf("step %d: the first update is step 1", hp.Step)})
	}
	k := newBnbConsts(hp)
	b.launchN(op, "bnb_adam32", int64(ps.n), ptrArg(ps.ptr), ptrArg(gs.ptr), ptrArg(ms.ptr), ptrArg(vs.ptr), intArg(ps.n),
		f32Arg(k.b1), f32Arg(k.b2), f32Arg(k.w1), f32Arg(k.w2), f32Arg(k.stepSize), f32Arg(k.epsC2), boolArg(k.decay), f32Arg(k.decayFactor))
}

// bnbConsts are the float32 scalars of bitsandbytes' Adam kernels,
// computed as finetune/optim's newBnbConsts computes them.
type bnbConsts struct {
	b1, b2, w1, w2  float32 // beta1, beta2, 1-beta1, 1-beta2
	stepSize, epsC2 float32 // -lr*c2/c1, c2*eps
	decay           bool
	decayFactor     float32 // 1 - lr*wd
}

func newBnbConsts(hp finetune.AdamParams) bnbConsts {
	q := hp.OptimParams()
	lr, b1, b2 := float32(q.LR), float32(q.Beta1), float32(q.Beta2)
	eps, wd := float32(q.Eps), float32(q.WeightDecay)
	pow32 := func(x float32, n int) float32 { return float32(math.Pow(float64(x), float64(n))) }
	c1 := 1 - pow32(b1, q.Step)
	c2 := float32(math.Sqrt(float64(1 - pow32(b2, q.Step))))
	return bnbConsts{b1: b1, b2: b2, w1: 1 - b1, w2: 1 - b2, stepSize: float32(-lr*c2) / c1, epsC2: c2 * eps,
		decay: wd > 0, decayFactor: 1 - float32(lr*wd)}
}
