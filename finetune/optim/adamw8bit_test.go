package optim

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestUses8bitThreshold(t *testing.T) {
	if Uses8bit(4095) || !Uses8bit(4096) || !Uses8bit(8*3072) {
		t.Error("bitsandbytes keeps 32-bit state below min_8bit_size = 4096 values")
	}
	if Blocks8bit(256) != 1 || Blocks8bit(257) != 2 || Blocks8bit(4096+100) != 17 {
		t.Error("Blocks8bit wrong")
	}
}

func TestAdamW8bitFirstStepState(t *testing.T) {
	// From the zero state, step 1 stores m = (1-beta1) g and v = (1-beta2) g^2 with
	// absmax = the block maxima, and the codes round-trip within the 8-bit
	// dynamic map's error.
	r := rand.New(rand.NewPCG(3, 3))
	const n = 4096 + 100 // a partial last block
	p := randSlice(r, n, 1)
	g := randSlice(r, n, 0.01)
	st := NewState8bit(n)
	hp := Params{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Step: 1}
	if err := AdamW8bit(p, g, st.M, st.V, st.AbsmaxM, st.AbsmaxV, hp); err != nil {
		t.Fatal(err)
	}
	w1, w2 := 1-float32(0.9), 1-float32(0.999) // bitsandbytes computes 1 - beta in float32
	for b := range Blocks8bit(n) {
		var want1, want2 float32
		for i := b * 256; i < min(n, (b+1)*256); i++ {
			want1 = max(want1, abs32(w1*g[i]))
			want2 = max(want2, float32(w2*g[i])*g[i])
		}
		if st.AbsmaxM[b] != want1 || st.AbsmaxV[b] != want2 {
			t.Fatalf("block %d: absmax %v, %v; want %v, %v", b, st.AbsmaxM[b], st.AbsmaxV[b], want1, want2)
		}
	}
	m, v := make([]float32, n), make([]float32, n)
	st.DequantizeM(m)
	st.DequantizeV(v)
	var errM, errV, sumM, sumV float64
	for i := range g {
		tm, tv := float64(w1*g[i]), float64(float32(w2*g[i])*g[i])
		errM += math.Abs(float64(m[i]) - tm)
		errV += math.Abs(float64(v[i]) - tv)
		sumM += math.Abs(tm)
		sumV += tv
		if tm != 0 && (m[i] > 0) != (tm > 0) {
			t.Fatalf("value %d: stored first moment %v has the wrong sign (true %v)", i, m[i], tm)
		}
	}
	t.Logf("8-bit state relative L1 error: m %.4f, v %.4f", errM/sumM, errV/sumV)
	if errM/sumM > 0.03 || errV/sumV > 0.03 {
		t.Errorf("state round trip error too large: m %.4f, v %.4f", errM/sumM, errV/sumV)
	}
}

// bitsandbytes' 8-bit AdamW follows its 32-bit Adam closely: over 100
// steps on random data the parameters stay within a small fraction of the
// distance they moved.
func TestAdamW8bitTracksFloat32(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 4))
	const n, steps = 8192, 100
	p8 := randSlice(r, n, 0.1)
	p0 := append([]float32(nil), p8...)
	p32 := append([]float32(nil), p8...)
	pt := append([]float32(nil), p8...)
	st := NewState8bit(n)
	m32, v32 := make([]float32, n), make([]float32, n)
	mt, vt := make([]float32, n), make([]float32, n)
	drift := randSlice(r, n, 0.01) // a persistent gradient component, so the moments matter
	for step := 1; step <= steps; step++ {
		g := randSlice(r, n, 0.01)
		for i := range g {
			g[i] += drift[i]
		}
		hp := Params{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0, Step: step}
		if err := AdamW8bit(p8, g, st.M, st.V, st.AbsmaxM, st.AbsmaxV, hp); err != nil {
			t.Fatal(err)
		}
		if err := BnbAdam32(p32, g, m32, v32, hp); err != nil {
			t.Fatal(err)
		}
		if err := AdamW(pt, g, mt, vt, hp); err != nil {
			t.Fatal(err)
		}
	}
	var moved, diff8, diffT float64
	for i := range p0 {
		moved += sq(float64(p32[i]) - float64(p0[i]))
		diff8 += sq(float64(p8[i]) - float64(p32[i]))
		diffT += sq(float64(pt[i]) - float64(p32[i]))
	}
	rel8, relT := math.Sqrt(diff8/moved), math.Sqrt(diffT/moved)
	t.Logf("after %d steps: |p8 - p32| / |p32 - p0| = %.4f; torch AdamW vs bitsandbytes 32-bit: %.2g", steps, rel8, relT)
	if rel8 > 0.05 {
		t.Errorf("8-bit AdamW drifted %.4f of the update from 32-bit Adam", rel8)
	}
	if relT > 1e-4 {
		t.Errorf("torch AdamW and bitsandbytes 32-bit Adam differ by %.3g without weight decay", relT)
	}
}

