package tokenizer

import (
	"fmt"
	"sync"
	"unicode/utf8"
)

// model turns one pre-tokenized word into ids. Both the tokenizer.json BPE
// (merge ranks) and the SentencePiece BPE (piece scores) implement it.
type model interface {
	// tokenize appends the ids of word to dst.
	tokenize(word string, dst []int32) []int32
	tokenToID(tok string) (int32, bool)
	idToToken(id int32) (string, bool)
	// size is one past the largest id the model knows.
	size() int
}

// bpeModel is tokenizers' BPE model (models/bpe/model.rs): the word starts as
// one symbol per character (or its <0xXX> bytes when the character is not in
// the vocabulary), then the pair with the lowest merge rank is merged, the
// leftmost first among equals, until no pair has a merge.
type bpeModel struct {
	vocab  map[string]int32
	tokens []string // id -> token; "" where an id is unused
	merges map[uint64]merge

	unkID                   int32 // -1 if none
	fuseUnk                 bool
	byteFallback            bool
	byteIDs                 [256]int32 // <0xXX> ids, -1 where absent
	ignoreMerges            bool
	continuingSubwordPrefix string
	endOfWordSuffix         string

	cache wordCache
}

type merge struct{ rank, newID int32 }

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// newBPEModel builds the merge map as BpeBuilder::build does: merge i of
// (a, b) has rank i and yields the token a + b without b's
// continuing-subword prefix.
func newBPEModel(vocab map[string]int32, merges [][2]string, unk *string, continuingSubwordPrefix string) (*bpeModel, error) {
	m := &bpeModel{vocab: vocab, merges: make(map[uint64]merge, len(merges)), unkID: -1,
		continuingSubwordPrefix: continuingSubwordPrefix}
	maxID := int32(-1)
	for tok, id := range vocab {
		if id < 0 {
			return nil, fmt.Errorf("vocab: token %q has negative id %d", tok, id)
		}
		maxID = max(maxID, id)
	}
	m.tokens = make([]string, maxID+1)
	for tok, id := range vocab {
		m.tokens[id] = tok
	}
	for i := range m.byteIDs {
		m.byteIDs[i] = -1
		if id, ok := vocab[fmt.Sprintf("<0x%02X>", i)]; ok {
			m.byteIDs[i] = id
		}
	}
	if unk != nil {
		id, ok := vocab[*unk]
		if !ok {
			return nil, fmt.Errorf("unk_token %q is not in the vocab", *unk)
		}
		m.unkID = id
	}
	for i, p := range merges {
		a, ok := vocab[p[0]]
		if !ok {
			return nil, fmt.Errorf("merges[%d]: %q is not in the vocab", i, p[0])
		}
		b, ok := vocab[p[1]]
		if !ok {
			return nil, fmt.Errorf("merges[%d]: %q is not in the vocab", i, p[1])
		}
		rhs := p[1]
		if len(rhs) < len(continuingSubwordPrefix) {
			return nil, fmt.Errorf("merges[%d]: %q is shorter than the continuing_subword_prefix %q", i, rhs, continuingSubwordPrefix)
		}
		merged := p[0] + rhs[len(continuingSubwordPrefix):]
		id, ok := vocab[merged]
		if !ok {
			return nil, fmt.Errorf("merges[%d]: the merged token %q is not in the vocab", i, merged)
		}
		// A later duplicate overwrites an earlier one, like the Rust HashMap
		// collect does.
		m.merges[pairKey(a, b)] = merge{rank: int32(i), newID: id}
	}
	return m, nil
}

func (m *bpeModel) tokenToID(tok string) (int32, bool) {
	id, ok := m.vocab[tok]
	return id, ok
}

func (m *bpeModel) idToToken(id int32) (string, bool) {
	if id < 0 || int(id) >= len(m.tokens) || m.tokens[id] == "" {
		return "", false
	}
	return m.tokens[id], true
}

func (m *bpeModel) size() int { return len(m.tokens) }

func (m *bpeModel) tokenize(w string, dst []int32) []int32 {
	if w == "" {
		return dst
	}
	if m.ignoreMerges {
		if id, ok := m.vocab[w]; ok {
			return append(dst, id)
		}
	}
	if ids, ok := m.cache.get(w); ok {
		return append(dst, ids...)
	}
	ids := m.mergeWord(w)
	m.cache.put(w, ids)
	return append(dst, ids...)
}

type bpeSymbol struct {
	id         int32
	prev, next int32
	len        int32 // bytes; 0 marks a symbol merged into its left neighbour
}

