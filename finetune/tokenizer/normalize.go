package tokenizer

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// metaspace is the "▁" (U+2581) that SentencePiece writes for a space.
const metaspace = "▁"

// A normalizer rewrites one text segment (tokenizers' Normalizer). Offsets
// are not tracked: ids are all this package returns.
type normalizer interface {
	normalize(s string) string
}

type normalizerSeq []normalizer

func (q normalizerSeq) normalize(s string) string {
	for _, n := range q {
		s = n.normalize(s)
	}
	return s
}

// prependNorm is tokenizers' Prepend: it leaves the empty string alone.
type prependNorm struct{ prefix string }

func (p prependNorm) normalize(s string) string {
	if s == "" {
		return s
	}
	return p.prefix + s
}

// replaceNorm is tokenizers' Replace, with a literal or a regex pattern; the
// content is inserted literally.
type replaceNorm struct {
	literal string
	re      *regexp.Regexp
	content string
}

func (r replaceNorm) normalize(s string) string {
	if r.re != nil {
		return r.re.ReplaceAllLiteralString(s, r.content)
	}
	if r.literal == "" {
		return s
	}
	return strings.ReplaceAll(s, r.literal, r.content)
}

type unicodeNorm struct{ form norm.Form }

func (u unicodeNorm) normalize(s string) string { return u.form.String(s) }

type lowercaseNorm struct{}

func (lowercaseNorm) normalize(s string) string { return strings.ToLower(s) }

// stripNorm is tokenizers' Strip normalizer: Unicode White_Space, like Rust's
// char::is_whitespace (Go's unicode.IsSpace is the same set).
type stripNorm struct{ left, right bool }

func (p stripNorm) normalize(s string) string {
	if p.left {
		s = strings.TrimLeftFunc(s, unicode.IsSpace)
	}
	if p.right {
		s = strings.TrimRightFunc(s, unicode.IsSpace)
	}
	return s
}

// spNormalizer is SentencePiece's own normalizer for an identity rule (no
// precompiled charsmap): optional removal of extra spaces, then the dummy
// prefix, then spaces escaped to "▁".
type spNormalizer struct {
	addDummyPrefix, removeExtraWhitespaces, escapeWhitespaces bool
}

func (p spNormalizer) normalize(s string) string {
	if p.removeExtraWhitespaces {
		// SentencePiece treats only ' ' as whitespace here (after its
		// character map): drop leading and trailing runs, collapse the rest.
		fields := strings.FieldsFunc(s, func(r rune) bool { return r == ' ' })
		s = strings.Join(fields, " ")
	}
	if s == "" {
		return s
	}
	if p.addDummyPrefix {
		s = " " + s
	}
	if p.escapeWhitespaces {
		s = strings.ReplaceAll(s, " ", metaspace)
	}
	return s
}

// jsonPattern is tokenizers' Pattern: {"String": "..."} or {"Regex": "..."}.
type jsonPattern struct {
	String *string `json:"String"`
	Regex  *string `json:"Regex"`
}

func (p jsonPattern) compile(where string) (literal string, re *regexp.Regexp, err error) {
	switch {
	case p.String != nil:
		return *p.String, nil, nil
	case p.Regex != nil:
		// tokenizers uses Oniguruma; Go's RE2 covers the simple patterns these
		// files use and refuses (here, at load) what it cannot express.
		re, err := regexp.Compile(*p.Regex)
		if err != nil {
			return "", nil, fmt.Errorf("%s: regex %q is not supported by Go's regexp: %w", where, *p.Regex, err)
		}
		return "", re, nil
	}
	return "", nil, fmt.Errorf("%s: pattern needs a \"String\" or a \"Regex\"", where)
}

