package finetune

import (
	"fmt"
	"math"
)

// IgnoreIndex marks a target that takes no part in the loss (PyTorch's
// cross_entropy ignore_index, Hugging Face's label for prompt and padding).
const IgnoreIndex = -100

// ceChunk is how many tokens' logits the cross-entropy materialises at a
// time: [ceChunk, V] float32, 8 MB for Phi-3's vocabulary.
const ceChunk = 64

// CrossEntropy computes, chunk by chunk, logits = x . lmHead^T for the
// tokens whose target is not IgnoreIndex, their summed loss
// -log softmax(logits)[target] (log-sum-exp in float64) and, when dx is not
// nil, dx [T,C] += gradScale * (softmax - onehot) . lmHead. It returns the
// loss sum and the number of tokens whose argmax (first maximum, like
// torch.argmax) equals the target. Ignored tokens cost nothing.
func (b *CPUBackend) CrossEntropy(dx, x Tensor, lmHead Weight, targets Tensor, gradScale float32) (lossSum float64, correct int) {
	w := cpuW(lmHead)
	xs, tg := f32(x), i32(targets)
	C, V := w.in, w.out
	var dxs []float32
	if dx != nil {
		dxs = f32(dx)
	}
	var idx []int // tokens with a target
	for t, v := range tg {
		if v == IgnoreIndex {
			continue
		}
		if v < 0 || int(v) >= V {
			panic(fmt.Sprintf("cpu backend: cross-entropy: target %d at token %d is outside the vocabulary [0, %d)", v, t, V))
		}
		idx = append(idx, t)
	}
	xc := make([]float32, min(ceChunk, len(idx))*C)
	logits := make([]float32, min(ceChunk, len(idx))*V)
	var dxc []float32
	if dxs != nil {
		dxc = make([]float32, len(xc))
	}
	losses := make([]float64, ceChunk)
	hits := make([]bool, ceChunk)
	for c0 := 0; c0 < len(idx); c0 += ceChunk {
		chunk := idx[c0:min(c0+ceChunk, len(idx))]
		n := len(chunk)
		for k, t := range chunk { // gather x rows: xc [n,C]
			copy(xc[k*C:(k+1)*C], xs[t*C:(t+1)*C])
		}
		b.matmulWT(logits, xc[:n*C], n, w, 1, false) // logits [n,V]
		b.parallelFor(n, 1, func(k0, k1 int) {
			for k := k0; k < k1; k++ {
				row := logits[k*V : (k+1)*V]
				target := int(tg[chunk[k]])
				m, arg := row[0], 0
				for v, l := range row {
					if l > m {
						m, arg = l, v
					}
				}
				var sum float64
				for _, l := range row {
					sum += math.Exp(float64(l - m))
				}
				lse := float64(m) + math.Log(sum)
				losses[k] = lse - float64(row[target])
				hits[k] = arg == target
				if dxs == nil {
					continue
				}
				// row becomes dlogits = gradScale * (softmax - onehot)
				for v, l := range row {
					row[v] = float32(math.Exp(float64(l)-lse)) * gradScale
				}
				row[target] -= gradScale
			}
		})
		for k := 0; k < n; k++ {
			lossSum += losses[k]
			if hits[k] {
				correct++
			}
		}
		if dxs == nil {
			continue
		}
		clear(dxc)
		b.matmulW(dxc[:n*C], logits[:n*V], n, w, 1) // dxc [n,C] = dlogits . W
		for k, t := range chunk {
			d := dxs[t*C : (t+1)*C]
			for j, v := range dxc[k*C : (k+1)*C] {
				d[j] += v
			}
		}
	}
	return lossSum, correct
}
