//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"testing"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// Under BF16 compute the short rows' attention runs on the tensor cores
// with bfloat16 operands (attention_tc.cu). TestAttentionBF16 checks those
// kernels against attnBF16Ref, which emulates exactly their rounding
// points in float64 (so only the order of float32 sums and the odd
// bfloat16 tie differ: a missed or extra rounding would be ~1e-3 off), and
// against the float32 CPU reference at bfloat16's precision.
func TestAttentionBF16(t *testing.T) {
	const tolEmu, tolCPU = 5e-4, 2e-2
	for _, c := range []struct{ B, S, H, K, D, window int }{
		{4, 64, 8, 8, 96, 0}, // Phi-3-mini's head shape, a full 64-token row
		{3, 37, 6, 2, 24, 0},
		{2, 29, 4, 4, 16, 5},
		{3, 33, 4, 2, 96, 9},
		{2, 64, 4, 2, 128, 0}, // the largest head: dynamic shared memory above 48 KiB
		{2, 1, 2, 1, 8, 0},
		{2, 64, 6, 2, 100, 17}, // grouped heads, a window, a head dimension not a multiple of 16
		{2, 40, 4, 2, 30, 3},   // a head dimension not a multiple of 4: 4-byte loads
		{2, 48, 4, 4, 40, 0},   // three column tiles a warp half (one past the head read, unused)
	} {
		for _, layout := range []string{"packed", "wrapped", "mid-start"} {
			name := fmt.Sprintf("%s B%d S%d H%d K%d D%d w%d", layout, c.B, c.S, c.H, c.K, c.D, c.window)
			t.Run(name, func(t *testing.T) {
				testAttentionBF16(t, layout, c.B, c.S, c.H, c.K, c.D, c.window, tolEmu, tolCPU)
			})
		}
	}
}

func testAttentionBF16(t *testing.T, layout string, B, S, H, K, D, window int, tolEmu, tolCPU float64) {
	g := gpuB16
	T, width := B*S, (H+2*K)*D
	posData := attnPos(layout, B, S)
	qkvData, doutData, dqkvData := randn(T*width, 11, 1), randn(T*H*D, 12, 1), randn(T*width, 13, 1)
	pos := bothInt(g, cpu, posData)
	qkv := both(g, cpu, qkvData, T, width)
	out := both(g, cpu, nanSlice(T*H*D), T, H*D)
	lse := both(g, cpu, nanSlice(H*T), H, T)
	defer func() {
		for _, p := range []pair{pos, qkv, out, lse} {
			g.Free(p.g)
			cpu.Free(p.c)
		}
	}()
	g.AttentionForward(out.g, lse.g, qkv.g, pos.g, B, S, H, K, D, window)
	cpu.AttentionForward(out.c, lse.c, qkv.c, pos.c, B, S, H, K, D, window)
	ref := attnBF16Ref{qkv: qkvData, pos: posData, B: B, S: S, H: H, K: K, D: D, window: window}
	outE, lseE := ref.forward()
	outG, lseG := g.Download(out.g), g.Download(lse.g)
	checkRel(t, "out vs emulation", outG, outE, tolEmu)
	checkRel(t, "lse vs emulation", lseG, lseE, 1e-5)
	checkRel(t, "out vs float32 CPU", outG, cpu.Download(out.c), tolCPU)

	// The backward reads the forward's out and lse: the emulation takes the
	// GPU's, the CPU its own.
	for _, zero := range []bool{false, true} {
		dout := both(g, cpu, doutData, T, H*D)
		dqkv := both(g, cpu, dqkvData, T, width)
		init := dqkvData
		if zero { // a pending Zero (the model's case): the kernel overwrites
			g.Zero(dqkv.g)
			cpu.Zero(dqkv.c)
			init = make([]float32, len(dqkvData))
		}
		g.AttentionBackward(dqkv.g, dout.g, out.g, lse.g, qkv.g, pos.g, B, S, H, K, D, window)
		cpu.AttentionBackward(dqkv.c, dout.c, out.c, lse.c, qkv.c, pos.c, B, S, H, K, D, window)
		dqkvE := ref.backward(doutData, outG, lseG, init)
		dqkvG := g.Download(dqkv.g)
		// The gradient alone (less the initial values) is what the
		// tolerance is about.
		checkRel(t, fmt.Sprintf("dqkv vs emulation (into a zero %v)", zero), sub(dqkvG, init), sub(dqkvE, init), tolEmu)
		checkRel(t, fmt.Sprintf("dqkv vs float32 CPU (into a zero %v)", zero), sub(dqkvG, init), sub(cpu.Download(dqkv.c), init), tolCPU)
		for _, p := range []pair{dout, dqkv} {
			g.Free(p.g)
			cpu.Free(p.c)
		}
	}
}

