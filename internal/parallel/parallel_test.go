package parallel

import (
	"slices"
	"sync"
	"testing"
)

// ranges records the ranges ForWorkers hands out, sorted.
func ranges(workers, n, grain int) [][2]int {
	var mu sync.Mutex
	var got [][2]int
	ForWorkers(workers, n, grain, func(lo, hi int) {
		mu.Lock()
		got = append(got, [2]int{lo, hi})
		mu.Unlock()
	})
	slices.SortFunc(got, func(a, b [2]int) int { return a[0] - b[0] })
	return got
}

func TestForWorkersCoversOnce(t *testing.T) {
	for _, tc := range []struct{ workers, n, grain int }{
		{1, 10, 1}, {4, 10, 1}, {4, 10, 3}, {3, 1000, 64}, {16, 1_000_000, 16384},
		{8, 7, 100}, {2, 1, 0}, {5, 23, 5}, {4, 16, 4},
	} {
		got := ranges(tc.workers, tc.n, tc.grain)
		if len(got) > max(tc.workers, 1) {
			t.Errorf("%+v: %d ranges, more than the %d workers", tc, len(got), tc.workers)
		}
		next := 0
		for i, r := range got {
			if r[0] != next || r[1] <= r[0] {
				t.Fatalf("%+v: range %d is %v after %d (ranges %v)", tc, i, r, next, got)
			}
			if g := max(tc.grain, 1); i < len(got)-1 && (r[1]-r[0])%g != 0 {
				t.Errorf("%+v: range %v is not a multiple of the grain", tc, r)
			}
			next = r[1]
		}
		if next != tc.n {
			t.Errorf("%+v: ranges %v end at %d, want %d", tc, got, next, tc.n)
		}
	}
}

func TestForWorkersSplits(t *testing.T) {
	if got := ranges(4, 16, 4); !slices.Equal(got, [][2]int{{0, 4}, {4, 8}, {8, 12}, {12, 16}}) {
		t.Errorf("4 workers, 16 items, grain 4: %v", got)
	}
	if got := ranges(4, 100, 100); len(got) != 1 {
		t.Errorf("n <= grain: %v, want one range", got)
	}
	if got := ranges(4, 0, 1); len(got) != 0 {
		t.Errorf("n = 0: body ran on %v", got)
	}
}

func TestForSums(t *testing.T) {
	x := make([]int, 100_003)
	For(len(x), 1000, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			x[i] += i
		}
	})
	for i, v := range x {
		if v != i {
			t.Fatalf("x[%d] = %d: element visited %d times", i, v, v/max(i, 1))
		}
	}
}
