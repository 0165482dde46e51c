package convert

import (
	"container/heap"
	"fmt"
	"slices"
	"strings"
)

// LlamaTokenizer reproduces llama.cpp's tokenizer (src/llama-vocab.cpp, as
// vendored in Ollama v0.24.0) for a SentencePiece ("llama") GGUF
// vocabulary: the ids Ollama's runner feeds the model for a rendered
// prompt. It exists to check train/serve token parity without a running
// server: our tokenizer package gives the ids training used (transformers'
// behaviour), this one the ids serving will use.
//
// What it models:
//   - tokenizer_st_partition: every CONTROL, USER_DEFINED and UNKNOWN token
//     found in the text (longest first) becomes its id; whitespace after it
//     is removed only for tokens with the RSTRIP attribute, which llama.cpp
//     sets (for all special tokens but <unk>, <s>, <|endoftext|>, plus </s>)
//     only when general.name contains "phi3" or "phi-3";
//   - each remaining text fragment gets a leading space when it is the
//     first fragment or follows a special token (add_space_prefix), spaces
//     become "▁", and the SentencePiece BPE session merges the
//     highest-scoring bigrams, falling back to <0xXX> byte tokens.
type LlamaTokenizer struct {
	v        *Vocab
	ids      map[string]int32
	special  []int32 // cache_special_tokens, longest text first
	rstrip   map[int32]bool
	addSpace bool
}

// NewLlamaTokenizer builds the tokenizer llama.cpp would load from a GGUF
// holding v with general.name modelName.
func NewLlamaTokenizer(v *Vocab, modelName string) *LlamaTokenizer {
	t := &LlamaTokenizer{v: v, ids: make(map[string]int32, len(v.Tokens)), rstrip: map[int32]bool{}, addSpace: true}
	for i, tok := range v.Tokens {
		if _, dup := t.ids[tok]; !dup {
			t.ids[tok] = int32(i)
		}
	}
	for i, typ := range v.Types {
		if typ == TokenControl || typ == TokenUserDefined || typ == TokenUnknown {
			t.special = append(t.special, int32(i))
		}
	}
	slices.SortStableFunc(t.special, func(a, b int32) int { return len(v.Tokens[b]) - len(v.Tokens[a]) })
	name := strings.ToLower(modelName)
	if strings.Contains(name, "phi-3") || strings.Contains(name, "phi3") {
		for _, id := range t.special {
			t.rstrip[id] = true
		}
		if id, ok := t.ids["</s>"]; ok {
			t.rstrip[id] = true
		}
		for _, s := range []string{"<unk>", "<s>", "<|endoftext|>"} {
			if id, ok := t.ids[s]; ok {
				delete(t.rstrip, id)
			}
		}
	}
	return t
}

// fragment is raw text not yet tokenized (id < 0) or a special token.
type fragment struct {
	id   int32
	text string
}

// Encode tokenizes text as llama_tokenize(text, addSpecial, parseSpecial)
// does. Ollama's runner calls it with addSpecial for the prompt (BOS when
// tokenizer.ggml.add_bos_token says so) and parseSpecial true.
func (t *LlamaTokenizer) Encode(text string, addSpecial, parseSpecial bool) []int32 {
	frags := []fragment{{id: -1, text: text}}
	for _, sid := range t.special {
		if !parseSpecial && (t.v.Types[sid] == TokenControl || t.v.Types[sid] == TokenUnknown) {
			continue
		}
		tok := t.v.Tokens[sid]
		if tok == "" {
			continue
		}
		var out []fragment
		for _, f := range frags {
			if f.id >= 0 {
				out = append(out, f)
				continue
			}
			s := f.text
			for {
				i := strings.Index(s, tok)
				if i < 0 {
					if s != "" {
						out = append(out, fragment{id: -1, text: s})
					}
					break
				}
				if i > 0 {
					out = append(out, fragment{id: -1, text: s[:i]})
				}
				out = append(out, fragment{id: sid})
				s = s[i+len(tok):]
				if t.rstrip[sid] {
					s = strings.TrimLeft(s, " \t\n\v\f\r")
				}
			}
		}
		frags = out
	}

	var ids []int32
	prevSpecial := true
	if addSpecial && t.v.Add["bos"] {
		if bos, ok := t.v.Special["bos"]; ok {
			ids = append(ids, bos)
		}
	}
	for _, f := range frags {
		if f.id >= 0 {
			ids = append(ids, f.id)
			prevSpecial = true
			continue
		}
		s := f.text
		if t.addSpace && prevSpecial {
			s = " " + s
		}
		ids = t.spm(strings.ReplaceAll(s, " ", "▁"), ids)
		prevSpecial = false
	}
	if addSpecial && t.v.Add["eos"] {
		if eos, ok := t.v.Special["eos"]; ok {
			ids = append(ids, eos)
		}
	}
	return ids
}

