//go:build cuda

package cuda

import (
	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// A normed linear's LoRA input-gradient term, deferred to the norm's
// backward (issue 8, v21; finetune.LoRADxDeferrer). qkv_proj's and
// gate_up_proj's backward write dx = dout . W (a GEMM) and then add the
// LoRA term in place (lora_dx_v4_r8l: read and write dx, 12.6 MB each way
// at Phi-3-mini's 1,024 tokens), and the RMSNorm backward reads dx right
// after. Deferred, the linear's backward leaves the term pending (its g =
// dout . B in a scratch buffer of its own) and rmsnorm_bwd_lora8 adds it
// to each dx value as it reads it: the same bits, one launch and 25 MB
// less a norm. Every other read of the tensor (tensor(), Ptr, Download,
// Copy, View) first adds the term with lora_dx_v4_r8l, so nothing sees a
// half-made gradient; Zero and Free drop it. One term is pending at a time.

// normDx says whether DeferLoRADx defers; OLLAMA_TUNE_CUDA_REFERENCE=norm-dx
// keeps the two launches (the A/B).
var normDx = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "norm-dx")

// pendingDx is the deferred term of t: loraDx's arguments.
type pendingDx struct {
	t     *Tensor
	g     cu.DevicePtr // [T,8] float32, in the sLoRADxG scratch
	A     *Tensor
	T, in int
	lo    *finetune.LoRA
	seed  uint64
}

var _ finetune.LoRADxDeferrer = (*Backend)(nil)

// DeferLoRADx (finetune.LoRADxDeferrer) marks dx: the next bfloat16 LoRA
// linear backward into it may leave its LoRA term pending (deferLoRADx).
func (b *Backend) DeferLoRADx(dx finetune.Tensor) {
	const op = "DeferLoRADx"
	defer b.enter(op)()
	ct := unwrapRaw(dx, kindF32, op)
	if !normDx || ct == nil {
		return
	}
	b.flushLoRADx(op) // its g's scratch is the next one's
	ct.deferDx = true
}

// canDeferDx says whether the deferred term would be lora_dx_v4_r8l's (the
// kernel loraDx picks for these arguments; rmsnorm_bwd_lora8 repeats its
// arithmetic): rank 8, rows of a multiple of 4, 16-byte aligned dx and A,
// 32-byte aligned g (a scratch buffer: 256), 32-bit offsets.
func (b *Backend) canDeferDx(d, A *Tensor, T, in, r int) bool {
	return b.fastLoRA && loraDxV4 && loraDxR8 && loraDxLean && r == 8 && in%4 == 0 && d.ptr%16 == 0 && A.ptr%16 == 0 &&
		int64(T)*int64(in) < 1<<31
}

// flushLoRADx adds the pending term, if any, to its tensor (lora_dx_v4_r8l,
// queued now).
func (b *Backend) flushLoRADx(op string) {
	p := b.pendDx
	if p.t == nil {
		return
	}
	b.pendDx = pendingDx{}
	p.t.loraDx = nil
	b.loraDx(op, p.t, p.g, p.A, p.T, p.in, p.lo, 8, p.seed)
}

// dropLoRADx forgets t's pending term (t is overwritten or freed).
func (b *Backend) dropLoRADx(t *Tensor) {
	if t.loraDx != nil && b.pendDx.t == t {
		b.pendDx = pendingDx{}
	}
	t.loraDx = nil
}

// settleDx adds t's pending term before t is read some other way than
// by rmsnorm_bwd_lora8.
func (t *Tensor) settleDx(op string) {
	if t != nil && t.loraDx != nil {
		t.loraDx.flushLoRADx(op)
	}
}

// takeLoRADx takes dout's pending term for RMSNormBackward (nil: none;
// the caller then reads dout through tensor()).
func (b *Backend) takeLoRADx(dout finetune.Tensor) *pendingDx {
	ct, ok := dout.(*Tensor)
	if !ok || ct == nil || ct.loraDx == nil || b.pendDx.t != ct {
		return nil
	}
	p := b.pendDx
	b.pendDx = pendingDx{}
	ct.loraDx = nil
	return &p
}

// rmsNormBackwardLoRADx launches rmsnorm_bwd_lora8 for RMSNormBackward with
// p taken from do: dx (+)= the norm's backward of do + p's term. It
// returns false, having added the term to do instead (loraDx), where the
// fused kernel does not take the shapes (then the caller runs the norm's
// own kernel).
func (b *Backend) rmsNormBackwardLoRADx(op string, p *pendingDx, d, do, xs, ws, rs *Tensor, acc bool) bool {
	C := ws.n
	if b.rmsBwd != "rmsnorm_bwd_nc" || C%4 != 0 || C != p.in || rs.n != p.T || (d.ptr|do.ptr|xs.ptr|ws.ptr)%16 != 0 {
		b.loraDx(op, do, p.g, p.A, p.T, p.in, p.lo, 8, p.seed)
		return false
	}
	lo := p.lo
	b.launch(op, "rmsnorm_bwd_lora8", grid1(rs.n), 256, 0, ptrArg(d.ptr), ptrArg(do.ptr), ptrArg(xs.ptr), ptrArg(ws.ptr),
		ptrArg(rs.ptr), intArg(C), boolArg(acc), ptrArg(p.g), ptrArg(p.A.ptr), f32Arg(lo.Scale), p.seed, f32Arg(lo.Dropout),
		dropThreshold(lo.Dropout), f32Arg(keepScale(lo.Dropout)))
	// do's memory lacks the term now: no op may read it until it is
	// written again (finetune.LoRADxDeferrer's contract; readable panics).
	do.unwritten = true
	return true
}
