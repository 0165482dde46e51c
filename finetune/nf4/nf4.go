// Package nf4 is bitsandbytes' 4-bit NormalFloat quantization (QLoRA's
// storage for frozen base weights) and its 8-bit blockwise dynamic
// quantization, which NF4 uses to compress its own absmax values ("double
// quantization") and which the 8-bit optimizers use for their moments.
//
// Everything follows bitsandbytes 0.45 (functional.py quantize_4bit,
// dequantize_4bit, quantize_blockwise, create_dynamic_map and the CUDA
// kernels kQuantizeBlockwise, dQuantizeNF4, dQuantize, kDequantizeBlockwise)
// operation by operation in float32, so that the codes can be compared byte
// for byte with the reference. The one deliberate difference: the mean of
// the absmax values (the double-quant offset) is the correctly rounded mean,
// where bitsandbytes takes torch's float32 mean on the GPU, whose summation
// order (and so its last bit) is unspecified. testdata/nf4_ref.py implements
// the same rules in PyTorch and is bit-identical to this package.
//
// Layout (bitsandbytes'): the weight [out, in] is flattened row-major and
// cut into blocks of 64 values; each block is scaled by its absmax into
// [-1, 1] and every value is replaced by the index of the nearest of the 16
// NF4 code values. Two indices share a byte, the first element in the high
// nibble.
package nf4

import (
	"fmt"
	"math"

	"github.com/ollama-tune/ollama-tune/internal/parallel"
)

// BlockSize is the number of weights that share one absmax (bitsandbytes'
// default blocksize for 4-bit, which transformers uses).
const BlockSize = 64

// AbsmaxBlockSize is the number of absmax values that share one scale when
// they are double-quantized (bitsandbytes quantizes them with blocksize 256).
const AbsmaxBlockSize = 256

// Codebook holds the 16 NF4 values (bitsandbytes get_4bit_type("nf4"), as
// float32): quantiles of N(0,1) normalized to [-1, 1], with an exact zero.
var Codebook = [16]float32{
	-1.0,
	-0.6961928009986877,
	-0.5250730514526367,
	-0.39491748809814453,
	-0.28444138169288635,
	-0.18477343022823334,
	-0.09105003625154495,
	0.0,
	0.07958029955625534,
	0.16093020141124725,
	0.24611230194568634,
	0.33791524171829224,
	0.44070982933044434,
	0.5626170039176941,
	0.7229568362236023,
	1.0,
}

// thresholds are the decision points of bitsandbytes' dQuantizeNF4 tree
// (float32 literals in the CUDA source, the midpoints between neighbouring
// code values), ascending. Code k is chosen when thresholds[k-1] < x <=
// thresholds[k]: a value exactly on a threshold goes to the lower code.
var thresholds = [15]float32{
	-0.8480964004993439,
	-0.6106329262256622,
	-0.4599952697753906,
	-0.33967943489551544,
	-0.23460740596055984,
	-0.13791173323988914,
	-0.045525018125772476,
	0.03979014977812767,
	0.1202552504837513,
	0.2035212516784668,
	0.2920137718319893,
	0.3893125355243683,
	0.5016634166240692,
	0.6427869200706482,
	0.8614784181118011,
}

// quantizeNF4 is dQuantizeNF4 from bitsandbytes' kernels.cu, the same tree
// of strict comparisons. A NaN (a block whose absmax is 0 gives 0 * +Inf)
// fails every comparison and lands on code 0, as on the GPU.
func quantizeNF4(x float32) byte {
	t := &thresholds
	if x > t[7] {
		if x > t[11] {
			if x > t[13] {
				if x > t[14] {
					return 0b1111
				}
				return 0b1110
			}
			if x > t[12] {
				return 0b1101
			}
			return 0b1100
		}
		if x > t[9] {
			if x > t[10] {
				return 0b1011
			}
			return 0b1010
		}
		if x > t[8] {
			return 0b1001
		}
		return 0b1000
	}
	if x > t[3] {
		if x > t[5] {
			if x > t[6] {
				return 0b0111
			}
			return 0b0110
		}
		if x > t[4] {
			return 0b0101
		}
		return 0b0100
	}
	if x > t[1] {
		if x > t[2] {
			return 0b0011
		}
		return 0b0010
	}
	if x > t[0] {
		return 0b0001
	}
	return 0b0000
}

// Quantized is one NF4 weight in bitsandbytes' storage.
type Quantized struct {
	Out, In int
	// Codes holds ceil(Out*In/2) bytes, element 2k in the high nibble of
	// byte k and element 2k+1 in its low nibble.
	Codes       []byte
	DoubleQuant bool
	// Absmax is one float32 per 64-block, when !DoubleQuant.
	Absmax []float32
	// AbsmaxCodes is one uint8 per 64-block (an index into
	// DynamicMap(true)), when DoubleQuant.
	AbsmaxCodes []byte
	// AbsmaxScales is one float32 per 256 absmax values, when DoubleQuant.
	AbsmaxScales []float32
	// AbsmaxOffset is the mean of all absmax values, subtracted before
	// they are quantized, when DoubleQuant.
	AbsmaxOffset float32
}

// signedMap is the code of the double-quantized absmax values.
var signedMap = DynamicMap(true)

// NumBlocks is the number of 64-blocks of a tensor of n values.
func NumBlocks(n int) int { return (n + BlockSize - 1) / BlockSize }

