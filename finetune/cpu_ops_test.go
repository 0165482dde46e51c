package finetune

import (
	"math"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
)

// Op tests of the CPU backend. Each op is checked against a float64
// reference written here from the formulas (forward), and each backward
// against central finite differences of that float64 reference, with odd
// sizes, outputs poisoned with NaN before the op (so an element the op
// forgets to write shows), and gradients pre-filled with noise (so an op
// that overwrites instead of accumulating shows).

// ---------------------------------------------------------------------------
// helpers

// testBackend uses 3 goroutines on any machine so the row splitting of the
// matmuls is exercised even on 1-2 cores.
func testBackend() *CPUBackend { return NewCPUBackend(CPUOptions{Threads: 3}) }

func randn(n int, seed uint64, scale float32) []float32 {
	x := make([]float32, n)
	for k := range x {
		x[k] = Normal(seed, uint64(k)) * scale
	}
	return x
}

func to64(x []float32) []float64 {
	y := make([]float64, len(x))
	for k, v := range x {
		y[k] = float64(v)
	}
	return y
}

func nanFill(n int) []float32 {
	x := make([]float32, n)
	for k := range x {
		x[k] = float32(math.NaN())
	}
	return x
}

// tensor uploads values into a new float tensor of the given shape.
func tensor(b Backend, data []float32, shape ...int) Tensor {
	t := b.Alloc(shape...)
	b.Upload(t, data)
	return t
}

func intTensor(b Backend, data []int32) Tensor {
	t := b.AllocInt32(len(data))
	b.UploadInt32(t, data)
	return t
}

// relErr is ||got - want|| / ||want||.
func relErr(got []float32, want []float64) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for k, w := range want {
		d := float64(got[k]) - w
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		num += d * d
		den += w * w
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

func checkRel(t *testing.T, what string, got []float32, want []float64, tol float64) {
	t.Helper()
	if e := relErr(got, want); !(e <= tol) {
		t.Errorf("%s: relative error %.3g > %.3g (got[:4] %v, want[:4] %v)", what, e, tol, head(got), head64(want))
	}
}

func head(x []float32) []float32 { return x[:min(4, len(x))] }
func head64(x []float64) []float64 {
	return x[:min(4, len(x))]
}

func checkFinite(t *testing.T, what string, x []float32) {
	t.Helper()
	for k, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatalf("%s: element %d is %v (not written?)", what, k, v)
		}
	}
}

// numGrad returns the gradient of f at x by central differences.
func numGrad(x []float64, f func([]float64) float64) []float64 {
	const eps = 1e-6
	g := make([]float64, len(x))
	for k := range x {
		old := x[k]
		x[k] = old + eps
		fp := f(x)
		x[k] = old - eps
		fm := f(x)
		x[k] = old
		g[k] = (fp - fm) / (2 * eps)
	}
	return g
}

func dot64(a []float64, b []float32) float64 {
	var s float64
	for k, v := range a {
		s += v * float64(b[k])
	}
	return s
}

// accumulated returns got - base, element by element (what a backward
// added to a pre-filled gradient).
func accumulated(got, base []float32) []float32 {
	d := make([]float32, len(got))
	for k := range got {
		d[k] = got[k] - base[k]
	}
	return d
}

// ---------------------------------------------------------------------------
// float64 references

func refRMSNorm(x, w []float64, C int, eps float64) []float64 {
	out := make([]float64, len(x))
	for t := 0; t < len(x)/C; t++ {
		var ss float64
		for k := 0; k < C; k++ {
			ss += x[t*C+k] * x[t*C+k]
		}
		r := 1 / math.Sqrt(ss/float64(C)+eps)
		for k := 0; k < C; k++ {
			out[t*C+k] = w[k] * x[t*C+k] * r
		}
	}
	return out
}

// refMatmulT: out[T,O] = x[T,I] . w[O,I]^T
func refMatmulT(x, w []float64, T, O, I int) []float64 {
	out := make([]float64, T*O)
	for t := 0; t < T; t++ {
		for o := 0; o < O; o++ {
			var s float64
			for i := 0; i < I; i++ {
				s += x[t*I+i] * w[o*I+i]
			}
			out[t*O+o] = s
		}
	}
	return out
}

