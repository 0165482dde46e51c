package data

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// mix64 is SplitMix64's output function; with the generator's state at 0
// its first two outputs are the published test values 0xE220A8397B1DCDAF
// and 0x6E789E6AA1B965F4 (the state advances by the golden gamma).
func TestMix64IsSplitMix64(t *testing.T) {
	if got := mix64(0); got != 0xE220A8397B1DCDAF {
		t.Errorf("mix64(0) = %#x", got)
	}
	if got := mix64(0x9E3779B97F4A7C15); got != 0x6E789E6AA1B965F4 {
		t.Errorf("mix64(gamma) = %#x", got)
	}
}

func TestPermutation(t *testing.T) {
	p := Permutation(1000, 42)
	sorted := slices.Clone(p)
	slices.Sort(sorted)
	for i, v := range sorted {
		if v != i {
			t.Fatalf("not a permutation of 0..999: sorted[%d] = %d", i, v)
		}
	}
	if !slices.Equal(p, Permutation(1000, 42)) {
		t.Error("same seed, different order")
	}
	if slices.Equal(p, Permutation(1000, 43)) {
		t.Error("seeds 42 and 43 give the same order")
	}
	// Pinned: these orders must not change across releases or Go versions,
	// or a resumed run would see other batches.
	if got := fmt.Sprint(Permutation(10, 42)); got != pinnedPerm42 {
		t.Errorf("Permutation(10, 42) = %s, pinned %s", got, pinnedPerm42)
	}
	if len(Permutation(0, 1)) != 0 || !slices.Equal(Permutation(1, 1), []int{0}) {
		t.Error("trivial sizes")
	}
}

const pinnedPerm42 = "[8 2 6 7 5 9 1 0 4 3]"

// Every order of 4 items should come up about equally often.
func TestPermutationUniform(t *testing.T) {
	counts := map[string]int{}
	const trials = 24000
	for s := uint64(0); s < trials; s++ {
		counts[fmt.Sprint(Permutation(4, s))]++
	}
	if len(counts) != 24 {
		t.Fatalf("%d distinct orders of 4, want 24", len(counts))
	}
	for k, c := range counts {
		if c < 800 || c > 1200 { // expected 1000, sd about 31
			t.Errorf("order %s came up %d times in %d", k, c, trials)
		}
	}
}

func TestShuffleAndEpochs(t *testing.T) {
	xs := []string{"a", "b", "c", "d", "e", "f"}
	s := Shuffle(xs, 7)
	if strings.Join(xs, "") != "abcdef" {
		t.Error("Shuffle changed its input")
	}
	p := Permutation(6, 7)
	for i := range s {
		if s[i] != xs[p[i]] {
			t.Fatalf("Shuffle is not Permutation applied: %v vs %v", s, p)
		}
	}
	if EpochSeed(1, 0) == EpochSeed(1, 1) || EpochSeed(1, 0) == EpochSeed(2, 0) {
		t.Error("epoch seeds collide")
	}
	b0 := EpochBatches(10, 4, true, 42, 0)
	b1 := EpochBatches(10, 4, true, 42, 1)
	if len(b0) != 3 || len(b0[2]) != 2 || fmt.Sprint(b0) == fmt.Sprint(b1) {
		t.Errorf("epoch batches %v / %v", b0, b1)
	}
	if fmt.Sprint(b0) != fmt.Sprint(EpochBatches(10, 4, true, 42, 0)) {
		t.Error("epoch order is not reproducible")
	}
	if got := fmt.Sprint(EpochBatches(5, 2, false, 42, 3)); got != "[[0 1] [2 3] [4]]" {
		t.Errorf("sequential batches %s", got)
	}
}

// Sizes as datasets' train_test_split computes them: test = ceil(f*n) for a
// fraction, the count itself for a whole number; train = n - test.
func TestSplitSizes(t *testing.T) {
	cases := []struct {
		n           int
		size        float64
		train, test int
	}{
		{720, 0.1, 648, 72},
		{720, 0.15, 612, 108},
		{10, 0.3, 7, 3},
		{100, 0.07, 92, 8}, // 0.07*100 = 7.000000000000001 in float64: ceil gives 8, as in Python
		{10, 0.25, 7, 3},
		{3, 0.01, 2, 1},
		{720, 50, 670, 50},
		{2, 1, 1, 1},
	}
	for _, c := range cases {
		tr, te, err := SplitSizes(c.n, c.size)
		if err != nil || tr != c.train || te != c.test {
			t.Errorf("SplitSizes(%d, %g) = %d, %d, %v; want %d, %d", c.n, c.size, tr, te, err, c.train, c.test)
		}
	}
	for _, bad := range []struct {
		n    int
		size float64
		frag string
	}{{10, 0, "fraction"}, {10, -1, "fraction"}, {10, 2.5, "whole number"}, {10, 10, "no training"}, {1, 0.5, "no training"}} {
		if _, _, err := SplitSizes(bad.n, bad.size); err == nil || !strings.Contains(err.Error(), bad.frag) {
			t.Errorf("SplitSizes(%d, %g): %v, want an error about %q", bad.n, bad.size, err, bad.frag)
		}
	}
}

func TestTrainTestSplit(t *testing.T) {
	xs := make([]int, 720)
	for i := range xs {
		xs[i] = i
	}
	train, test, err := TrainTestSplit(xs, 0.1, 42)
	if err != nil {
		t.Fatal(err)
	}
	if len(train) != 648 || len(test) != 72 {
		t.Fatalf("%d/%d", len(train), len(test))
	}
	p := Permutation(720, 42)
	if !slices.Equal(test, p[:72]) || !slices.Equal(train, p[72:]) {
		t.Error("split is not the permutation's head (test) and tail (train)")
	}
	all := append(slices.Clone(train), test...)
	slices.Sort(all)
	if !slices.Equal(all, xs) {
		t.Error("split loses or repeats rows")
	}
	train2, test2, _ := TrainTestSplit(xs, 0.1, 42)
	if !slices.Equal(train, train2) || !slices.Equal(test, test2) {
		t.Error("same seed, different split")
	}
	if _, _, err := TrainTestSplit(xs, 720, 1); err == nil {
		t.Error("holding out every row must fail")
	}
}
