//go:build cuda

package cuda

import (
	"fmt"
	"math"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

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
// tiled one-block-per-(head, row) kernels (attn_fwd_t64, attn_bwd_t64:
// 64 x 64 tiles, D up to 128, 42 KiB of static shared memory).
func (b *Backend) shortAttn(S, D int) bool {
	return b.fastAttn && S <= 64 && D <= 128
}

// attnTC says whether, under BF16 compute, the short rows take the
// tensor-core kernels (attention_tc.cu: attn_fwd_bf16, attn_bwd_bf16, v8:
// bfloat16 operands, float32 sums, like the linears);
// OLLAMA_TUNE_CUDA_REFERENCE=attn-tc keeps v7's float32 tiled ones
// (attn_fwd_t64, attn_bwd_t64), which float32 and float16 compute take.
var attnTC = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "attn-tc")

// Shared memory of the tensor-core kernels (attention_tc.cuh's ab_d16,
// ab_ld, AB_LDP): 64-token rows of bfloat16 at a padded stride, D rounded
// up to whole 16-column tiles.
func abD16(D int) int { return (D + 15) &^ 15 }
func abLd(D int) int  { return abD16(D) + 8 }

const abLdp = 72

func abFwdSmem(D int) int       { return 2*64*(max(abLd(D), abLdp)+2*abLd(D)) + 4*4*64 }
func abBwdSmem(D, half int) int { return 2*4*64*abLd(D) + 2*2*64*abLdp + 4*2*64 + 8*64*half }

// tcAttn says whether a short row's kernel (fwd or bwd) runs on the tensor
// cores, with smem bytes of dynamic shared memory.
func (b *Backend) tcAttn(kernel string, smem int) bool {
	return attnTC && b.half == halfBF16 && b.allowSmem(kernel, smem) == nil
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
	if b.shortAttn(S, headDim) {
		if smem := abFwdSmem(headDim); b.tcAttn("attn_fwd_bf16", smem) {
			b.launch(op, "attn_fwd_bf16", [3]int{nHead, B, 1}, 256, smem, ptrArg(o.ptr), ptrArg(ls.ptr), ptrArg(x.ptr), ptrArg(ps.ptr),
				intArg(B), intArg(S), intArg(nHead), intArg(nKV), intArg(headDim), intArg(window), f32Arg(attnScale(headDim)), 0, 0)
			return
		}
		b.launch(op, "attn_fwd_t64", [3]int{nHead, B, 1}, 256, 0, ptrArg(o.ptr), ptrArg(ls.ptr), ptrArg(x.ptr), ptrArg(ps.ptr),
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
	do, o := tensor(dout, kindF32, op), tensor(out, kindF32, op)
	ls, x, ps := tensor(lse, kindF32, op), tensor(qkv, kindF32, op), tensor(pos, kindI32, op)
	b.checkAttn(op, x, ps, B, S, nHead, nKV, headDim)
	if b.shortAttn(S, headDim) {
		// di = rowsum(dO * O) is computed inside, for each head. A pending
		// Zero of dqkv (lazy zeroing) becomes an overwrite: the kernel
		// writes every element of the B rows.
		dx, beta := b.accTensor(dqkv, kindF32, op)
		if dx.n != B*S*(nHead+2*nKV)*headDim {
			panic(&Error{Op: op, Err: fmt.Errorf("dqkv has %d values, want %d x %d", dx.n, B*S, (nHead+2*nKV)*headDim)})
		}
		args := []uint64{ptrArg(dx.ptr), ptrArg(do.ptr), ptrArg(o.ptr), ptrArg(ls.ptr), ptrArg(x.ptr), ptrArg(ps.ptr),
			intArg(B), intArg(S), intArg(nHead), intArg(nKV), intArg(headDim), intArg(window), f32Arg(attnScale(headDim)),
			boolArg(beta != 0)}
		if smem := abBwdSmem(headDim, 0); b.tcAttn("attn_bwd_bf16", smem) {
			b.launch(op, "attn_bwd_bf16", [3]int{nKV, B, 1}, 256, smem, append(args, 0, 0)...)
			return
		}
		b.launch(op, "attn_bwd_t64", [3]int{nKV, B, 1}, 256, 0, args...)
		return
	}
	dx := tensor(dqkv, kindF32, op)
	T := B * S
	di := b.scratchBuf(sAttn, 4*int64(T)*int64(nHead), op)
	b.launchN(op, "attn_bwd_di", int64(T)*int64(nHead), ptrArg(di), ptrArg(do.ptr), ptrArg(o.ptr), intArg(T), intArg(nHead), intArg(headDim))
	args := []uint64{ptrArg(dx.ptr), ptrArg(do.ptr), ptrArg(ls.ptr), ptrArg(di), ptrArg(x.ptr), ptrArg(ps.ptr),
		intArg(B), intArg(S), intArg(nHead), intArg(nKV), intArg(headDim), intArg(window), f32Arg(attnScale(headDim))}
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

var _ finetune.RoPEAttentioner = (*Backend)(nil)

// ropeAttn says whether RoPE may be fused into the tensor-core kernels
// (RoPEAttentioner, v8); OLLAMA_TUNE_CUDA_REFERENCE=rope-attn keeps the
// separate rope_apply launches (the A/B).
var ropeAttn = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "rope-attn")

// RoPEAttention says whether AttentionForwardRoPE and AttentionBackwardRoPE
// take these shapes: rows the tensor-core kernels take (BF16 compute), one
// KV head a query head (dK is final when the kernel rotates it back), and
// an even rotary dimension within the head.
func (b *Backend) RoPEAttention(B, S, nHead, nKV, headDim, rotaryDim int) bool {
	defer b.enter("RoPEAttention")() // allowSmem may set a kernel attribute
	return ropeAttn && b.shortAttn(S, headDim) && nHead == nKV && rotaryDim > 0 && rotaryDim%2 == 0 &&
		rotaryDim <= headDim && b.tcAttn("attn_fwd_bf16", abFwdSmem(headDim)) &&
		b.tcAttn("attn_bwd_bf16", abBwdSmem(headDim, rotaryDim/2)) && b.tcAttn("attn_fwd_bf16_h", abFwdSmem(headDim)) &&
		b.tcAttn("attn_bwd_bf16_h", abBwdSmem(headDim, rotaryDim/2)) && b.tcAttn("attn_bwd_bf16_hh", abBwdSmem(headDim, rotaryDim/2)) &&
		b.tcAttn("attn_fwd_bf16_h_rp", abFwdSmem(headDim)) && b.tcAttn("attn_bwd_bf16_hh_rp", abBwdSmem(headDim, rotaryDim/2)) &&
		b.tcAttn("attn_fwd_bf16_h_rp96", abFwdSmem(headDim)) && b.tcAttn("attn_bwd_bf16_hh_rp96", abBwdSmem(headDim, rotaryDim/2)) &&
		b.tcAttn("attn_fwd_bf16_h_rp96v", abFwdSmem(headDim)) && b.tcAttn("attn_bwd_bf16_hh_rp96v", abBwdSmem(headDim, rotaryDim/2))
}

// attnV20 says whether the _rp96 kernels give way to their v20 forms
// (attention_tc.cuh's V20, the _rp96v entry points: the loaders issue all
// their loads before they wait, V is copied with cp.async, dO is read once
// for both its bfloat16 copy and di, and the softmax divides through one
// reciprocal a row with Markstein's correction; the same bits).
// OLLAMA_TUNE_CUDA_REFERENCE=attn-v20 keeps the _rp96 ones (the A/B).
var attnV20 = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "attn-v20")

// attnSpec says whether the fused RoPE attention takes the _rp entry points
// (v11) where abSpec holds; OLLAMA_TUNE_CUDA_REFERENCE=attn-spec keeps the
// generic ones (the same bits).
var attnSpec = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "attn-spec")

