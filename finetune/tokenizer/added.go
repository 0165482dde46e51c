package tokenizer

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// AddedToken is a token matched in the text before the model sees it
// (tokenizers' AddedToken). Special tokens are the ones Decode can skip.
type AddedToken struct {
	ID         int32
	Content    string
	Special    bool
	LStrip     bool // the token swallows the whitespace on its left
	RStrip     bool // the token swallows the whitespace on its right
	Normalized bool // matched in the normalized text rather than the raw text
	SingleWord bool // matched only when not inside a word
}

// addedVocab is tokenizers' AddedVocabulary: two matchers, one for tokens
// matched in the raw text and one for tokens matched after normalization.
type addedVocab struct {
	tokens    []AddedToken // in the order given
	byID      map[int32]*AddedToken
	byContent map[string]int32
	special   map[string]bool // contents of special tokens
	raw, norm matcher
}

// matcher finds added tokens leftmost-longest, like the aho-corasick
// automaton tokenizers builds with MatchKind::LeftmostLongest. There are a
// handful of patterns, so a first-byte index is enough.
type matcher struct {
	patterns []string
	ids      []int32
	byFirst  map[byte][]int
}

func (m *matcher) add(pattern string, id int32) {
	if pattern == "" {
		return
	}
	if m.byFirst == nil {
		m.byFirst = map[byte][]int{}
	}
	m.byFirst[pattern[0]] = append(m.byFirst[pattern[0]], len(m.patterns))
	m.patterns = append(m.patterns, pattern)
	m.ids = append(m.ids, id)
}

// next returns the leftmost-longest match at or after from.
func (m *matcher) next(s string, from int) (start, end int, id int32, ok bool) {
	if len(m.patterns) == 0 {
		return 0, 0, 0, false
	}
	for i := from; i < len(s); i++ {
		best := -1
		for _, k := range m.byFirst[s[i]] {
			p := m.patterns[k]
			if strings.HasPrefix(s[i:], p) && (best < 0 || len(p) > len(m.patterns[best])) {
				best = k
			}
		}
		if best >= 0 {
			return i, i + len(m.patterns[best]), m.ids[best], true
		}
	}
	return 0, 0, 0, false
}

// newAddedVocab orders the tokens as refresh_added_tokens does (special
// first, then the others) and splits them by `normalized`; the patterns of
// normalized tokens go through the normalizer.
func newAddedVocab(tokens []AddedToken, n normalizer) *addedVocab {
	a := &addedVocab{byID: map[int32]*AddedToken{}, byContent: map[string]int32{}, special: map[string]bool{}}
	a.tokens = append(a.tokens, tokens...)
	for i := range a.tokens {
		t := &a.tokens[i]
		a.byID[t.ID] = t
		a.byContent[t.Content] = t.ID
		if t.Special && t.Content != "" {
			a.special[t.Content] = true
		}
	}
	for pass := 0; pass < 2; pass++ {
		wantSpecial := pass == 0
		for _, t := range a.tokens {
			if t.Special != wantSpecial {
				continue
			}
			if !t.Normalized {
				a.raw.add(t.Content, t.ID)
				continue
			}
			p := t.Content
			if n != nil {
				p = n.normalize(p)
			}
			a.norm.add(p, t.ID)
		}
	}
	return a
}

// span is a piece of the text: an added token (id >= 0) or text to encode.
type span struct {
	id          int32
	start, stop int
}

// findMatches is AddedVocabulary::find_matches: the spans cover the text;
// lstrip/rstrip widen a token's span over the whitespace next to it, and a
// single_word token inside a word is not a match.
func (a *addedVocab) findMatches(s string, m *matcher) []span {
	if s == "" {
		return []span{{id: -1}}
	}
	var out []span
	startOffset := 0
	for from := 0; ; {
		start, stop, id, ok := m.next(s, from)
		if !ok {
			break
		}
		from = stop // the automaton resumes after the match, not after stripped space
		t := a.byID[id]
		if t.SingleWord {
			startSpace := start == 0 || !endsWithWord(s[:start])
			stopSpace := stop == len(s) || !startsWithWord(s[stop:])
			if !startSpace || !stopSpace {
				continue
			}
		}
		if t.LStrip {
			start = max(len(strings.TrimRightFunc(s[:start], unicode.IsSpace)), startOffset)
		}
		if t.RStrip {
			stop += len(s[stop:]) - len(strings.TrimLeftFunc(s[stop:], unicode.IsSpace))
		}
		if startOffset < start {
			out = append(out, span{id: -1, start: startOffset, stop: start})
		}
		out = append(out, span{id: id, start: start, stop: stop})
		startOffset = stop
	}
	if startOffset != len(s) {
		out = append(out, span{id: -1, start: startOffset, stop: len(s)})
	}
	return out
}

// isWordRune is the Unicode \w of Rust's regex crate: Alphabetic, marks,
// decimal digits, connector punctuation and the joiners.
func isWordRune(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsMark(r) || unicode.Is(unicode.Nd, r) ||
		unicode.Is(unicode.Nl, r) || unicode.Is(unicode.Other_Alphabetic, r) ||
		unicode.Is(unicode.Pc, r) || r == 0x200C || r == 0x200D
}

func endsWithWord(s string) bool {
	r, n := utf8.DecodeLastRuneInString(s)
	return n > 0 && isWordRune(r)
}

func startsWithWord(s string) bool {
	r, n := utf8.DecodeRuneInString(s)
	return n > 0 && isWordRune(r)
}