// refLinear: x.W^T + scale * ((x*mask).A^T).B^T; mask nil = no dropout.
func refLinear(x, W, A, B, mask []float64, T, in, out, r int, scale float64) []float64 {
	y := refMatmulT(x, W, T, out, in)
	if A == nil {
		return y
	}
	xd := append([]float64(nil), x...)
	if mask != nil {
		for k := range xd {
			xd[k] *= mask[k]
		}
	}
	h := refMatmulT(xd, A, T, r, in)
	l := refMatmulT(h, B, T, out, r)
	for k := range y {
		y[k] += scale * l[k]
	}
	return y
}

func refRoPE(qkv []float64, pos []int32, H, K, D, rot int, theta float64) []float64 {
	out := append([]float64(nil), qkv...)
	width := (H + 2*K) * D
	half := rot / 2
	for t, p := range pos {
		for h := 0; h < H+K; h++ {
			base := t*width + h*D
			for i := 0; i < half; i++ {
				ang := float64(p) / math.Pow(theta, float64(2*i)/float64(rot))
				c, s := math.Cos(ang), math.Sin(ang)
				a, b := qkv[base+i], qkv[base+i+half]
				out[base+i] = a*c - b*s
				out[base+i+half] = b*c + a*s
			}
		}
	}
	return out
}

// refAttention returns out [T,H*D] and lse [H,T], with the mask written
// out literally from the contract.
func refAttention(qkv []float64, pos []int32, B, S, H, K, D, window int) (out, lse []float64) {
	T := B * S
	width := (H + 2*K) * D
	out = make([]float64, T*H*D)
	lse = make([]float64, H*T)
	scale := 1 / math.Sqrt(float64(D))
	for b := 0; b < B; b++ {
		for h := 0; h < H; h++ {
			kvh := h / (H / K)
			for i := 0; i < S; i++ {
				ti := b*S + i
				allowed := func(j int) bool {
					if j > i || j < i-int(pos[ti]) {
						return false
					}
					return window <= 0 || j > i-window
				}
				sc := make([]float64, S)
				m := math.Inf(-1)
				for j := 0; j < S; j++ {
					if !allowed(j) {
						continue
					}
					tj := b*S + j
					var s float64
					for d := 0; d < D; d++ {
						s += qkv[ti*width+h*D+d] * qkv[tj*width+(H+kvh)*D+d]
					}
					sc[j] = s * scale
					m = math.Max(m, sc[j])
				}
				var sum float64
				for j := 0; j < S; j++ {
					if allowed(j) {
						sum += math.Exp(sc[j] - m)
					}
				}
				lse[h*T+ti] = m + math.Log(sum)
				for j := 0; j < S; j++ {
					if !allowed(j) {
						continue
					}
					p := math.Exp(sc[j]-m) / sum
					tj := b*S + j
					for d := 0; d < D; d++ {
						out[ti*H*D+h*D+d] += p * qkv[tj*width+(H+K+kvh)*D+d]
					}
				}
			}
		}
	}
	return out, lse
}

func refSwiGLU(gu []float64, I int) []float64 {
	T := len(gu) / (2 * I)
	out := make([]float64, T*I)
	for t := 0; t < T; t++ {
		for k := 0; k < I; k++ {
			g, u := gu[t*2*I+k], gu[t*2*I+I+k]
			out[t*I+k] = u * g / (1 + math.Exp(-g))
		}
	}
	return out
}

// refCE returns the summed cross-entropy and the number of argmax hits.
func refCE(x, W []float64, targets []int32, C, V int) (float64, int) {
	T := len(targets)
	logits := refMatmulT(x, W, T, V, C)
	var loss float64
	hits := 0
	for t, tg := range targets {
		if tg == IgnoreIndex {
			continue
		}
		row := logits[t*V : (t+1)*V]
		m, arg := row[0], 0
		for v, l := range row {
			if l > m {
				m, arg = l, v
			}
		}
		var s float64
		for _, l := range row {
			s += math.Exp(l - m)
		}
		loss += m + math.Log(s) - row[tg]
		if arg == int(tg) {
			hits++
		}
	}
	return loss, hits
}

// ---------------------------------------------------------------------------
// tests

