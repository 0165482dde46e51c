package data

import "sort"

// Truncation and packing, after TRL 0.23.1's trl/data_utils.py
// (truncate_dataset, pack_dataset, _pack_bfd, _pack_wrapped, _SegmentTree).

// Sequence is one training row before collation: an example, or several
// packed together.
type Sequence struct {
	InputIDs       []int32
	CompletionMask []uint8 // nil when the data has none
	// SeqLengths are the lengths of the examples a bfd-packed sequence
	// holds, in order (TRL's seq_lengths column); nil otherwise.
	SeqLengths []int
}

// mapBatchSize is datasets' Dataset.map default batch_size. pack_dataset
// runs _pack_bfd and _pack_wrapped through map(batched=True), so each
// consecutive block of 1,000 examples is packed on its own: bins never mix
// examples of two blocks, and wrapped packing leaves a short tail per block.
const mapBatchSize = 1000

// Prepare truncates or packs tokenized examples into sequences. It returns
// the sequences and how many examples were truncated.
func Prepare(examples []Tokenized, opt SFTOptions) ([]Sequence, int, error) {
	if err := opt.validate(); err != nil {
		return nil, 0, err
	}
	truncated := 0
	switch opt.Strategy() {
	case "":
		seqs := make([]Sequence, len(examples))
		for i, e := range examples {
			seqs[i] = Sequence{InputIDs: e.InputIDs, CompletionMask: e.CompletionMask}
			if opt.MaxLength > 0 && len(e.InputIDs) > opt.MaxLength {
				seqs[i].InputIDs = e.InputIDs[:opt.MaxLength]
				if e.CompletionMask != nil {
					seqs[i].CompletionMask = e.CompletionMask[:opt.MaxLength]
				}
				truncated++
			}
		}
		return seqs, truncated, nil
	case PackBFD:
		var seqs []Sequence
		for start := 0; start < len(examples); start += mapBatchSize {
			block := examples[start:min(start+mapBatchSize, len(examples))]
			for _, e := range block {
				if len(e.InputIDs) > opt.MaxLength {
					truncated++
				}
			}
			seqs = append(seqs, packBFD(block, opt.MaxLength)...)
		}
		return seqs, truncated, nil
	default: // PackWrapped
		var seqs []Sequence
		for start := 0; start < len(examples); start += mapBatchSize {
			seqs = append(seqs, packWrapped(examples[start:min(start+mapBatchSize, len(examples))], opt.MaxLength)...)
		}
		return seqs, 0, nil
	}
}

// BFDBins returns the bins _pack_bfd builds for examples of the given
// lengths: each bin lists example indexes in the order they were placed.
//
// Every length is first cut to seqLength (pc.list_slice). Examples are
// visited longest first; ties keep their original order (pyarrow's sort is
// stable). Each goes into the open bin whose free space is the smallest that
// still fits it (best fit: _SegmentTree.search finds the least free space
// >= length); among bins with exactly that space the one that reached it
// first is used (a FIFO deque per amount of space); if no open bin fits, a
// new bin is opened. Bins come out in the order they were opened.
func BFDBins(lengths []int, seqLength int) [][]int {
	order := make([]int, len(lengths))
	lens := make([]int, len(lengths))
	for i, l := range lengths {
		order[i] = i
		lens[i] = min(l, seqLength)
	}
	sort.SliceStable(order, func(a, b int) bool { return lens[order[a]] > lens[order[b]] })

	tree := newSegmentTree(seqLength)
	tree.add(seqLength) // a fresh bin is always available
	spaceToBins := map[int][]int{}
	var bins [][]int
	for _, idx := range order {
		length := lens[idx]
		space := tree.search(length)
		var bin int
		if space < seqLength {
			bin = spaceToBins[space][0]
			spaceToBins[space] = spaceToBins[space][1:]
		} else {
			bin = len(bins)
			bins = append(bins, nil)
		}
		bins[bin] = append(bins[bin], idx)
		if space < seqLength && len(spaceToBins[space]) == 0 {
			tree.remove(space)
		}
		space -= length
		spaceToBins[space] = append(spaceToBins[space], bin)
		if space > 0 {
			tree.add(space)
		}
	}
	return bins
}

// packBFD packs one block of examples with best-fit decreasing.
func packBFD(examples []Tokenized, seqLength int) []Sequence {
	lengths := make([]int, len(examples))
	for i, e := range examples {
		lengths[i] = len(e.InputIDs)
	}
	bins := BFDBins(lengths, seqLength)
	seqs := make([]Sequence, len(bins))
	for b, bin := range bins {
		s := &seqs[b]
		hasMask := examples[bin[0]].CompletionMask != nil
		for _, idx := range bin {
			e := examples[idx]
			n := min(len(e.InputIDs), seqLength)
			s.InputIDs = append(s.InputIDs, e.InputIDs[:n]...)
			if hasMask {
				s.CompletionMask = append(s.CompletionMask, e.CompletionMask[:n]...)
			}
			s.SeqLengths = append(s.SeqLengths, n)
		}
	}
	return seqs
}

// packWrapped concatenates one block of examples and cuts it every
// seqLength tokens; the last piece may be shorter.
func packWrapped(examples []Tokenized, seqLength int) []Sequence {
	var ids []int32
	var mask []uint8
	hasMask := len(examples) > 0 && examples[0].CompletionMask != nil
	for _, e := range examples {
		ids = append(ids, e.InputIDs...)
		if hasMask {
			mask = append(mask, e.CompletionMask...)
		}
	}
	var seqs []Sequence
	for start := 0; start < len(ids); start += seqLength {
		end := min(start+seqLength, len(ids))
		s := Sequence{InputIDs: ids[start:end:end]}
		if hasMask {
			s.CompletionMask = mask[start:end:end]
		}
		seqs = append(seqs, s)
	}
	return seqs
}

// segmentTree is TRL's _SegmentTree: a max-tree over the values 1..maxval
// where leaf v-1 holds v while some open bin has exactly v free, so
// search(v) finds the least free space >= v.
type segmentTree struct {
	maxval, size int
	tree         []int
}

func newSegmentTree(maxval int) *segmentTree {
	size := 1
	for size < maxval {
		size <<= 1
	}
	return &segmentTree{maxval: maxval, size: size, tree: make([]int, 2*size)}
}

func (t *segmentTree) set(val, to int) {
	i := t.size + val - 1
	t.tree[i] = to
	for i > 1 {
		i >>= 1
		t.tree[i] = max(t.tree[2*i], t.tree[2*i+1])
	}
}

func (t *segmentTree) add(val int)    { t.set(val, val) }
func (t *segmentTree) remove(val int) { t.set(val, 0) }

func (t *segmentTree) search(val int) int {
	i := 1
	for i < t.size {
		if t.tree[2*i] >= val {
			i = 2 * i
		} else {
			i = 2*i + 1
		}
	}
	return t.tree[i]
}
