//go:build cuda

package cuda

// Gradient clipping without a host round trip. The trainer's
// clip_grad_norm_ (a SumSquares per LoRA matrix, each a synchronisation,
// then a Scale per matrix) becomes three launches over a table of the
// gradients; the norm stays on the device until someone asks for it.

import (
	"fmt"
	"slices"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// gradTable is the device copy of a list of gradients: pointers, sizes,
// SumSquares' block count and first partial for each, then room for the
// partial sums, the per-tensor sums, the norm and the clip coefficient.
type gradTable struct {
	key       []int64 // each gradient's address and size
	mem       cu.DevicePtr
	bytes     int64
	maxBlocks int   // the largest block count (grid x of sumsq_multi)
	maxN      int64 // the largest tensor
	// offsets into mem
	ptrs, ns, nblk, poff, partials, tsum, norm, coef cu.DevicePtr
}

// sumSquaresBlocks is SumSquares' grid for n values.
func sumSquaresBlocks(n int) int64 { return min((int64(n)+255)/256, 1024) }

// gradTableFor returns the table of grads, building it when they changed.
func (b *Backend) gradTableFor(op string, grads []*Tensor) *gradTable {
	key := make([]int64, 0, 2*len(grads))
	for _, g := range grads {
		key = append(key, int64(g.ptr), int64(g.n))
	}
	if t := b.grads; t != nil && slices.Equal(t.key, key) {
		return t
	}
	if t := b.grads; t != nil {
		b.rawFree(t.mem, t.bytes)
		b.grads = nil
	}
	k := int64(len(grads))
	host := make([]int64, 4*k) // ptrs, ns, nblk, poff
	var total int64
	t := &gradTable{key: key}
	for i, g := range grads {
		nb := sumSquaresBlocks(g.n)
		host[i] = int64(g.ptr)
		host[k+int64(i)] = int64(g.n)
		host[2*k+int64(i)] = nb
		host[3*k+int64(i)] = total
		total += nb
		t.maxBlocks = max(t.maxBlocks, int(nb))
		t.maxN = max(t.maxN, int64(g.n))
	}
	t.bytes = 8*4*k + 8*max(total, 1) + 8*k + 8 + 8
	p, err := b.rawAlloc(t.bytes, "the gradient table")
	check(op, err)
	t.mem = p
	t.ptrs, t.ns, t.nblk, t.poff = p, p+cu.DevicePtr(8*k), p+cu.DevicePtr(16*k), p+cu.DevicePtr(24*k)
	t.partials = p + cu.DevicePtr(32*k)
	t.tsum = t.partials + cu.DevicePtr(8*max(total, 1))
	t.norm = t.tsum + cu.DevicePtr(8*k)
	t.coef = t.norm + 8
	b.upload(op, p, unsafe.Pointer(&host[0]), 8*4*k)
	b.grads = t
	return t
}

// ClipGradNorm is torch.nn.utils.clip_grad_norm_(grads, maxNorm) on the
// device: the total norm of the gradients (float64, summed exactly as the
// host path sums SumSquares' results) and, when it exceeds maxNorm, every
// gradient scaled by maxNorm / (norm + 1e-6) (optim.ClipScale's float32
// coefficient). maxNorm <= 0 only measures. It does not synchronise;
// GradNorm returns the norm.
func (b *Backend) ClipGradNorm(grads []finetune.Tensor, maxNorm float64) {
	const op = "ClipGradNorm"
	defer b.enter(op)()
	gs := make([]*Tensor, len(grads))
	for k, g := range grads {
		gs[k] = tensor(g, kindF32, op)
	}
	if len(gs) == 0 {
		return
	}
	t := b.gradTableFor(op, gs)
	k := len(gs)
	sumsq, sgrid := "sumsq_multi", [3]int{t.maxBlocks, k, 1}
	scale, cgrid := "scale_multi", [3]int{int(min((t.maxN+255)/256, 1024)), k, 1}
	if optimWarp {
		sumsq, sgrid = "sumsq_multi_w", [3]int{(t.maxBlocks + 7) / 8, k, 1}
		scale, cgrid = "scale_multi_w", [3]int{int(min((t.maxN+2047)/2048, 1024)), k, 1}
	}
	b.launch(op, sumsq, sgrid, 256, 0, ptrArg(t.ptrs), ptrArg(t.ns), ptrArg(t.nblk), ptrArg(t.poff), ptrArg(t.partials))
	b.launch(op, "clip_finish", grid1(1), 256, 0, ptrArg(t.partials), ptrArg(t.nblk), ptrArg(t.poff), intArg(k),
		ptrArg(t.tsum), f64Arg(maxNorm), ptrArg(t.norm), ptrArg(t.coef))
	b.launch(op, scale, cgrid, 256, 0, ptrArg(t.ptrs), ptrArg(t.ns), ptrArg(t.coef))
}

// optimWarp says whether ClipGradNorm and AdamW8bitMulti launch the warp
// forms of their kernels (v19, kernels/optim.cu: a warp does a 256-thread
// block's work, eight a block, no barriers; the same bits);
// OLLAMA_TUNE_CUDA_REFERENCE=optim-warp keeps the block forms (the A/B).
var optimWarp = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "optim-warp")

// GradNorm returns the norm the last ClipGradNorm computed (it
// synchronises).
func (b *Backend) GradNorm() (norm float64, err error) {
	defer Recover(&err)
	defer b.enter("GradNorm")()
	if b.grads == nil {
		return 0, fmt.Errorf("cuda backend: GradNorm before ClipGradNorm")
	}
	b.download("GradNorm", unsafe.Pointer(&norm), b.grads.norm, 8)
	return norm, nil
}
