package finetune

import (
	"math"
	"testing"
)

// DropoutKeep's rule (one hash per group of four indices, 16-bit fields)
// as its integer twin, field >= DropoutThreshold(p), which the CUDA kernels
// use.
func TestDropoutThreshold(t *testing.T) {
	for _, p := range []float32{0, -1, 0.05, 0.1, 0.25, 0.3, 0.5, 1e-7, 1.0 / 65536, 0.3333333, 0.999999, 1, 2} {
		thr := DropoutThreshold(p)
		if p > 0 && p < 1 && (float64(thr)/(1<<16) < float64(p) || float64(thr-1)/(1<<16) >= float64(p)) {
			t.Fatalf("p %v: threshold %d is not ceil(p * 2^16)", p, thr)
		}
		for i := uint64(0); i < 100000; i++ {
			const seed = 0x1234abcd
			field := Mix64(seed+(i/4)*0x9E3779B97F4A7C15) >> (16 * (i % 4)) & 0xFFFF
			if got, want := field >= thr, DropoutKeep(seed, i, p); got != want {
				t.Fatalf("p %v index %d: field %d >= %d is %v, DropoutKeep %v", p, i, field, thr, got, want)
			}
		}
	}
}

// The keep rate is 1 - DropoutThreshold(p)/2^16, within 2^-16 of 1-p, and
// the mask draws it within a few sigma: per field position in the group,
// overall, and for pairs of positions in one group (independence).
func TestDropoutKeepRate(t *testing.T) {
	const n = 1 << 22
	for _, c := range []struct {
		p    float32
		seed uint64
	}{{0.05, 1}, {0.1, DeriveSeed(7, 3, 2)}, {0.3, 99}, {0.5, DeriveSeed(1, 0, 0, 5)}} {
		q := 1 - float64(DropoutThreshold(c.p))/(1<<16) // the exact keep probability
		if d := math.Abs(q - (1 - float64(c.p))); d > 1.0/(1<<16) {
			t.Fatalf("p %v: keep probability %v is %g from 1-p", c.p, q, d)
		}
		var kept int
		var pos [4]int
		var pair [4][4]int
		for g := uint64(0); g < n/4; g++ {
			var k [4]bool
			for j := uint64(0); j < 4; j++ {
				k[j] = DropoutKeep(c.seed, 4*g+j, c.p)
				if k[j] {
					kept++
					pos[j]++
				}
			}
			for a := 0; a < 4; a++ {
				for b := a + 1; b < 4; b++ {
					if k[a] && k[b] {
						pair[a][b]++
					}
				}
			}
		}
		within := func(what string, count, trials int, prob float64) {
			mean, sigma := float64(trials)*prob, math.Sqrt(float64(trials)*prob*(1-prob))
			if z := (float64(count) - mean) / sigma; math.Abs(z) > 5 {
				t.Errorf("p %v seed %#x %s: %d of %d, expected %.0f (z = %.1f)", c.p, c.seed, what, count, trials, mean, z)
			}
		}
		within("kept", kept, n, q)
		for j := range pos {
			within("kept at position "+string(rune('0'+j)), pos[j], n/4, q)
			for b := j + 1; b < 4; b++ {
				within("kept at positions "+string(rune('0'+j))+","+string(rune('0'+b)), pair[j][b], n/4, q*q)
			}
		}
	}
}
