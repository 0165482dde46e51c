//go:build cuda

package cuda

import (
	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// LoRA on the tensor cores under BF16 compute (issue 8, v3). The fused
// float32 kernels of lora.cu read x or dout at a fraction of the memory
// bandwidth; here the low-rank products are bfloat16 cuBLAS GEMMs with
// float32 accumulation and output, as bitsandbytes + peft run them under
// bf16 autocast. The GEMMs' inputs are dropout(x), dout, A, B, h and
// dout . B rounded to bfloat16; h, the gradients and dx stay float32, and
// the up-projection scale * h . B^T stays a float32 GEMM (its cost is the
// read and write of out, not the product). Float32 and float16 compute
// keep the float32 kernels: float32 for exactness, float16 because
// gradients without loss scaling would underflow in its range.

// loraBF16 says whether w's LoRA takes the tensor-core path.
func (b *Backend) loraBF16(w *weight) bool {
	return b.fastLoRA && b.tcLoRA && b.half == halfBF16 && w.g == nil
}

// align256 rounds a byte count up to a multiple of 256 (the offsets inside
// the sLoRAHalf scratch stay aligned for the 16-byte conversions).
func align256(n int64) int64 { return (n + 255) &^ 255 }

// loraHalfBufs returns room in the sLoRAHalf scratch for the bfloat16
// copies of A [r,in], B [out,r] and two [T,r] matrices.
func (b *Backend) loraHalfBufs(op string, T, in, out, r int) (a16, b16, h16, g16 cu.DevicePtr) {
	na, nb, nt := align256(2*int64(r)*int64(in)), align256(2*int64(out)*int64(r)), align256(2*int64(T)*int64(r))
	p := b.scratchBuf(sLoRAHalf, na+nb+2*nt, op)
	return p, p + cu.DevicePtr(na), p + cu.DevicePtr(na+nb), p + cu.DevicePtr(na+nb+nt)
}

// bf16Of writes n float32 values at src, rounded to bfloat16, to dst.
func (b *Backend) bf16Of(op string, dst, src cu.DevicePtr, n int64) {
	b.launchN(op, "f32_to_bf16_v4", max(n/4, n%4, 1), ptrArg(dst), ptrArg(src), uint64(n))
}

// loraSplit writes bf16(x) to xh and bf16(dropout(x)) to xdh (either may
// be 0: not written) for x [n], in one pass (kernels/lora.cu).
func (b *Backend) loraSplit(op string, xh, xdh, x cu.DevicePtr, n int64, p float32, seed uint64) {
	b.launchN(op, "lora_split_bf16", max(n/4, n%4, 1), ptrArg(xh), ptrArg(xdh), ptrArg(x), uint64(n), seed, f32Arg(p),
		dropThreshold(p), f32Arg(keepScale(p)))
}

// linearForwardBF16 is LinearForward with LoRA under BF16 compute: one
// pass over x makes the base GEMM's input and the LoRA's, then
// h = dropout(x) . A^T (bfloat16 GEMM), out = scale * h . B^T (float32)
// and out += x . W^T (bfloat16 GEMM, beta 1).
func (b *Backend) linearForwardBF16(op string, out, x cu.DevicePtr, T int, w *weight, l *finetune.Linear, hs *Tensor, seed uint64) {
	lo, r := l.LoRA, loraRank(l)
	A, B := tensor(lo.A, kindF32, op), tensor(lo.B, kindF32, op)
	wp, t := b.matrix(w, op)
	n := int64(T) * int64(w.in)
	xh := b.scratchBuf(sAct, 2*n, op)
	xdh := xh
	if lo.Dropout > 0 {
		xdh = b.scratchBuf(sLoRAX, 2*n, op)
		b.loraSplit(op, xh, xdh, x, n, lo.Dropout, seed)
	} else {
		b.loraSplit(op, xh, 0, x, n, 0, 0)
	}
	a16, _, _, _ := b.loraHalfBufs(op, T, w.in, w.out, r)
	b.bf16Of(op, a16, A.ptr, int64(r)*int64(w.in))
	// h [T,r] = dropout(x) . A^T
	b.gemm(op, gemmArgs{transB: true, M: T, N: r, K: w.in, alpha: 1, A: uintptr(xdh), lda: w.in, B: uintptr(a16), ldb: w.in,
		C: uintptr(hs.ptr), ldc: r, abType: dataR16BF})
	// The up-projection goes first and overwrites out (beta 0: a write,
	// no read); the base GEMM then adds into it (beta 1), where reading
	// C costs little next to its K = in products (v4: saves the fp32
	// read of out that a read-modify-write up-projection afterwards made).
	b.sgemm(op, false, true, T, w.out, r, lo.Scale, hs.ptr, r, B.ptr, r, 0, out, w.out)
	b.gemm(op, gemmArgs{transB: true, M: T, N: w.out, K: w.in, alpha: 1, beta: 1, A: uintptr(xh), lda: w.in, B: uintptr(wp), ldb: w.in,
		C: uintptr(out), ldc: w.out, abType: t})
}

// linearBackwardBF16 is LinearBackward with LoRA under BF16 compute: dout
// is rounded to bfloat16 once for dx += dout . W, GradB += scale *
// dout^T . h and g = dout . B; then GradA += scale * g^T . dropout(x),
// all bfloat16 GEMMs; dx's LoRA term is float32 (lora_dx).
func (b *Backend) linearBackwardBF16(op string, d *Tensor, dout cu.DevicePtr, xs *Tensor, T int, w *weight, l *finetune.Linear, hs *Tensor, seed uint64) {
	lo, r := l.LoRA, loraRank(l)
	A, B := tensor(lo.A, kindF32, op), tensor(lo.B, kindF32, op)
	gA, gB := tensor(lo.GradA, kindF32, op), tensor(lo.GradB, kindF32, op)
	dh := b.toHalf(op, dout, int64(T)*int64(w.out), dataR16BF)
	if d != nil {
		wp, t := b.matrix(w, op)
		b.gemm(op, gemmArgs{M: T, N: w.in, K: w.out, alpha: 1, beta: 1, A: uintptr(dh), lda: w.out, B: uintptr(wp), ldb: w.in,
			C: uintptr(d.ptr), ldc: w.in, abType: t})
	}
	_, b16, h16, g16 := b.loraHalfBufs(op, T, w.in, w.out, r)
	b.bf16Of(op, h16, hs.ptr, int64(T)*int64(r))
	b.bf16Of(op, b16, B.ptr, int64(w.out)*int64(r))
	// GradB [out,r] += scale * dout^T . h
	b.gemm(op, gemmArgs{transA: true, M: w.out, N: r, K: T, alpha: lo.Scale, beta: 1, A: uintptr(dh), lda: w.out,
		B: uintptr(h16), ldb: r, C: uintptr(gB.ptr), ldc: r, abType: dataR16BF})
	// g [T,r] = dout . B
	g := b.scratchBuf(sLoRAG, 4*int64(T)*int64(r), op)
	b.gemm(op, gemmArgs{M: T, N: r, K: w.out, alpha: 1, A: uintptr(dh), lda: w.out, B: uintptr(b16), ldb: r,
		C: uintptr(g), ldc: r, abType: dataR16BF})
	b.bf16Of(op, g16, g, int64(T)*int64(r))
	// GradA [r,in] += scale * g^T . dropout(x)
	n := int64(T) * int64(w.in)
	xdh := b.scratchBuf(sLoRAX, 2*n, op)
	b.loraSplit(op, 0, xdh, xs.ptr, n, lo.Dropout, seed)
	b.gemm(op, gemmArgs{transA: true, M: r, N: w.in, K: T, alpha: lo.Scale, beta: 1, A: uintptr(g16), lda: r,
		B: uintptr(xdh), ldb: w.in, C: uintptr(gA.ptr), ldc: w.in, abType: dataR16BF})
	if d == nil {
		return
	}
	// dx += scale * (g . A) * mask / (1-p), in float32.
	if r <= loraMaxR {
		b.launch(op, "lora_dx", [3]int{(w.in + 255) / 256, min(T, 64), 1}, 256, 0, ptrArg(d.ptr), ptrArg(g), ptrArg(A.ptr),
			intArg(T), intArg(w.in), intArg(r), f32Arg(lo.Scale), seed, f32Arg(lo.Dropout), dropThreshold(lo.Dropout),
			f32Arg(keepScale(lo.Dropout)))
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