// Decode concatenates the pieces of ids as llama_token_to_piece does for
// normal and byte tokens ("▁" as a space), with special tokens as their
// text. It is for messages, not for parity checks.
func (t *LlamaTokenizer) Decode(ids []int32) string {
	var b []byte
	for _, id := range ids {
		if id < 0 || int(id) >= len(t.v.Tokens) {
			continue
		}
		tok := t.v.Tokens[id]
		if t.v.Types[id] == TokenByte {
			var x byte
			if _, err := fmt.Sscanf(tok, "<0x%02X>", &x); err == nil {
				b = append(b, x)
				continue
			}
		}
		b = append(b, strings.ReplaceAll(tok, "▁", " ")...)
	}
	return string(b)
}

// spmSymbol is llm_symbol: a span of the text linked to its neighbours.
type spmSymbol struct {
	prev, next int
	start, n   int
}

type spmBigram struct {
	left, right int
	score       float32
	size        int
}

// bigramQueue is std::priority_queue with llm_bigram_spm::comparator: the
// highest score first, and on equal scores the leftmost.
type bigramQueue []spmBigram

func (q bigramQueue) Len() int { return len(q) }
func (q bigramQueue) Less(i, j int) bool {
	if q[i].score != q[j].score {
		return q[i].score > q[j].score
	}
	return q[i].left < q[j].left
}
func (q bigramQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *bigramQueue) Push(x any)   { *q = append(*q, x.(spmBigram)) }
func (q *bigramQueue) Pop() any {
	old := *q
	x := old[len(old)-1]
	*q = old[:len(old)-1]
	return x
}

// spm is llm_tokenizer_spm_session::tokenize on an escaped text.
func (t *LlamaTokenizer) spm(text string, out []int32) []int32 {
	if text == "" {
		return out
	}
	var syms []spmSymbol
	for off := 0; off < len(text); {
		n := utf8Len(text[off])
		n = min(n, len(text)-off)
		next := len(syms) + 1
		if off+n == len(text) {
			next = -1
		}
		syms = append(syms, spmSymbol{prev: len(syms) - 1, next: next, start: off, n: n})
		off += n
	}
	q := &bigramQueue{}
	revMerge := map[string][2]int{}
	tryAdd := func(left, right int) {
		if left == -1 || right == -1 {
			return
		}
		s := text[syms[left].start : syms[left].start+syms[left].n+syms[right].n]
		id, ok := t.ids[s]
		if !ok {
			return
		}
		heap.Push(q, spmBigram{left: left, right: right, score: t.v.Scores[id], size: len(s)})
		revMerge[s] = [2]int{left, right}
	}
	for i := 1; i < len(syms); i++ {
		tryAdd(i-1, i)
	}
	for q.Len() > 0 {
		bg := heap.Pop(q).(spmBigram)
		l, r := &syms[bg.left], &syms[bg.right]
		if l.n == 0 || r.n == 0 || l.n+r.n != bg.size {
			continue
		}
		l.n += r.n
		r.n = 0
		l.next = r.next
		if r.next >= 0 {
			syms[r.next].prev = bg.left
		}
		tryAdd(l.prev, bg.left)
		tryAdd(bg.left, l.next)
	}
	var reseg func(i int)
	reseg = func(i int) {
		s := text[syms[i].start : syms[i].start+syms[i].n]
		if id, ok := t.ids[s]; ok {
			out = append(out, id)
			return
		}
		p, ok := revMerge[s]
		if !ok {
			for j := 0; j < len(s); j++ {
				out = append(out, t.byteToken(s[j]))
			}
			return
		}
		reseg(p[0])
		reseg(p[1])
	}
	for i := 0; i != -1; i = syms[i].next {
		reseg(i)
	}
	return out
}

// byteToken is llama_vocab::byte_to_token for SPM: <0xXX>, else the
// character itself.
func (t *LlamaTokenizer) byteToken(c byte) int32 {
	if id, ok := t.ids[fmt.Sprintf("<0x%02X>", c)]; ok {
		return id
	}
	if id, ok := t.ids[string([]byte{c})]; ok {
		return id
	}
	return -1
}

// utf8Len is unicode_len_utf8: the sequence length the high nibble of the
// first byte announces (1 for a stray continuation byte).
func utf8Len(c byte) int {
	return [16]int{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4}[c>>4]
}