// mergeWord is merge_word + Word::merge_all.
func (m *bpeModel) mergeWord(w string) []int32 {
	syms := make([]bpeSymbol, 0, len(w))
	add := func(id int32, n int) {
		prev := int32(len(syms)) - 1
		if prev >= 0 {
			syms[prev].next = int32(len(syms))
		}
		syms = append(syms, bpeSymbol{id: id, prev: prev, next: -1, len: int32(n)})
	}
	unkPending, unkLen := false, 0
	for i := 0; i < len(w); {
		_, n := utf8.DecodeRuneInString(w[i:])
		s := w[i : i+n]
		if m.continuingSubwordPrefix != "" && i > 0 {
			s = m.continuingSubwordPrefix + s
		}
		if m.endOfWordSuffix != "" && i+n == len(w) {
			s += m.endOfWordSuffix
		}
		i += n
		if id, ok := m.vocab[s]; ok {
			if unkPending {
				add(m.unkID, unkLen)
				unkPending = false
			}
			add(id, n)
			continue
		}
		if m.byteFallback {
			all := true
			for j := 0; j < len(s); j++ {
				if m.byteIDs[s[j]] < 0 {
					all = false
					break
				}
			}
			if all {
				// As in tokenizers, a pending unk is not flushed here.
				for j := 0; j < len(s); j++ {
					add(m.byteIDs[s[j]], 1)
				}
				continue
			}
		}
		if m.unkID >= 0 {
			switch {
			case unkPending && m.fuseUnk:
				unkLen += n
			case unkPending:
				add(m.unkID, unkLen)
				unkLen = n
			default:
				unkPending, unkLen = true, n
			}
		}
	}
	if unkPending {
		add(m.unkID, unkLen)
	}

	var h queue[mergeItem]
	for i := 0; i+1 < len(syms); i++ {
		if mg, ok := m.merges[pairKey(syms[i].id, syms[i+1].id)]; ok {
			h.push(mergeItem{pos: int32(i), rank: mg.rank, newID: mg.newID})
		}
	}
	for h.len() > 0 {
		top := h.pop()
		cur := &syms[top.pos]
		if cur.len == 0 || cur.next == -1 {
			continue
		}
		nextPos := cur.next
		right := syms[nextPos]
		// Skip an expired entry: the pair at pos no longer merges into newID.
		if mg, ok := m.merges[pairKey(cur.id, right.id)]; !ok || mg.newID != top.newID {
			continue
		}
		cur.id = top.newID
		cur.len += right.len
		cur.next = right.next
		syms[nextPos].len = 0
		if right.next > -1 && int(right.next) < len(syms) {
			syms[right.next].prev = top.pos
		}
		if cur.prev >= 0 {
			if mg, ok := m.merges[pairKey(syms[cur.prev].id, cur.id)]; ok {
				h.push(mergeItem{pos: cur.prev, rank: mg.rank, newID: mg.newID})
			}
		}
		if cur.next >= 0 && int(cur.next) < len(syms) {
			if mg, ok := m.merges[pairKey(cur.id, syms[cur.next].id)]; ok {
				h.push(mergeItem{pos: top.pos, rank: mg.rank, newID: mg.newID})
			}
		}
	}
	ids := make([]int32, 0, len(syms))
	for _, s := range syms {
		if s.len != 0 {
			ids = append(ids, s.id)
		}
	}
	return ids
}

type mergeItem struct{ pos, rank, newID int32 }

// before orders the merge queue as tokenizers' Merge does: lowest rank
// first, then leftmost.
func (x mergeItem) before(y mergeItem) bool {
	if x.rank != y.rank {
		return x.rank < y.rank
	}
	return x.pos < y.pos
}

// wordCache remembers the ids of short words, like tokenizers' BPE cache
// (10,000 entries, words under 256 bytes). It is safe for concurrent use.
type wordCache struct {
	mu sync.RWMutex
	m  map[string][]int32
}

const (
	cacheCapacity = 10000
	cacheMaxWord  = 256
)

func (c *wordCache) get(w string) ([]int32, bool) {
	if len(w) >= cacheMaxWord {
		return nil, false
	}
	c.mu.RLock()
	ids, ok := c.m[w]
	c.mu.RUnlock()
	return ids, ok
}

func (c *wordCache) put(w string, ids []int32) {
	if len(w) >= cacheMaxWord {
		return
	}
	c.mu.Lock()
	if c.m == nil {
		c.m = make(map[string][]int32)
	}
	if len(c.m) < cacheCapacity {
		c.m[w] = ids
	}
	c.mu.Unlock()
}