func TestRoundingMatchesSafetensorsConversions(t *testing.T) {
	vals := randn(20000, 7, 3)
	vals = append(vals, 0, -0, 1, 65504, 65519.9, 65520, -65520, 1e-8, 3e-8, 6e-5, 6.1e-5, 1e-40,
		float32(math.Inf(1)), 3.4e38, 1+1.0/256, 1+3.0/512)
	for k := 0; k < 20000; k++ { // random bit patterns cover every exponent
		vals = append(vals, math.Float32frombits(uint32(Mix64(uint64(k)))&0xff7fffff))
	}
	for _, v := range vals {
		wantH := safetensors.F16ToF32(safetensors.F32ToF16(v))
		if got := RoundF16(v); math.Float32bits(got) != math.Float32bits(wantH) {
			t.Fatalf("RoundF16(%g) = %g, safetensors' f16 round trip gives %g", v, got, wantH)
		}
		wantB := safetensors.BF16ToF32(safetensors.F32ToBF16(v))
		if got := RoundBF16(v); math.Float32bits(got) != math.Float32bits(wantB) {
			t.Fatalf("RoundBF16(%g) = %g, safetensors' bf16 round trip gives %g", v, got, wantB)
		}
	}
	if RoundF16(65520) != float32(math.Inf(1)) || RoundF16(65519) != 65504 || RoundBF16(1+1.0/256) != 1 {
		t.Fatal("rounding edge cases")
	}
}

func TestMatmulKernels(t *testing.T) {
	// Odd sizes cover the 2x4 blocks' remainders; 1 and 3 threads must give
	// bit-identical results (each element is summed in one fixed order).
	for _, sz := range [][3]int{{1, 1, 1}, {7, 13, 5}, {3, 37, 17}, {9, 5, 64}, {2, 130, 12}} {
		T, O, I := sz[0], sz[1], sz[2]
		x, w, d := randn(T*I, 1, 1), randn(O*I, 2, 1), randn(T*O, 3, 1)
		wantY := refMatmulT(to64(x), to64(w), T, O, I)
		// dx = d . W
		wantDX := make([]float64, T*I)
		for tt := 0; tt < T; tt++ {
			for o := 0; o < O; o++ {
				for i := 0; i < I; i++ {
					wantDX[tt*I+i] += float64(d[tt*O+o]) * float64(w[o*I+i])
				}
			}
		}
		var first []float32
		for _, threads := range []int{1, 3} {
			b := NewCPUBackend(CPUOptions{Threads: threads})
			for _, nf4 := range []bool{false, true} {
				var cw *cpuWeight
				if nf4 {
					if (O*I)%64 != 0 {
						continue
					}
					wt, _ := b.NF4Weight(w, O, I, true)
					cw = cpuW(wt)
				} else {
					wt, _ := b.DenseWeight(w, O, I)
					cw = cpuW(wt)
				}
				wq := to64(b.DequantizeWeight(cw))
				wantY := refMatmulT(to64(x), wq, T, O, I)
				y := nanFill(T * O)
				b.matmulWT(y, x, T, cw, 1, false)
				checkRel(t, "matmulWT", y, wantY, 1e-6)
				dx := make([]float32, T*I)
				b.matmulW(dx, d, T, cw, 1)
				wantDX := make([]float64, T*I)
				for tt := 0; tt < T; tt++ {
					for o := 0; o < O; o++ {
						for i := 0; i < I; i++ {
							wantDX[tt*I+i] += float64(d[tt*O+o]) * wq[o*I+i]
						}
					}
				}
				checkRel(t, "matmulW", dx, wantDX, 1e-6)
			}
			y := make([]float32, T*O)
			b.matmulWT(y, x, T, denseView(w, O, I), 1, false)
			checkRel(t, "matmulWT dense", y, wantY, 1e-6)
			if first == nil {
				first = y
			} else {
				for k := range y {
					if math.Float32bits(y[k]) != math.Float32bits(first[k]) {
						t.Fatalf("T=%d O=%d I=%d: result depends on the thread count at %d", T, O, I, k)
					}
				}
			}
			dx := make([]float32, T*I)
			b.matmulW(dx, d, T, denseView(w, O, I), 1)
			checkRel(t, "matmulW dense", dx, wantDX, 1e-6)
			// matmulTN: out[O,I] += d^T . x
			out := make([]float32, O*I)
			b.matmulTN(out, d, x, T, O, I, 0.5)
			want := make([]float64, O*I)
			for tt := 0; tt < T; tt++ {
				for o := 0; o < O; o++ {
					for i := 0; i < I; i++ {
						want[o*I+i] += 0.5 * float64(d[tt*O+o]) * float64(x[tt*I+i])
					}
				}
			}
			checkRel(t, "matmulTN", out, want, 1e-6)
		}
	}
}