// abSpec says whether the _rp kernels (attention_tc.cuh's SPEC, attention_tc_rp.cu) take a head
// of D values with RoPE over 2 half of them, a bfloat16 qkv at x and, for
// the backward, dout at do (0 for the forward): RoPE over whole 16-column
// tiles of each half of the head (Phi-3-mini's 96 = 2 x 48), and 16-byte
// friendly rows.
func abSpec(D, half int, x, do cu.DevicePtr) bool {
	return attnSpec && half > 0 && half%16 == 0 && 2*half == abD16(D) && D%4 == 0 && x%8 == 0 && do%16 == 0
}

var attnSpec96 = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "attn-96")

// abSpecSize is the suffix of the _rp entry point compiled for this head
// ("96": Phi-3-mini's heads with RoPE over all of them, attention_tc.cuh's
// DC; "96v": their v20 form, attnV20, where every pointer in ptrs is
// 16-byte aligned: qkv for V's 16-byte copies, the forward's O for its
// 8-byte stores, the backward's dqkv for its 16-byte stores), or "" (the
// head's size a kernel argument).
// OLLAMA_TUNE_CUDA_REFERENCE=attn-96 keeps the generic size (the A/B).
func abSpecSize(D, rotaryDim int, ptrs ...cu.DevicePtr) string {
	if D != 96 || rotaryDim != 96 || !attnSpec96 {
		return ""
	}
	if !attnV20 {
		return "96"
	}
	for _, p := range ptrs {
		if p%16 != 0 {
			return "96"
		}
	}
	return "96v"
}

// halfKernel is kernel's entry point for a bfloat16 qkv (Tensor.half, v9:
// the _h kernels read it so).
func halfKernel(kernel string, half bool) string {
	if half {
		return kernel + "_h"
	}
	return kernel
}

