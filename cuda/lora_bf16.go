//go:build cuda

package cuda

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// LoRA on the tensor cores under BF16 compute (issue 8, v3). The fused
// float32 kernels of lora.cu read x or dout at a fraction of the memory
// bandwidth; here the low-rank products are bfloat16 cuBLAS GEMMs with
// float32 accumulation and output, as bitsandbytes + peft run them under
// bf16 autocast. The GEMMs' inputs are dropout(x), dout, A, B, h and
// dout . B rounded to bfloat16; h, the gradients and dx stay float32. The
// up-projection scale * h . B^T rides in the base GEMM (v5: [x | s.h] .
// [W | B]^T, bfloat16 h and B, as under autocast), or, unfolded, is a
// float32 GEMM written before the base GEMM adds in. Float32 and float16 compute
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

// loraFold says whether linearForwardBF16 folds the up-projection into the
// base GEMM (v5); OLLAMA_TUNE_CUDA_REFERENCE=lora-fold turns it off (v4's
// float32 up-projection and beta-1 base GEMM).
var loraFold = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "lora-fold")

// loraDxV4 says whether linearBackwardBF16 takes lora_dx_v4 where it can
// (v6); OLLAMA_TUNE_CUDA_REFERENCE=lora-dx4 keeps v5's lora_dx4 (the same
// bits).
var loraDxV4 = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "lora-dx4")

// loraDxTT is lora_dx_v4's tokens a thread (a multiple of 4;
// OLLAMA_TUNE_LORA_DX_TT=8, 12, 16, ... sets it, for measurements). v6,
// H100, the Phi-3-mini step: 4 took 2.42 ms a step, 8 2.53, 16 2.55.
var loraDxTT = envMul4("OLLAMA_TUNE_LORA_DX_TT", 4)

// loraPrepW8 says whether loraPrep takes the eight-values-a-thread kernels
// (lora_prep_bf16_w8, _ld_w8) where the shapes allow (v6);
// OLLAMA_TUNE_CUDA_REFERENCE=lora-prep4 keeps four a thread (the same bits).
var loraPrepW8 = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "lora-prep4")

// envMul4 is the positive multiple of 4 in the environment variable name,
// else def.
func envMul4(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 && v%4 == 0 {
		return v
	}
	return def
}

// prepJob is one small conversion that lora_prep_bf16 does alongside its
// main pass: dst[i*ld + j] = bf16(scale * src[i*cols + j]) for src [rows,
// cols] float32 and dst bfloat16.
type prepJob struct {
	dst, src       cu.DevicePtr
	rows, cols, ld int
	scale          float32
}

// loraPrep runs lora_prep_bf16 (kernels/lora.cu): from one read of x [n]
// (rows of cols values) it writes bf16(x) to xh with row stride ldx and
// bf16(dropout(x)) to xdh, contiguous (either may be 0: not written; n 0:
// no main pass), and does up to two jobs in the same launch, which spares
// a launch per small cast (A, B, h, dout . B: ~640 a step in v4).
func (b *Backend) loraPrep(op string, xh, xdh, x cu.DevicePtr, n int64, cols, ldx int, p float32, seed uint64, jobs ...prepJob) {
	if len(jobs) > 2 {
		panic(&Error{Op: op, Err: fmt.Errorf("lora_prep_bf16 takes 2 jobs, got %d", len(jobs))})
	}
	if ldx != cols && (cols%4 != 0 || ldx%4 != 0 || n/int64(cols)*int64(ldx) >= 1<<31) {
		panic(&Error{Op: op, Err: fmt.Errorf("lora_prep_bf16: row stride %d for %d rows of %d values", ldx, n/int64(cols), cols)})
	}
	if n == 0 {
		cols, ldx = 1, 1
	}
	w8 := loraPrepW8 && cols%8 == 0 && ldx%8 == 0 && xh%16 == 0 && xdh%16 == 0 && x%16 == 0
	threads := max(n/4, n%4, 1)
	if w8 {
		threads = max(n/8, n%8, 1)
	}
	args := []uint64{ptrArg(xh), ptrArg(xdh), ptrArg(x), uint64(n), intArg(cols), intArg(ldx), seed, f32Arg(p),
		dropThreshold(p), f32Arg(keepScale(p))}
	for k := 0; k < 2; k++ {
		if k < len(jobs) && jobs[k].rows > 0 && jobs[k].cols > 0 {
			j := jobs[k]
			if j.ld < j.cols || int64(j.rows)*int64(j.ld) >= 1<<31 {
				panic(&Error{Op: op, Err: fmt.Errorf("lora_prep_bf16: a job of %d rows of %d values, stride %d", j.rows, j.cols, j.ld)})
			}
			threads = max(threads, int64(j.rows)*int64(j.cols))
			args = append(args, ptrArg(j.dst), ptrArg(j.src), intArg(j.rows), intArg(j.cols), intArg(j.ld), f32Arg(j.scale))
		} else {
			args = append(args, 0, 0, 0, 1, 1, f32Arg(1))
		}
	}
	kernel := "lora_prep_bf16"
	if ldx != cols {
		kernel = "lora_prep_bf16_ld"
	}
	if w8 {
		kernel += "_w8"
	}
	b.launchN(op, kernel, threads, args...)
}

