//go:build cuda

package cuda

import (
	"fmt"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

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
	b.linearForward(op, out, x, l, h, seed)
}

// linearForward is LinearForward's body.
func (b *Backend) linearForward(op string, out, x finetune.Tensor, l *finetune.Linear, h finetune.Tensor, seed uint64) {
	w := cudaW(l.W, op)
	xs := tensor(x, kindF32, op)
	o := outTensor(out, kindF32, op) // every path overwrites all of out
	T := xs.n / w.in
	if xs.n != T*w.in || o.n != T*w.out {
		panic(&Error{Op: op, Err: fmt.Errorf("%s: x has %d values and out %d for a [%d, %d] weight", l.Name, xs.n, o.n, w.out, w.in)})
	}
	if l.LoRA != nil && b.loraBF16(w) {
		b.linearForwardBF16(op, o, xs.ptr, rowsSrc{}, T, w, l, tensor(h, kindF32, op), seed, 0)
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

var _ finetune.LoRAHForwarder = (*Backend)(nil)

// LoRAHForward: h [T,r] = dropout(x) . A^T, LinearForward's saved h alone
// (finetune.LoRAHForwarder), for checkpointing's recompute of down_proj:
// the same kernels and products as LinearForward's h step, so the same
// bits, without dequantizing W or the base GEMM.
func (b *Backend) LoRAHForward(h, x finetune.Tensor, l *finetune.Linear, seed uint64) {
	const op = "LoRAHForward"
	defer b.enter(op)()
	b.loraHForward(op, h, x, l, seed)
}

// loraHForward is LoRAHForward's body.
func (b *Backend) loraHForward(op string, h, x finetune.Tensor, l *finetune.Linear, seed uint64) {
	if l.LoRA == nil {
		panic(&Error{Op: op, Err: fmt.Errorf("%s has no adapter", l.Name)})
	}
	w := cudaW(l.W, op)
	lo, r := l.LoRA, loraRank(l)
	xs, hs, A := tensor(x, kindF32, op), tensor(h, kindF32, op), tensor(lo.A, kindF32, op)
	T := xs.n / w.in
	if xs.n != T*w.in || hs.n != T*r {
		panic(&Error{Op: op, Err: fmt.Errorf("%s: x has %d values and h %d for a [%d, %d] weight of rank %d", l.Name, xs.n, hs.n, w.out, w.in, r)})
	}
	n := int64(T) * int64(w.in)
	switch {
	case b.loraBF16(w) && canLoRARows(xs.ptr, A.ptr, T, w.in, r):
		b.loraRows(op, 0, 0, hs.ptr, 0, 0, 1, xs.ptr, A.ptr, T, w.in, r, lo.Dropout, seed, prepJob{},
			b.keepSlot(op, l, xs.ptr, seed, T, w.in))
	case b.loraBF16(w):
		a16, _, _, _ := b.loraHalfBufs(op, T, w.in, w.out, r)
		xdh := b.scratchBuf(sLoRAX, 2*n, op)
		b.loraPrep(op, 0, xdh, xs.ptr, n, w.in, w.in, lo.Dropout, seed, prepJob{dst: a16, src: A.ptr, rows: r, cols: w.in, ld: w.in, scale: 1})
		b.gemm(op, gemmArgs{transB: true, M: T, N: r, K: w.in, alpha: 1, A: uintptr(xdh), lda: w.in, B: uintptr(a16), ldb: w.in,
			C: uintptr(hs.ptr), ldc: r, abType: dataR16BF})
	case b.fastLoRA && r <= loraMaxR:
		b.loraRowdot(op, hs.ptr, xs.ptr, A.ptr, T, w.in, r, w.in, 1, lo.Dropout, seed)
	default:
		xd := b.dropout(op, xs.ptr, n, lo.Dropout, seed)
		b.sgemm(op, false, true, T, r, w.in, 1, xd, w.in, A.ptr, w.in, 0, hs.ptr, r)
	}
}

// loraMaxR is the largest rank the fused LoRA kernels take (kernels/lora.cu,
// kernels/lora_dot.cu).
const loraMaxR = 16

// loraChunk is the tokens per partial sum of the fused LoRA backward (at
// most 64, kernels/lora_dot.cuh).
const loraChunk = 32

// dropThreshold is finetune.DropoutThreshold(p), ceil(p * 2^16):
// finetune.DropoutKeep(seed, i, p) exactly when i's 16-bit field of its
// group's hash is >= it (kernels/rng.cuh).
func dropThreshold(p float32) uint64 { return finetune.DropoutThreshold(p) }

// loraRowdot computes y [T,r] = dropout(x) . W(j,k)^T over x [T,K], with
// W(j,k) at W + 4*(j*wsj + k*wsi).
func (b *Backend) loraRowdot(op string, y, x, W cu.DevicePtr, T, K, r, wsj, wsi int, p float32, seed uint64) {
	kernel, rows, R := "lora_rowdot8", 4, 8
	if r > 8 {
		kernel, rows, R = "lora_rowdot16", 2, 16
	}
	if int64(max(rows, r))*int64(K) >= 1<<31 {
		panic(&Error{Op: op, Err: fmt.Errorf("LoRA product over %d columns: the fused kernels take fewer than 2^31 / %d", K, max(rows, r))})
	}
	if r == R && wsj == 1 && wsi == r && W%16 == 0 {
		kernel += "v" // B^T at full rank: each k's values as float4s
	}
	b.launch(op, kernel, grid1((T+rows-1)/rows), 256, 0, ptrArg(y), ptrArg(x), ptrArg(W), intArg(T), intArg(K), intArg(r),
		intArg(wsj), intArg(wsi), seed, f32Arg(p), dropThreshold(p), f32Arg(keepScale(p)))
}

// loraColdot accumulates G(j,k) += scale * sum_t a[t,j] * xd[t,k] for a
// [T,r] and x [T,K] (xd its dropout with p, seed; p = 0: x itself), G(j,k)
// at G + 4*(j*gsj + k*gsk); beta 0 (takeZero's: G a pending Zero) adds to
// 0 instead of G's values, without reading them.
func (b *Backend) loraColdot(op string, G, a, x cu.DevicePtr, T, K, r, gsj, gsk int, scale, beta, p float32, seed uint64) {
	nc := (T + loraChunk - 1) / loraChunk
	part := b.scratchBuf(sLoRAPart, 4*int64(nc)*int64(r)*int64(K), op)
	gx := (K + 255) / 256
	if int64(loraChunk)*int64(K) >= 1<<31 {
		panic(&Error{Op: op, Err: fmt.Errorf("LoRA product over %d columns: the fused kernels take fewer than 2^31 / %d", K, loraChunk)})
	}
	kernel := "lora_coldot_partial8"
	if r > 8 {
		kernel = "lora_coldot_partial16"
	}
	if p > 0 && K%4 == 0 {
		kernel += "s" // dropout hashes shared by the four lanes of a group
	}
	b.launch(op, kernel, [3]int{gx, nc, 1}, 256, 0, ptrArg(part), ptrArg(a), ptrArg(x), intArg(T), intArg(K), intArg(r),
		intArg(loraChunk), seed, f32Arg(p), dropThreshold(p), f32Arg(keepScale(p)))
	b.launch(op, "lora_coldot_finish", [3]int{gx, r, 1}, 256, 0, ptrArg(G), ptrArg(part), intArg(nc), intArg(K), intArg(r),
		intArg(gsj), intArg(gsk), f32Arg(scale), boolArg(beta != 0))
}

// LinearBackward: dx += dout . W + scale * ((dout . B) . A) * mask;
// GradB += scale * dout^T . h; GradA += scale * (dout . B)^T . dropout(x).
func (b *Backend) LinearBackward(dx, dout, x finetune.Tensor, l *finetune.Linear, h finetune.Tensor, seed uint64) {
	const op = "LinearBackward"
	defer b.enter(op)()
	b.linearBackward(op, dx, dout, x, l, h, seed)
}

// linearBackward is LinearBackward's body.
func (b *Backend) linearBackward(op string, dx, dout, x finetune.Tensor, l *finetune.Linear, h finetune.Tensor, seed uint64) {
	w := cudaW(l.W, op)
	do, doHalf := halfInput(dout, op)
	T := do.n / w.out
	bf16LoRA := l.LoRA != nil && b.loraBF16(w)
	if doHalf && !(bf16LoRA && canLoRARows(do.ptr, tensor(l.LoRA.B, kindF32, op).ptr, T, w.out, loraRank(l))) {
		do, doHalf = tensor(dout, kindF32, op), false // widened: only the row kernel reads bfloat16
	}
	if bf16LoRA {
		// dx is unwrapped last and left to linearBackwardBF16's takeZero:
		// a pending Zero becomes the dx GEMM's beta 0 (lazy zeroing,
		// device.go).
		xs, hs := b.loraInput(x, l, seed, T, w.in, op), tensor(h, kindF32, op)
		b.linearBackwardBF16(op, unwrap(dx, kindF32, op), do.ptr, doHalf, nil, xs, T, w, l, hs, seed)
		return
	}
	// The inputs first, the outputs last (lazy zeroing, device.go): a
	// pending Zero of dx becomes the dx GEMM's beta 0, and one of a LoRA
	// gradient its product's overwrite (v24: under float32 and float16
	// compute these were 384 memsets a Phi-3-mini step, ~2 ms).
	lo := l.LoRA
	var xs, hs, A, B *Tensor
	if lo != nil {
		xs, hs = tensor(x, kindF32, op), tensor(h, kindF32, op)
		A, B = tensor(lo.A, kindF32, op), tensor(lo.B, kindF32, op)
	}
	d, dBeta := b.accTensor(dx, kindF32, op)
	if d != nil {
		b.dW(op, d.ptr, do.ptr, T, w, 1, dBeta)
	}
	if lo == nil {
		return
	}
	r := loraRank(l)
	gA, aBeta := b.accTensor(lo.GradA, kindF32, op)
	gB, bBeta := b.accTensor(lo.GradB, kindF32, op)
	n := int64(T) * int64(w.in)
	g := b.scratchBuf(sLoRAG, 4*int64(T)*int64(r), op)
	if b.fastLoRA && r <= loraMaxR {
		// GradB [out,r] += scale * dout^T . h
		b.loraColdot(op, gB.ptr, hs.ptr, do.ptr, T, w.out, r, 1, r, lo.Scale, bBeta, 0, 0)
		// g [T,r] = dout . B
		b.loraRowdot(op, g, do.ptr, B.ptr, T, w.out, r, 1, r, 0, 0)
		// GradA [r,in] += scale * g^T . dropout(x)
		b.loraColdot(op, gA.ptr, g, xs.ptr, T, w.in, r, w.in, 1, lo.Scale, aBeta, lo.Dropout, seed)
		if d != nil {
			b.loraDx(op, d, g, A, T, w.in, lo, r, seed)
		}
		return
	}
	xd := b.dropout(op, xs.ptr, n, lo.Dropout, seed)
	// GradB [out,r] += scale * dout^T . h
	b.sgemm(op, true, false, w.out, r, T, lo.Scale, do.ptr, w.out, hs.ptr, r, bBeta, gB.ptr, r)
	// g [T,r] = dout . B
	b.sgemm(op, false, false, T, r, w.out, 1, do.ptr, w.out, B.ptr, r, 0, g, r)
	// GradA [r,in] += scale * g^T . dropout(x)
	b.sgemm(op, true, false, r, w.in, T, lo.Scale, g, r, xd, w.in, aBeta, gA.ptr, w.in)
	if d == nil {
		return
	}
	b.loraDx(op, d, g, A, T, w.in, lo, r, seed)
}

var _ finetune.SwiGLULinearForwarder = (*Backend)(nil)

// SwiGLULinearForward (finetune.SwiGLULinearForwarder): SwiGLUForward into
// act, then down_proj's LinearForward into out (or, out nil, its
// LoRAHForward). Where the row kernels take the shapes (BF16 LoRA, in the
// fast path), lora_rows_swiglu_bf16 computes act from gate_up, writes it
// and does the row pass over it in one launch (the same bits as the two
// ops: swiglu_fwd's math, lora_rows_bf16's sums); elsewhere the ops run as
// they are.
func (b *Backend) SwiGLULinearForward(out, act, gateUp finetune.Tensor, l *finetune.Linear, h finetune.Tensor, seed uint64) {
	const op = "SwiGLULinearForward"
	defer b.enter(op)()
	w := cudaW(l.W, op)
	gu, guHalf := halfInput(gateUp, op)
	ac := outTensor(act, kindF32, op)
	if b.swigluRowsOK(l, w, gu, ac, op) {
		b.swigluRowsForward(op, out, false, ac, gu, guHalf, w, l, h, seed)
		return
	}
	if guHalf {
		gu = tensor(gateUp, kindF32, op) // widened for the two ops
	}
	b.swigluForward(op, ac, gu)
	if out == nil {
		b.loraHForward(op, h, act, l, seed)
		return
	}
	b.linearForward(op, out, act, l, h, seed)
}

// swigluRowsOK says whether SwiGLULinearForward takes down_proj l through
// lora_rows_swiglu_bf16 for gate_up gu and act ac: BF16 LoRA in the fast
// path and shapes the row kernels take.
func (b *Backend) swigluRowsOK(l *finetune.Linear, w *weight, gu, ac *Tensor, op string) bool {
	I := lastDim(ac)
	T := ac.n / max(I, 1)
	return l.LoRA != nil && b.loraBF16(w) && swigluRows && w.in == I && I%8 == 0 && gu.n == 2*ac.n && gu.ptr%16 == 0 &&
		ac.ptr%16 == 0 && canLoRARows(gu.ptr, tensor(l.LoRA.A, kindF32, op).ptr, T, I, loraRank(l))
}

// swigluRowsForward is SwiGLULinearForward on the row kernels' path
// (swigluRowsOK): out nil, only h (and act, kept copy); else the folded
// GEMM into out, or with add into it (beta 1, SwiGLULinearAddForward).
func (b *Backend) swigluRowsForward(op string, out finetune.Tensor, add bool, ac, gu *Tensor, guHalf bool, w *weight, l *finetune.Linear, h finetune.Tensor, seed uint64) {
	I, r := lastDim(ac), loraRank(l)
	T := ac.n / max(I, 1)
	hs := tensor(h, kindF32, op)
	if hs.n != T*r {
		panic(&Error{Op: op, Err: fmt.Errorf("%s: h has %d values, want %d x %d", l.Name, hs.n, T, r)})
	}
	if out == nil {
		lo := l.LoRA
		kept, act := b.keepSlot(op, l, ac.ptr, seed, T, I), ac.ptr
		if b.skipByproduct(ac, kept) {
			act = 0
		}
		b.loraRowsAct(op, act, 0, 0, hs.ptr, 0, 0, 1, gu.ptr, guHalf, tensor(lo.A, kindF32, op).ptr, T, I, r, lo.Dropout, seed,
			prepJob{}, kept)
		return
	}
	var o *Tensor
	var beta float32
	if add {
		o, beta = b.accTensor(out, kindF32, op)
	} else {
		o = outTensor(out, kindF32, op)
	}
	if o.n != T*w.out {
		panic(&Error{Op: op, Err: fmt.Errorf("%s: out has %d values, want %d x %d", l.Name, o.n, T, w.out)})
	}
	b.linearForwardBF16(op, o, ac.ptr, rowsSrc{gu: gu.ptr, guHalf: guHalf, by: ac}, T, w, l, hs, seed, beta)
}

var _ finetune.SwiGLULinearAdder = (*Backend)(nil)

// residualInGEMM turns SwiGLULinearAddForward on;
// OLLAMA_TUNE_CUDA_REFERENCE=residual-add makes it decline every call (the
// model then runs SwiGLULinearForward and Add).
var residualInGEMM = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "residual-add")

// SwiGLULinearAddForward (finetune.SwiGLULinearAdder): out += down_proj's
// SwiGLULinearForward, with the add in the epilogue of the GEMM that folds
// the LoRA's up-projection in (beta 1: D = acc + C, which is Add's
// float32 sum of out and the product, so the same bits), on the fused row
// kernel's path; elsewhere it declines (false). Saves the add_f32_v4 pass
// over three [T, C] float32 tensors a layer (v18).
func (b *Backend) SwiGLULinearAddForward(out, act, gateUp finetune.Tensor, l *finetune.Linear, h finetune.Tensor, seed uint64) bool {
	const op = "SwiGLULinearAddForward"
	defer b.enter(op)()
	if !residualInGEMM || out == nil {
		return false
	}
	w := cudaW(l.W, op)
	if !b.swigluRowsOK(l, w, unwrapRaw(gateUp, kindF32, op), unwrapRaw(act, kindF32, op), op) || b.foldLD(w, loraRank(l)) == 0 {
		return false
	}
	gu, guHalf := halfInput(gateUp, op)
	b.swigluRowsForward(op, out, true, outTensor(act, kindF32, op), gu, guHalf, w, l, h, seed)
	return true
}

var _ finetune.RMSNormLinearForwarder = (*Backend)(nil)

// normRowsOn says whether RMSNormLinearForward fuses the norm into the
// linear's row kernel (lora_rows_norm_bf16, v9, with the 32-warp row
// kernels' sums: not under OLLAMA_TUNE_CUDA_ROWS=w16);
// OLLAMA_TUNE_CUDA_REFERENCE=norm-rows runs the two ops.
var normRowsOn = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "norm-rows")