func sub(a, b []float32) []float32 {
	d := make([]float32, len(a))
	for k := range a {
		d[k] = a[k] - b[k]
	}
	return d
}

// attnBF16Ref is the tensor-core kernels' arithmetic in float64: products
// of bfloat16-rounded operands, the softmax, lse, di and dS unrounded
// (float64 here, float32 there).
type attnBF16Ref struct {
	qkv                   []float32
	pos                   []int32
	B, S, H, K, D, window int
}

func bf(x float64) float64 { return float64(finetune.RoundBF16(float32(x))) }

func (r attnBF16Ref) width() int { return (r.H + 2*r.K) * r.D }

// visible says whether query i of row b sees key j.
func (r attnBF16Ref) visible(b, i, j int) bool {
	lo, hi := attnRange(i, r.pos[b*r.S+i], r.window)
	return j >= lo && j <= hi
}

func attnRange(i int, pos int32, window int) (lo, hi int) {
	lo = max(0, i-int(pos))
	if window > 0 {
		lo = max(lo, i-window+1)
	}
	return lo, i
}

// at returns bf16(x) of row t's column off+d.
func (r attnBF16Ref) at(x []float32, stride, t, off, d int) float64 {
	return bf(float64(x[t*stride+off+d]))
}

// scores returns the scaled scores of query i (head h) of row b over keys
// 0..S-1 (NaN where not visible).
func (r attnBF16Ref) scores(b, h, i int) []float64 {
	w, D := r.width(), r.D
	kvh := h / (r.H / r.K)
	scale := float64(attnScale(D))
	s := make([]float64, r.S)
	for j := range s {
		if !r.visible(b, i, j) {
			s[j] = math.NaN()
			continue
		}
		var dot float64
		for d := range D {
			dot += r.at(r.qkv, w, b*r.S+i, h*D, d) * r.at(r.qkv, w, b*r.S+j, (r.H+kvh)*D, d)
		}
		s[j] = float64(float32(dot)) * scale
	}
	return s
}

func (r attnBF16Ref) forward() (out, lse []float32) {
	T, w, D, H := r.B*r.S, r.width(), r.D, r.H
	out, lse = make([]float32, T*H*D), make([]float32, H*T)
	for b := range r.B {
		for h := range H {
			kvh := h / (H / r.K)
			for i := range r.S {
				s := r.scores(b, h, i)
				m := math.Inf(-1)
				for _, v := range s {
					if !math.IsNaN(v) {
						m = math.Max(m, v)
					}
				}
				var sum float64
				for _, v := range s {
					if !math.IsNaN(v) {
						sum += math.Exp(v - m)
					}
				}
				lse[h*T+b*r.S+i] = float32(m + math.Log(sum))
				for d := range D {
					var o float64
					for j, v := range s {
						if !math.IsNaN(v) {
							o += bf(math.Exp(v-m)/sum) * r.at(r.qkv, w, b*r.S+j, (H+r.K+kvh)*D, d)
						}
					}
					out[(b*r.S+i)*H*D+h*D+d] = float32(o)
				}
			}
		}
	}
	return out, lse
}