// parseNormalizer reads tokenizer.json's "normalizer"; null gives nil.
func parseNormalizer(raw json.RawMessage, where string) (normalizer, error) {
	c, err := readComponent(raw, where)
	if c == nil || err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		seq, err := parseSequence(c, "normalizers", parseNormalizer)
		if err != nil {
			return nil, err
		}
		return normalizerSeq(seq), nil
	case "Prepend":
		var v struct {
			Prepend string `json:"prepend"`
		}
		if err := c.decode(&v); err != nil {
			return nil, err
		}
		return prependNorm{v.Prepend}, nil
	case "Replace":
		r, err := parseReplace(c)
		if err != nil {
			return nil, err
		}
		return r, nil
	case "NFC":
		return unicodeNorm{norm.NFC}, nil
	case "NFD":
		return unicodeNorm{norm.NFD}, nil
	case "NFKC":
		return unicodeNorm{norm.NFKC}, nil
	case "NFKD":
		return unicodeNorm{norm.NFKD}, nil
	case "Lowercase":
		return lowercaseNorm{}, nil
	case "Strip":
		var v struct {
			Left  bool `json:"strip_left"`
			Right bool `json:"strip_right"`
		}
		if err := c.decode(&v); err != nil {
			return nil, err
		}
		return stripNorm{v.Left, v.Right}, nil
	}
	return nil, c.unsupported("normalizer", "Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip")
}

// prependScheme is Metaspace's prepend_scheme.
type prependScheme int

const (
	prependAlways prependScheme = iota
	prependFirst
	prependNever
)

func parsePrependScheme(s string, addPrefixSpace *bool) (prependScheme, error) {
	switch s {
	case "always":
		return prependAlways, nil
	case "first":
		return prependFirst, nil
	case "never":
		return prependNever, nil
	case "":
		// Files written before tokenizers 0.19 carry add_prefix_space instead.
		if addPrefixSpace != nil && !*addPrefixSpace {
			return prependNever, nil
		}
		return prependAlways, nil
	}
	return 0, fmt.Errorf("prepend_scheme %q is not one of always, first, never", s)
}

// metaspacePre is tokenizers' Metaspace pre-tokenizer: spaces become the
// replacement, a replacement is prepended (always, or only to the piece that
// starts the original text, or never) unless the piece already starts with
// one, and with split the piece is cut before every replacement.
type metaspacePre struct {
	replacement string
	scheme      prependScheme
	split       bool
}

// preTokenize appends the words of piece to dst. atStart tells whether the
// piece begins at byte 0 of the original text (prepend_scheme "first").
func (m metaspacePre) preTokenize(piece string, atStart bool, dst []string) []string {
	s := strings.ReplaceAll(piece, " ", m.replacement)
	if s != "" && !strings.HasPrefix(s, m.replacement) &&
		(m.scheme == prependAlways || (m.scheme == prependFirst && atStart)) {
		s = m.replacement + s
	}
	if !m.split {
		return append(dst, s)
	}
	// SplitDelimiterBehavior::MergedWithNext: each replacement opens a word.
	start := 0
	for i := 0; i < len(s); {
		j := strings.Index(s[i:], m.replacement)
		if j < 0 {
			break
		}
		at := i + j
		if at > start {
			dst = append(dst, s[start:at])
			start = at
		}
		i = at + len(m.replacement)
	}
	if start < len(s) {
		dst = append(dst, s[start:])
	}
	return dst
}

type preTokenizer interface {
	preTokenize(piece string, atStart bool, dst []string) []string
}

type preTokenizerSeq []preTokenizer

func (q preTokenizerSeq) preTokenize(piece string, atStart bool, dst []string) []string {
	words := []string{piece}
	for _, p := range q {
		var next []string
		for i, w := range words {
			next = p.preTokenize(w, atStart && i == 0, next)
		}
		words = next
	}
	return append(dst, words...)
}

func parsePreTokenizer(raw json.RawMessage, where string) (preTokenizer, error) {
	c, err := readComponent(raw, where)
	if c == nil || err != nil {
		return nil, err
	}
	switch c.Type {
	case "Metaspace":
		replacement, scheme, split, err := parseMetaspace(c)
		if err != nil {
			return nil, err
		}
		return metaspacePre{replacement: replacement, scheme: scheme, split: split}, nil
	case "Sequence":
		seq, err := parseSequence(c, "pretokenizers", parsePreTokenizer)
		if err != nil {
			return nil, err
		}
		return preTokenizerSeq(seq), nil
	}
	return nil, c.unsupported("pre_tokenizer", "null, Metaspace, Sequence")
}
