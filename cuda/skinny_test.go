//go:build cuda

package cuda

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// skinnyCase is one row-major GEMM of gemmArgs' shape (bfloat16 A and B).
type skinnyCase struct {
	name           string
	transA, transB bool
	M, N, K        int
	lda, ldb, ldc  int
	alpha, beta    float32
}

// The LoRA's shapes at the Phi-3-mini step (T = 1024, r = 8, in/out 3072,
// 8192, 9216, 16384; lora_bf16.go), then odd ones: ragged tiles, r < 8,
// strides wider than the rows, splits over k.
func skinnyCases() []skinnyCase {
	const T, r, s = 1024, 8, 2
	h := func(in, ld int) skinnyCase {
		return skinnyCase{fmt.Sprintf("h %dx%dx%d lda %d", T, r, in, ld), false, true, T, r, in, ld, in, r, 1, 0}
	}
	gg := func(out int) skinnyCase {
		return skinnyCase{fmt.Sprintf("g %dx%dx%d", T, r, out), false, false, T, r, out, out, r, r, 1, 0}
	}
	gB := func(out int, beta float32) skinnyCase {
		return skinnyCase{fmt.Sprintf("gradB %dx%dx%d beta %v", out, r, T, beta), true, false, out, r, T, out, r, r, s, beta}
	}
	gA := func(in int, beta float32) skinnyCase {
		return skinnyCase{fmt.Sprintf("gradA %dx%dx%d beta %v", r, in, T, beta), true, false, r, in, T, r, in, in, s, beta}
	}
	return []skinnyCase{
		h(3072, 3072), h(3072, 3080), h(8192, 8192),
		gg(16384), gg(9216), gg(3072),
		gB(16384, 0), gB(9216, 1), gB(3072, 1),
		gA(3072, 0), gA(3072, 1), gA(8192, 1),
		{"h odd", false, true, 37, 5, 72, 80, 88, 13, 0.5, 0},
		{"h odd beta", false, true, 37, 8, 64, 64, 64, 9, 1.5, 1},
		{"g odd", false, false, 45, 8, 200, 208, 16, 11, 1, 1},
		{"g splits", false, false, 70, 8, 4096, 4104, 8, 8, -2, 0},
		{"gradB odd", true, false, 200, 5, 33, 208, 7, 6, 2, 1},
		{"gradB splits", true, false, 136, 8, 1000, 144, 8, 10, 0.25, 0},
		{"gradA odd", true, false, 5, 200, 33, 6, 200, 216, 2, 1},
		{"gradA splits", true, false, 8, 264, 1000, 8, 264, 264, 1, 0},
	}
}

func bf16Round(x []float32) []float32 {
	out := make([]float32, len(x))
	for k, v := range x {
		out[k] = finetune.RoundBF16(v)
	}
	return out
}

func bf16Bytes(x []float32) []byte {
	out := make([]byte, 2*len(x))
	for k, v := range x {
		u := uint16(math.Float32bits(finetune.RoundBF16(v)) >> 16)
		out[2*k], out[2*k+1] = byte(u), byte(u>>8)
	}
	return out
}

// dims returns the stored rows of A and B.
func (c skinnyCase) dims() (rowsA, rowsB int) {
	rowsA, rowsB = c.M, c.K
	if c.transA {
		rowsA = c.K
	}
	if c.transB {
		rowsB = c.N
	}
	return
}

// opAt is op(X)[i,j] for X stored row-major with row stride ld (trans:
// X[j,i]).
func opAt(x []float32, ld int, trans bool, i, j int) float32 {
	if trans {
		return x[j*ld+i]
	}
	return x[i*ld+j]
}

// ref is C = alpha op(A) op(B) + beta C0 in float64 on the bf16 values.
func (c skinnyCase) ref(a, bm, c0 []float32) []float64 {
	out := make([]float64, c.M*c.ldc)
	acc := make([]float64, c.N)
	for m := range c.M {
		clear(acc)
		for k := range c.K {
			av := float64(opAt(a, c.lda, c.transA, m, k))
			for n := range c.N {
				acc[n] += av * float64(opAt(bm, c.ldb, c.transB, k, n))
			}
		}
		for n := range c.N {
			v := float64(c.alpha) * acc[n]
			if c.beta != 0 {
				v += float64(c.beta) * float64(c0[m*c.ldc+n])
			}
			out[m*c.ldc+n] = v
		}
	}
	return out
}

// relL2 is ||got - want|| / ||want|| over C's M x N elements.
func (c skinnyCase) relL2(got []float32, want []float64) float64 {
	var num, den float64
	for m := range c.M {
		for n := range c.N {
			k := m*c.ldc + n
			d := float64(got[k]) - want[k]
			num += d * d
			den += want[k] * want[k]
		}
	}
	if math.IsNaN(num) {
		return math.Inf(1)
	}
	return math.Sqrt(num / den)
}

