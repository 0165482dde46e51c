package nf4

import (
	"math"
	"math/big"
	"sort"

	"github.com/ollama-tune/ollama-tune/internal/parallel"
)

// DynamicMap is bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7,
// total_bits=8): 256 sorted float32 values in [-1, 1] (signed) or [0, 1]
// (unsigned), dense near zero, sparse near one. The signed map quantizes
// double-quantized absmax values and the first Adam moment; the unsigned
// map the second moment.
//
// For exponent i = 0..6 the map holds the midpoints of
// torch.linspace(0.1, 1, 2^i + 1) (unsigned: 2^(i+1) + 1 points) times
// 10^(i-6), and with signed their negatives; then 0 and 1. The arithmetic is
// torch's, in float32 (see linspace32); midpoints (a + b) / 2;
// float32(10^e) * midpoint. This reproduces, bit for bit, the maps that
// bitsandbytes builds under PyTorch 2.11 on the reference GPU machine
// (checked by testdata/nf4_ref.py --selftest); PyTorch 1.13's vectorized
// linspace differed in the last bit of 42 signed entries.
func DynamicMap(signed bool) [256]float32 {
	const maxExponentBits, totalBits = 7, 8
	nonSignBits := totalBits - 1 // bitsandbytes: total_bits - (1 if signed else 1)
	data := make([]float32, 0, 256)
	for i := 0; i < maxExponentBits; i++ {
		items := 1<<(i+nonSignBits-maxExponentBits) + 1
		if !signed {
			items = 1<<(i+nonSignBits-maxExponentBits+1) + 1
		}
		b := linspace32(0.1, 1, items)
		scale := float32(math.Pow10(-(maxExponentBits - 1) + i))
		for k := 0; k+1 < len(b); k++ {
			mean := float32(b[k]+b[k+1]) / 2
			data = append(data, scale*mean)
			if signed {
				data = append(data, -scale*mean)
			}
		}
	}
	// additional_items = 2^(non_sign_bits - max_exponent_bits) - 1 = 0 here.
	data = append(data, 0, 1)
	sort.Slice(data, func(i, j int) bool { return data[i] < data[j] })
	var m [256]float32
	copy(m[:], data)
	return m
}

// linspace32 is torch.linspace(start, end, steps) in float32 as PyTorch 2's
// CPU kernel computes it: step = (end - start) / (steps - 1) in float32,
// then start + step*i below the halfway index and end - step*(steps-1-i)
// from it on, each a fused multiply-add (the compiler contracts the
// kernel's expression), so rounded once. The float64 FMA is exact here (a
// float32 times a small integer plus a float32 of nearby magnitude fits in
// 53 bits), so converting it to float32 is that single rounding.
func linspace32(start, end float64, steps int) []float32 {
	s, e := float32(start), float32(end)
	step := float32(e-s) / float32(steps-1)
	half := steps / 2
	out := make([]float32, steps)
	for i := range out {
		if i < half {
			out[i] = float32(math.FMA(float64(step), float64(i), float64(s)))
		} else {
			out[i] = float32(math.FMA(-float64(step), float64(steps-1-i), float64(e)))
		}
	}
	return out
}

// QuantizeDynamic is bitsandbytes' dQuantize<0> (and the optimizers'
// quantize_2D, which picks the same codes): a binary search over the sorted
// code for the bracket of x, then the nearer end, comparing x with the
// float32 midpoint. A value exactly on a midpoint keeps the pivot the
// search ended on. NaN lands on code 0.
func QuantizeDynamic(code *[256]float32, x float32) byte {
	pivot, upperPivot, lowerPivot := 127, 255, 0
	lower, upper := float32(-1), float32(1)
	val := code[pivot]
	for i := 64; i > 0; i >>= 1 {
		if x > val {
			lowerPivot, lower = pivot, val
			pivot += i
		} else {
			upperPivot, upper = pivot, val
			pivot -= i
		}
		val = code[pivot]
	}
	if upperPivot == 255 {
		upper = code[upperPivot]
	}
	if lowerPivot == 0 {
		lower = code[lowerPivot]
	}
	if x > val {
		if x > float32(upper+val)*0.5 {
			return byte(upperPivot)
		}
		return byte(pivot)
	}
	if x < float32(lower+val)*0.5 {
		return byte(lowerPivot)
	}
	return byte(pivot)
}