func TestRMSNorm(t *testing.T) {
	b := testBackend()
	T, C := 7, 12
	x, w, dout := randn(T*C, 1, 1.5), randn(C, 2, 1), randn(T*C, 3, 1)
	for k := range w {
		w[k] += 1
	}
	const eps = 1e-5
	xt, wt := tensor(b, x, T, C), tensor(b, w, C)
	out, rstd := tensor(b, nanFill(T*C), T, C), tensor(b, nanFill(T), T)
	b.RMSNormForward(out, rstd, xt, wt, eps)
	got := b.Download(out)
	checkFinite(t, "out", got)
	checkFinite(t, "rstd", b.Download(rstd))
	checkRel(t, "rmsnorm forward", got, refRMSNorm(to64(x), to64(w), C, eps), 1e-6)

	base := randn(T*C, 4, 1)
	dx := tensor(b, base, T, C)
	b.RMSNormBackward(dx, tensor(b, dout, T, C), xt, wt, rstd)
	want := numGrad(to64(x), func(x []float64) float64 { return dot64(refRMSNorm(x, to64(w), C, eps), dout) })
	checkRel(t, "rmsnorm backward (accumulated)", accumulated(b.Download(dx), base), want, 1e-5)
}

func TestSwiGLU(t *testing.T) {
	b := testBackend()
	T, I := 7, 5
	gu, dout := randn(T*2*I, 1, 2), randn(T*I, 2, 1)
	gut := tensor(b, gu, T, 2*I)
	out := tensor(b, nanFill(T*I), T, I)
	b.SwiGLUForward(out, gut)
	got := b.Download(out)
	checkFinite(t, "out", got)
	checkRel(t, "swiglu forward", got, refSwiGLU(to64(gu), I), 1e-6)
	base := randn(T*2*I, 3, 1)
	d := tensor(b, base, T, 2*I)
	b.SwiGLUBackward(d, tensor(b, dout, T, I), gut)
	want := numGrad(to64(gu), func(g []float64) float64 { return dot64(refSwiGLU(g, I), dout) })
	checkRel(t, "swiglu backward (accumulated)", accumulated(b.Download(d), base), want, 1e-5)
}

func TestEmbeddingAddLogits(t *testing.T) {
	b := testBackend()
	V, C := 11, 6
	table := randn(V*C, 1, 1)
	w, _ := b.DenseWeight(table, V, C)
	ids := []int32{3, 0, 10, 3, 7}
	out := tensor(b, nanFill(len(ids)*C), len(ids), C)
	b.EmbeddingForward(out, intTensor(b, ids), w)
	got := b.Download(out)
	for t2, id := range ids {
		for k := 0; k < C; k++ {
			if got[t2*C+k] != table[int(id)*C+k] {
				t.Fatalf("embedding row %d col %d: %v want %v", t2, k, got[t2*C+k], table[int(id)*C+k])
			}
		}
	}
	logits := tensor(b, nanFill(len(ids)*V), len(ids), V)
	b.Logits(logits, out, w)
	checkRel(t, "logits", b.Download(logits), refMatmulT(to64(got), to64(table), len(ids), V, C), 1e-6)
	a := randn(10, 5, 1)
	at, bt := tensor(b, a, 10), tensor(b, randn(10, 6, 1), 10)
	b.Add(at, at, bt) // aliasing out = a
	for k, v := range b.Download(at) {
		if v != a[k]+b.Download(bt)[k] {
			t.Fatal("add")
		}
	}
}

