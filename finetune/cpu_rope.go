package finetune

import "math"

// RoPE, Hugging Face's rotate_half convention (Phi3RotaryEmbedding and
// apply_rotary_pos_emb): for the first rotaryDim features of a head, split
// in halves x1 = x[:n], x2 = x[n:2n] (n = rotaryDim/2),
//
//	out1 = x1*cos - x2*sin,  out2 = x2*cos + x1*sin,
//
// with angle = pos * inv_freq[i], inv_freq[i] = 1 / theta^(2i/rotaryDim).
// The rest of the head passes through.

// ropeTable returns cos and sin [T, rotaryDim/2], computed in float32 the
// way transformers does: inv_freq = 1.0 / (theta ** (arange(0, dim, 2) /
// dim)) in float32, freqs = float(pos) * inv_freq in float32, then cos/sin
// of that float32 angle.
func ropeTable(pos []int32, rotaryDim int, theta float32) (cos, sin []float32) {
	half := rotaryDim / 2
	inv := make([]float32, half)
	for i := range inv {
		e := float32(2*i) / float32(rotaryDim)
		inv[i] = 1 / float32(math.Pow(float64(theta), float64(e)))
	}
	cos = make([]float32, len(pos)*half)
	sin = make([]float32, len(pos)*half)
	for t, p := range pos {
		for i, f := range inv {
			a := float64(float32(p) * f)
			cos[t*half+i] = float32(math.Cos(a))
			sin[t*half+i] = float32(math.Sin(a))
		}
	}
	return cos, sin
}

// rope rotates the q and k heads of qkv [T,(H+2K)*D] in place; inverse
// applies the transposed rotation (the backward).
func rope(qkv []float32, pos []int32, nHead, nKV, headDim, rotaryDim int, theta float32, inverse bool) {
	cos, sin := ropeTable(pos, rotaryDim, theta)
	half := rotaryDim / 2
	width := (nHead + 2*nKV) * headDim
	for t := range pos {
		c := cos[t*half : (t+1)*half]
		s := sin[t*half : (t+1)*half]
		row := qkv[t*width : (t+1)*width]
		for h := 0; h < nHead+nKV; h++ { // q heads, then k heads
			x := row[h*headDim : h*headDim+rotaryDim]
			x1, x2 := x[:half], x[half:]
			for i := range x1 {
				a, b := x1[i], x2[i]
				if inverse {
					// transpose of [[c, -s], [s, c]]
					x1[i] = a*c[i] + b*s[i]
					x2[i] = b*c[i] - a*s[i]
				} else {
					x1[i] = a*c[i] - b*s[i]
					x2[i] = b*c[i] + a*s[i]
				}
			}
		}
	}
}

// RoPEForward rotates q and k of a fused qkv [T,(H+2K)*D] in place. pos int32 [T].
func (b *CPUBackend) RoPEForward(qkv, pos Tensor, nHead, nKV, headDim, rotaryDim int, theta float32) {
	rope(f32(qkv), i32(pos), nHead, nKV, headDim, rotaryDim, theta, false)
}

// RoPEBackward rotates the q and k parts of dqkv back, in place.
func (b *CPUBackend) RoPEBackward(dqkv, pos Tensor, nHead, nKV, headDim, rotaryDim int, theta float32) {
	rope(f32(dqkv), i32(pos), nHead, nKV, headDim, rotaryDim, theta, true)
}
