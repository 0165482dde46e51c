package optim

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func randSlice(r *rand.Rand, n int, scale float64) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64() * scale)
	}
	return s
}

// refAdamW is the textbook AdamW in float64, written independently of
// AdamW: decay, moments, bias-corrected moments, update.
func refAdamW(p, g, m, v []float64, lr, b1, b2, eps, wd float64, t int) {
	for i := range p {
		p[i] -= lr * wd * p[i]
		m[i] = b1*m[i] + (1-b1)*g[i]
		v[i] = b2*v[i] + (1-b2)*g[i]*g[i]
		mhat := m[i] / (1 - math.Pow(b1, float64(t)))
		vhat := v[i] / (1 - math.Pow(b2, float64(t)))
		p[i] -= lr * mhat / (math.Sqrt(vhat) + eps)
	}
}

// refBnbAdam is bitsandbytes' Adam update in float64: weight decay after
// the step, eps scaled by sqrt(1 - beta2^t).
func refBnbAdam(p, g, m, v []float64, lr, b1, b2, eps, wd float64, t int) {
	c1 := 1 - math.Pow(b1, float64(t))
	c2 := math.Sqrt(1 - math.Pow(b2, float64(t)))
	for i := range p {
		m[i] = b1*m[i] + (1-b1)*g[i]
		v[i] = b2*v[i] + (1-b2)*g[i]*g[i]
		p[i] += -lr * c2 / c1 * m[i] / (math.Sqrt(v[i]) + eps*c2)
		if wd > 0 {
			p[i] *= 1 - lr*wd
		}
	}
}

func to64(x []float32) []float64 {
	y := make([]float64, len(x))
	for i, v := range x {
		y[i] = float64(v)
	}
	return y
}

func maxRelDiff(a []float32, b []float64) float64 {
	var worst float64
	for i := range a {
		d := math.Abs(float64(a[i])-b[i]) / (math.Abs(b[i]) + 1e-6)
		worst = max(worst, d)
	}
	return worst
}

func TestAdamWFirstStepByHand(t *testing.T) {
	// Step 1 from zero moments: m = 0.1 g, v = 0.001 g^2, so the bias-corrected
	// update is lr * g/(|g| + eps) after the decay p *= 1 - lr*wd.
	p := []float32{1, -2, 0.5}
	g := []float32{0.5, -0.25, 0}
	m, v := make([]float32, 3), make([]float32, 3)
	hp := Params{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, Step: 1}
	if err := AdamW(p, g, m, v, hp); err != nil {
		t.Fatal(err)
	}
	want := []float64{1*(1-1e-5) - 1e-3*0.5/(0.5+1e-8), -2*(1-1e-5) + 1e-3*0.25/(0.25+1e-8), 0.5 * (1 - 1e-5)}
	for i := range p {
		if math.Abs(float64(p[i])-want[i]) > 1e-7 {
			t.Errorf("p[%d] = %.9f, want %.9f", i, p[i], want[i])
		}
	}
	if m[0] != 0.05 || math.Abs(float64(v[0])-0.00025) > 1e-10 {
		t.Errorf("moments after step 1: m %v v %v, want 0.05, 0.00025", m[0], v[0])
	}
}

func TestAdamWTracksFloat64Reference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	const n, steps = 1000, 30
	p := randSlice(r, n, 1)
	m, v := make([]float32, n), make([]float32, n)
	p64, m64, v64 := to64(p), make([]float64, n), make([]float64, n)
	for step := 1; step <= steps; step++ {
		g := randSlice(r, n, 0.1)
		hp := Params{LR: 3e-4, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1, Step: step}
		if err := AdamW(p, g, m, v, hp); err != nil {
			t.Fatal(err)
		}
		refAdamW(p64, to64(g), m64, v64, hp.LR, hp.Beta1, hp.Beta2, hp.Eps, hp.WeightDecay, step)
	}
	if d := maxRelDiff(p, p64); d > 1e-5 {
		t.Errorf("after %d steps parameters differ from float64 AdamW by %.3g (relative)", steps, d)
	}
	if d := maxRelDiff(m, m64); d > 1e-4 {
		t.Errorf("first moment differs by %.3g", d)
	}
}

func TestBnbAdam32TracksFloat64Reference(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 2))
	const n, steps = 1000, 30
	p := randSlice(r, n, 1)
	m, v := make([]float32, n), make([]float32, n)
	p64, m64, v64 := to64(p), make([]float64, n), make([]float64, n)
	for step := 1; step <= steps; step++ {
		g := randSlice(r, n, 0.1)
		hp := Params{LR: 3e-4, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.1, Step: step}
		if err := BnbAdam32(p, g, m, v, hp); err != nil {
			t.Fatal(err)
		}
		refBnbAdam(p64, to64(g), m64, v64, hp.LR, hp.Beta1, hp.Beta2, hp.Eps, hp.WeightDecay, step)
	}
	if d := maxRelDiff(p, p64); d > 1e-5 {
		t.Errorf("after %d steps parameters differ from float64 bitsandbytes Adam by %.3g", steps, d)
	}
}

func TestAdamWRejectsBadInput(t *testing.T) {
	hp := Params{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, Step: 1}
	if err := AdamW(make([]float32, 3), make([]float32, 2), make([]float32, 3), make([]float32, 3), hp); err == nil {
		t.Error("length mismatch accepted")
	}
	hp.Step = 0
	if err := AdamW(make([]float32, 3), make([]float32, 3), make([]float32, 3), make([]float32, 3), hp); err == nil {
		t.Error("step 0 accepted")
	}
	if err := AdamW8bit(make([]float32, 300), make([]float32, 300), make([]byte, 300), make([]byte, 300), make([]float32, 1), make([]float32, 2), Params{Step: 1}); err == nil {
		t.Error("wrong absmax count accepted")
	}
}

func TestParseOptimizer(t *testing.T) {
	for name, want := range map[string]Kind{"adamw_torch": KindAdamWTorch, "adamw_8bit": KindAdamW8bit, "paged_adamw_8bit": KindPagedAdamW8bit} {
		k, err := ParseOptimizer(name)
		if err != nil || k != want || k.String() != name {
			t.Errorf("ParseOptimizer(%q) = %v, %v", name, k, err)
		}
	}
	if KindAdamWTorch.Is8bit() || !KindAdamW8bit.Is8bit() || !KindPagedAdamW8bit.Is8bit() {
		t.Error("Is8bit wrong")
	}
	_, err := ParseOptimizer("sgd")
	if err == nil || !strings.Contains(err.Error(), `"sgd"`) || !strings.Contains(err.Error(), "adamw_torch, adamw_8bit, paged_adamw_8bit") {
		t.Errorf("error should name the value and list the choices: %v", err)
	}
}
