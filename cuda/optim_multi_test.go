//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/optim"
)

// AdamW8bitMulti over parameters of several sizes (partial last blocks,
// one block, more blocks than another's grid) must give the CPU's
// AdamW8bit bits for each, step after step, also when the table is
// rebuilt for another set of parameters in between, with the warp form
// (v19) and the block form in turn.
func TestAdamW8bitMulti(t *testing.T) {
	sizes := []int{3*256 + 77, 256, 5000, 1, 40 * 256}
	type param struct {
		p      pair
		gs, cs *finetune.Adam8State
	}
	params := make([]param, len(sizes))
	for i, n := range sizes {
		nb := optim.Blocks8bit(n)
		params[i] = param{p: both(gpu, cpu, randn(n, uint64(90+i), 1), n),
			gs: &finetune.Adam8State{M: gpu.AllocBytes(n), V: gpu.AllocBytes(n), AbsmaxM: gpu.Alloc(nb), AbsmaxV: gpu.Alloc(nb)},
			cs: &finetune.Adam8State{M: cpu.AllocBytes(n), V: cpu.AllocBytes(n), AbsmaxM: cpu.Alloc(nb), AbsmaxV: cpu.Alloc(nb)}}
	}
	defer func(v bool) { optimWarp = v }(optimWarp)
	for step := 1; step <= 4; step++ {
		optimWarp = step%2 == 1 // the warp form (v19) and the block form in turn
		hp := finetune.AdamParams{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, Step: step}
		var ps, gs []finetune.Tensor
		var sts []*finetune.Adam8State
		use := params
		if step == 3 {
			use = params[1:4] // another table, then back
		}
		for i, q := range use {
			n := q.p.g.Numel()
			gr := randn(n, uint64(100+10*step+i), 0.1)
			if step == 2 && n > 300 {
				gr[5] = float32(math.Inf(1))
				gr[300] = float32(math.NaN())
			}
			g := both(gpu, cpu, gr, n)
			cpu.AdamW8bit(q.p.c, g.c, q.cs, hp)
			ps, gs, sts = append(ps, q.p.g), append(gs, g.g), append(sts, q.gs)
		}
		gpu.AdamW8bitMulti(ps, gs, sts, hp)
	}
	for i, q := range params {
		name := fmt.Sprintf("param %d (%d values)", i, sizes[i])
		checkBits(t, name+" p", gpu.Download(q.p.g), cpu.Download(q.p.c))
		checkBits(t, name+" m codes", gpu.Download(q.gs.M), cpu.Download(q.cs.M))
		checkBits(t, name+" v codes", gpu.Download(q.gs.V), cpu.Download(q.cs.V))
		checkBits(t, name+" absmax m", gpu.Download(q.gs.AbsmaxM), cpu.Download(q.cs.AbsmaxM))
		checkBits(t, name+" absmax v", gpu.Download(q.gs.AbsmaxV), cpu.Download(q.cs.AbsmaxV))
	}
}