// linearCase runs LinearForward/Backward on one configuration and checks
// them against refLinear and its finite differences.
func linearCase(t *testing.T, b *CPUBackend, quant bool, dropout float32, withLoRA bool) {
	T, in, out, r := 7, 12, 10, 3
	const scale = 0.75
	const seed = 99
	x, Wd := randn(T*in, 1, 1), randn(out*in, 2, 0.3)
	A, Bm := randn(r*in, 3, 0.3), randn(out*r, 4, 0.3)
	dout := randn(T*out, 5, 1)
	var w Weight
	var err error
	if quant {
		w, err = b.NF4Weight(Wd, out, in, true)
	} else {
		w, err = b.DenseWeight(Wd, out, in)
	}
	if err != nil {
		t.Fatal(err)
	}
	W := to64(b.DequantizeWeight(w))
	l := &Linear{Name: "test", W: w}
	var mask []float64
	if withLoRA {
		l.LoRA = &LoRA{A: tensor(b, A, r, in), B: tensor(b, Bm, out, r),
			GradA: tensor(b, randn(r*in, 6, 1), r, in), GradB: tensor(b, randn(out*r, 7, 1), out, r),
			Scale: scale, Dropout: dropout}
		if dropout > 0 {
			mask = make([]float64, T*in)
			kept := 0
			for k := range mask {
				if DropoutKeep(seed, uint64(k), dropout) {
					mask[k] = 1 / float64(float32(1)-dropout)
					kept++
				}
			}
			if kept == 0 || kept == len(mask) {
				t.Fatalf("dropout %g kept %d of %d: the test needs a mixed mask", dropout, kept, len(mask))
			}
		}
	}
	var A64, B64 []float64
	if withLoRA {
		A64, B64 = to64(A), to64(Bm)
	}
	f := func(x, A, B []float64) []float64 { return refLinear(x, W, A, B, mask, T, in, out, r, scale) }

	xt := tensor(b, x, T, in)
	y := tensor(b, nanFill(T*out), T, out)
	var h Tensor
	if withLoRA {
		h = tensor(b, nanFill(T*r), T, r)
	}
	b.LinearForward(y, xt, l, h, seed)
	got := b.Download(y)
	checkFinite(t, "linear out", got)
	checkRel(t, "linear forward", got, f(to64(x), A64, B64), 2e-6)
	if withLoRA {
		checkFinite(t, "linear h", b.Download(h))
	}

	baseDX := randn(T*in, 8, 1)
	dx := tensor(b, baseDX, T, in)
	var baseGA, baseGB []float32
	if withLoRA {
		baseGA, baseGB = b.Download(l.LoRA.GradA), b.Download(l.LoRA.GradB)
	}
	b.LinearBackward(dx, tensor(b, dout, T, out), xt, l, h, seed)
	wantDX := numGrad(to64(x), func(x []float64) float64 { return dot64(f(x, A64, B64), dout) })
	checkRel(t, "linear dx (accumulated)", accumulated(b.Download(dx), baseDX), wantDX, 1e-5)
	if !withLoRA {
		return
	}
	wantGA := numGrad(to64(A), func(A []float64) float64 { return dot64(f(to64(x), A, B64), dout) })
	wantGB := numGrad(to64(Bm), func(B []float64) float64 { return dot64(f(to64(x), A64, B), dout) })
	checkRel(t, "lora gradA (accumulated)", accumulated(b.Download(l.LoRA.GradA), baseGA), wantGA, 1e-5)
	checkRel(t, "lora gradB (accumulated)", accumulated(b.Download(l.LoRA.GradB), baseGB), wantGB, 1e-5)

	// dx == nil computes the same adapter gradients.
	ga2, gb2 := b.Download(l.LoRA.GradA), b.Download(l.LoRA.GradB)
	b.LinearBackward(nil, tensor(b, dout, T, out), xt, l, h, seed)
	checkRel(t, "gradA with dx nil", accumulated(b.Download(l.LoRA.GradA), ga2), wantGA, 1e-5)
	checkRel(t, "gradB with dx nil", accumulated(b.Download(l.LoRA.GradB), gb2), wantGB, 1e-5)
}

func TestLinear(t *testing.T) {
	b := testBackend()
	for _, c := range []struct {
		name    string
		quant   bool
		dropout float32
		lora    bool
	}{
		{"dense", false, 0, false},
		{"dense+lora", false, 0, true},
		{"dense+lora+dropout", false, 0.3, true},
		{"nf4+lora", true, 0, true},
		{"nf4+lora+dropout", true, 0.25, true},
	} {
		t.Run(c.name, func(t *testing.T) { linearCase(t, b, c.quant, c.dropout, c.lora) })
	}
}

