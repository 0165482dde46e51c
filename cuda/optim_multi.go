//go:build cuda

package cuda

// AdamW8bitMulti: the 8-bit AdamW of every LoRA matrix in one launch
// (256 launches a step for Phi-3-mini's adapter before) over a device
// table of the parameters, built once and rebuilt only when they change.

import (
	"fmt"
	"slices"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/optim"
)

var _ finetune.MultiAdamW8bit = (*Backend)(nil)

// adam8Table is the device copy of a list of parameters with 8-bit state:
// k addresses each of p, g, m codes, v codes, m absmax, v absmax, then k
// sizes (kernels/optim.cu adamw8bit_multi).
type adam8Table struct {
	key       []int64
	mem       cu.DevicePtr
	bytes     int64
	maxBlocks int
}

// adam8TableFor returns the table of the given tensors (rows p, g, mc, vc,
// am, av for each parameter), building it when they changed.
func (b *Backend) adam8TableFor(op string, rows [][6]*Tensor) *adam8Table {
	k := len(rows)
	host := make([]int64, 7*k)
	maxBlocks := 0
	for i, r := range rows {
		for j, t := range r {
			host[j*k+i] = int64(t.ptr)
		}
		host[6*k+i] = int64(r[0].n)
		maxBlocks = max(maxBlocks, int(optim.Blocks8bit(r[0].n)))
	}
	if t := b.adam8; t != nil && slices.Equal(t.key, host) {
		return t
	}
	if t := b.adam8; t != nil {
		b.rawFree(t.mem, t.bytes)
		b.adam8 = nil
	}
	t := &adam8Table{key: host, bytes: 8 * int64(len(host)), maxBlocks: maxBlocks}
	p, err := b.rawAlloc(t.bytes, "the 8-bit optimizer's table")
	check(op, err)
	t.mem = p
	b.upload(op, p, unsafe.Pointer(&host[0]), t.bytes)
	b.adam8 = t
	return t
}

// AdamW8bitMulti is AdamW8bit on each parameter, in one launch: block x of
// parameter y runs adamw8bit's block x, so the results are the same bits
// (under optimWarp warp w of block x runs block 8x + w).
func (b *Backend) AdamW8bitMulti(ps, gs []finetune.Tensor, sts []*finetune.Adam8State, hp finetune.AdamParams) {
	const op = "AdamW8bitMulti"
	defer b.enter(op)()
	if len(gs) != len(ps) || len(sts) != len(ps) {
		panic(&Error{Op: op, Err: fmt.Errorf("%d parameters, %d gradients, %d states", len(ps), len(gs), len(sts))})
	}
	checkStep(op, hp)
	if len(ps) == 0 {
		return
	}
	rows := make([][6]*Tensor, len(ps))
	for i := range ps {
		rows[i] = adam8Tensors(op, ps[i], gs[i], sts[i], hp)
		b.packStale(rows[i][0].ptr)
	}
	t := b.adam8TableFor(op, rows)
	k := newBnbConsts(hp)
	kernel, grid := "adamw8bit_multi", [3]int{t.maxBlocks, len(ps), 1}
	if optimWarp {
		kernel, grid = "adamw8bit_multi_w", [3]int{(t.maxBlocks + 7) / 8, len(ps), 1} // v19: a warp a block (the same bits)
	}
	b.launch(op, kernel, grid, 256, 0, ptrArg(t.mem), intArg(len(ps)),
		ptrArg(b.smap), ptrArg(b.umap), f32Arg(k.b1), f32Arg(k.b2), f32Arg(k.w1), f32Arg(k.w2),
		f32Arg(k.stepSize), f32Arg(k.epsC2), boolArg(k.decay), f32Arg(k.decayFactor))
}