// loraRowsOn says whether the row kernels (lora_rows_bf16[_t], v7) fuse
// the rank-r product into the rounding pass where the shapes allow;
// OLLAMA_TUNE_CUDA_REFERENCE=lora-rows keeps v6's prep pass + skinny GEMM
// + fold-column launch.
var loraRowsOn = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "lora-rows")

// loraRowsRows is the row kernels' rows a block (LR_ROWS).
const loraRowsRows = 8

// loraRowsW32 picks the row kernels' 32-warp entry points (the _w32
// suffix, v9: 1024 threads a block, half the batch, at most 64 registers
// a thread; -0.2 to -0.3 ms a Phi-3-mini step on an H100) over the
// 16-warp ones; OLLAMA_TUNE_CUDA_ROWS=w16 takes those (v8's sums).
var loraRowsW32 = os.Getenv("OLLAMA_TUNE_CUDA_ROWS") != "w16"

// rowsKernel is kernel's entry point and threads a block under loraRowsW32
// (the _h and _hr kernels, reading a bfloat16 gate_up or d qkv, have the
// 32-warp one alone: such tensors are bfloat16 only under loraRowsW32, see
// writeHalf).
func rowsKernel(kernel string) (string, int) {
	if loraRowsW32 || strings.HasSuffix(kernel, "_h") || strings.HasSuffix(kernel, "_hr") {
		return kernel + "_w32", 32 * 32
	}
	return kernel, 16 * 32
}

// halfOutputs says whether an output allocated by AllocHalf is written in
// bfloat16 (Tensor.half: gate_up_proj's and qkv_proj's outputs and
// qkv_proj's gradient under BF16 compute, v9), with the 32-warp row
// kernels (loraRowsW32); OLLAMA_TUNE_CUDA_REFERENCE=gu-half (named for the
// first of them) writes all of them in float32.
var halfOutputs = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "gu-half")

// writeHalf says whether an op that overwrites t may store it in bfloat16
// (Tensor.half): t is from AllocHalf and halfOutputs is on.
func (t *Tensor) writeHalf() bool { return t.mayHalf && halfOutputs && loraRowsW32 }

// rowsSrc is where linearForwardBF16's row kernel takes x from when x is
// not yet written: SwiGLU of gu [T,2 in] (bfloat16 when guHalf), or an
// RMSNorm. by is x's tensor, which the row kernel then writes as a
// by-product (SwiGLU's act, the norm's xn) unless skipByproduct lets it
// leave x unwritten (x stays the keep slot's key).
type rowsSrc struct {
	gu     cu.DevicePtr
	guHalf bool
	norm   *normSrc
	by     *Tensor
}

// canLoRARows says whether the row kernels take Y [T,K] against a rank-r
// W: K % 8 == 0, r <= 8, 16-byte aligned Y and W (whose rows are then
// too), and 32-bit friendly sizes (K * r and 2K fit an int: the kernels'
// column offsets). The answer depends on the operands
// alone, so LoRAHForward and LinearForward agree on it (the same h).
func canLoRARows(Y, W cu.DevicePtr, T, K, r int) bool {
	return loraRowsOn && K%8 == 0 && K > 0 && K < 1<<28 && r >= 1 && r <= 8 && Y%16 == 0 && W%16 == 0 && int64(T)*int64(K) < 1<<40
}