// normSrc is the RMSNorm that lora_rows_norm_bf16 computes on the way to
// a linear's row kernel: xn, rstd = RMSNorm(a + b) with sum = a + b written
// (b 0: RMSNorm(a), sum unused).
type normSrc struct {
	sum, xn, rstd, a, b, w cu.DevicePtr
	eps                    float32
}

// shapeOf is t's shape, nil for no tensor (error messages).
func shapeOf(t *Tensor) []int {
	if t == nil {
		return nil
	}
	return t.shape
}

// RMSNormLinearForward (finetune.RMSNormLinearForwarder): RMSNormForward
// (b nil) or AddRMSNormForward, then LinearForward of the norm's output.
// Where the row kernels take the linear (BF16 LoRA, in % 32 == 0, in <=
// 4096, 16-byte aligned rows; the 32-warp row kernels), one launch
// (lora_rows_norm_bf16) computes the norm and does the row kernel's work
// on its output, which stays in registers; else the ops run as they are.
func (b *Backend) RMSNormLinearForward(out, xn, rstd, sum, a, bt, w finetune.Tensor, eps float32, l *finetune.Linear, h finetune.Tensor, seed uint64) {
	const op = "RMSNormLinearForward"
	defer b.enter(op)()
	wt := cudaW(l.W, op)
	if bt != nil && sum == nil {
		panic(&Error{Op: op, Err: fmt.Errorf("%s: a residual add (b) needs a sum tensor", l.Name)})
	}
	as, bs, ws := tensor(a, kindF32, op), tensor(bt, kindF32, op), tensor(w, kindF32, op) // inputs first
	C := ws.n
	if l.LoRA != nil && b.loraBF16(wt) && normRowsOn && loraRowsW32 && wt.in == C && C%32 == 0 && C <= 4096 && as.n%C == 0 &&
		canLoRARows(as.ptr, tensor(l.LoRA.A, kindF32, op).ptr, as.n/C, C, loraRank(l)) {
		T := as.n / C
		hs := tensor(h, kindF32, op)
		xs, rs, o := outTensor(xn, kindF32, op), outTensor(rstd, kindF32, op), outTensor(out, kindF32, op)
		src := &normSrc{xn: xs.ptr, rstd: rs.ptr, a: as.ptr, w: ws.ptr, eps: eps}
		ok := xs.ptr%16 == 0 && ws.ptr%16 == 0
		var ss *Tensor
		if bs != nil {
			ss = outTensor(sum, kindF32, op)
			src.b, src.sum = bs.ptr, ss.ptr
			// the kernel reads a and b where it writes sum (restrict)
			ok = ok && bs.ptr%16 == 0 && ss.ptr%16 == 0 && ss != as && ss != bs
		}
		switch {
		case xs.n != as.n || rs.n != T || (o != nil && o.n != T*wt.out) || hs.n != T*loraRank(l) || (bs != nil && (bs.n != as.n || ss.n != as.n)):
			panic(&Error{Op: op, Err: fmt.Errorf("%s: a %v, xn %v, rstd %v, out %v, h %v for a [%d, %d] weight", l.Name, as.shape, xs.shape,
				rs.shape, shapeOf(o), hs.shape, wt.out, wt.in)})
		case xs == as || xs == bs || xs == ss:
			panic(&Error{Op: op, Err: fmt.Errorf("xn must not alias a, b or sum")})
		case ok:
			b.linearForwardBF16(op, o, xs.ptr, rowsSrc{norm: src, by: xs}, T, wt, l, hs, seed, 0)
			return
		}
	}
	if bt == nil {
		b.rmsNormForward(op, xn, rstd, a, w, eps)
	} else {
		b.addRMSNormForward(op, sum, xn, rstd, a, bt, w, eps)
	}
	if out == nil { // an output the stash holds: only the adapter's h
		if l.LoRA != nil {
			b.loraHForward(op, h, xn, l, seed)
		}
		return
	}
	b.linearForward(op, out, xn, l, h, seed)
}

