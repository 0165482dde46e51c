package finetune

import (
	"math"
)

// Causal grouped-query attention over packed rows, flash-attention style:
// forward saves each query's log-sum-exp, backward recomputes the
// probabilities from it instead of storing the [S,S] matrices.
//
// Query head h reads KV head h / (H/K). Query i of a row may see key j iff
//
//	max(i - pos[i], i - window + 1 (window > 0)) <= j <= i,
//
// i.e. causal, within the current example (position ids restart at 0 for
// every packed example) and inside the sliding window.

// attnRange returns the first and last key query i may attend to, as
// indices within its row.
func attnRange(i int, pos int32, window int) (lo, hi int) {
	lo = max(0, i-int(pos))
	if window > 0 {
		lo = max(lo, i-window+1)
	}
	return lo, i
}

// attend computes one query's output o [D] over keys lo..hi (key j at
// kb[j*stride+koff:], value j at vb[j*stride+voff:]) and returns the
// log-sum-exp of its scaled scores. s is scratch for hi-lo+1 scores, acc
// scratch for D float64 sums (the softmax-weighted sum of values is
// accumulated in float64 and rounded once).
func attend(o, q, kb []float32, koff int, vb []float32, voff, stride, lo, hi int, scale float32, s []float32, acc []float64) float32 {
	D := len(q)
	m := float32(math.Inf(-1))
	for j := lo; j <= hi; j++ {
		k := kb[j*stride+koff : j*stride+koff+D]
		var dot float32
		for d, qv := range q {
			dot += qv * k[d]
		}
		sc := dot * scale
		s[j-lo] = sc
		m = max(m, sc)
	}
	clear(acc)
	var sum float64
	for j := lo; j <= hi; j++ {
		e := math.Exp(float64(s[j-lo] - m))
		sum += e
		v := vb[j*stride+voff : j*stride+voff+D]
		for d, vv := range v {
			acc[d] += e * float64(vv)
		}
	}
	for d := range o {
		o[d] = float32(acc[d] / sum)
	}
	return m + float32(math.Log(sum))
}

// AttentionForward: out [T,H*D], lse [H,T] from qkv [T,(H+2K)*D] after RoPE,
// for B rows of S tokens with position ids pos int32 [T].
func (b *CPUBackend) AttentionForward(out, lse, qkv, pos Tensor, B, S, nHead, nKV, headDim, window int) {
	o, ls, x, ps := f32(out), f32(lse), f32(qkv), i32(pos)
	D, H, K := headDim, nHead, nKV
	T := B * S
	width := (H + 2*K) * D
	scale := float32(1 / math.Sqrt(float64(D)))
	group := H / K
	// One task per (row, query head).
	b.parallelFor(B*H, 1, func(lo0, hi0 int) {
		s := make([]float32, S)
		acc := make([]float64, D)
		for task := lo0; task < hi0; task++ {
			row, h := task/H, task%H
			kvh := h / group
			base := row * S * width // the row's first token
			koff, voff := (H+kvh)*D, (H+K+kvh)*D
			for i := 0; i < S; i++ {
				t := row*S + i
				lo, hi := attnRange(i, ps[t], window)
				q := x[t*width+h*D : t*width+h*D+D]
				ls[h*T+t] = attend(o[t*H*D+h*D:t*H*D+h*D+D], q, x[base:], koff, x[base:], voff, width, lo, hi, scale, s, acc)
			}
		}
	})
}

// AttentionBackward: dqkv [T,(H+2K)*D] += gradient of out w.r.t. qkv.
// With P the probabilities (recomputed from lse):
//
//	dP = dO V^T, dS = P * (dP - rowsum(dO*O)),
//	dQ = dS K * scale, dK = dS^T Q * scale, dV = P^T dO.
func (b *CPUBackend) AttentionBackward(dqkv, dout, out, lse, qkv, pos Tensor, B, S, nHead, nKV, headDim, window int) {
	dx, do, o, ls, x, ps := f32(dqkv), f32(dout), f32(out), f32(lse), f32(qkv), i32(pos)
	D, H, K := headDim, nHead, nKV
	T := B * S
	width := (H + 2*K) * D
	scale := float32(1 / math.Sqrt(float64(D)))
	group := H / K
	// One task per (row, KV head): the query heads of a group all write
	// into the same dK and dV, so they share a goroutine.
	b.parallelFor(B*K, 1, func(lo0, hi0 int) {
		dq := make([]float32, D)
		for task := lo0; task < hi0; task++ {
			row, kvh := task/K, task%K
			koff, voff := (H+kvh)*D, (H+K+kvh)*D
			for h := kvh * group; h < (kvh+1)*group; h++ {
				for i := 0; i < S; i++ {
					t := row*S + i
					lo, hi := attnRange(i, ps[t], window)
					q := x[t*width+h*D : t*width+h*D+D]
					dOi := do[t*H*D+h*D : t*H*D+h*D+D]
					oi := o[t*H*D+h*D : t*H*D+h*D+D]
					var di float32 // rowsum(dO * O)
					for d, v := range dOi {
						di += v * oi[d]
					}
					l := ls[h*T+t]
					clear(dq)
					for j := lo; j <= hi; j++ {
						tj := row*S + j
						k := x[tj*width+koff : tj*width+koff+D]
						v := x[tj*width+voff : tj*width+voff+D]
						var dot, dp float32
						for d, qv := range q {
							dot += qv * k[d]
							dp += dOi[d] * v[d]
						}
						pj := float32(math.Exp(float64(dot*scale - l)))
						ds := pj * (dp - di) * scale
						dk := dx[tj*width+koff : tj*width+koff+D]
						dv := dx[tj*width+voff : tj*width+voff+D]
						for d := range dq {
							dq[d] += ds * k[d]
							dk[d] += ds * q[d]
							dv[d] += pj * dOi[d]
						}
					}
					dqi := dx[t*width+h*D : t*width+h*D+D]
					for d, v := range dq {
						dqi[d] += v
					}
				}
			}
		}
	})
}

// AttentionCached writes the k and v of qkv [T,(H+2K)*D] (after RoPE) into
// kCache, vCache [maxSeq,K*D] at positions start..start+T-1 and computes
// out [T,H*D] causally over the cache's first start+T positions.
func (b *CPUBackend) AttentionCached(out, qkv, kCache, vCache Tensor, start, nHead, nKV, headDim, window int) {
	o, x, kc, vc := f32(out), f32(qkv), f32(kCache), f32(vCache)
	D, H, K := headDim, nHead, nKV
	width := (H + 2*K) * D
	T := len(x) / width
	for t := 0; t < T; t++ {
		copy(kc[(start+t)*K*D:(start+t+1)*K*D], x[t*width+H*D:t*width+(H+K)*D])
		copy(vc[(start+t)*K*D:(start+t+1)*K*D], x[t*width+(H+K)*D:(t+1)*width])
	}
	scale := float32(1 / math.Sqrt(float64(D)))
	group := H / K
	b.parallelFor(H, 1, func(h0, h1 int) {
		s := make([]float32, start+T)
		acc := make([]float64, D)
		for h := h0; h < h1; h++ {
			kvh := h / group
			for t := 0; t < T; t++ {
				i := start + t
				lo := 0
				if window > 0 {
					lo = max(lo, i-window+1)
				}
				q := x[t*width+h*D : t*width+h*D+D]
				attend(o[t*H*D+h*D:t*H*D+h*D+D], q, kc, kvh*D, vc, kvh*D, K*D, lo, i, scale, s, acc)
			}
		}
	})
}