// backward returns init + the gradient of qkv, from the forward's out and lse.
func (r attnBF16Ref) backward(dout, out, lse, init []float32) []float32 {
	T, w, D, H, K := r.B*r.S, r.width(), r.D, r.H, r.K
	grad := make([]float64, len(init))
	for b := range r.B {
		for h := range H {
			kvh := h / (H / K)
			for i := range r.S {
				ti := b*r.S + i
				var di float64
				for d := range D {
					di += float64(dout[ti*H*D+h*D+d]) * float64(out[ti*H*D+h*D+d])
				}
				s := r.scores(b, h, i)
				for j, v := range s {
					if math.IsNaN(v) {
						continue
					}
					tj := b*r.S + j
					p := math.Exp(v - float64(lse[h*T+ti]))
					var dp float64
					for d := range D {
						dp += r.at(dout, H*D, ti, h*D, d) * r.at(r.qkv, w, tj, (H+K+kvh)*D, d)
					}
					ds := p * (dp - di) * float64(attnScale(D))
					bp, bds := bf(p), bf(ds)
					for d := range D {
						grad[tj*w+(H+K+kvh)*D+d] += bp * r.at(dout, H*D, ti, h*D, d)
						grad[tj*w+(H+kvh)*D+d] += bds * r.at(r.qkv, w, ti, h*D, d)
						grad[ti*w+h*D+d] += bds * r.at(r.qkv, w, tj, (H+kvh)*D, d)
					}
				}
			}
		}
	}
	res := make([]float32, len(init))
	for k := range res {
		res[k] = float32(float64(init[k]) + grad[k])
	}
	return res
}

