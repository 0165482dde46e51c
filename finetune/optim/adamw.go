package optim

import (
	"fmt"
	"math"

	"github.com/ollama-tune/ollama-tune/internal/parallel"
)

// AdamW is one torch.optim.AdamW update of p from g with fp32 moments m, v
// (zero before the first step), in place, as PyTorch 2's CPU kernels round
// it (bit-identical to torch 2.11's AdamW on the CPU, single-tensor and
// foreach, over a 10-step probe; its CUDA kernels differ by a few ulps):
//
//	p = p * float32(1 - lr*wd)                       (when wd != 0)
//	m = lerp(m, g, 1-beta1) = fma(1-beta1, g-m, m)   (fma(w-1, g-m, g) when 1-beta1 >= 0.5)
//	v = fma((1-beta2)*g, g, v*beta2)                 (mul_ then addcmul_)
//	denom = sqrt(v)/float32(sqrt(1-beta2^t)) + eps
//	p = p + (float32(-lr/(1-beta1^t)) * m)/denom     (addcdiv_)
//
// The bias corrections are computed in float64 (torch's Python floats)
// and rounded to float32 where a Python float meets a float32 tensor. The
// fused multiply-adds are single roundings (fma32); a CUDA mirror uses
// __fmaf_rn there and __fmul_rn/__fadd_rn/__fdiv_rn elsewhere.
func AdamW(p, g, m, v []float32, hp Params) error {
	if err := checkLens(len(p), len(g), len(m), len(v)); err != nil {
		return err
	}
	if err := hp.check(); err != nil {
		return err
	}
	t := float64(hp.Step)
	bc1 := 1 - math.Pow(hp.Beta1, t)
	bc2 := 1 - math.Pow(hp.Beta2, t)
	negStep := float32(-(hp.LR / bc1))
	bc2Sqrt := float32(math.Sqrt(bc2))
	decay := float32(1 - hp.LR*hp.WeightDecay)
	w1 := float32(1 - hp.Beta1)
	// torch's lerp: weight < 0.5 interpolates from m, otherwise from g.
	lerpCoef, fromG := w1, false
	if !(abs32(w1) < 0.5) {
		lerpCoef, fromG = w1-1, true
	}
	b2, w2 := float32(hp.Beta2), float32(1-hp.Beta2)
	eps := float32(hp.Eps)
	decoupled := hp.WeightDecay != 0
	parallel.For(len(p), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			pi, gi, mi := p[i], g[i], m[i]
			if decoupled {
				pi *= decay
			}
			base := mi
			if fromG {
				base = gi
			}
			mi = fma32(lerpCoef, gi-mi, base)
			vi := fma32(float32(w2*gi), gi, float32(v[i]*b2))
			denom := float32(sqrt32(vi)/bc2Sqrt) + eps
			p[i] = pi + float32(negStep*mi)/denom
			m[i], v[i] = mi, vi
		}
	})
	return nil
}

// BnbAdam32 is bitsandbytes' 32-bit Adam kernel (kOptimizer32bit2State,
// ADAM), which adamw_8bit applies to parameters smaller than Min8bitSize.
// All in float32; weight decay is applied after the update:
//
//	c1 = 1 - beta1^t, c2 = sqrt(1 - beta2^t), step = -lr*c2/c1
//	m = m*beta1 + (1-beta1)*g
//	v = v*beta2 + (1-beta2)*(g*g)
//	p += step * m/(sqrt(v) + eps*c2)
//	p *= 1 - lr*wd                                  (when wd > 0)
func BnbAdam32(p, g, m, v []float32, hp Params) error {
	if err := checkLens(len(p), len(g), len(m), len(v)); err != nil {
		return err
	}
	if err := hp.check(); err != nil {
		return err
	}
	k := newBnbConsts(hp)
	parallel.For(len(p), 1<<14, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			gi := g[i]
			mi := float32(m[i]*k.b1) + float32(k.w1*gi)
			vi := float32(v[i]*k.b2) + float32(k.w2*float32(gi*gi))
			pi := p[i] + float32(k.stepSize*float32(mi/float32(sqrt32(vi)+k.epsC2)))
			if k.decay {
				pi *= k.decayFactor
			}
			p[i], m[i], v[i] = pi, mi, vi
		}
	})
	return nil
}

// bnbConsts are the float32 scalars of bitsandbytes' Adam kernels.
type bnbConsts struct {
	b1, b2, w1, w2 float32 // beta1, beta2, 1-beta1, 1-beta2
	stepSize       float32 // -lr*correction2/correction1
	epsC2          float32 // correction2 * eps
	lr             float32
	decay          bool
	decayFactor    float32 // 1 - lr*wd
}

func newBnbConsts(hp Params) bnbConsts {
	lr, b1, b2 := float32(hp.LR), float32(hp.Beta1), float32(hp.Beta2)
	eps, wd := float32(hp.Eps), float32(hp.WeightDecay)
	c1 := 1 - pow32(b1, hp.Step)
	c2 := sqrt32(1 - pow32(b2, hp.Step))
	return bnbConsts{
		b1: b1, b2: b2, w1: 1 - b1, w2: 1 - b2,
		stepSize: float32(-lr*c2) / c1, epsC2: c2 * eps,
		lr: lr, decay: wd > 0, decayFactor: 1 - float32(lr*wd),
	}
}

// pow32 is powf(x, n) rounded to float32 (the GPU's __powf is an
// approximation within a few ulps of it).
func pow32(x float32, n int) float32 { return float32(math.Pow(float64(x), float64(n))) }

// fma32 is a*b + c rounded once to float32 (fmaf). The product of two
// float32 values is exact in float64; the float64 sum is exact up to the
// error TwoSum recovers, which decides the only case where rounding the
// float64 sum to float32 could go the wrong way: a sum exactly halfway
// between two float32 values.
func fma32(a, b, c float32) float32 {
	p := float64(a) * float64(b)
	s := p + float64(c)
	r := float32(s)
	bb := s - p
	e := (p - (s - bb)) + (float64(c) - bb)
	if e == 0 || float64(r) == s || math.IsInf(s, 0) || math.IsNaN(s) {
		return r
	}
	other := math.Nextafter32(r, float32(math.Inf(1)))
	if float64(r) > s {
		other = math.Nextafter32(r, float32(math.Inf(-1)))
	}
	if s != (float64(r)+float64(other))/2 {
		return r // not a tie: the float64 rounding cannot have crossed a float32 midpoint
	}
	if (e > 0) == (other > r) {
		return other
	}
	return r
}

// sqrt32 is the correctly rounded float32 square root (sqrtf).
func sqrt32(x float32) float32 { return float32(math.Sqrt(float64(x))) }

func checkLens(p, g, m, v int) error {
	if g != p || m != p || v != p {
		return fmt.Errorf("optim: parameter has %d values but gradient %d, first moment %d, second moment %d", p, g, m, v)
	}
	return nil
}
