package data

import (
	"fmt"
	"math"
	"math/bits"
)

// Seeded shuffling. Python's datasets and torch draw from numpy's and
// torch's generators, which this engine does not reproduce; what matters is
// that a seed gives the same order on every machine and every Go version.
// So the generator is written out here rather than taken from math/rand:
//
//	draw k = mix64(seed XOR mix64(k)), k = 0, 1, 2, ...
//
// where mix64 is SplitMix64's finaliser (the construction finetune.Uniform
// uses, so CPU and CUDA code could draw the same numbers). A draw below
// bound m is Lemire's multiply-shift: the high word of draw*m, rejecting the
// few draws whose low word falls under 2^64 mod m, so every value is equally
// likely. The permutation is Fisher-Yates: for i from n-1 down to 1, swap
// element i with element j = below(i+1).

// mix64 is SplitMix64's finaliser (the same function as finetune.Mix64).
func mix64(x uint64) uint64 {
	x += 0x9E3779B97F4A7C15
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
	x = (x ^ (x >> 27)) * 0x94D049BB133111EB
	return x ^ (x >> 31)
}

// stream is the counter-based generator above.
type stream struct {
	seed, k uint64
}

func (s *stream) next() uint64 {
	v := mix64(s.seed ^ mix64(s.k))
	s.k++
	return v
}

// below returns a uniform integer in [0, m), m > 0.
func (s *stream) below(m uint64) uint64 {
	hi, lo := bits.Mul64(s.next(), m)
	if lo < m {
		thresh := -m % m
		for lo < thresh {
			hi, lo = bits.Mul64(s.next(), m)
		}
	}
	return hi
}

// Permutation returns a seeded random permutation of 0..n-1.
func Permutation(n int, seed uint64) []int {
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	s := stream{seed: seed}
	for i := n - 1; i > 0; i-- {
		j := int(s.below(uint64(i + 1)))
		p[i], p[j] = p[j], p[i]
	}
	return p
}

// EpochSeed derives the shuffling seed of one epoch from the run's seed, so
// that every epoch has its own order and a resumed run repeats it.
func EpochSeed(seed uint64, epoch int) uint64 {
	return mix64(mix64(seed) ^ mix64(uint64(epoch)+0x632BE59BD9B4E019))
}

// Shuffle returns a copy of xs in a seeded random order.
func Shuffle[T any](xs []T, seed uint64) []T {
	out := make([]T, len(xs))
	for i, j := range Permutation(len(xs), seed) {
		out[i] = xs[j]
	}
	return out
}

// SplitSizes returns how many of n rows train_test_split(test_size) puts in
// each part, as the datasets library computes it: a fraction 0 < f < 1 gives
// ceil(f*n) test rows; a whole number c >= 1 gives c test rows. The train
// part must not be empty.
func SplitSizes(n int, testSize float64) (nTrain, nTest int, err error) {
	switch {
	case testSize <= 0 || math.IsNaN(testSize) || math.IsInf(testSize, 0):
		return 0, 0, fmt.Errorf("eval split %g: use a fraction in (0, 1) or a row count >= 1", testSize)
	case testSize < 1:
		nTest = int(math.Ceil(testSize * float64(n)))
	case testSize == math.Trunc(testSize):
		nTest = int(testSize)
	default:
		return 0, 0, fmt.Errorf("eval split %g: a count must be a whole number (or give a fraction below 1)", testSize)
	}
	nTrain = n - nTest
	if nTrain <= 0 {
		return 0, 0, fmt.Errorf("eval split %g of %d examples leaves no training examples; hold out fewer", testSize, n)
	}
	return nTrain, nTest, nil
}

// TrainTestSplit holds out an eval part like datasets' train_test_split with
// shuffle=True: the rows are permuted with the seed, the first nTest of the
// permutation are the test part and the rest, in permutation order, the
// train part.
func TrainTestSplit[T any](xs []T, testSize float64, seed uint64) (train, test []T, err error) {
	nTrain, nTest, err := SplitSizes(len(xs), testSize)
	if err != nil {
		return nil, nil, err
	}
	p := Permutation(len(xs), seed)
	test = make([]T, 0, nTest)
	for _, i := range p[:nTest] {
		test = append(test, xs[i])
	}
	train = make([]T, 0, nTrain)
	for _, i := range p[nTest:] {
		train = append(train, xs[i])
	}
	return train, test, nil
}
