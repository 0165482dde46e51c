//go:build cuda

package cuda

// Batched LoRA weight gradients (finetune.LoRAGradBatcher, issue 8 v18).
// A layer's backward makes eight small products for its LoRA weight
// gradients, GradB [out,r] += s dout^T . h and GradA [r,in] += s g^T .
// bf16(dropout(x)) for each of its four linears, and each takes cuBLAS
// ~8-10 us however small (a K = 1,024 reduction into an 8-wide output is
// latency-bound). cublasGemmBatchedEx runs three of one shape in the time
// of one, with the same bits (H200: three [8, 3072] GradA 8.0 us against
// 24.6, two [3072, 8] GradB 8.1 against 16.0; scripts/bench/loragrad). So
// inside the model's window (one layer's backward) LinearBackward holds
// these products back, their small operands in buffers of their own, and
// FlushLoRAGrads runs them: one batched call for each shape that two or
// more share, the others alone.
//
// What may wait: GradA where the forward kept bf16(dropout(x)) (a kept
// slot is written again only in a later forward window, and
// KeepLoRAInputs(true) flushes first); GradB where its bfloat16 dout is
// the caller's own (attention's d qkv) or fits a held buffer
// (loraGradHoldMax: o_proj's and down_proj's [T, 3072], not gate_up_proj's
// [T, 16384]). OLLAMA_TUNE_CUDA_REFERENCE=lora-grads runs every product at
// once; so does OLLAMA_TUNE_CUDA_SKINNY=tall (its kernels take them).

import (
	"fmt"
	"unsafe"

	"github.com/ollama-tune/ollama-tune/finetune"

	"gorgonia.org/cu"
)

var loraGradsOn = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "lora-grads")

// loraGradHoldMax is the most bytes of a GradB's bfloat16 dout that a held
// buffer takes.
const loraGradHoldMax = 16 << 20

// loraGradBatch is the backend's window of held products.
type loraGradBatch struct {
	open bool
	held []gemmArgs
	bufs []buffer // operand buffers, handed out in turn within a window
	used int
	// tab holds the batched calls' device pointer arrays, each uploaded
	// once (the operands of a layer's products are the same every step);
	// tabs maps an array's pointers to its offset. When tab is full the
	// arrays start over from its beginning: the stream has run, or runs
	// first, every call that read the old ones.
	tab     buffer
	tabUsed int64
	tabs    map[string]int64
	keys    [][]uint64 // the uploaded arrays' host copies
	batched int        // batched calls made (tests)
}

// loraGradTabBytes is tab's size: 128 arrays of 3 x 8 pointers.
const loraGradTabBytes = 128 * 24 * 8

var _ finetune.LoRAGradBatcher = (*Backend)(nil)

// BeginLoRAGrads (finetune.LoRAGradBatcher) opens a window. Products a
// window that a failed step left open still held are dropped: the step
// runs again from its start.
func (b *Backend) BeginLoRAGrads() {
	defer b.enter("BeginLoRAGrads")()
	g := &b.loraGrads
	g.held, g.used = g.held[:0], 0
	g.open = loraGradsOn && !skinnyTall && b.blas.batched()
}

// FlushLoRAGrads (finetune.LoRAGradBatcher) runs the held products and
// closes the window.
func (b *Backend) FlushLoRAGrads() {
	const op = "FlushLoRAGrads"
	defer b.enter(op)()
	b.flushLoRAGrads(op)
	b.loraGrads.open = false
}

// loraGradHolds says which of a LinearBackward's two weight-gradient
// products wait for the flush: GradA where x's dropped copy is kept, GradB
// where dout's bfloat16 copy is the caller's (doutHalf) or fits a held
// buffer, on the row kernels' paths (rows; not SwiGLU's backward, whose d
// gate_up is [T, 2I]).
func (b *Backend) loraGradHolds(l *finetune.Linear, xs *Tensor, seed uint64, T int, w *weight, swiglu, rows, doutHalf bool) (holdA, holdB bool) {
	if !b.loraGrads.open {
		return false, false
	}
	holdA = xs != nil && b.keptFor(l, xs.ptr, seed, T, w.in) != nil
	holdB = rows && !swiglu && (doutHalf || 2*int64(T)*int64(w.out) <= loraGradHoldMax)
	return holdA, holdB
}

