//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"os"
	"slices"
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
	// host: dense's values live in page-locked host memory (MoveToHost),
	// which kernels read through dense, the same address (unified
	// addressing).
	host unsafe.Pointer
	half halfKind // the 16-bit type dense holds, or halfNone (float32)
	q    *nf4Weight
	g    *ggufWeight // GGUF blocks (gguf.go)
	deq  *keptDeq    // q's dequantization, kept (KeepDequantized)
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
	p, abType, _ = b.matrixLD(w, op, w.in)
	return p, abType
}

// foldLD is the row stride of an NF4 weight's bfloat16 dequantization that
// leaves room for r more columns (the LoRA up-projection's B, folded into
// the base GEMM under BF16 compute: linearForwardBF16), or 0 when the
// weight cannot take them (a dense or GGUF weight, another compute type,
// or in % 8 != 0, which the strided dequantization needs). The GEMM's K
// is in + r; the columns in + r .. ld-1 are never read.
func (b *Backend) foldLD(w *weight, r int) int {
	if w.q == nil || w.g != nil || b.half != halfBF16 || w.in%8 != 0 || r <= 0 || !loraFold {
		return 0
	}
	// A multiple of 64 values (128-byte rows): a stride of in + r rounded
	// to 8 made cuBLAS's K = in + r GEMMs ~1.5 ms a step slower (v5).
	return finetune.FoldStride(w.in, r)
}

// linearLD is the row stride LinearForward and LinearBackward (and
// PrefetchLinears) dequantize l's NF4 weight w at: room for the folded
// LoRA columns on the bfloat16 tensor-core path (foldLD), else w.in.
func (b *Backend) linearLD(w *weight, l *finetune.Linear) int {
	if l.LoRA != nil && b.loraBF16(w) {
		return max(b.foldLD(w, loraRank(l)), w.in)
	}
	return w.in
}

// matrixLD is matrix with the rows of an NF4 weight's dequantization ld
// values apart (ld >= w.in; the columns w.in .. ld-1 are left as they
// are, for the caller); it returns the stride it used (w.in for a dense
// or GGUF weight). ld != w.in needs foldLD's conditions.
func (b *Backend) matrixLD(w *weight, op string, ld int) (p cu.DevicePtr, abType, ldOut int) {
	if w.g != nil {
		p, abType = b.ggufMatrix(w, op)
		return p, abType, w.in
	}
	if w.q == nil {
		return w.dense, w.half.blasType(), w.in
	}
	if ld < w.in {
		ld = w.in
	}
	elem, abType := b.half.elem(), b.half.blasType()
	bytes := elem * int64(w.out) * int64(ld)
	if k := b.keptDequant(w, ld, bytes, op); k != nil {
		return k.ptr, abType, ld
	}
	if s := b.dequantSlotLD(w, ld, bytes, op, false); s != nil {
		b.awaitSlot(s, op) // a prefetch of w (or of another weight: before overwriting)
		s.kept = b.keepAsked
		if s.w == w {
			return s.ptr, abType, ld // still there from the last use, or prefetched
		}
		s.w, p = w, s.ptr
	} else {
		p = b.scratchBuf(sWeight, bytes, op)
	}
	b.dequantInto(op, w, p, ld, false)
	return p, abType, ld
}

// Kept dequantizations (finetune.DequantKeeper, issue 8 v12,
// quantization.keep_dequantized_gb): the base is frozen, so an NF4
// weight's dequantization at the stride the linears ask for is the same
// in every step. Up to deqKeepBudget bytes of them stay on the GPU, made
// by the first use of each weight (the first step; in the order the step
// uses them), as long as deqKeepReserve stays free; later uses read them
// with no dequantization, no cache slot and no prefetch. The same bits:
// the same kernel writes the same values.
type keptDeq struct {
	ptr   cu.DevicePtr
	ld    int
	bytes int64
}

// deqKeepReserve is the GPU memory a kept dequantization must leave free
// (for the scratch buffers that grow after the first step's GEMMs, and
// cuBLAS's workspace).
const deqKeepReserve = 1 << 30

var _ finetune.DequantKeeper = (*Backend)(nil)

// KeepDequantized (finetune.DequantKeeper) sets the bytes of kept
// dequantizations, freeing the latest kept ones beyond them (0: all).
func (b *Backend) KeepDequantized(bytes int64) {
	defer b.enter("KeepDequantized")()
	b.deqKeepBudget = max(bytes, 0)
	b.freeKeptBeyond(b.deqKeepBudget)
}

// keepRoom says whether bytes more of kept dequantizations fit the budget.
func (b *Backend) keepRoom(bytes int64) bool { return b.deqKeepUsed+bytes <= b.deqKeepBudget }

// KeptDequantized (finetune.DequantKeeper) is the bytes kept.
func (b *Backend) KeptDequantized() int64 { return b.deqKeepUsed }

// keptDequant returns w's kept dequantization at row stride ld, making it
// if the budget and the GPU's free memory allow; nil otherwise (the cache
// slots' path).
func (b *Backend) keptDequant(w *weight, ld int, bytes int64, op string) *keptDeq {
	if w.deq != nil {
		if w.deq.ld == ld {
			return w.deq
		}
		return nil
	}
	if !b.keepRoom(bytes) {
		return nil
	}
	if free, _, err := cu.MemInfo(); err != nil || free-bytes < deqKeepReserve {
		b.deqKeepBudget = b.deqKeepUsed // full: stop asking
		return nil
	}
	p, err := b.rawAlloc(bytes, fmt.Sprintf("the kept dequantization of a [%d, %d] weight", w.out, w.in))
	if err != nil {
		b.deqKeepBudget = b.deqKeepUsed // Options.MemoryLimit, or a race for the memory
		return nil
	}
	w.deq = &keptDeq{ptr: p, ld: ld, bytes: bytes}
	b.deqKeepUsed += bytes
	b.deqKept = append(b.deqKept, w)
	b.dequantInto(op, w, p, ld, false)
	return w.deq
}

// freeKeptBeyond frees the latest kept dequantizations until at most
// bytes are kept.
func (b *Backend) freeKeptBeyond(bytes int64) {
	for b.deqKeepUsed > bytes && len(b.deqKept) > 0 {
		b.freeKeptDeq(b.deqKept[len(b.deqKept)-1])
	}
}

// freeKeptDeq frees w's kept dequantization.
func (b *Backend) freeKeptDeq(w *weight) {
	if w.deq != nil {
		b.rawFree(w.deq.ptr, w.deq.bytes)
		b.deqKeepUsed -= w.deq.bytes
		w.deq = nil
		b.deqKept = slices.DeleteFunc(b.deqKept, func(k *weight) bool { return k == w })
	}
}

// dequantLDOK says whether dequantInto can write w at row stride ld.
func (b *Backend) dequantLDOK(w *weight, ld int) bool {
	return ld == w.in || b.half == halfBF16 && w.in%8 == 0 && ld%8 == 0
}

// dequantInto queues NF4 weight w's dequantization into p at row stride
// ld, on the main stream, or (side) on the side stream (PrefetchLinears).
func (b *Backend) dequantInto(op string, w *weight, p cu.DevicePtr, ld int, side bool) {
	b.dequantRuns++
	n := w.n()
	elem, kernel := b.half.elem(), "nf4_dequant_"+b.half.suffix()
	launch := b.launch
	if side {
		launch = b.launchSide
	}
	if !b.dequantLDOK(w, ld) {
		panic(&Error{Op: op, Err: fmt.Errorf("weight [%d, %d]: no strided dequantization to a row stride of %d", w.out, w.in, ld)})
	}
	if ld != w.in {
		// Rows ld apart: thread x of block (bx, by) expands eight values,
		// group 128*bx + x of rows by, by + gridDim.y, ...
		gpr := w.in / 8
		if deqWarpItems && int64(w.out)*int64(gpr)+256 < 1<<32 {
			name, grid := b.deqLDKernel(w.out, gpr)
			if deqStream {
				name += "cs"
			}
			launch(op, name, grid, 256, 0,
				append([]uint64{ptrArg(p), intArg(w.out), intArg(w.in), intArg(ld), ptrArg(w.q.codes)}, b.nf4Args(w.q)...)...)
			return
		}
		launch(op, "nf4_dequant_ld_bf16", [3]int{(gpr + 127) / 128, min(w.out, 65535), 1}, 128, 0,
			append([]uint64{ptrArg(p), intArg(w.out), intArg(w.in), intArg(ld), ptrArg(w.q.codes)}, b.nf4Args(w.q)...)...)
		return
	}
	// The dequantization kernels expand 8 (16-bit) or 4 (f32) values a
	// thread, then the rest one a thread.
	per := 16 / elem
	threads := max(n/per, n%per, 1)
	launch(op, kernel, [3]int{int(min((threads+255)/256, 1<<20)), 1, 1}, 256, 0,
		append([]uint64{ptrArg(p), uint64(n), ptrArg(w.q.codes)}, b.nf4Args(w.q)...)...)
}

// deqWarpItems says whether matrixLD's strided bfloat16 dequantization
// runs nf4_dequant_ld_bf16_w (warps over 128-group row items, four
// 16-byte stores a lane, the absmax once a 64-block) rather than
// nf4_dequant_ld_bf16 (one group a thread); OLLAMA_TUNE_CUDA_REFERENCE=deq-ld
// turns it off.
var deqWarpItems = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "deq-ld")

// deqLDMaxBlocks caps nf4_dequant_ld_bf16_w's grid: a negative value (the
// default) gives every warp one item (a grid as large as the work), 0 the
// blocks resident at once (persistent warps, OLLAMA_TUNE_CUDA_DEQ=persist),
// a positive value that many blocks (tests, to make the warps stride). On
// the H100 one item a warp dequantized Phi-3-mini's four weight shapes 9%
// faster than persistent warps (233 vs 254 us for two passes of each;
// TestNF4DequantLDSpeed): the block scheduler balances the SMs better than
// a fixed number of rounds a warp.
var deqLDMaxBlocks = func() int {
	if os.Getenv("OLLAMA_TUNE_CUDA_DEQ") == "persist" {
		return 0
	}
	return -1
}()

// deqStream picks nf4_dequant_ld_bf16_wcs over nf4_dequant_ld_bf16_w: the
// same values, written with streaming (evict-first) stores from streaming
// code loads, so that a weight's ~126 MB do not push the main stream's
// activations out of the L2 cache while the prefetch stream dequantizes
// beside it (v18, H200: -0.3 ms a step, the same bits).
// OLLAMA_TUNE_CUDA_REFERENCE=deq-cache turns it off.
var deqStream = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "deq-cache")

// deqLDKernel is the strided dequantization kernel and its grid for rows
// of gpr groups (deqLDMaxBlocks). With a cap the items are spread evenly:
// each warp strides over the same number of rounds, give or take one, and
// the grid shrinks instead of leaving a short last round.
func (b *Backend) deqLDKernel(rows, gpr int) (string, [3]int) {
	const perSM = 8                             // 32 registers, 256 threads a block: 2048 threads an SM
	units := int64(rows) * int64((gpr+127)/128) // warp items
	maxBlocks := perSM * int64(max(b.info.Multiprocessors, 1))
	if deqLDMaxBlocks > 0 {
		maxBlocks = int64(deqLDMaxBlocks)
	} else if deqLDMaxBlocks < 0 {
		maxBlocks = (units + 7) / 8
	}
	rounds := (units + 8*maxBlocks - 1) / (8 * maxBlocks)
	warps := (units + rounds - 1) / rounds
	return "nf4_dequant_ld_bf16_w", [3]int{int((warps + 7) / 8), 1, 1}
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
	ld      int // row stride (matrixLD)
	ptr     cu.DevicePtr
	bytes   int64
	w       *weight // whose values the slot holds (or will, once ready), or nil
	used    uint64  // b.dequantClock at the last use
	// kept: the main stream last read w in a forward whose backward comes
	// next (KeepLoRAInputs), which reads it again; a prefetch of another
	// weight of the shape takes a spare slot rather than this one.
	kept bool
	// ready is recorded on the side stream after PrefetchLinears queued
	// w's dequantization there; pending until the main stream has waited
	// for it (before it reads or overwrites the slot).
	ready   cu.Event
	hasEv   bool
	pending bool
}