// Quantize quantizes w, row-major [out, in], to NF4. With doubleQuant the
// absmax values are quantized again (bitsandbytes' compress_statistics,
// transformers' bnb_4bit_use_double_quant). The work is spread over
// goroutines by blocks. It returns nil when len(w) != out*in or a dimension
// is not positive; use Check first to get the reason.
func Quantize(w []float32, out, in int, doubleQuant bool) *Quantized {
	if Check(len(w), out, in) != nil {
		return nil
	}
	n := len(w)
	nb := NumBlocks(n)
	q := &Quantized{Out: out, In: in, DoubleQuant: doubleQuant, Codes: make([]byte, (n+1)/2)}
	absmax := make([]float32, nb)
	parallel.For(nb, 256, func(b0, b1 int) {
		for b := b0; b < b1; b++ {
			quantizeBlock(q.Codes, absmax, w, b)
		}
	})
	if !doubleQuant {
		q.Absmax = absmax
		return q
	}
	// compress_statistics: offset = absmax.mean(); absmax -= offset;
	// quantize_blockwise(absmax, blocksize=256) with the signed dynamic map.
	q.AbsmaxOffset = Mean(absmax)
	for i := range absmax {
		absmax[i] -= q.AbsmaxOffset
	}
	q.AbsmaxCodes, q.AbsmaxScales = QuantizeBlockwise8(absmax, &signedMap, AbsmaxBlockSize)
	return q
}

// Check says why a tensor of n values cannot be an [out, in] weight.
func Check(n, out, in int) error {
	if out <= 0 || in <= 0 {
		return fmt.Errorf("nf4: weight shape [%d, %d]: both dimensions must be positive", out, in)
	}
	if int64(out)*int64(in) != int64(n) {
		return fmt.Errorf("nf4: weight shape [%d, %d] needs %d values, got %d", out, in, int64(out)*int64(in), n)
	}
	return nil
}

// quantizeBlock is one iteration of kQuantizeBlockwise<T, 64, 2, 0, NF4>:
// absmax over the valid values, its float32 reciprocal, x * reciprocal into
// the NF4 tree. The last block of an odd-length tensor pads with a zero, so
// the unused low nibble of the last byte holds the code of 0 * reciprocal.
func quantizeBlock(codes []byte, absmax, w []float32, b int) {
	lo := b * BlockSize
	hi := min(lo+BlockSize, len(w))
	var amax float32
	for _, x := range w[lo:hi] {
		if a := abs32(x); a > amax {
			amax = a
		}
	}
	absmax[b] = amax
	r := 1 / amax // +Inf for an all-zero block; 0 * Inf = NaN -> code 0, like the GPU
	for i := lo; i < hi; i += 2 {
		hiNib := quantizeNF4(w[i] * r)
		var pad float32
		if i+1 < hi {
			pad = w[i+1]
		}
		codes[i/2] = hiNib<<4 | quantizeNF4(pad*r)
	}
}

// BlockAbsmax is the absmax of 64-block b as dequantize_4bit uses it: with
// double quantization code*scale rounded to float32, then + offset rounded
// again (two separate float32 operations in bitsandbytes:
// dequantize_blockwise, then absmax += offset).
func (q *Quantized) BlockAbsmax(b int) float32 {
	if !q.DoubleQuant {
		return q.Absmax[b]
	}
	a := float32(signedMap[q.AbsmaxCodes[b]] * q.AbsmaxScales[b/AbsmaxBlockSize])
	return a + q.AbsmaxOffset
}

// Dequantize writes all Out*In values to dst: Codebook[code] * absmax, one
// float32 multiply (kDequantizeBlockwise<T, 512, 64, 8, NF4> before it
// rounds to the output type).
func (q *Quantized) Dequantize(dst []float32) {
	n := q.Out * q.In
	parallel.For(NumBlocks(n), 256, func(b0, b1 int) {
		q.dequantizeRange(dst[b0*BlockSize:min(b1*BlockSize, n)], b0*BlockSize)
	})
}

// DequantizeRows writes rows row0..row0+nrows-1 ([nrows, In] values) to dst,
// for matmuls that dequantize a tile of the weight at a time.
func (q *Quantized) DequantizeRows(dst []float32, row0, nrows int) {
	q.dequantizeRange(dst[:nrows*q.In], row0*q.In)
}

// dequantizeRange writes the values first..first+len(dst)-1.
func (q *Quantized) dequantizeRange(dst []float32, first int) {
	i := first
	end := first + len(dst)
	for i < end {
		b := i / BlockSize
		a := q.BlockAbsmax(b)
		stop := min((b+1)*BlockSize, end)
		for ; i < stop; i++ {
			c := q.Codes[i>>1]
			if i&1 == 0 {
				c >>= 4
			}
			dst[i-first] = Codebook[c&0x0F] * a
		}
	}
}

// PackedBytes is the size of the packed codes: what transformers'
// get_memory_footprint counts for a Linear4bit weight.
func (q *Quantized) PackedBytes() int64 { return int64(len(q.Codes)) }

// StateBytes is the quantization state beside the codes: the absmax values
// (or their codes, scales and offset) and the code tables (16 NF4 values,
// and the 256-entry dynamic map when double-quantized).
func (q *Quantized) StateBytes() int64 {
	n := int64(4 * len(Codebook))
	if !q.DoubleQuant {
		return n + 4*int64(len(q.Absmax))
	}
	return n + int64(len(q.AbsmaxCodes)) + 4*int64(len(q.AbsmaxScales)) + 4 + 4*256
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }
