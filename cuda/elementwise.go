//go:build cuda

package cuda

import (
	"fmt"
	"os"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// ---------------------------------------------------------------------------
// Norms, RoPE, SwiGLU, Add

func (b *Backend) RMSNormForward(out, rstd, x, w finetune.Tensor, eps float32) {
	const op = "RMSNormForward"
	defer b.enter(op)()
	b.rmsNormForward(op, out, rstd, x, w, eps)
}

// rmsNormForward is RMSNormForward's body.
func (b *Backend) rmsNormForward(op string, out, rstd, x, w finetune.Tensor, eps float32) {
	xs, ws := tensor(x, kindF32, op), tensor(w, kindF32, op)
	o, rs := outTensor(out, kindF32, op), outTensor(rstd, kindF32, op)
	C := ws.n
	if xs.n != rs.n*C || o.n != xs.n {
		panic(&Error{Op: op, Err: fmt.Errorf("x %v, out %v, rstd %v, w %v do not agree", xs.shape, o.shape, rs.shape, ws.shape)})
	}
	b.launch(op, "rmsnorm_fwd"+b.rmsFwd, grid1(rs.n), 256, 0, ptrArg(o.ptr), ptrArg(rs.ptr), ptrArg(xs.ptr), ptrArg(ws.ptr), intArg(C), f32Arg(eps))
}

// AddRMSNormForward is finetune.AddRMSNormer: sum = a + b, then
// RMSNormForward(out, rstd, sum, w, eps), in one pass (kernel
// add_rmsnorm_fwd: the same float32 operations as Add and RMSNormForward,
// so the same bits).
func (b *Backend) AddRMSNormForward(sum, out, rstd, a, bt, w finetune.Tensor, eps float32) {
	const op = "AddRMSNormForward"
	defer b.enter(op)()
	b.addRMSNormForward(op, sum, out, rstd, a, bt, w, eps)
}

// addRMSNormForward is AddRMSNormForward's body.
func (b *Backend) addRMSNormForward(op string, sum, out, rstd, a, bt, w finetune.Tensor, eps float32) {
	as, bs, ws := tensor(a, kindF32, op), tensor(bt, kindF32, op), tensor(w, kindF32, op)
	s, o, rs := outTensor(sum, kindF32, op), outTensor(out, kindF32, op), outTensor(rstd, kindF32, op)
	C := ws.n
	if as.n != rs.n*C || bs.n != as.n || s.n != as.n || o.n != as.n {
		panic(&Error{Op: op, Err: fmt.Errorf("a %v, b %v, sum %v, out %v, rstd %v, w %v do not agree", as.shape, bs.shape, s.shape, o.shape, rs.shape, ws.shape)})
	}
	if o == as || o == bs || o == s {
		panic(&Error{Op: op, Err: fmt.Errorf("out must not alias a, b or sum")})
	}
	b.launch(op, "add_rmsnorm_fwd"+b.rmsFwd, grid1(rs.n), 256, 0, ptrArg(s.ptr), ptrArg(o.ptr), ptrArg(rs.ptr), ptrArg(as.ptr), ptrArg(bs.ptr),
		ptrArg(ws.ptr), intArg(C), f32Arg(eps))
}

func (b *Backend) RMSNormBackward(dx, dout, x, w, rstd finetune.Tensor) {
	const op = "RMSNormBackward"
	defer b.enter(op)()
	do, xs := tensor(dout, kindF32, op), tensor(x, kindF32, op)
	ws, rs := tensor(w, kindF32, op), tensor(rstd, kindF32, op)
	d := unwrap(dx, kindF32, op) // last: see lazy zeroing (device.go)
	if xs.n != rs.n*ws.n || d.n != xs.n || do.n != xs.n {
		panic(&Error{Op: op, Err: fmt.Errorf("dx %v, dout %v, x %v, w %v, rstd %v do not agree", d.shape, do.shape, xs.shape, ws.shape, rs.shape)})
	}
	acc := b.takeZero(d) != 0 // every row and column of dx is written
	b.launch(op, b.rmsBwd, grid1(rs.n), 256, 0, ptrArg(d.ptr), ptrArg(do.ptr), ptrArg(xs.ptr), ptrArg(ws.ptr), ptrArg(rs.ptr), intArg(ws.n),
		boolArg(acc))
}

// rmsBwdKernel is RMSNormBackward's kernel: rmsnorm_bwd_nc (the default)
// reads x and dout again in its second pass, rmsnorm_bwd keeps them in
// registers (more registers a thread, fewer blocks resident: slower on an
// H100 at Phi-3's C = 3072, 1.64 ms a checkpointed step against 1.51 for
// the old scalar kernel); OLLAMA_TUNE_CUDA_RMSBWD=cache or =nocache picks
// one for A/B runs.
//
// rmsFwdSuffix is the same choice for rmsnorm_fwd and add_rmsnorm_fwd
// ("" keeps the row in registers, "_nc" reads it again):
// OLLAMA_TUNE_CUDA_RMSFWD=cache or =nocache.
func rmsFwdSuffix() string {
	if os.Getenv("OLLAMA_TUNE_CUDA_RMSFWD") == "nocache" {
		return "_nc"
	}
	return ""
}

func rmsBwdKernel() string {
	if os.Getenv("OLLAMA_TUNE_CUDA_RMSBWD") == "cache" {
		return "rmsnorm_bwd"
	}
	return "rmsnorm_bwd_nc"
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
	// The angles' cos and sin once per token (cached while the positions
	// are unchanged), then the rotation.
	cs := b.ropeTable(op, ps, T, half, rotaryDim, theta)
	nrot := nHead + nKV
	kernel, per := "rope_apply", 1
	if half%4 == 0 && headDim%4 == 0 && width%4 == 0 {
		kernel, per = "rope_apply_v4", 4
	}
	b.launch(op, kernel, [3]int{(nrot*half/per + 255) / 256, min(T, 65535), 1}, 256, 0, ptrArg(x.ptr), ptrArg(cs), intArg(T),
		intArg(nrot), intArg(headDim), intArg(width), intArg(half), boolArg(inverse))
}

// ropeCache is RoPE's cos/sin table [T][half] of the last positions
// tensor, rebuilt only when the positions (their tensor's address and
// write generation, Tensor.gen: a re-upload changes it) or the rotary
// parameters change. A training step uploads its positions once and runs
// RoPE 3 times a layer (forward, the checkpointed recompute, backward) on
// them.
type ropeCache struct {
	buf      buffer
	pos      cu.DevicePtr
	gen      uint64
	T, half  int
	rot      int
	theta    float32
	hasTable bool
}

// ropeTable returns the table of pos's angles, computing it when needed.
func (b *Backend) ropeTable(op string, pos *Tensor, T, half, rot int, theta float32) cu.DevicePtr {
	c := &b.ropeCS
	if c.hasTable && c.pos == pos.ptr && c.gen == pos.gen && c.T == T && c.half == half && c.rot == rot && c.theta == theta {
		return c.buf.ptr
	}
	c.hasTable = false
	b.grow(&c.buf, 8*int64(T)*int64(half), 256, "RoPE's table", op)
	b.launchN(op, "rope_table", int64(T)*int64(half), ptrArg(c.buf.ptr), ptrArg(pos.ptr), intArg(T), intArg(half), intArg(rot), f32Arg(theta))
	*c = ropeCache{buf: c.buf, pos: pos.ptr, gen: pos.gen, T: T, half: half, rot: rot, theta: theta, hasTable: true}
	return c.buf.ptr
}

// freeRopeCache releases RoPE's table (it grows back on demand).
func (b *Backend) freeRopeCache() {
	if b.ropeCS.buf.ptr != 0 {
		b.rawFree(b.ropeCS.buf.ptr, b.ropeCS.buf.n)
	}
	b.ropeCS = ropeCache{}
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
	gu := tensor(gateUp, kindF32, op)
	b.swigluForward(op, outTensor(out, kindF32, op), gu)
}

// swigluForward is SwiGLUForward's body, for o and gu unwrapped.
func (b *Backend) swigluForward(op string, o, gu *Tensor) {
	I := lastDim(o)
	T := o.n / max(I, 1)
	if gu.n != 2*o.n {
		panic(&Error{Op: op, Err: fmt.Errorf("gate_up %v for out %v", gu.shape, o.shape)})
	}
	if I%4 == 0 {
		b.launch(op, "swiglu_fwd_v4", swigluGrid(T, I/4), 256, 0, ptrArg(o.ptr), ptrArg(gu.ptr), intArg(T), intArg(I))
		return
	}
	b.launch(op, "swiglu_fwd", swigluGrid(T, I), 256, 0, ptrArg(o.ptr), ptrArg(gu.ptr), intArg(T), intArg(I))
}

func (b *Backend) SwiGLUBackward(dgateUp, dout, gateUp finetune.Tensor) {
	const op = "SwiGLUBackward"
	defer b.enter(op)()
	b.swigluBackward(op, dgateUp, tensor(dout, kindF32, op), tensor(gateUp, kindF32, op))
}

// swigluBackward is SwiGLUBackward's body, for do and gu unwrapped.
func (b *Backend) swigluBackward(op string, dgateUp finetune.Tensor, do, gu *Tensor) {
	dgu := unwrap(dgateUp, kindF32, op) // last: see lazy zeroing (device.go)
	I := lastDim(do)
	T := do.n / max(I, 1)
	if gu.n != 2*do.n || dgu.n != gu.n {
		panic(&Error{Op: op, Err: fmt.Errorf("dgate_up %v, gate_up %v for dout %v", dgu.shape, gu.shape, do.shape)})
	}
	acc := boolArg(b.takeZero(dgu) != 0) // every element of dgate_up is written
	if I%4 == 0 {
		b.launch(op, "swiglu_bwd_v4", swigluGrid(T, I/4), 256, 0, ptrArg(dgu.ptr), ptrArg(do.ptr), ptrArg(gu.ptr), intArg(T), intArg(I), acc)
		return
	}
	b.launch(op, "swiglu_bwd", swigluGrid(T, I), 256, 0, ptrArg(dgu.ptr), ptrArg(do.ptr), ptrArg(gu.ptr), intArg(T), intArg(I), acc)
}

func (b *Backend) Add(out, a, bt finetune.Tensor) {
	const op = "Add"
	defer b.enter(op)()
	as, bs := tensor(a, kindF32, op), tensor(bt, kindF32, op)
	o := outTensor(out, kindF32, op)
	b.packStale(o.ptr)
	if as.n != o.n || bs.n != o.n {
		panic(&Error{Op: op, Err: fmt.Errorf("shapes %v + %v into %v", as.shape, bs.shape, o.shape)})
	}
	if o.n%4 == 0 {
		b.launchN(op, "add_f32_v4", int64(o.n/4), ptrArg(o.ptr), ptrArg(as.ptr), ptrArg(bs.ptr), intArg(o.n/4))
		return
	}
	b.launchN(op, "add_f32", int64(o.n), ptrArg(o.ptr), ptrArg(as.ptr), ptrArg(bs.ptr), intArg(o.n))
}