func TestComputeDTypeEmulation(t *testing.T) {
	data := randn(16*12, 1, 0.7)
	for _, dt := range []DType{BF16, F16} {
		b := NewCPUBackend(CPUOptions{ComputeDType: dt})
		if b.ComputeDType() != dt {
			t.Fatalf("compute dtype %v, want %v", b.ComputeDType(), dt)
		}
		round := map[DType]func(float32) float32{BF16: RoundBF16, F16: RoundF16}[dt]
		dense, _ := b.DenseWeight(data, 16, 12)
		for k, v := range b.DequantizeWeight(dense) {
			if v != round(data[k]) {
				t.Fatalf("%v dense weight %d: %v, want %v rounded = %v", dt, k, v, data[k], round(data[k]))
			}
		}
		q, _ := b.NF4Weight(data, 16, 12, true)
		q32, _ := NewCPUBackend(CPUOptions{}).NF4Weight(data, 16, 12, true)
		exact := NewCPUBackend(CPUOptions{}).DequantizeWeight(q32)
		changed := 0
		for k, v := range b.DequantizeWeight(q) {
			if v != round(exact[k]) {
				t.Fatalf("%v nf4 weight %d: %v, want the fp32 dequantized %v rounded = %v", dt, k, v, exact[k], round(exact[k]))
			}
			if v != exact[k] {
				changed++
			}
		}
		if changed == 0 {
			t.Fatalf("%v: no dequantized value changed by rounding; the emulation is not applied", dt)
		}
	}
	if err := CheckCPUOptions(CPUOptions{ComputeDType: U8}); err == nil {
		t.Fatal("uint8 compute dtype accepted")
	}
}

func TestRoPE(t *testing.T) {
	b := testBackend()
	T, H, K, D := 7, 4, 2, 6
	width := (H + 2*K) * D
	pos := []int32{0, 1, 2, 0, 1, 5, 300}
	for _, rot := range []int{6, 4} {
		x, dout := randn(T*width, 1, 1), randn(T*width, 2, 1)
		const theta = 10000
		xt := tensor(b, x, T, width)
		b.RoPEForward(xt, intTensor(b, pos), H, K, D, rot, theta)
		got := b.Download(xt)
		checkRel(t, "rope forward", got, refRoPE(to64(x), pos, H, K, D, rot, theta), 1e-6)
		// v and the un-rotated features pass through bit for bit.
		for tt := 0; tt < T; tt++ {
			for k := 0; k < width; k++ {
				h, d := k/D, k%D
				if (h >= H+K || d >= rot) && got[tt*width+k] != x[tt*width+k] {
					t.Fatalf("rot %d: token %d feature %d changed", rot, tt, k)
				}
			}
		}
		dt := tensor(b, dout, T, width)
		b.RoPEBackward(dt, intTensor(b, pos), H, K, D, rot, theta)
		want := numGrad(to64(x), func(x []float64) float64 { return dot64(refRoPE(x, pos, H, K, D, rot, theta), dout) })
		checkRel(t, "rope backward", b.Download(dt), want, 1e-6)
	}
}

func TestRoPEMatchesTransformersFloat32(t *testing.T) {
	// cos/sin from float32 angles (transformers' inv_freq and freqs are
	// float32): at position 4000 the float64 angle would differ visibly.
	cos, sin := ropeTable([]int32{4000}, 96, 10000)
	inv := float32(1) / float32(math.Pow(10000, float64(float32(2)/96)))
	ang := float32(4000) * inv
	if cos[1] != float32(math.Cos(float64(ang))) || sin[1] != float32(math.Sin(float64(ang))) {
		t.Fatalf("rope table: cos %v sin %v, want the float32-angle values", cos[1], sin[1])
	}
}

// attnSetup is a packed batch: row 0 holds examples of 3 and 4 tokens, row
// 1 one example of 7 (positions starting at 2 to exercise i - pos[i]).
func attnSetup() (B, S, H, K, D int, pos []int32) {
	return 2, 7, 4, 2, 6, []int32{0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6}
}