// TestAttentionRoPE: with RoPE fused into the tensor-core kernels
// (finetune.RoPEAttentioner), attention's outputs and the gradient w.r.t.
// the unrotated qkv are bit for bit those of RoPEForward + AttentionForward
// and AttentionBackward + RoPEBackward; the fused ops leave qkv unrotated.
func TestAttentionRoPE(t *testing.T) {
	g := gpuB16
	for _, c := range []struct{ B, S, H, D, rot, window int }{
		{4, 64, 8, 96, 96, 0}, // Phi-3-mini's heads: RoPE over the whole head (the _rp96 kernels)
		{2, 40, 4, 96, 96, 5}, // the same heads in shorter rows, a window (_rp96)
		{3, 37, 4, 32, 16, 0}, // partial rotary
		{2, 64, 4, 100, 100, 9},
		{2, 29, 2, 30, 30, 0}, // half 15: the scalar path
		{2, 50, 2, 128, 64, 0},
		{2, 45, 2, 32, 32, 7}, // the _rp kernels (abSpec) with a window and a partial tile
	} {
		name := fmt.Sprintf("B%d S%d H%d D%d rot%d w%d", c.B, c.S, c.H, c.D, c.rot, c.window)
		t.Run(name, func(t *testing.T) {
			B, S, H, D := c.B, c.S, c.H, c.D
			if !g.RoPEAttention(B, S, H, H, D, c.rot) {
				t.Fatal("RoPEAttention is false")
			}
			T, width := B*S, 3*H*D
			const theta = 10000
			up := func(data []float32, shape ...int) finetune.Tensor {
				x := g.Alloc(shape...)
				g.Upload(x, data)
				return x
			}
			qkvData := randn(T*width, 21, 1)
			pos := g.AllocInt32(T)
			g.UploadInt32(pos, attnPos("packed", B, S))
			raw, rot := up(qkvData, T, width), up(qkvData, T, width)
			out1, lse1 := up(nanSlice(T*H*D), T, H*D), up(nanSlice(H*T), H, T)
			out2, lse2 := up(nanSlice(T*H*D), T, H*D), up(nanSlice(H*T), H, T)
			dout := up(randn(T*H*D, 22, 1), T, H*D)
			dq1, dq2 := g.Alloc(T, width), g.Alloc(T, width)
			defer func() {
				for _, x := range []finetune.Tensor{pos, raw, rot, out1, lse1, out2, lse2, dout, dq1, dq2} {
					g.Free(x)
				}
			}()
			g.RoPEForward(rot, pos, H, H, D, c.rot, theta)
			g.AttentionForward(out1, lse1, rot, pos, B, S, H, H, D, c.window)
			g.AttentionForwardRoPE(out2, lse2, raw, pos, B, S, H, H, D, c.window, c.rot, theta)
			checkBits(t, "out", g.Download(out2), g.Download(out1))
			checkBits(t, "lse", g.Download(lse2), g.Download(lse1))
			checkBits(t, "qkv after the fused forward", g.Download(raw), qkvData)
			g.Zero(dq1)
			g.AttentionBackward(dq1, dout, out1, lse1, rot, pos, B, S, H, H, D, c.window)
			g.RoPEBackward(dq1, pos, H, H, D, c.rot, theta)
			g.Zero(dq2)
			g.AttentionBackwardRoPE(dq2, dout, out1, lse1, raw, pos, B, S, H, H, D, c.window, c.rot, theta)
			checkBits(t, "dqkv", g.Download(dq2), g.Download(dq1))

			// qkv held in bfloat16 (Tensor.half: the _h kernels) gives the
			// bits of a float32 qkv holding the same values, and stays so.
			hq := g.AllocHalf(T, width)
			vals := uploadHalf(g, hq, qkvData)
			fq := up(vals, T, width)
			defer func() { g.Free(hq); g.Free(fq) }()
			g.AttentionForwardRoPE(out1, lse1, hq, pos, B, S, H, H, D, c.window, c.rot, theta)
			g.AttentionForwardRoPE(out2, lse2, fq, pos, B, S, H, H, D, c.window, c.rot, theta)
			checkBits(t, "out from a bfloat16 qkv", g.Download(out1), g.Download(out2))
			checkBits(t, "lse from a bfloat16 qkv", g.Download(lse1), g.Download(lse2))
			g.Zero(dq1)
			g.AttentionBackwardRoPE(dq1, dout, out2, lse2, hq, pos, B, S, H, H, D, c.window, c.rot, theta)
			g.Zero(dq2)
			g.AttentionBackwardRoPE(dq2, dout, out2, lse2, fq, pos, B, S, H, H, D, c.window, c.rot, theta)
			checkBits(t, "dqkv from a bfloat16 qkv", g.Download(dq1), g.Download(dq2))
			if hq.(*Tensor).half == nil {
				t.Error("the fused attention widened a bfloat16 qkv")
			}
			checkBits(t, "a bfloat16 qkv downloaded", g.Download(hq), vals)
			// And a dqkv from AllocHalf gets dq2's values rounded to
			// bfloat16, held so (attn_bwd_bf16_hh).
			if !loraRowsW32 || !halfOutputs {
				return
			}
			dqh := g.AllocHalf(T, width)
			defer g.Free(dqh)
			uploadHalf(g, hq, vals) // Download widened it: the _hh kernel wants it in bfloat16
			g.Zero(dqh)
			g.AttentionBackwardRoPE(dqh, dout, out2, lse2, hq, pos, B, S, H, H, D, c.window, c.rot, theta)
			if dqh.(*Tensor).half == nil {
				t.Fatal("dqkv from AllocHalf was written in float32")
			}
			want := g.Download(dq2)
			for i, v := range want {
				want[i] = finetune.RoundBF16(v)
			}
			checkBits(t, "a bfloat16 dqkv", g.Download(dqh), want)
		})
	}
	// Grouped heads are not fused (dK would be rotated per head).
	if gpuB16.RoPEAttention(2, 64, 8, 2, 96, 96) {
		t.Error("RoPEAttention takes grouped heads")
	}
}

// uploadHalf fills t (from AllocHalf) with vals rounded to bfloat16, held
// in bfloat16 (Tensor.half), and returns the rounded values.
func uploadHalf(g *Backend, t finetune.Tensor, vals []float32) []float32 {
	ct := t.(*Tensor)
	packed, rounded := make([]uint16, len(vals)), make([]float32, len(vals))
	for i, v := range vals {
		rounded[i] = finetune.RoundBF16(v)
		packed[i] = uint16(math.Float32bits(rounded[i]) >> 16)
	}
	defer g.enter("uploadHalf")()
	g.upload("uploadHalf", ct.ptr, unsafe.Pointer(unsafe.SliceData(packed)), 2*int64(len(packed)))
	ct.half = g
	return rounded
}