// QuantizeBlockwise8 is bitsandbytes' quantize_blockwise(x, code,
// blocksize) (kQuantizeBlockwise, General8bit, not stochastic): per block,
// absmax = max |x|, and each value becomes QuantizeDynamic(code, x *
// (1/absmax)) with the reciprocal rounded to float32 first, as the kernel
// does. It returns one code per value and one absmax per block, or nils
// when blocksize is not positive.
func QuantizeBlockwise8(x []float32, code *[256]float32, blocksize int) (codes []byte, absmax []float32) {
	if blocksize <= 0 {
		return nil, nil
	}
	nb := (len(x) + blocksize - 1) / blocksize
	codes = make([]byte, len(x))
	absmax = make([]float32, nb)
	parallel.For(nb, max(1, 16384/blocksize), func(b0, b1 int) {
		for b := b0; b < b1; b++ {
			lo, hi := b*blocksize, min((b+1)*blocksize, len(x))
			var amax float32
			for _, v := range x[lo:hi] {
				if a := abs32(v); a > amax {
					amax = a
				}
			}
			absmax[b] = amax
			r := 1 / amax
			for i := lo; i < hi; i++ {
				codes[i] = QuantizeDynamic(code, x[i]*r)
			}
		}
	})
	return codes, absmax
}

// DequantizeBlockwise8 is bitsandbytes' dequantize_blockwise
// (kDequantizeBlockwise, General8bit): dst[i] = code[codes[i]] *
// absmax[i/blocksize], one float32 multiply. dst must hold len(codes)
// values and absmax one value per block.
func DequantizeBlockwise8(codes []byte, absmax []float32, code *[256]float32, blocksize int, dst []float32) {
	if blocksize <= 0 {
		return
	}
	for i, c := range codes {
		dst[i] = code[c] * absmax[i/blocksize]
	}
}

// Mean is the mean of x as the double-quant offset uses it: the exact sum
// rounded to float64 (what Python's math.fsum returns), divided by len(x)
// in float64, rounded to float32. Unlike a float32 GPU reduction it does
// not depend on summation order, so the Python reference can reproduce it
// bit for bit. Non-finite inputs give the IEEE result of a plain sum.
func Mean(x []float32) float32 {
	if len(x) == 0 {
		return float32(math.NaN())
	}
	return float32(exactSum(x) / float64(len(x)))
}

// exactSum returns the correctly rounded float64 of the exact sum of x.
// Every finite float32 is m * 2^(e-150) with a 24-bit integer m, so the
// values are accumulated exactly as integers in one bin per exponent and
// the bins are combined with math/big at the end.
func exactSum(x []float32) float64 {
	var bins [255]int64 // biased exponent 1..254 (subnormals share bin 1); each adds < 2^24, so 2^39 values fit
	for _, v := range x {
		bits := math.Float32bits(v)
		exp := int(bits >> 23 & 0xff)
		if exp == 0xff {
			return naiveSum(x) // Inf or NaN: IEEE semantics
		}
		m := int64(bits & 0x7fffff)
		if exp == 0 {
			exp = 1
		} else {
			m |= 1 << 23
		}
		if bits>>31 != 0 {
			m = -m
		}
		bins[exp] += m
	}
	total := new(big.Int)
	term := new(big.Int)
	for e := 254; e >= 1; e-- {
		if bins[e] != 0 {
			term.SetInt64(bins[e])
			term.Lsh(term, uint(e-1))
			total.Add(total, term)
		}
	}
	f := new(big.Float).SetInt(total) // exact: precision grows to the bit length
	f.SetMantExp(f, -149)             // value = total * 2^(1-150)
	r, _ := f.Float64()               // nearest, ties to even
	return r
}

func naiveSum(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v)
	}
	return s
}