// awaitSlot makes the main stream wait for s's prefetch, if one is pending.
func (b *Backend) awaitSlot(s *dequantSlot, op string) {
	if s.pending {
		if b.waits != nil {
			b.waits.mark(b.stream)
			b.waits.shapes = append(b.waits.shapes, fmt.Sprintf("%dx%d", s.out, s.in))
		}
		check(op, b.stream.Wait(s.ready, 0))
		if b.waits != nil {
			b.waits.mark(b.stream)
		}
		s.pending = false
	}
}

// dropSlot frees s's memory and event, first waiting on the host for a
// prefetch still writing it.
func (b *Backend) dropSlot(s *dequantSlot) {
	if s.pending {
		s.ready.Synchronize()
		s.pending = false
	}
	if s.hasEv {
		cu.DestroyEvent(&s.ready)
		s.hasEv = false
	}
}

// dequantSlot returns the cache slot for w's shape (dequantSlotLD at
// row stride w.in, not for a prefetch).
func (b *Backend) dequantSlot(w *weight, bytes int64, op string) *dequantSlot {
	return b.dequantSlotLD(w, w.in, bytes, op, false)
}

// dequantSlotLD returns the cache slot for w at row stride ld: the one
// that holds w (or will, once its prefetch is ready) if there is one, else
// one of its shape's to overwrite (one not held for a backward first, then
// the least recently used), making one when the shape has none. A new
// shape beyond the limit replaces the least recently used shape's slots
// (which synchronises, but a training step uses the same few shapes over
// and over). A prefetch that finds every slot of its shape held for a
// backward takes a spare slot instead, up to dequantSpares (v12:
// checkpointing's recompute reads a layer's qkv_proj weight again in the
// layer's backward, and the layer below's is prefetched in between). nil
// when the cache is off, or for a prefetch that finds no room.
func (b *Backend) dequantSlotLD(w *weight, ld int, bytes int64, op string, prefetch bool) *dequantSlot {
	if b.dequantMax <= 0 {
		return nil
	}
	b.dequantClock++
	var pick *dequantSlot
	for _, s := range b.dequant {
		if s.out != w.out || s.in != w.in || s.ld != ld {
			continue
		}
		if s.w == w {
			s.used = b.dequantClock
			return s
		}
		if pick == nil || pick.kept && !s.kept || pick.kept == s.kept && s.used < pick.used {
			pick = s
		}
	}
	spare := false
	if pick != nil && pick.kept && prefetch {
		if !deqSpareOn || len(b.dequant)-b.dequantShapes() >= dequantSpares {
			return nil // no room: the prefetch waits for a later hint
		}
		pick, spare = nil, true
	}
	if pick != nil {
		pick.used = b.dequantClock
		return pick
	}
	if !spare && b.dequantShapes() >= b.dequantMax {
		lru := b.dequant[0]
		for _, s := range b.dequant {
			if s.used < lru.used {
				lru = s
			}
		}
		keep := b.dequant[:0]
		for _, s := range b.dequant {
			if s.out == lru.out && s.in == lru.in && s.ld == lru.ld {
				b.dropSlot(s)
				b.rawFree(s.ptr, s.bytes)
				continue
			}
			keep = append(keep, s)
		}
		clear(b.dequant[len(keep):])
		b.dequant = keep
	}
	p, err := b.rawAlloc(bytes, fmt.Sprintf("the dequantization cache's [%d, %d] slot", w.out, w.in))
	check(op, err)
	s := &dequantSlot{out: w.out, in: w.in, ld: ld, ptr: p, bytes: bytes, used: b.dequantClock}
	b.dequant = append(b.dequant, s)
	return s
}