// TestAttentionV20: the v20 forms of the _rp96 kernels (attn_fwd_bf16_h_rp96v,
// attn_bwd_bf16_hh_rp96v: one pass of loads, V by cp.async, dO read once
// for di, the softmax's division through a row's reciprocal) give the
// _rp96 kernels' bits, in Phi-3-mini's step shapes too, with scores spread
// wide enough that probabilities underflow (ab_div_mk's __fdiv_rn path)
// and rows shorter than 64 with a window.
func TestAttentionV20(t *testing.T) {
	g := gpuB16
	if !loraRowsW32 || !halfOutputs {
		t.Skip("the bfloat16 dqkv kernels are switched off")
	}
	defer func(v bool) { attnV20 = v }(attnV20)
	attnV20 = true
	for _, c := range []struct {
		D    int
		ptrs []cu.DevicePtr
		want string
	}{
		{96, []cu.DevicePtr{16, 32}, "96v"},
		{96, []cu.DevicePtr{8, 32}, "96"},  // qkv 8-byte aligned
		{96, []cu.DevicePtr{16, 40}, "96"}, // dqkv 8-byte aligned
		{32, []cu.DevicePtr{16, 16}, ""},   // no v20 form
	} {
		if got := abSpecSize(c.D, c.D, c.ptrs...); got != c.want {
			t.Errorf("abSpecSize(%d, %d, %v) = %q, want %q", c.D, c.D, c.ptrs, got, c.want)
		}
	}
	for _, c := range []struct{ B, S, H, window int }{{16, 64, 32, 0}, {2, 40, 4, 5}, {3, 64, 2, 0}} {
		name := fmt.Sprintf("B%d S%d H%d w%d", c.B, c.S, c.H, c.window)
		t.Run(name, func(t *testing.T) {
			const D, theta = 96, 10000
			B, S, H := c.B, c.S, c.H
			if !g.RoPEAttention(B, S, H, H, D, D) {
				t.Fatal("RoPEAttention is false")
			}
			T, width := B*S, 3*H*D
			vals := randn(T*width, 31, 1)
			for i := 0; i < T; i += 7 { // wide scores: exp underflows in these rows
				for d := 0; d < H*D; d++ {
					vals[i*width+d] *= 40
				}
			}
			pos := g.AllocInt32(T)
			g.UploadInt32(pos, attnPos("packed", B, S))
			hq := g.AllocHalf(T, width)
			uploadHalf(g, hq, vals)
			dout := g.Alloc(T, H*D)
			g.Upload(dout, randn(T*H*D, 32, 1))
			var outs, lses, dqs [2]finetune.Tensor
			for k := range outs {
				outs[k], lses[k], dqs[k] = g.Alloc(T, H*D), g.Alloc(H, T), g.AllocHalf(T, width)
			}
			defer func() {
				for _, x := range append([]finetune.Tensor{pos, hq, dout}, append(outs[:], append(lses[:], dqs[:]...)...)...) {
					g.Free(x)
				}
			}()
			for _, x := range []finetune.Tensor{hq, outs[1], dqs[1]} {
				if x.(*Tensor).ptr%16 != 0 { // abSpecSize would pick the _rp96 kernels: the test would compare them with themselves
					t.Fatalf("a %v tensor at %#x: not 16-byte aligned", x.(*Tensor).shape, x.(*Tensor).ptr)
				}
			}
			for k, v20 := range []bool{false, true} {
				attnV20 = v20
				g.AttentionForwardRoPE(outs[k], lses[k], hq, pos, B, S, H, H, D, c.window, D, theta)
				g.Zero(dqs[k])
				g.AttentionBackwardRoPE(dqs[k], dout, outs[0], lses[0], hq, pos, B, S, H, H, D, c.window, D, theta)
				if dqs[k].(*Tensor).half == nil {
					t.Fatal("dqkv from AllocHalf was written in float32")
				}
			}
			checkBits(t, "out", g.Download(outs[1]), g.Download(outs[0]))
			checkBits(t, "lse", g.Download(lses[1]), g.Download(lses[0]))
			checkBits(t, "dqkv", g.Download(dqs[1]), g.Download(dqs[0]))

		})
	}
}