// skinnyBufs is one case's device operands.
type skinnyBufs struct {
	a, b, c finetune.Tensor
	args    gemmArgs
}

func newSkinnyBufs(g *Backend, c skinnyCase, a, bm []float32) *skinnyBufs {
	rowsA, rowsB := c.dims()
	s := &skinnyBufs{a: g.AllocBytes(2 * rowsA * c.lda), b: g.AllocBytes(2 * rowsB * c.ldb), c: g.Alloc(c.M * c.ldc)}
	g.UploadBytes(s.a, bf16Bytes(a))
	g.UploadBytes(s.b, bf16Bytes(bm))
	s.args = gemmArgs{transA: c.transA, transB: c.transB, M: c.M, N: c.N, K: c.K, alpha: c.alpha, beta: c.beta,
		A: uintptr(s.a.(*Tensor).ptr), B: uintptr(s.b.(*Tensor).ptr), C: uintptr(s.c.(*Tensor).ptr),
		lda: c.lda, ldb: c.ldb, ldc: c.ldc, abType: dataR16BF}
	return s
}

func (s *skinnyBufs) free(g *Backend) {
	for _, t := range []finetune.Tensor{s.a, s.b, s.c} {
		g.Free(t)
	}
}

// skinnyRun runs args once, with the skinny kernel or cuBLAS, and says
// whether the skinny kernel took it.
func skinnyRun(g *Backend, args gemmArgs, skinny bool) (took bool, err error) {
	defer Recover(&err)
	defer g.enter("skinny test")()
	if skinny {
		took = g.trySkinny("skinny test", args)
	}
	if !took {
		check("skinny test", g.blas.run(args))
	}
	check("skinny test", g.stream.Synchronize())
	return took, nil
}

// skinnyAll turns both kernels on (the tall one is off by default) and
// returns the function that restores the switches.
func skinnyAll() func() {
	rows, tall := skinnyRows, skinnyTall
	skinnyRows, skinnyTall = true, true
	return func() { skinnyRows, skinnyTall = rows, tall }
}

// TestSkinnyGEMM compares the skinny kernels with a float64 reference on
// the same bfloat16 inputs (relative L2 <= 1e-6) and with cuBLAS, at the
// LoRA's shapes and odd ones: alpha, beta 0 (C poisoned with NaN) and 1,
// strides wider than the rows (the padding must stay untouched), and bit
// for bit the same result twice.
func TestSkinnyGEMM(t *testing.T) {
	g := gpuB16
	defer skinnyAll()()
	for ci, c := range skinnyCases() {
		rowsA, rowsB := c.dims()
		a := bf16Round(randn(rowsA*c.lda, uint64(300+ci), 1))
		bm := bf16Round(randn(rowsB*c.ldb, uint64(400+ci), 0.5))
		c0 := randn(c.M*c.ldc, uint64(500+ci), 3)
		const pad = 12345.5
		for m := range c.M {
			for n := range c.ldc {
				if n >= c.N {
					c0[m*c.ldc+n] = pad
				} else if c.beta == 0 {
					c0[m*c.ldc+n] = float32(math.NaN())
				}
			}
		}
		want := c.ref(a, bm, c0)
		s := newSkinnyBufs(g, c, a, bm)
		// Both fences (sk_splits), each twice, then cuBLAS.
		var outs [5][]float32
		fence := skinnyFence
		for v := range outs {
			skinnyFence = uint64(v / 2)
			g.Upload(s.c, c0)
			took, err := skinnyRun(g, s.args, v < 4)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if v < 4 && !took {
				t.Fatalf("%s: trySkinny did not take it", c.name)
			}
			outs[v] = g.Download(s.c)
		}
		skinnyFence = fence
		s.free(g)
		got, blas := outs[0], outs[4]
		for k := range got {
			if k%c.ldc >= c.N && got[k] != pad {
				t.Fatalf("%s: C[%d] (padding) = %v, want it untouched", c.name, k, got[k])
			}
			for v := 1; v < 4; v++ {
				if math.Float32bits(got[k]) != math.Float32bits(outs[v][k]) {
					t.Fatalf("%s: C[%d] = %v, then %v on the same inputs (run %d)", c.name, k, got[k], outs[v][k], v)
				}
			}
		}
		eS, eB := c.relL2(got, want), c.relL2(blas, want)
		blas64 := make([]float64, len(blas))
		for k := range blas {
			blas64[k] = float64(blas[k])
		}
		eSB := c.relL2(got, blas64)
		t.Logf("%-28s skinny vs float64 %.2g, cuBLAS vs float64 %.2g, skinny vs cuBLAS %.2g", c.name, eS, eB, eSB)
		if !(eS <= 1e-6) {
			t.Errorf("%s: skinny vs float64 relative L2 %.3g > 1e-6", c.name, eS)
		}
		if !(eSB <= 1e-5) {
			t.Errorf("%s: skinny vs cuBLAS relative L2 %.3g > 1e-5", c.name, eSB)
		}
	}
}

