package tokenizer

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// A decoder rewrites the list of token strings (tokenizers' decode_chain);
// the final text is the concatenation of what the last one returns.
type decoder interface {
	decodeChain(tokens []string) []string
}

type decoderSeq []decoder

func (q decoderSeq) decodeChain(tokens []string) []string {
	for _, d := range q {
		tokens = d.decodeChain(tokens)
	}
	return tokens
}

type replaceDec struct{ r replaceNorm }

func (d replaceDec) decodeChain(tokens []string) []string {
	out := make([]string, len(tokens))
	for i, t := range tokens {
		out[i] = d.r.normalize(t)
	}
	return out
}

// byteFallbackDec turns runs of <0xXX> pieces back into bytes: one string if
// the run is valid UTF-8, else one U+FFFD per byte (tokenizers' ByteFallback).
type byteFallbackDec struct{}

func byteToken(t string) (byte, bool) {
	if len(t) != 6 || !strings.HasPrefix(t, "<0x") || t[5] != '>' {
		return 0, false
	}
	var b byte
	for _, c := range []byte(t[3:5]) {
		var v byte
		switch {
		case c >= '0' && c <= '9':
			v = c - '0'
		case c >= 'a' && c <= 'f':
			v = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			v = c - 'A' + 10
		default:
			return 0, false
		}
		b = b<<4 | v
	}
	return b, true
}

func (byteFallbackDec) decodeChain(tokens []string) []string {
	out := make([]string, 0, len(tokens))
	var run []byte
	flush := func() {
		if len(run) == 0 {
			return
		}
		if utf8.Valid(run) {
			out = append(out, string(run))
		} else {
			for range run {
				out = append(out, "\uFFFD")
			}
		}
		run = run[:0]
	}
	for _, t := range tokens {
		if b, ok := byteToken(t); ok {
			run = append(run, b)
			continue
		}
		flush()
		out = append(out, t)
	}
	flush()
	return out
}

type fuseDec struct{}

func (fuseDec) decodeChain(tokens []string) []string {
	return []string{strings.Join(tokens, "")}
}

// stripDec removes up to start leading and stop trailing copies of content
// from every token (tokenizers' Strip decoder).
type stripDec struct {
	content     rune
	start, stop int
}

func (d stripDec) decodeChain(tokens []string) []string {
	out := make([]string, len(tokens))
	for i, t := range tokens {
		rs := []rune(t)
		lo := 0
		for lo < d.start && lo < len(rs) && rs[lo] == d.content {
			lo++
		}
		hi := len(rs)
		for n := 0; n < d.stop && hi > lo && rs[hi-1] == d.content; n++ {
			hi--
		}
		out[i] = string(rs[lo:hi])
	}
	return out
}

// metaspaceDec is the Metaspace decoder: the replacement becomes a space,
// except that in the first token it is dropped when a prefix was prepended.
type metaspaceDec struct {
	replacement rune
	scheme      prependScheme
}

func (d metaspaceDec) decodeChain(tokens []string) []string {
	out := make([]string, len(tokens))
	for i, t := range tokens {
		var b strings.Builder
		for _, r := range t {
			if r == d.replacement {
				if i == 0 && d.scheme != prependNever {
					continue
				}
				r = ' '
			}
			b.WriteRune(r)
		}
		out[i] = b.String()
	}
	return out
}

func parseDecoder(raw json.RawMessage, where string) (decoder, error) {
	c, err := readComponent(raw, where)
	if c == nil || err != nil {
		return nil, err
	}
	switch c.Type {
	case "Sequence":
		seq, err := parseSequence(c, "decoders", parseDecoder)
		if err != nil {
			return nil, err
		}
		return decoderSeq(seq), nil
	case "Replace":
		r, err := parseReplace(c)
		if err != nil {
			return nil, err
		}
		return replaceDec{r}, nil
	case "ByteFallback":
		return byteFallbackDec{}, nil
	case "Fuse":
		return fuseDec{}, nil
	case "Strip":
		var v struct {
			Content string `json:"content"`
			Start   int    `json:"start"`
			Stop    int    `json:"stop"`
		}
		if err := c.decode(&v); err != nil {
			return nil, err
		}
		if utf8.RuneCountInString(v.Content) != 1 {
			return nil, fmt.Errorf("%s: content %q must be one character", c.where, v.Content)
		}
		r, _ := utf8.DecodeRuneInString(v.Content)
		return stripDec{content: r, start: v.Start, stop: v.Stop}, nil
	case "Metaspace":
		replacement, scheme, _, err := parseMetaspace(c)
		if err != nil {
			return nil, err
		}
		r, _ := utf8.DecodeRuneInString(replacement)
		return metaspaceDec{replacement: r, scheme: scheme}, nil
	}
	return nil, c.unsupported("decoder", "Sequence, Replace, ByteFallback, Fuse, Strip, Metaspace")
}

// llamaDecoder is the decoder transformers gives Llama-style tokenizers:
// "▁" to space, byte pieces to bytes, joined, and one leading space dropped
// when encoding prepends one.
func llamaDecoder(stripPrefixSpace bool) decoder {
	seq := decoderSeq{
		replaceDec{replaceNorm{literal: metaspace, content: " "}},
		byteFallbackDec{},
		fuseDec{},
	}
	if stripPrefixSpace {
		seq = append(seq, stripDec{content: ' ', start: 1})
	}
	return seq
}