// loraRows runs lora_rows_bf16 (W is A [r,K], P = h = dropout(Y) . A^T):
// from one read of Y [T,K] it writes bf16(Y) to yh (row stride ldyh, a
// multiple of 8, 16-byte aligned; 0: not written), P [T,r] float32,
// bf16(scale16 * P) to p16 (row stride ldp; 0: not written) and
// bf16(dropout(Y)) [T,K] to xd16 (0: not written; keepSlot), and does job
// (dst 0: none) in the same launch; the lean lora_rows_bf16_l where
// leanFits. The caller checked canLoRARows.
func (b *Backend) loraRows(op string, yh cu.DevicePtr, ldyh int, P, p16 cu.DevicePtr, ldp int, scale16 float32,
	Y, A cu.DevicePtr, T, K, r int, p float32, seed uint64, job prepJob, xd16 cu.DevicePtr) {
	kernel := "lora_rows_bf16"
	if b.leanFits(T, K, ldyh, A) {
		kernel = "lora_rows_bf16_l"
	}
	b.loraRowsLaunch(op, kernel, yh, ldyh, P, p16, ldp, scale16, Y, A, T, K, r, p, seed, job, ptrArg(xd16))
}

// loraRowsT runs lora_rows_bf16_t, loraRows for W = B [K,r] read as B^T
// (P = g = Y . B, no dropout, nothing kept); the lean _l where leanFits.
func (b *Backend) loraRowsT(op string, yh cu.DevicePtr, ldyh int, P, p16 cu.DevicePtr, ldp int, Y, B cu.DevicePtr, T, K, r int,
	job prepJob) {
	kernel := "lora_rows_bf16_t"
	if b.leanFits(T, K, ldyh, B) {
		kernel = "lora_rows_bf16_t_l"
	}
	b.loraRowsLaunch(op, kernel, yh, ldyh, P, p16, ldp, 1, Y, B, T, K, r, 0, 0, job)
}

// loraRowsTHalf is loraRowsT for Y held in bfloat16 (lora_rows_bf16_t_h:
// nothing to round, so no yh).
func (b *Backend) loraRowsTHalf(op string, P, p16 cu.DevicePtr, ldp int, Y, B cu.DevicePtr, T, K, r int, job prepJob) {
	kernel := "lora_rows_bf16_t_h"
	if rowsRaw && loraRowsW32 {
		kernel = "lora_rows_bf16_t_hr" // v11: Y's bfloat16 words straight into the MMAs (the same bits)
	}
	b.loraRowsLaunch(op, kernel, 0, 0, P, p16, ldp, 1, Y, B, T, K, r, 0, 0, job)
}

// rowsRaw says whether loraRowsTHalf takes lora_rows_bf16_t_hr (v11);
// OLLAMA_TUNE_CUDA_REFERENCE=rows-raw keeps lora_rows_bf16_t_h (the A/B).
var rowsRaw = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "rows-raw")

// rowsLean says whether loraRows, loraRowsT, loraRowsAct and loraRowsSwiGLU
// (for a bfloat16 gate_up) and loraRowsNorm (K <= 3072) take the lean
// 32-warp row kernels (v19: the _l and _hl entry points, lora_rows_lean,
// lora_rows_norm_lean and lora_rows_swiglu_t_lean in kernels/lora.cu: the
// same bits in a leaner loop) where leanFits;
// OLLAMA_TUNE_CUDA_REFERENCE=rows-lean keeps the others (the A/B).
var rowsLean = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "rows-lean")

// leanFits says whether a lean row kernel takes rows of width values (K,
// or 2K for a gate_up) and a copy of row stride ldyh for T rows against
// the matrix at W: its element offsets are 32-bit, it reads only a packed
// W (packedW), and it is a 32-warp kernel.
func (b *Backend) leanFits(T, width, ldyh int, W cu.DevicePtr) bool {
	return rowsLean && loraRowsW32 && int64(T)*int64(width) < 1<<31 && int64(T)*int64(ldyh) < 1<<31 && b.packedW(W) != 0
}