// TestSkinnyDeclines checks that trySkinny leaves other GEMMs to cuBLAS,
// and all of them with the switch off.
func TestSkinnyDeclines(t *testing.T) {
	g := gpuB16
	base := gemmArgs{transB: true, M: 64, N: 8, K: 64, alpha: 1, A: 256, B: 256, C: 256, lda: 64, ldb: 64, ldc: 8, abType: dataR16BF}
	for _, tc := range []struct {
		name string
		edit func(*gemmArgs)
	}{
		{"float32", func(a *gemmArgs) { a.abType = dataR32F }},
		{"float16", func(a *gemmArgs) { a.abType = dataR16F }},
		{"N 16", func(a *gemmArgs) { a.N, a.ldc = 16, 16 }},
		{"K odd", func(a *gemmArgs) { a.K = 60 }},
		{"lda odd", func(a *gemmArgs) { a.lda = 66 }},
		{"misaligned A", func(a *gemmArgs) { a.A += 2 }},
		{"wide", func(a *gemmArgs) { a.N, a.ldc = 64, 64 }},
		{"transA transB", func(a *gemmArgs) { a.transA = true }},
		{"g r 5", func(a *gemmArgs) { a.transB, a.N, a.ldb, a.ldc = false, 5, 5, 5 }},
	} {
		a := base
		tc.edit(&a)
		if g.trySkinny("test", a) {
			t.Errorf("%s: trySkinny took it", tc.name)
		}
	}
	defer skinnyAll()()
	skinnyRows, skinnyTall = false, false
	if g.trySkinny("test", base) {
		t.Errorf("switched off: trySkinny took it")
	}
}

// TestSkinnyTiming times each LoRA shape alone: cuBLAS and the skinny
// kernel (its default choice and the alternatives), 20 calls between two
// events over 4 operand sets in turn (the big operand does not stay in
// L2), the median of 9 repeats. floor is the big operand's bytes at 3.35
// TB/s (H100 SXM's HBM3).
func TestSkinnyTiming(t *testing.T) {
	g := gpuB16
	defer skinnyAll()()
	var lines []string
	for _, c := range skinnyCases() {
		if strings.Contains(c.name, "odd") || strings.Contains(c.name, "splits") || strings.Contains(c.name, "lda 3080") || (c.beta == 0 && strings.HasPrefix(c.name, "gradA")) {
			continue
		}
		rowsA, rowsB := c.dims()
		const sets = 4
		var bufs []*skinnyBufs
		for k := range sets {
			bufs = append(bufs, newSkinnyBufs(g, c, randn(rowsA*c.lda, uint64(600+k), 1), randn(rowsB*c.ldb, uint64(700+k), 0.5)))
			g.Upload(bufs[k].c, randn(c.M*c.ldc, uint64(800+k), 1))
		}
		big := 2.0 * float64(max(rowsA*c.lda, rowsB*c.ldb))
		timeIt := func(skinny bool, force int) float64 {
			defer func() { skinnyForce = 0 }()
			skinnyForce = force
			var ms []float64
			func() {
				defer g.enter("timing")()
				e0, err := cu.MakeEvent(cu.DefaultEvent)
				check("timing", err)
				e1, err := cu.MakeEvent(cu.DefaultEvent)
				check("timing", err)
				defer cu.DestroyEvent(&e0)
				defer cu.DestroyEvent(&e1)
				call := func(k int) {
					if !skinny || !g.trySkinny("timing", bufs[k%sets].args) {
						check("timing", g.blas.run(bufs[k%sets].args))
					}
				}
				for k := range 8 {
					call(k)
				}
				for range 9 {
					check("timing", e0.Record(g.stream))
					for k := range 20 {
						call(k)
					}
					check("timing", e1.Record(g.stream))
					check("timing", e1.Synchronize())
					el, err := e0.Elapsed(e1)
					check("timing", err)
					ms = append(ms, el/20)
				}
			}()
			slices.Sort(ms)
			return 1000 * ms[len(ms)/2]
		}
		blas := timeIt(false, 0)
		auto := timeIt(true, 0)
		fence := skinnyFence
		skinnyFence = 1 - fence
		other := timeIt(true, 0)
		skinnyFence = fence
		line := fmt.Sprintf("%-26s floor %5.2f us  cuBLAS %6.2f us  skinny %6.2f us (x%.2f; other fence %.2f)  alternatives:", c.name, big/3.35e12*1e6, blas, auto, blas/auto, other)
		alts := []int{128, 256, 512}
		if c.transA {
			alts = []int{32, 64, 128, 256}
		}
		for _, f := range alts {
			line += fmt.Sprintf(" %d:%.2f", f, timeIt(true, f))
		}
		lines = append(lines, line)
		for _, s := range bufs {
			s.free(g)
		}
	}
	for _, l := range lines {
		t.Log(l)
		fmt.Println("SKINNY", l)
	}
}