var _ finetune.SwiGLULinearBackwarder = (*Backend)(nil)

// SwiGLULinearBackward (finetune.SwiGLULinearBackwarder): SwiGLUBackward
// then LinearBackward of gate_up_proj. Where dgateUp is nil or a pending Zero and
// the row kernels take the shapes (BF16 LoRA, in the fast path),
// lora_rows_swiglu_bf16_t computes d gate_up in registers from dact and
// gateUp and writes only its bf16 copy (the dx and GradB GEMMs' operand)
// and g = d gate_up . B: dgateUp keeps its pending Zero. Elsewhere the two
// ops run as they are (any dgateUp: they add into it).
func (b *Backend) SwiGLULinearBackward(dx, dgateUp, dact, gateUp, x finetune.Tensor, l *finetune.Linear, h finetune.Tensor, seed uint64) {
	const op = "SwiGLULinearBackward"
	defer b.enter(op)()
	w := cudaW(l.W, op)
	do := tensor(dact, kindF32, op)
	gu, guHalf := halfInput(gateUp, op)
	I := lastDim(do)
	T := do.n / max(I, 1)
	dgu := unwrap(dgateUp, kindF32, op)
	if (dgu == nil || (dgu.zero != nil && dgu.n == gu.n)) && l.LoRA != nil && b.loraBF16(w) && swigluRows && w.out == 2*I && I%8 == 0 &&
		gu.n == 2*do.n && gu.ptr%16 == 0 && canLoRARows(do.ptr, tensor(l.LoRA.B, kindF32, op).ptr, T, I, loraRank(l)) {
		xs, hs := b.loraInput(x, l, seed, T, w.in, op), tensor(h, kindF32, op)
		b.linearBackwardBF16(op, unwrap(dx, kindF32, op), 0, false, &swigluSrc{dact: do.ptr, gu: gu.ptr, half: guHalf, I: I}, xs, T, w, l, hs, seed)
		return
	}
	if guHalf {
		gu = tensor(gateUp, kindF32, op) // widened for the two ops
	}
	if dgateUp == nil { // the model holds none: scratch, zeroed
		dgateUp = &Tensor{ptr: b.scratchBuf(sDGateUp, 4*int64(gu.n), op), shape: []int{T, 2 * I}, n: gu.n, kind: kindF32, zero: b, view: true}
	}
	b.swigluBackward(op, dgateUp, do, gu)
	b.linearBackward(op, dx, dgateUp, x, l, h, seed)
}