// loraRowsAct runs lora_rows_swiglu_bf16: loraRows (A [r,K]) over act =
// SwiGLU(gu), gu [T,2K] (bfloat16 when guHalf: lora_rows_swiglu_bf16_h_w32,
// or the lean _hl_w32 where leanFits), also writing act [T,K] in float32
// (0: not written, skipByproduct).
func (b *Backend) loraRowsAct(op string, act, yh cu.DevicePtr, ldyh int, P, p16 cu.DevicePtr, ldp int, scale16 float32,
	gu cu.DevicePtr, guHalf bool, A cu.DevicePtr, T, K, r int, p float32, seed uint64, job prepJob, xd16 cu.DevicePtr) {
	kernel := "lora_rows_swiglu_bf16"
	if guHalf {
		kernel += "_h"
		if b.leanFits(T, 2*K, ldyh, A) {
			kernel += "l"
		}
	}
	b.loraRowsLaunch(op, kernel, yh, ldyh, P, p16, ldp, scale16, gu, A, T, K, r, p, seed, job, ptrArg(act), ptrArg(xd16))
}

// loraRowsLaunch launches a row kernel with LORA_ROWS_PARAMS and extra.
func (b *Backend) loraRowsLaunch(op, kernel string, yh cu.DevicePtr, ldyh int, P, p16 cu.DevicePtr, ldp int, scale16 float32,
	Y, W cu.DevicePtr, T, K, r int, p float32, seed uint64, job prepJob, extra ...uint64) {
	if yh != 0 && (yh%16 != 0 || ldyh%8 != 0 || ldyh < K) {
		panic(&Error{Op: op, Err: fmt.Errorf("%s: bfloat16 copy at row stride %d for %d columns", kernel, ldyh, K)})
	}
	b.launchRows(op, kernel, T, K, job, b.packedW(W), []uint64{ptrArg(yh), intArg(ldyh), ptrArg(P), ptrArg(p16), intArg(ldp), f32Arg(scale16), ptrArg(Y),
		ptrArg(W), intArg(T), intArg(K), intArg(r), seed, f32Arg(p), dropThreshold(p), f32Arg(keepScale(p))}, extra...)
}

// loraRowsNorm runs lora_rows_norm_bf16: loraRows (A [r,K]) over the
// output of norm, which it computes and writes (sum, xn, rstd) first, with
// lora_rows_bf16_w32's sums. The caller checked loraRowsW32, K % 32 == 0
// and K <= 4096 (the kernel's registers hold a lane's share of its row: 3
// chunks of 8 values for K <= 3072, else 4).
func (b *Backend) loraRowsNorm(op string, norm *normSrc, yh cu.DevicePtr, ldyh int, P, p16 cu.DevicePtr, ldp int, scale16 float32,
	A cu.DevicePtr, T, K, r int, p float32, seed uint64, job prepJob, xd16 cu.DevicePtr) {
	kernel := "lora_rows_norm_bf16"
	if norm.b != 0 {
		kernel += "_add"
	}
	if K <= 3072 && b.leanFits(T, K, ldyh, A) {
		kernel += "_l" // v19: lean, the same bits (q3 only)
	}
	entry := kernel + "_q4"
	if K <= 3072 {
		entry = kernel + "_q3"
	}
	b.launchRowsEntry(op, kernel, entry, 32*32, T, K, job, b.packedW(A), []uint64{ptrArg(yh), intArg(ldyh), ptrArg(P), ptrArg(p16), intArg(ldp), f32Arg(scale16),
		ptrArg(A), intArg(T), intArg(K), intArg(r), seed, f32Arg(p), dropThreshold(p), f32Arg(keepScale(p))},
		ptrArg(xd16), ptrArg(norm.sum), ptrArg(norm.xn), ptrArg(norm.rstd), ptrArg(norm.a), ptrArg(norm.b), ptrArg(norm.w), f32Arg(norm.eps))
}

