package finetune

import "fmt"

// ---------------------------------------------------------------------------
// Embedding

// EmbeddingForward: out[t,:] = table[ids[t],:]. out [T,C], ids int32 [T].
func (b *CPUBackend) EmbeddingForward(out, ids Tensor, table Weight) {
	o, id, w := f32(out), i32(ids), cpuW(table)
	C := w.in
	var scratch []float32
	if w.dense == nil {
		scratch = make([]float32, C)
	}
	for t, v := range id {
		if v < 0 || int(v) >= w.out {
			panic(fmt.Sprintf("cpu backend: embedding: token id %d at %d is outside the vocabulary [0, %d)", v, t, w.out))
		}
		copy(o[t*C:(t+1)*C], w.rows(scratch, int(v), 1))
	}
}

// ---------------------------------------------------------------------------
// Linear with an optional LoRA adapter

// loraDims returns the adapter's rank, or 0 when l has no adapter.
func loraDims(l *Linear) int {
	if l.LoRA == nil {
		return 0
	}
	return l.LoRA.A.Shape()[0]
}

// dropoutInput returns dropout(x) for x [T,in]: element (t, j) is kept iff
// DropoutKeep(seed, t*in+j, p) and kept values are scaled by 1/(1-p). With
// p == 0 it returns x itself.
func dropoutInput(x []float32, p float32, seed uint64) []float32 {
	if p == 0 {
		return x
	}
	keepScale := 1 / (1 - p)
	xd := make([]float32, len(x))
	for k, v := range x {
		if DropoutKeep(seed, uint64(k), p) {
			xd[k] = v * keepScale
		}
	}
	return xd
}

// LinearForward: out [T,out] = x [T,in] . W^T + scale * (dropout(x) . A^T) . B^T,
// saving h [T,r] = dropout(x) . A^T for backward.
func (b *CPUBackend) LinearForward(out, x Tensor, l *Linear, h Tensor, seed uint64) {
	w := cpuW(l.W)
	o, xs := f32(out), f32(x)
	T := len(xs) / w.in
	b.matmulWT(o, xs, T, w, 1, false)
	if l.LoRA == nil {
		return
	}
	b.LoRAHForward(h, x, l, seed)
	b.matmulWT(o, f32(h), T, denseView(f32(l.LoRA.B), w.out, loraDims(l)), l.LoRA.Scale, true)
}

// LoRAHForward: h [T,r] = dropout(x) . A^T, LinearForward's saved h
// without the base product (finetune.LoRAHForwarder).
func (b *CPUBackend) LoRAHForward(h, x Tensor, l *Linear, seed uint64) {
	if l.LoRA == nil {
		panic(fmt.Sprintf("cpu backend: LoRAHForward: %s has no adapter", l.Name))
	}
	in, r := l.W.In(), loraDims(l)
	xs := f32(x)
	xd := dropoutInput(xs, l.LoRA.Dropout, seed)
	b.matmulWT(f32(h), xd, len(xs)/in, denseView(f32(l.LoRA.A), r, in), 1, false)
}

// LinearBackward: dx [T,in] += dout . W + scale * ((dout . B) . A) * mask;
// GradB [out,r] += scale * dout^T . h; GradA [r,in] += scale * (dout . B)^T . dropout(x).
func (b *CPUBackend) LinearBackward(dx, dout, x Tensor, l *Linear, h Tensor, seed uint64) {
	w := cpuW(l.W)
	do := f32(dout)
	T := len(do) / w.out
	var dxs []float32
	if dx != nil {
		dxs = f32(dx)
		b.matmulW(dxs, do, T, w, 1)
	}
	if l.LoRA == nil {
		return
	}
	lo, r := l.LoRA, loraDims(l)
	xs, hs := f32(x), f32(h)
	xd := dropoutInput(xs, lo.Dropout, seed)
	// GradB [out,r] += scale * dout^T . h
	b.matmulTN(f32(lo.GradB), do, hs, T, w.out, r, lo.Scale)
	// g [T,r] = dout . B
	g := make([]float32, T*r)
	b.matmulW(g, do, T, denseView(f32(lo.B), w.out, r), 1)
	// GradA [r,in] += scale * g^T . dropout(x)
	b.matmulTN(f32(lo.GradA), g, xd, T, r, w.in, lo.Scale)
	if dxs == nil {
		return
	}
	A := denseView(f32(lo.A), r, w.in)
	if lo.Dropout == 0 {
		b.matmulW(dxs, g, T, A, lo.Scale)
		return
	}
	// dropout's backward: the same mask and 1/(1-p) scale.
	tmp := make([]float32, T*w.in)
	b.matmulW(tmp, g, T, A, lo.Scale)
	keepScale := 1 / (1 - lo.Dropout)
	for k, v := range tmp {
		if DropoutKeep(seed, uint64(k), lo.Dropout) {
			dxs[k] += v * keepScale
		}
	}
}

// Logits: out [T,V] = x [T,C] . lmHead^T in float32.
func (b *CPUBackend) Logits(out, x Tensor, lmHead Weight) {
	w := cpuW(lmHead)
	xs := f32(x)
	b.matmulWT(f32(out), xs, len(xs)/w.in, w, 1, false)
}
