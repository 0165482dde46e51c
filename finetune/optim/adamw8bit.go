package optim

import (
	"fmt"
	"math"

	"github.com/ollama-tune/ollama-tune/finetune/nf4"
	"github.com/ollama-tune/ollama-tune/internal/parallel"
)

// The moments' codes: the first moment (signed) in bitsandbytes' signed
// dynamic map, the second (never negative) in the unsigned one.
var (
	signedMap   = nf4.DynamicMap(true)
	unsignedMap = nf4.DynamicMap(false)
)

// State8bit is one parameter's 8-bit AdamW state, bitsandbytes' state1,
// state2, absmax1, absmax2: one code per value for each moment and one
// float32 absmax per 256 values. All zero before the first step.
type State8bit struct {
	M, V             []byte
	AbsmaxM, AbsmaxV []float32
}

// NewState8bit is the zero state for a parameter of numel values.
func NewState8bit(numel int) *State8bit {
	nb := Blocks8bit(numel)
	return &State8bit{M: make([]byte, numel), V: make([]byte, numel),
		AbsmaxM: make([]float32, nb), AbsmaxV: make([]float32, nb)}
}

// DequantizeM writes the first moment as float32 (for tests and checkpoints).
func (s *State8bit) DequantizeM(dst []float32) {
	nf4.DequantizeBlockwise8(s.M, s.AbsmaxM, &signedMap, BlockSize8bit, dst)
}

// DequantizeV writes the second moment as float32.
func (s *State8bit) DequantizeV(dst []float32) {
	nf4.DequantizeBlockwise8(s.V, s.AbsmaxV, &unsignedMap, BlockSize8bit, dst)
}

// AdamW8bit is one update of bitsandbytes' blockwise 8-bit AdamW
// (optimizer_update_8bit_blockwise, "adam", blocksize 256), in place on p
// and the state (m, v codes; absmaxM, absmaxV one per 256 values). For each
// block of 256, in float32 (bitsandbytes rounds the hyper-parameters to
// float32 too):
//
//	c1 = 1 - beta1^t, c2 = sqrt(1 - beta2^t), step = -lr*c2/c1
//	v = vmap[v]*absmaxV * beta2 + (1-beta2)*g*g   (dequantize, update)
//	m = smap[m]*absmaxM * beta1 + (1-beta1)*g
//	absmaxM, absmaxV = max |m|, max |v| over the block
//	p += step * m/(sqrt(v) + c2*eps)
//	p *= 1 - lr*wd                                 (after the update, when wd > 0)
//	m, v codes = nearest map entries to m/absmaxM, v/absmaxV
//
// and, as the kernel does: a first-moment code whose sign differs from
// the moment's moves one step toward it; a non-finite gradient leaves p
// alone and resets that value's moments to zero; the absmax of a partial
// last block also sees the padding lanes (gradient 0, codes 128 and 0).
func AdamW8bit(p, g []float32, m, v []byte, absmaxM, absmaxV []float32, hp Params) error {
	n := len(p)
	if len(g) != n || len(m) != n || len(v) != n {
		return fmt.Errorf("optim: parameter has %d values but gradient %d, first-moment codes %d, second-moment codes %d", n, len(g), len(m), len(v))
	}
	if nb := Blocks8bit(n); len(absmaxM) != nb || len(absmaxV) != nb {
		return fmt.Errorf("optim: %d values need %d absmax per moment, got %d and %d", n, nb, len(absmaxM), len(absmaxV))
	}
	if err := hp.check(); err != nil {
		return err
	}
	k := newBnbConsts(hp)
	parallel.For(Blocks8bit(n), 16, func(b0, b1 int) {
		var s1, s2 [BlockSize8bit]float32
		for b := b0; b < b1; b++ {
			adam8bitBlock(p, g, m, v, absmaxM, absmaxV, b, &k, &s1, &s2)
		}
	})
	return nil
}

// adam8bitBlock is one thread block of kOptimizerStatic8bit2StateBlockwise.
func adam8bitBlock(p, g []float32, m, v []byte, absmaxM, absmaxV []float32, b int, k *bnbConsts, s1, s2 *[BlockSize8bit]float32) {
	lo := b * BlockSize8bit
	valid := min(BlockSize8bit, len(p)-lo)
	am1, am2 := absmaxM[b], absmaxV[b]
	max1, max2 := float32(-math.MaxFloat32), float32(-math.MaxFloat32)
	for j := range BlockSize8bit {
		// Padding lanes load gradient 0 and codes 128 (m) and 0 (v).
		var gj float32
		c1, c2 := byte(128), byte(0)
		if j < valid {
			gj, c1, c2 = g[lo+j], m[lo+j], v[lo+j]
		}
		if isFinite(gj) {
			x2 := float32(unsignedMap[c2] * am2)
			s2[j] = float32(x2*k.b2) + float32(float32(k.w2*gj)*gj)
			x1 := float32(signedMap[c1] * am1)
			s1[j] = float32(x1*k.b1) + float32(k.w1*gj)
		} else {
			s1[j], s2[j] = 0, 0
		}
		max1 = fmax(max1, abs32(s1[j]))
		max2 = fmax(max2, abs32(s2[j]))
	}
	absmaxM[b], absmaxV[b] = max1, max2
	for j := range valid {
		i := lo + j
		if isFinite(g[i]) {
			pi := p[i] + float32(k.stepSize*float32(s1[j]/float32(sqrt32(s2[j])+k.epsC2)))
			if k.decay {
				pi *= k.decayFactor
			}
			p[i] = pi
		}
		c1 := nf4.QuantizeDynamic(&signedMap, s1[j]/max1)
		if math.Signbit(float64(signedMap[c1])) != math.Signbit(float64(s1[j])) {
			if s1[j] > 0 {
				c1++
			} else {
				c1-- // uint8 arithmetic, as the kernel's unsigned char
			}
		}
		m[i] = c1
		v[i] = nf4.QuantizeDynamic(&unsignedMap, s2[j]/max2)
	}
}

// fmax is fmaxf: a NaN argument is ignored.
func fmax(a, b float32) float32 {
	if b > a || a != a {
		return b
	}
	return a
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }

func isFinite(x float32) bool { return math.Float32bits(x)&0x7f800000 != 0x7f800000 }