// loraRowsSwiGLU runs lora_rows_swiglu_bf16_t: dh [T,2I] = bf16(d
// gate_up), g [T,r] = d gate_up . B and g16 = bf16(g), for d gate_up the
// SwiGLU backward of sw, plus job, in one launch.
func (b *Backend) loraRowsSwiGLU(op string, dh, g, g16 cu.DevicePtr, sw *swigluSrc, B cu.DevicePtr, T, r int, job prepJob) {
	kernel := "lora_rows_swiglu_bf16_t"
	if sw.half {
		kernel += "_h"
		if b.leanFits(T, 2*sw.I, 2*sw.I, B) {
			kernel += "l" // v19: lean, the same bits
		}
	}
	b.launchRows(op, kernel, T, 2*sw.I, job, b.packedW(B), []uint64{ptrArg(dh), intArg(2 * sw.I), ptrArg(g), ptrArg(g16), intArg(r),
		ptrArg(sw.dact), ptrArg(sw.gu), ptrArg(B), intArg(T), intArg(sw.I), intArg(r)})
}

// launchRows launches a row kernel over T rows of K columns (the
// profile's name for it) with args, then job's (dst 0: none), then w16
// (the packed copy of its W, packedW; 0: none), then extra: blocks of
// loraRowsRows rows (rowsKernel's threads).
func (b *Backend) launchRows(op, kernel string, T, K int, job prepJob, w16 cu.DevicePtr, args []uint64, extra ...uint64) {
	entry, threads := rowsKernel(kernel)
	b.launchRowsEntry(op, kernel, entry, threads, T, K, job, w16, args, extra...)
}

// launchRowsEntry is launchRows for the entry point entry of kernel
// (the profile's name) with threads threads a block.
func (b *Backend) launchRowsEntry(op, kernel, entry string, threads, T, K int, job prepJob, w16 cu.DevicePtr, args []uint64, extra ...uint64) {
	if job.dst == 0 {
		job = prepJob{rows: 0, cols: 1, ld: 1, scale: 1}
	} else if job.ld < job.cols || int64(job.rows)*int64(job.ld) >= 1<<31 {
		panic(&Error{Op: op, Err: fmt.Errorf("%s: a job of %d rows of %d values, stride %d", kernel, job.rows, job.cols, job.ld)})
	}
	span := kernel
	if b.prof != nil {
		span = fmt.Sprintf("%s %dx%d", kernel, T, K)
	}
	args = append(args, ptrArg(job.dst), ptrArg(job.src), intArg(job.rows), intArg(job.cols), intArg(job.ld), f32Arg(job.scale), ptrArg(w16))
	b.launchAs(op, entry, span, grid1((T+loraRowsRows-1)/loraRowsRows), threads, 0, append(args, extra...)...)
}