func sq(x float64) float64 { return x * x }

func TestAdamW8bitWeightDecayAfterUpdate(t *testing.T) {
	// One value, zero gradient after a first step: the update shrinks
	// toward the moment, then p *= 1 - lr*wd (bitsandbytes applies decay to
	// the updated parameter).
	const n = 4096
	p := make([]float32, n)
	g := make([]float32, n)
	for i := range p {
		p[i], g[i] = 1, 0.5
	}
	st := NewState8bit(n)
	hp := Params{LR: 0.01, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1, Step: 1}
	if err := AdamW8bit(p, g, st.M, st.V, st.AbsmaxM, st.AbsmaxV, hp); err != nil {
		t.Fatal(err)
	}
	// m = 0.05, v = 0.00025 exactly representable in the maps' top entry
	// (every value equals the block absmax), update = -lr * 1 (bias
	// corrected m/sqrt(v) = 1 up to eps), then * (1 - 0.001).
	want := (1 - 0.01*float64(0.05)/(math.Sqrt(0.00025)+1e-8*math.Sqrt(1-0.999))*math.Sqrt(1-0.999)/0.1) * (1 - 0.001)
	if math.Abs(float64(p[0])-want) > 2e-6 {
		t.Errorf("p = %.7f, want %.7f", p[0], want)
	}
	if st.M[0] != 255 || st.V[0] != 255 {
		t.Errorf("codes %d, %d: a value equal to its block's absmax takes the top code 255", st.M[0], st.V[0])
	}
}

func TestAdamW8bitNonFiniteGradientResetsState(t *testing.T) {
	const n = 4096
	r := rand.New(rand.NewPCG(5, 5))
	p := randSlice(r, n, 1)
	st := NewState8bit(n)
	hp := Params{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Step: 1}
	if err := AdamW8bit(p, randSlice(r, n, 0.1), st.M, st.V, st.AbsmaxM, st.AbsmaxV, hp); err != nil {
		t.Fatal(err)
	}
	g := randSlice(r, n, 0.1)
	g[7] = float32(math.NaN())
	g[9] = float32(math.Inf(-1))
	before7, before9 := p[7], p[9]
	hp.Step = 2
	if err := AdamW8bit(p, g, st.M, st.V, st.AbsmaxM, st.AbsmaxV, hp); err != nil {
		t.Fatal(err)
	}
	if p[7] != before7 || p[9] != before9 {
		t.Errorf("non-finite gradients changed p: %v -> %v, %v -> %v", before7, p[7], before9, p[9])
	}
	m, v := make([]float32, n), make([]float32, n)
	st.DequantizeM(m)
	st.DequantizeV(v)
	if m[7] != 0 || v[7] != 0 || m[9] != 0 || v[9] != 0 {
		t.Errorf("moments of non-finite gradients should be reset to 0: m %v %v, v %v %v", m[7], m[9], v[7], v[9])
	}
	for i, x := range p {
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			t.Fatalf("p[%d] = %v", i, x)
		}
	}
}

func TestAdamW8bitZeroGradientBlock(t *testing.T) {
	// A block whose gradient is all zero at step 1 has absmax 0: 0/0 codes
	// must decode to 0 and p must not move or become NaN.
	const n = 4096
	p := make([]float32, n)
	for i := range p {
		p[i] = 1
	}
	st := NewState8bit(n)
	hp := Params{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Step: 1}
	if err := AdamW8bit(p, make([]float32, n), st.M, st.V, st.AbsmaxM, st.AbsmaxV, hp); err != nil {
		t.Fatal(err)
	}
	m := make([]float32, n)
	st.DequantizeM(m)
	for i := range p {
		if p[i] != 1 || m[i] != 0 {
			t.Fatalf("value %d: p %v, m %v after a zero gradient", i, p[i], m[i])
		}
	}
}