// dequantShapes is how many shapes the cache's slots have.
func (b *Backend) dequantShapes() int {
	n := 0
	for k, s := range b.dequant {
		if !slices.ContainsFunc(b.dequant[:k], func(o *dequantSlot) bool { return o.out == s.out && o.in == s.in && o.ld == s.ld }) {
			n++
		}
	}
	return n
}

// dequantSpares is how many slots beyond one a shape the cache may hold
// (dequantSlotLD): one qkv_proj weight of Phi-3-mini (58 MB in bf16).
// deqSpareOn false (OLLAMA_TUNE_CUDA_REFERENCE=deq-spare) takes none: a
// prefetch that finds its shape's slot held for a backward is skipped,
// and the backward's later hint queues it (v11's timing).
const dequantSpares = 1

var deqSpareOn = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "deq-spare")

// freeDequantCache releases the cache's slots.
func (b *Backend) freeDequantCache() {
	for _, s := range b.dequant {
		b.dropSlot(s)
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
	if cw.host != nil { // (not device memory: read it here)
		check(op, b.stream.Synchronize())
		p = 0
	}
	if t == dataR32F {
		if p == 0 {
			copy(out, unsafe.Slice((*float32)(cw.host), n))
			return out
		}
		b.download(op, unsafe.Pointer(&out[0]), p, 4*n)
		return out
	}
	bits := make([]uint16, n)
	if p == 0 {
		copy(bits, unsafe.Slice((*uint16)(cw.host), n))
	} else {
		b.download(op, unsafe.Pointer(&bits[0]), p, 2*n)
	}
	widen := safetensors.BF16ToF32
	if t == dataR16F {
		widen = safetensors.F16ToF32
	}
	for k, v := range bits {
		out[k] = widen(v)
	}
	return out
}

var _ finetune.HostWeighter = (*Backend)(nil)

// MoveToHost (finetune.HostWeighter) moves a dense weight's values to
// page-locked host memory, which the embedding gather reads over PCIe
// (the step's rows: 6 MB of Phi-3-mini's 197 MB table for 1,024 tokens).
// A weight the GEMMs read (an lm_head) must stay: it is refused.
func (b *Backend) MoveToHost(w finetune.Weight) (err error) {
	const op = "MoveToHost"
	defer Recover(&err)
	defer b.enter(op)()
	cw := cudaW(w, op)
	switch {
	case cw.host != nil:
		return nil
	case cw.q != nil || cw.g != nil || cw.deq != nil:
		return &Error{Op: op, Err: fmt.Errorf("weight [%d, %d] is not a dense weight", cw.out, cw.in)}
	}
	n := cw.Bytes()
	h, err := memAllocHost(n)
	if err != nil {
		return &Error{Op: op, Err: err}
	}
	b.download(op, h, cw.dense, n)
	b.rawFree(cw.dense, n)
	cw.host, cw.dense = h, cu.DevicePtr(uintptr(h))
	return nil
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
			s.w, s.kept = nil, false
		}
	}
	b.freeGGUF(w)
	b.freeKeptDeq(w)
	switch {
	case w.host != nil:
		check("FreeWeight", b.stream.Synchronize()) // a gather may still read it
		cu.MemFreeHost(w.host)
		w.host, w.dense = nil, 0
	case w.dense != 0:
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

// gemm runs g (operands of type g.abType; the result float32, or bfloat16
// with g.cHalf).
func (b *Backend) gemm(op string, g gemmArgs) {
	if b.trySkinny(op, g) { // r <= 8 bfloat16 products (skinny.go)
		return
	}
	p := b.lt.plan(g, b.blas.tf32) // a pinned cuBLASLt configuration, or nil (cublaslt.go)
	if b.prof == nil {
		check(op, b.runGEMM(op, p, g))
		return
	}
	t := map[int]string{dataR32F: "f32", dataR16BF: "bf16", dataR16F: "f16"}[g.abType]
	if g.cHalf {
		t += "->bf16"
	}
	name := fmt.Sprintf("gemm %s %dx%dx%d", t, g.M, g.N, g.K)
	if p != nil {
		name += " pinned"
	}
	b.span(name, func() { check(op, b.runGEMM(op, p, g)) })
}

// runGEMM issues g through its pinned plan p (with the workspace it asks
// for), or through gemmEx where p is nil.
func (b *Backend) runGEMM(op string, p *ltPlan, g gemmArgs) error {
	if p != nil {
		var ws cu.DevicePtr
		if p.ws > 0 {
			ws = b.scratchBuf(sLtWork, p.ws, op)
		}
		return b.lt.run(p, g, uintptr(ws))
	}
	return b.blas.run(g)
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

// dW computes dx[T,I] = alpha * dout[T,O] . W[O,I] + beta * dx (beta 1:
// accumulate; 0: takeZero's overwrite).
func (b *Backend) dW(op string, dx, dout cu.DevicePtr, T int, w *weight, alpha, beta float32) {
	wp, t := b.matrix(w, op)
	dout = b.toHalf(op, dout, int64(T)*int64(w.out), t)
	b.gemm(op, gemmArgs{M: T, N: w.in, K: w.out, alpha: alpha, beta: beta,
		A: uintptr(dout), lda: w.out, B: uintptr(wp), ldb: w.in, C: uintptr(dx), ldc: w.in, abType: t})
}

// sgemm is an all-float32 row-major GEMM (the LoRA products).
func (b *Backend) sgemm(op string, transA, transB bool, M, N, K int, alpha float32, A cu.DevicePtr, lda int, B cu.DevicePtr, ldb int, beta float32, C cu.DevicePtr, ldc int) {
	b.gemm(op, gemmArgs{transA: transA, transB: transB, M: M, N: N, K: K, alpha: alpha, beta: beta,
		A: uintptr(A), lda: lda, B: uintptr(B), ldb: ldb, C: uintptr(C), ldc: ldc, abType: dataR32F})
}

// ---------------------------------------------------------------------------
// Cross-entropy

// ceChunkBytes bounds one chunk of logits (the CPU takes 64 tokens at a
// time; any chunking gives the same numbers up to rounding, since rows are
// independent: cuBLAS may take another algorithm for another chunk's
// GEMMs). v16 tried 16 MiB (130 of Phi-3-mini's rows, 58 MiB less at the
// step's peak): the lm_head GEMMs took 0.7 ms a step more, more than the
// memory buys as kept activations.
const ceChunkBytes = finetune.CrossEntropyChunkBytes // (the plan's estimate counts it)

// CrossEntropy: see finetune.Backend. The targets are taken from their
// last UploadInt32 (Tensor.host) or read back, to pick the predicted
// tokens; the per-token losses come back in float64 and are
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
	// The targets as last uploaded (no round trip), else read back.
	host := tg.host
	if len(host) != T {
		host = make([]int32, T)
		if T > 0 {
			b.download(op, unsafe.Pointer(&host[0]), tg.ptr, 4*int64(T))
		}
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
		b.launch(op, "ce_rows", grid1(n), 512, 0, ptrArg(logits), ptrArg(tc), intArg(V),
			ptrArg(lossP+cu.DevicePtr(8*c0)), ptrArg(hitP+cu.DevicePtr(4*c0)), boolArg(d != nil), f32Arg(gradScale))
		if d == nil {
			continue
		}
		check(op, cu.MemsetD8Async(dxc, 0, 4*int64(n)*int64(C), b.stream))
		b.dW(op, dxc, logits, n, w, 1, 1)
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
	b.packStale(x.ptr)
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

// adamTensors unwraps an AdamW update's parameter, gradient and fp32
// moments, checking their sizes and the step.
func adamTensors(op string, p, g, m, v finetune.Tensor, hp finetune.AdamParams) (ps, gs, ms, vs *Tensor) {
	ps, gs, ms, vs = tensor(p, kindF32, op), tensor(g, kindF32, op), tensor(m, kindF32, op), tensor(v, kindF32, op)
	if gs.n != ps.n || ms.n != ps.n || vs.n != ps.n {
		panic(&Error{Op: op, Err: fmt.Errorf("parameter has %d values but gradient %d, first moment %d, second moment %d", ps.n, gs.n, ms.n, vs.n)})
	}
	checkStep(op, hp)
	return ps, gs, ms, vs
}

// adam8Tensors unwraps an 8-bit AdamW update's parameter, gradient, moment
// codes and absmax values (in that order), checking their sizes and the
// step.
func adam8Tensors(op string, p, g finetune.Tensor, st *finetune.Adam8State, hp finetune.AdamParams) [6]*Tensor {
	t := [6]*Tensor{tensor(p, kindF32, op), tensor(g, kindF32, op), tensor(st.M, kindU8, op), tensor(st.V, kindU8, op),
		tensor(st.AbsmaxM, kindF32, op), tensor(st.AbsmaxV, kindF32, op)}
	n, nb := t[0].n, optim.Blocks8bit(t[0].n)
	if t[1].n != n || t[2].n != n || t[3].n != n || t[4].n != nb || t[5].n != nb {
		panic(&Error{Op: op, Err: fmt.Errorf("parameter has %d values: gradient %d, codes %d and %d, absmax %d and %d (want %d)",
			n, t[1].n, t[2].n, t[3].n, t[4].n, t[5].n, nb)})
	}
	checkStep(op, hp)
	return t
}

func checkStep(op string, hp finetune.AdamParams) {
	if hp.Step < 1 {
		panic(&Error{Op: op, Err: fmt.Errorf("step %d: the first update is step 1", hp.Step)})
	}
}

// AdamW is torch.optim.AdamW; the scalars are computed here exactly as
// finetune/optim.AdamW computes them.
func (b *Backend) AdamW(p, g, m, v finetune.Tensor, hp finetune.AdamParams) {
	const op = "AdamW"
	defer b.enter(op)()
	ps, gs, ms, vs := adamTensors(op, p, g, m, v, hp)
	b.packStale(ps.ptr)
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
	t := adam8Tensors(op, p, g, st, hp)
	ps, gs, mc, vc, am, av := t[0], t[1], t[2], t[3], t[4], t[5]
	b.packStale(ps.ptr)
	n := ps.n
	k := newBnbConsts(hp)
	b.launch(op, "adamw8bit", grid1(optim.Blocks8bit(n)), 256, 0, ptrArg(ps.ptr), ptrArg(gs.ptr), ptrArg(mc.ptr), ptrArg(vc.ptr),
		ptrArg(am.ptr), ptrArg(av.ptr), intArg(n), ptrArg(b.smap), ptrArg(b.umap), f32Arg(k.b1), f32Arg(k.b2), f32Arg(k.w1), f32Arg(k.w2),
		f32Arg(k.stepSize), f32Arg(k.epsC2), boolArg(k.decay), f32Arg(k.decayFactor))
}

// BnbAdamW32 is bitsandbytes' 32-bit Adam (kOptimizer32bit2State), which
// the 8-bit optimizers apply to parameters under optim.Min8bitSize values;
// bit-identical to finetune/optim.BnbAdam32.
func (b *Backend) BnbAdamW32(p, g, m, v finetune.Tensor, hp finetune.AdamParams) {
	const op = "BnbAdamW32"
	defer b.enter(op)()
	ps, gs, ms, vs := adamTensors(op, p, g, m, v, hp)
	b.packStale(ps.ptr)
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