// linearForwardBF16 is LinearForward with LoRA under BF16 compute. Where
// the row kernels take the shapes (v7), one launch (lora_rows_bf16) reads
// x once and writes the base GEMM's bfloat16 input, h = dropout(x) . A^T
// (bfloat16 products, float32 h) and bf16(scale * h); else (v5/v6) one
// launch (lora_prep_bf16) writes the bfloat16 x and dropout(x) and rounds
// A, a bfloat16 GEMM makes h, and a second launch rounds scale * h.
// Folded (v5, an NF4 weight with in % 8 == 0): out = [x | s.h] . [W | B]^T,
// one bfloat16 GEMM over K = in + r, with W dequantized into rows of ld >=
// in + r values, bf16(B) written into its columns in .. in+r-1 by the
// first launch and bf16(scale * h) into x's; no float32 up-projection and
// no beta-1 read of out. Else (v4): out = scale * h . B^T (float32), then
// out += x . W^T (bfloat16 GEMM, beta 1).
//
// With src.gu != 0 (SwiGLULinearForward), x is SwiGLU's output, written
// here from gu [T,2 in] by lora_rows_swiglu_bf16; with src.norm
// (RMSNormLinearForward), x is the norm's output, written by
// lora_rows_norm_bf16 (the callers checked that the row kernels take the
// shapes). Folded, an output allocated by AllocHalf gets bfloat16 values
// (Tensor.half, v9: gate_up_proj's, for the SwiGLU row kernels, and
// qkv_proj's, for the attention _h kernels).
// beta 1 adds the product into o (SwiGLULinearAddForward; only where the
// LoRA's up-projection folds into the GEMM, fold != 0), 0 overwrites it.
func (b *Backend) linearForwardBF16(op string, o *Tensor, x cu.DevicePtr, src rowsSrc, T int, w *weight, l *finetune.Linear, hs *Tensor, seed uint64, beta float32) {
	gu, norm := src.gu, src.norm
	lo, r := l.LoRA, loraRank(l)
	A, B := tensor(lo.A, kindF32, op), tensor(lo.B, kindF32, op)
	// A nil o: h and the by-products alone (RMSNormLinearForward for an
	// output the stash holds, finetune.ActivationStasher): no weight, no
	// bf16(x) where the row kernel computes h, no fold, no GEMM.
	var out, wp cu.DevicePtr
	var t, fold int
	ld := w.in
	if o != nil {
		out = o.ptr
		fold = b.foldLD(w, r)
		wp, t, ld = b.matrixLD(w, op, b.linearLD(w, l))
		fold = min(fold, ld) // 0 unless folding
	}
	xh := b.scratchBuf(sAct, 2*int64(T)*int64(ld), op)
	if gu != 0 || norm != nil || canLoRARows(x, A.ptr, T, w.in, r) {
		// v7: xh, h and the fold columns' bf16(s.h) from one pass over x
		// (bf16(B) into W's fold columns rides along).
		var job prepJob
		var p16 cu.DevicePtr
		if fold != 0 {
			job = prepJob{dst: wp + cu.DevicePtr(2*w.in), src: B.ptr, rows: w.out, cols: r, ld: ld, scale: 1}
			p16 = xh + cu.DevicePtr(2*w.in)
		}
		xd16 := b.keepSlot(op, l, x, seed, T, w.in)
		yh := xh
		if o == nil {
			yh = 0
		}
		act := x // SwiGLU's output, the row kernel's by-product
		if (gu != 0 || norm != nil) && b.skipByproduct(src.by, xd16) {
			act = 0
			if norm != nil {
				nn := *norm
				nn.xn = 0
				norm = &nn
			}
		}
		switch {
		case norm != nil:
			b.loraRowsNorm(op, norm, yh, ld, hs.ptr, p16, ld, lo.Scale, A.ptr, T, w.in, r, lo.Dropout, seed, job, xd16)
		case gu != 0:
			b.loraRowsAct(op, act, yh, ld, hs.ptr, p16, ld, lo.Scale, gu, src.guHalf, A.ptr, T, w.in, r, lo.Dropout, seed, job, xd16)
		default:
			b.loraRows(op, yh, ld, hs.ptr, p16, ld, lo.Scale, x, A.ptr, T, w.in, r, lo.Dropout, seed, job, xd16)
		}
	} else {
		n := int64(T) * int64(w.in)
		xdh, xdld, xdArg := xh, ld, cu.DevicePtr(0)
		if lo.Dropout > 0 {
			xdh, xdld = b.scratchBuf(sLoRAX, 2*n, op), w.in
			xdArg = xdh
		}
		a16, _, _, _ := b.loraHalfBufs(op, T, w.in, w.out, r)
		jobs := []prepJob{{dst: a16, src: A.ptr, rows: r, cols: w.in, ld: w.in, scale: 1}}
		if fold != 0 {
			jobs = append(jobs, prepJob{dst: wp + cu.DevicePtr(2*w.in), src: B.ptr, rows: w.out, cols: r, ld: ld, scale: 1})
		}
		b.loraPrep(op, xh, xdArg, x, n, w.in, ld, lo.Dropout, seed, jobs...)
		// h [T,r] = dropout(x) . A^T
		b.gemm(op, gemmArgs{transB: true, M: T, N: r, K: w.in, alpha: 1, A: uintptr(xdh), lda: xdld, B: uintptr(a16), ldb: w.in,
			C: uintptr(hs.ptr), ldc: r, abType: dataR16BF})
		if fold != 0 {
			b.loraPrep(op, 0, 0, 0, 0, 1, 1, 0, 0, prepJob{dst: xh + cu.DevicePtr(2*w.in), src: hs.ptr, rows: T, cols: r, ld: ld, scale: lo.Scale})
		}
	}
	if o == nil {
		return
	}
	if fold != 0 {
		// bfloat16 only where its readers read it so: the row kernels
		// take r <= 8 (canLoRARows; the model gives its linears one rank).
		half := beta == 0 && o.writeHalf() && r <= 8 && t == dataR16BF
		b.gemm(op, gemmArgs{transB: true, M: T, N: w.out, K: w.in + r, alpha: 1, beta: beta, A: uintptr(xh), lda: ld, B: uintptr(wp), ldb: ld,
			C: uintptr(out), ldc: w.out, abType: t, cHalf: half})
		if half {
			o.half = b
		}
		return
	}
	if beta != 0 {
		panic(&Error{Op: op, Err: fmt.Errorf("%s: an adding linear forward without the folded up-projection", l.Name)})
	}
	// The up-projection goes first and overwrites out (beta 0: a write,
	// no read); the base GEMM then adds into it (beta 1), where reading
	// C costs little next to its K = in products (v4: saves the fp32
	// read of out that a read-modify-write up-projection afterwards made).
	b.sgemm(op, false, true, T, w.out, r, lo.Scale, hs.ptr, r, B.ptr, r, 0, out, w.out)
	b.gemm(op, gemmArgs{transB: true, M: T, N: w.out, K: w.in, alpha: 1, beta: 1, A: uintptr(xh), lda: ld, B: uintptr(wp), ldb: ld,
		C: uintptr(out), ldc: w.out, abType: t})
}