// ropeAttnArgs checks the shapes and returns RoPE's table (rope_apply's,
// cached while the positions stay) and half the rotary dimension.
func (b *Backend) ropeAttnArgs(op string, ps *Tensor, B, S, nHead, nKV, headDim, rotaryDim int, theta float32) (uint64, uint64) {
	if !b.RoPEAttention(B, S, nHead, nKV, headDim, rotaryDim) {
		panic(&Error{Op: op, Err: fmt.Errorf("%d x %d tokens, %d/%d heads of %d, rotary %d: not fused here (RoPEAttention is false)", B, S, nHead, nKV, headDim, rotaryDim)})
	}
	half := rotaryDim / 2
	return ptrArg(b.ropeTable(op, ps, B*S, half, rotaryDim, theta)), intArg(half)
}

// AttentionForwardRoPE is RoPEForward on a copy of qkv then
// AttentionForward (finetune.RoPEAttentioner): attn_fwd_bf16 rotates q and
// k as it loads them; qkv is not written (and may be held in bfloat16:
// attn_fwd_bf16_h).
func (b *Backend) AttentionForwardRoPE(out, lse, qkv, pos finetune.Tensor, B, S, nHead, nKV, headDim, window, rotaryDim int, theta float32) {
	const op = "AttentionForwardRoPE"
	defer b.enter(op)()
	x, xHalf := halfInput(qkv, op)
	o, ls, ps := tensor(out, kindF32, op), tensor(lse, kindF32, op), tensor(pos, kindI32, op)
	b.checkAttn(op, x, ps, B, S, nHead, nKV, headDim)
	cs, half := b.ropeAttnArgs(op, ps, B, S, nHead, nKV, headDim, rotaryDim, theta)
	kernel := halfKernel("attn_fwd_bf16", xHalf)
	if xHalf && abSpec(headDim, rotaryDim/2, x.ptr, 0) {
		kernel = "attn_fwd_bf16_h_rp" + abSpecSize(headDim, rotaryDim, x.ptr, o.ptr)
	}
	b.launch(op, kernel, [3]int{nHead, B, 1}, 256, abFwdSmem(headDim), ptrArg(o.ptr), ptrArg(ls.ptr), ptrArg(x.ptr),
		ptrArg(ps.ptr), intArg(B), intArg(S), intArg(nHead), intArg(nKV), intArg(headDim), intArg(window),
		f32Arg(attnScale(headDim)), cs, half)
}

// AttentionBackwardRoPE is AttentionBackward from the rotated qkv then
// RoPEBackward on dqkv (finetune.RoPEAttentioner, dqkv zeroed on entry):
// attn_bwd_bf16 rotates q and k as it loads them and dQ, dK back as it
// stores them.
func (b *Backend) AttentionBackwardRoPE(dqkv, dout, out, lse, qkv, pos finetune.Tensor, B, S, nHead, nKV, headDim, window, rotaryDim int, theta float32) {
	const op = "AttentionBackwardRoPE"
	defer b.enter(op)()
	x, xHalf := halfInput(qkv, op)
	do, o := tensor(dout, kindF32, op), tensor(out, kindF32, op)
	ls, ps := tensor(lse, kindF32, op), tensor(pos, kindI32, op)
	b.checkAttn(op, x, ps, B, S, nHead, nKV, headDim)
	dx, beta := b.accTensor(dqkv, kindF32, op)
	if dx.n != x.n || dx == x {
		panic(&Error{Op: op, Err: fmt.Errorf("dqkv has %d values, want %d (and must not be qkv)", dx.n, x.n)})
	}
	cs, half := b.ropeAttnArgs(op, ps, B, S, nHead, nKV, headDim, rotaryDim, theta)
	kernel := halfKernel("attn_bwd_bf16", xHalf)
	// dqkv from AllocHalf, overwritten: held in bfloat16 (v9), for
	// qkv_proj's backward, which rounds it to bfloat16 anyway (a bfloat16
	// qkv says that its linear's rank suits the row kernels).
	halfOut := xHalf && beta == 0 && dx.writeHalf()
	if halfOut {
		kernel = "attn_bwd_bf16_hh"
		if abSpec(headDim, rotaryDim/2, x.ptr, do.ptr) {
			// one KV head a query head (RoPEAttention), dqkv overwritten
			kernel = "attn_bwd_bf16_hh_rp" + abSpecSize(headDim, rotaryDim, x.ptr, dx.ptr)
		}
	}
	b.launch(op, kernel, [3]int{nKV, B, 1}, 256, abBwdSmem(headDim, rotaryDim/2), ptrArg(dx.ptr), ptrArg(do.ptr), ptrArg(o.ptr),
		ptrArg(ls.ptr), ptrArg(x.ptr), ptrArg(ps.ptr), intArg(B), intArg(S), intArg(nHead), intArg(nKV), intArg(headDim),
		intArg(window), f32Arg(attnScale(headDim)), boolArg(beta != 0), cs, half)
	if halfOut {
		dx.half = b
	}
}
