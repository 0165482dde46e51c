//go:build cuda

package cuda

import (
	"fmt"
	"regexp"
	"sort"
	"strings"

	"gorgonia.org/cu"
)

// memMap is a development aid for issue 8's memory budget
// (OLLAMA_TUNE_CUDA_MEMMAP=1): what each live allocation is for, and what
// was live when Allocated's peak was last raised, by kind.
type memMap struct {
	live   map[cu.DevicePtr]memEntry
	atPeak map[string]memSum
}

type memEntry struct {
	n    int64
	what string
}

type memSum struct {
	n     int64
	count int
}

func newMemMap() *memMap {
	return &memMap{live: map[cu.DevicePtr]memEntry{}, atPeak: map[string]memSum{}}
}

func (m *memMap) alloc(p cu.DevicePtr, n int64, what string, newPeak bool) {
	m.live[p] = memEntry{n: n, what: what}
	if newPeak {
		m.snapshot()
	}
}

func (m *memMap) free(p cu.DevicePtr) { delete(m.live, p) }

// snapshot makes what is live now the peak's contents.
func (m *memMap) snapshot() {
	clear(m.atPeak)
	for _, e := range m.live {
		s := m.atPeak[e.what]
		s.n += e.n
		s.count++
		m.atPeak[e.what] = s
	}
}

// digits groups the NF4 weights' and tensors' shapes in the report's
// coarse lines.
var digits = regexp.MustCompile(`\[[0-9 ,]+\]`)

// MemoryAtPeak reports what the backend held when its peak was last
// raised (since New or ResetPeak), largest first: "" unless
// OLLAMA_TUNE_CUDA_MEMMAP is set.
func (b *Backend) MemoryAtPeak() string {
	if b.mem == nil {
		return ""
	}
	type line struct {
		what string
		memSum
	}
	var lines []line
	coarse := map[string]memSum{}
	var total int64
	for w, s := range b.mem.atPeak {
		lines = append(lines, line{w, s})
		k := digits.ReplaceAllString(w, "[..]")
		c := coarse[k]
		c.n += s.n
		c.count += s.count
		coarse[k] = c
		total += s.n
	}
	sort.Slice(lines, func(i, j int) bool { return lines[i].n > lines[j].n })
	var sb strings.Builder
	fmt.Fprintf(&sb, "memory at the peak: %s in all\n", fmtBytes(total))
	for _, l := range lines {
		fmt.Fprintf(&sb, "  %10s  %4d x  %s\n", fmtBytes(l.n), l.count, l.what)
	}
	var cl []line
	for w, s := range coarse {
		cl = append(cl, line{w, s})
	}
	sort.Slice(cl, func(i, j int) bool { return cl[i].n > cl[j].n })
	sb.WriteString("by kind:\n")
	for _, l := range cl {
		fmt.Fprintf(&sb, "  %10s  %4d x  %s\n", fmtBytes(l.n), l.count, l.what)
	}
	return sb.String()
}