// linearBackwardBF16 is LinearBackward with LoRA under BF16 compute: dout
// is rounded to bfloat16 once for dx += dout . W and GradB += scale *
// dout^T . h, in the launch that computes g = dout . B and rounds g and h
// (v7, lora_rows_bf16_t; else lora_prep_bf16 and a bfloat16 GEMM for g);
// then GradA += scale * g^T . dropout(x) (bf16(dropout(x)) from one
// launch), all bfloat16 GEMMs; dx's LoRA term is float32 (loraDx).
//
// With sw (SwiGLULinearBackward), dout is SwiGLU's backward, computed by
// lora_rows_swiglu_bf16_t from sw's dact and gate_up (the caller checked
// that the row kernels take the shapes); dout is then unused.
//
// With doutHalf (the caller checked that the row kernels take the shapes),
// dout is held in bfloat16 (Tensor.half, v9: d qkv from attn_bwd_bf16_hh):
// it is then the GEMMs' operand itself, and the row kernel only computes g.
func (b *Backend) linearBackwardBF16(op string, d *Tensor, dout cu.DevicePtr, doutHalf bool, sw *swigluSrc, xs *Tensor, T int, w *weight, l *finetune.Linear, hs *Tensor, seed uint64) {
	lo, r := l.LoRA, loraRank(l)
	A, B := tensor(lo.A, kindF32, op), tensor(lo.B, kindF32, op)
	// The outputs last (lazy zeroing, device.go): a pending Zero of a
	// gradient or of dx (unwrapped by the caller) becomes beta 0 in the
	// GEMM that writes every element of it first.
	gA, betaA := b.accTensor(lo.GradA, kindF32, op)
	gB, betaB := b.accTensor(lo.GradB, kindF32, op)
	betaD := b.takeZero(d)
	_, b16, h16, g16 := b.loraHalfBufs(op, T, w.in, w.out, r)
	nout := int64(T) * int64(w.out)
	dh := b.scratchBuf(sAct, 2*nout, op)
	g := b.scratchBuf(sLoRAG, 4*int64(T)*int64(r), op)
	rows := sw != nil || canLoRARows(dout, B.ptr, T, w.out, r)
	// Inside the model's window the two weight-gradient products may wait
	// for FlushLoRAGrads (loragrads.go), their small operands (and dout's
	// bfloat16 copy) in held buffers the kernels below write instead.
	holdA, holdB := b.loraGradHolds(l, xs, seed, T, w, sw != nil, rows, doutHalf)
	if holdA {
		g16 = b.holdRoom(op, 2*int64(T)*int64(r))
	}
	if holdB {
		h16 = b.holdRoom(op, 2*int64(T)*int64(r))
		if !doutHalf {
			dh = b.holdRoom(op, 2*nout)
		}
	}
	switch {
	case sw != nil:
		b.loraRowsSwiGLU(op, dh, g, g16, sw, B.ptr, T, r, prepJob{dst: h16, src: hs.ptr, rows: T, cols: r, ld: r, scale: 1})
	case doutHalf && !rows:
		panic(&Error{Op: op, Err: fmt.Errorf("%s: a bfloat16 dout for shapes the row kernels do not take", l.Name)})
	case rows && doutHalf:
		dh = dout
		b.loraRowsTHalf(op, g, g16, r, dout, B.ptr, T, w.out, r, prepJob{dst: h16, src: hs.ptr, rows: T, cols: r, ld: r, scale: 1})
	case rows:
		// v7: dh, g = dout . B and bf16(g) from one pass over dout; h's
		// rounding rides along.
		b.loraRowsT(op, dh, w.out, g, g16, r, dout, B.ptr, T, w.out, r, prepJob{dst: h16, src: hs.ptr, rows: T, cols: r, ld: r, scale: 1})
	default:
		b.loraPrep(op, dh, 0, dout, nout, w.out, w.out, 0, 0,
			prepJob{dst: h16, src: hs.ptr, rows: T, cols: r, ld: r, scale: 1},
			prepJob{dst: b16, src: B.ptr, rows: w.out, cols: r, ld: r, scale: 1})
	}
	if d != nil {
		// The forward's stride, so that the dequantization cache hits.
		wp, t, ld := b.matrixLD(w, op, b.linearLD(w, l))
		b.gemm(op, gemmArgs{M: T, N: w.in, K: w.out, alpha: 1, beta: betaD, A: uintptr(dh), lda: w.out, B: uintptr(wp), ldb: ld,
			C: uintptr(d.ptr), ldc: w.in, abType: t})
	}
	// GradB [out,r] += scale * dout^T . h
	b.gradGEMM(op, gemmArgs{transA: true, M: w.out, N: r, K: T, alpha: lo.Scale, beta: betaB, A: uintptr(dh), lda: w.out,
		B: uintptr(h16), ldb: r, C: uintptr(gB.ptr), ldc: r, abType: dataR16BF}, holdB)
	// GradA [r,in] += scale * g^T . dropout(x), with bf16(dropout(x)) kept
	// by the forward's row kernel (v8; it may then have left x unwritten:
	// skipByproduct), else made here in one pass; without the row kernel,
	// g = dout . B is a GEMM and its rounding rides along that pass.
	var jobs []prepJob
	if !rows {
		b.gemm(op, gemmArgs{M: T, N: r, K: w.out, alpha: 1, A: uintptr(dh), lda: w.out, B: uintptr(b16), ldb: r,
			C: uintptr(g), ldc: r, abType: dataR16BF})
		jobs = append(jobs, prepJob{dst: g16, src: g, rows: T, cols: r, ld: r, scale: 1})
	}
	n := int64(T) * int64(w.in)
	xdh := b.takeKept(l, xs.ptr, seed, T, w.in)
	switch {
	case xdh == 0:
		xs.readable(op) // loraInput let it through for a kept copy
		xdh = b.scratchBuf(sLoRAX, 2*n, op)
		b.loraPrep(op, 0, xdh, xs.ptr, n, w.in, w.in, lo.Dropout, seed, jobs...)
	case len(jobs) > 0:
		b.loraPrep(op, 0, 0, 0, 0, 1, 1, 0, 0, jobs...)
	}
	b.gradGEMM(op, gemmArgs{transA: true, M: r, N: w.in, K: T, alpha: lo.Scale, beta: betaA, A: uintptr(g16), lda: r,
		B: uintptr(xdh), ldb: w.in, C: uintptr(gA.ptr), ldc: w.in, abType: dataR16BF}, holdA)
	if d == nil {
		return
	}
	// dx += scale * (g . A) * mask / (1-p), in float32.
	b.loraDx(op, d, g, A, T, w.in, lo, r, seed)
}
