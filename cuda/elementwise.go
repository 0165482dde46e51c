//go:build cuda

package cuda

import (
	"fmt"

	"github.com/ollama-tune/ollama-tune/finetune"
)

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