// holdRoom returns a held operand buffer of n bytes, valid until the
// window's flush has run.
func (b *Backend) holdRoom(op string, n int64) cu.DevicePtr {
	g := &b.loraGrads
	if g.used == len(g.bufs) {
		g.bufs = append(g.bufs, buffer{})
	}
	p, _ := b.grow(&g.bufs[g.used], n, 256, "held LoRA gradient operands", op)
	g.used++
	return p
}

// gradGEMM runs a weight-gradient product now, or with hold at the flush.
func (b *Backend) gradGEMM(op string, g gemmArgs, hold bool) {
	if hold {
		b.loraGrads.held = append(b.loraGrads.held, g)
		return
	}
	b.gemm(op, g)
}

// sameGEMMShape says whether x and y differ in their pointers alone.
func sameGEMMShape(x, y gemmArgs) bool {
	x.A, x.B, x.C = y.A, y.B, y.C
	return x == y
}

// flushLoRAGrads runs the held products, in the order held, those of a
// shape two or more share as one batched call (each writes its own C, so
// the order changes no bits).
func (b *Backend) flushLoRAGrads(op string) {
	g := &b.loraGrads
	held := g.held
	done := make([]bool, len(held))
	for i := range held {
		if done[i] {
			continue
		}
		batch := []gemmArgs{held[i]}
		for j := i + 1; j < len(held); j++ {
			if !done[j] && sameGEMMShape(held[i], held[j]) {
				batch = append(batch, held[j])
				done[j] = true
			}
		}
		if len(batch) == 1 || batch[0].abType == dataR32F {
			for _, x := range batch {
				b.gemm(op, x)
			}
			continue
		}
		b.gemmBatched(op, batch)
	}
	g.held, g.used = g.held[:0], 0
}

// gemmBatched runs gs (one shape) as one cublasGemmBatchedEx call.
func (b *Backend) gemmBatched(op string, gs []gemmArgs) {
	n := len(gs)
	ptrs := make([]uint64, 3*n)
	for k, x := range gs {
		ptrs[k], ptrs[n+k], ptrs[2*n+k] = uint64(x.A), uint64(x.B), uint64(x.C)
	}
	t := uintptr(b.gradTable(op, ptrs))
	b.loraGrads.batched++
	run := func() { check(op, b.blas.runBatched(gs[0], t, t+uintptr(8*n), t+uintptr(16*n), n)) }
	if b.prof == nil {
		run()
		return
	}
	b.span(fmt.Sprintf("gemm bf16 %dx%dx%d x%d", gs[0].M, gs[0].N, gs[0].K, n), run)
}

// gradTable returns the device copy of the pointer array ptrs, uploading
// it the first time.
func (b *Backend) gradTable(op string, ptrs []uint64) cu.DevicePtr {
	g := &b.loraGrads
	if g.tab.ptr == 0 {
		b.grow(&g.tab, loraGradTabBytes, 256, "batched GEMM pointer arrays", op)
	}
	key := string(unsafe.Slice((*byte)(unsafe.Pointer(&ptrs[0])), 8*len(ptrs)))
	if off, ok := g.tabs[key]; ok {
		return g.tab.ptr + cu.DevicePtr(off)
	}
	n := int64(8 * len(ptrs))
	if g.tabs == nil || g.tabUsed+n > g.tab.n {
		g.tabs, g.keys, g.tabUsed = map[string]int64{}, nil, 0
	}
	off := g.tabUsed
	g.tabUsed += (n + 255) &^ 255
	g.tabs[key] = off
	g.keys = append(g.keys, ptrs)
	b.upload(op, g.tab.ptr+cu.DevicePtr(off), unsafe.Pointer(&ptrs[0]), n)
	return g.tab.ptr + cu.DevicePtr(off)
}

// freeLoRAGrads releases the window's buffers (with the context current).
func (b *Backend) freeLoRAGrads(free func(cu.DevicePtr, int64)) {
	g := &b.loraGrads
	for k := range g.bufs {
		if g.bufs[k].ptr != 0 {
			free(g.bufs[k].ptr, g.bufs[k].n)
		}
	}
	if g.tab.ptr != 0 {
		free(g.tab.ptr, g.tab.n)
	}
	*g = loraGradBatch{}
}