func TestAttention(t *testing.T) {
	b := testBackend()
	B, S, H, K, D, pos := attnSetup()
	T, width := B*S, (H+2*K)*D
	for _, window := range []int{0, 3} {
		qkv, dout := randn(T*width, 1, 1), randn(T*H*D, 2, 1)
		wantOut, wantLSE := refAttention(to64(qkv), pos, B, S, H, K, D, window)
		qt, pt := tensor(b, qkv, T, width), intTensor(b, pos)
		out, lse := tensor(b, nanFill(T*H*D), T, H*D), tensor(b, nanFill(H*T), H, T)
		b.AttentionForward(out, lse, qt, pt, B, S, H, K, D, window)
		checkFinite(t, "attention out", b.Download(out))
		checkFinite(t, "attention lse", b.Download(lse))
		checkRel(t, "attention out", b.Download(out), wantOut, 1e-6)
		checkRel(t, "attention lse", b.Download(lse), wantLSE, 1e-6)

		base := randn(T*width, 3, 1)
		dq := tensor(b, base, T, width)
		b.AttentionBackward(dq, tensor(b, dout, T, H*D), out, lse, qt, pt, B, S, H, K, D, window)
		want := numGrad(to64(qkv), func(q []float64) float64 {
			o, _ := refAttention(q, pos, B, S, H, K, D, window)
			return dot64(o, dout)
		})
		checkRel(t, "attention backward (accumulated)", accumulated(b.Download(dq), base), want, 1e-5)
	}
}

func TestAttentionMask(t *testing.T) {
	b := testBackend()
	B, S, H, K, D, pos := attnSetup()
	T, width := B*S, (H+2*K)*D
	run := func(qkv []float32, window int) []float32 {
		out := b.Alloc(T, H*D)
		b.AttentionForward(out, b.Alloc(H, T), tensor(b, qkv, T, width), intTensor(b, pos), B, S, H, K, D, window)
		return b.Download(out)
	}
	qkv := randn(T*width, 1, 1)
	base := run(qkv, 0)
	same := func(a, c []float32, t0, t1 int) bool {
		for k := t0 * H * D; k < t1*H*D; k++ {
			if a[k] != c[k] {
				return false
			}
		}
		return true
	}
	// Change token 1 (example 1 of row 0): example 2 of row 0 (tokens 3-6)
	// and row 1 must not move; token 1 and 2 must.
	q2 := append([]float32(nil), qkv...)
	for k := 1 * width; k < 2*width; k++ {
		q2[k] += 1
	}
	changed := run(q2, 0)
	if !same(base, changed, 3, T) {
		t.Fatal("changing a token of example 1 changed the output of example 2 or of the other row")
	}
	if same(base, changed, 1, 3) {
		t.Fatal("changing token 1 did not change its own example's outputs")
	}
	// Change token 3 (first of example 2): tokens 0-2 (earlier example)
	// must not move (causality and example boundary).
	q3 := append([]float32(nil), qkv...)
	for k := 3 * width; k < 4*width; k++ {
		q3[k] += 1
	}
	if c := run(q3, 0); !same(base, c, 0, 3) || !same(base, c, S, T) {
		t.Fatal("changing token 3 changed an earlier example or the other row")
	}
	// Window 3 in row 1: token 7+6 sees keys 7+4..7+6 only, so changing
	// token 7+3 leaves it alone, while without the window it moves.
	q4 := append([]float32(nil), qkv...)
	for k := 10 * width; k < 11*width; k++ {
		q4[k] += 1
	}
	if !same(run(qkv, 3), run(q4, 3), 13, 14) {
		t.Fatal("window 3: token 13 attends to token 10")
	}
	if same(run(qkv, 0), run(q4, 0), 13, 14) {
		t.Fatal("no window: token 13 ignores token 10")
	}
}