// swigluRows says whether SwiGLULinearForward and SwiGLULinearBackward
// fuse (v7); OLLAMA_TUNE_CUDA_REFERENCE=swiglu-rows runs the two ops
// instead.
var swigluRows = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "swiglu-rows")

// swigluSrc is linearBackwardBF16's dout given as SwiGLU's backward of
// dact [T,I] at gu [T,2I] (bfloat16 when half; lora_rows_swiglu_bf16_t
// computes it).
type swigluSrc struct {
	dact, gu cu.DevicePtr
	half     bool
	I        int
}

// loraDxR8 says whether loraDx takes lora_dx_v4_r8 for rank 8 (v11);
// OLLAMA_TUNE_CUDA_REFERENCE=dx-r8 keeps lora_dx_v4 (the A/B).
var loraDxR8 = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "dx-r8")

// loraDxLean says whether loraDx takes lora_dx_v4_r8l for lora_dx_v4_r8
// (v19, kernels/lora.cu: 32-bit offsets, the same bits);
// OLLAMA_TUNE_CUDA_REFERENCE=dx-lean keeps lora_dx_v4_r8 (the A/B).
var loraDxLean = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "dx-lean")

// loraDx adds dx's LoRA term for g = dout . B [T,r]: dx [T,in] += scale *
// (g . A) * mask / (1-p), in float32. The fused kernels, where they take
// the rank, give lora_dx's bits: lora_dx_v4 (four columns, one dropout
// group, a thread) or lora_dx4; else a float32 GEMM and, with dropout,
// dropout_bwd_acc.
func (b *Backend) loraDx(op string, d *Tensor, g cu.DevicePtr, A *Tensor, T, in int, lo *finetune.LoRA, r int, seed uint64) {
	switch {
	case b.fastLoRA && loraDxV4 && r <= 8 && in%4 == 0 && d.ptr%16 == 0 && A.ptr%16 == 0:
		kernel := "lora_dx_v4"
		if r == 8 && g%32 == 0 && loraDxR8 {
			kernel = "lora_dx_v4_r8" // v11: g's rows in 16-byte loads (the same bits)
			if loraDxLean && int64(T)*int64(in) < 1<<31 {
				kernel = "lora_dx_v4_r8l" // v19: 32-bit offsets (the same bits)
			}
		}
		b.launch(op, kernel, [3]int{(in/4 + 127) / 128, (T + loraDxTT - 1) / loraDxTT, 1}, 128, 0, ptrArg(d.ptr), ptrArg(g),
			ptrArg(A.ptr), intArg(T), intArg(in), intArg(r), f32Arg(lo.Scale), seed, f32Arg(lo.Dropout), dropThreshold(lo.Dropout),
			f32Arg(keepScale(lo.Dropout)), intArg(loraDxTT))
	case b.fastLoRA && r <= loraMaxR:
		b.launch(op, "lora_dx4", [3]int{(in + 255) / 256, min((T+3)/4, 64), 1}, 256, 0, ptrArg(d.ptr), ptrArg(g), ptrArg(A.ptr),
			intArg(T), intArg(in), intArg(r), f32Arg(lo.Scale), seed, f32Arg(lo.Dropout), dropThreshold(lo.Dropout),
			f32Arg(keepScale(lo.Dropout)))
	case lo.Dropout == 0:
		b.sgemm(op, false, false, T, in, r, lo.Scale, g, r, A.ptr, in, 1, d.ptr, in)
	default:
		n := int64(T) * int64(in)
		tmp := b.scratchBuf(sLoRATmp, 4*n, op)
		b.sgemm(op, false, false, T, in, r, lo.Scale, g, r, A.ptr, in, 0, tmp, in)
		b.launchN(op, "dropout_bwd_acc", n, ptrArg(d.ptr), ptrArg(tmp), uint64(n), seed, f32Arg(lo.Dropout), f32Arg(keepScale(lo.Dropout)))
	}
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