func TestAttentionCached(t *testing.T) {
	b := testBackend()
	S, H, K, D := 9, 4, 2, 6
	width := (H + 2*K) * D
	pos := make([]int32, S)
	for k := range pos {
		pos[k] = int32(k)
	}
	for _, window := range []int{0, 4} {
		qkv := randn(S*width, 1, 1)
		full := b.Alloc(S, H*D)
		b.AttentionForward(full, b.Alloc(H, S), tensor(b, qkv, S, width), intTensor(b, pos), 1, S, H, K, D, window)
		want := b.Download(full)
		kc, vc := b.Alloc(S, K*D), b.Alloc(S, K*D)
		// 4 tokens at once, then one at a time.
		var got []float32
		for start, n := 0, 4; start < S; start, n = start+n, 1 {
			out := b.Alloc(n, H*D)
			b.AttentionCached(out, tensor(b, qkv[start*width:(start+n)*width], n, width), kc, vc, start, H, K, D, window)
			got = append(got, b.Download(out)...)
		}
		for k := range want {
			if got[k] != want[k] {
				t.Fatalf("window %d: cached attention differs from the full forward at %d: %v vs %v", window, k, got[k], want[k])
			}
		}
	}
}

func TestCrossEntropy(t *testing.T) {
	b := testBackend()
	T, C, V := 150, 8, 11 // 150 tokens: three chunks of ceChunk
	x, W := randn(T*C, 1, 1), randn(V*C, 2, 1)
	targets := make([]int32, T)
	for k := range targets {
		targets[k] = int32(Mix64(uint64(k)) % uint64(V))
		if k%5 == 2 {
			targets[k] = IgnoreIndex
		}
	}
	w, _ := b.DenseWeight(W, V, C)
	xt, tt := tensor(b, x, T, C), intTensor(b, targets)
	wantLoss, wantHits := refCE(to64(x), to64(W), targets, C, V)
	loss, hits := b.CrossEntropy(nil, xt, w, tt, 1)
	if math.Abs(loss-wantLoss) > 1e-5*math.Abs(wantLoss) || hits != wantHits {
		t.Fatalf("loss %v hits %d, want %v %d", loss, hits, wantLoss, wantHits)
	}
	const gs = 0.37
	base := randn(T*C, 3, 1)
	dx := tensor(b, base, T, C)
	loss2, hits2 := b.CrossEntropy(dx, xt, w, tt, gs)
	if loss2 != loss || hits2 != hits {
		t.Fatalf("with dx: loss %v hits %d, without: %v %d", loss2, hits2, loss, hits)
	}
	want := numGrad(to64(x), func(x []float64) float64 {
		l, _ := refCE(x, to64(W), targets, C, V)
		return gs * l
	})
	got := accumulated(b.Download(dx), base)
	checkRel(t, "cross-entropy dx (accumulated)", got, want, 1e-5)
	for k := 2 * C; k < 3*C; k++ { // token 2 is ignored: no gradient
		if got[k] != 0 && math.Abs(float64(got[k])) > 1e-6 {
			t.Fatalf("ignored token got gradient %v", got[k])
		}
	}
	// All ignored: nothing happens.
	for k := range targets {
		targets[k] = IgnoreIndex
	}
	if l, h := b.CrossEntropy(nil, xt, w, intTensor(b, targets), 1); l != 0 || h != 0 {
		t.Fatalf("all-ignored loss %v hits %d", l, h)
	}
}

func TestScaleSumSquares(t *testing.T) {
	b := testBackend()
	x := randn(101, 1, 1)
	xt := tensor(b, x, 101)
	var want float64
	for _, v := range x {
		want += float64(v) * float64(v)
	}
	if got := b.SumSquares(xt); math.Abs(got-want) > 1e-12*want {
		t.Fatalf("sum squares %v want %v", got, want)
	}
	b.Scale(xt, 0.5)
	for k, v := range b.Download(xt) {
		if v != x[k]*0.5 {
			t.Fatal("scale")
		}
	}
}

// TestCPUDownloadBytes: a uint8 tensor's bytes, as a copy.
func TestCPUDownloadBytes(t *testing.T) {
	b := NewCPUBackend(CPUOptions{})
	by := b.AllocBytes(3)
	b.UploadBytes(by, []uint8{0, 128, 255})
	got := b.DownloadBytes(by)
	if string(got) != "\x00\x80\xff" {
		t.Fatalf("DownloadBytes: %v", got)
	}
	got[0] = 9
	if again := b.DownloadBytes(by); again[0] != 0 {
		t.Error("DownloadBytes returned the tensor's own storage")
	}
}
