package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// hfFile is the part of a Hugging Face tokenizer.json this package reads.
type hfFile struct {
	AddedTokens []struct {
		ID         int32  `json:"id"`
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		LStrip     bool   `json:"lstrip"`
		RStrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
		Special    bool   `json:"special"`
	} `json:"added_tokens"`
	Normalizer    json.RawMessage `json:"normalizer"`
	PreTokenizer  json.RawMessage `json:"pre_tokenizer"`
	PostProcessor json.RawMessage `json:"post_processor"`
	Decoder       json.RawMessage `json:"decoder"`
	Model         json.RawMessage `json:"model"`
}

type hfBPE struct {
	Type                    string           `json:"type"`
	Dropout                 *float64         `json:"dropout"`
	UnkToken                *string          `json:"unk_token"`
	ContinuingSubwordPrefix *string          `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string          `json:"end_of_word_suffix"`
	FuseUnk                 bool             `json:"fuse_unk"`
	ByteFallback            bool             `json:"byte_fallback"`
	IgnoreMerges            bool             `json:"ignore_merges"`
	Vocab                   map[string]int32 `json:"vocab"`
	Merges                  json.RawMessage  `json:"merges"`
}

// parsed is a tokenizer.json taken apart; Load assembles the Tokenizer.
type parsed struct {
	model  model
	added  []AddedToken
	norm   normalizer
	pre    preTokenizer
	dec    decoder
	post   *postProcessor
	isBPE  bool
	byteFB bool
}

func parseTokenizerJSON(b []byte, path string) (*parsed, error) {
	var f hfFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%s: malformed JSON: %w", path, err)
	}
	if isNull(f.Model) {
		return nil, fmt.Errorf("%s: no \"model\"", path)
	}
	// One pass over the model (it is most of the file: vocab and merges).
	var mb hfBPE
	mbErr := json.Unmarshal(f.Model, &mb)
	if mbErr != nil {
		// A model of another type (Unigram's vocab is a list) says so first.
		var head struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(f.Model, &head) == nil && head.Type != "" {
			mb.Type = head.Type
		}
	}
	if mb.Type == "" && mb.Merges != nil {
		mb.Type = "BPE" // files from before the "type" tag
	}
	if mb.Type != "BPE" {
		return nil, fmt.Errorf("%s: model.type %q is not implemented (only BPE; WordPiece, WordLevel and Unigram are not)", path, mb.Type)
	}
	if mbErr != nil {
		return nil, fmt.Errorf("%s: model: %w", path, mbErr)
	}
	if mb.Dropout != nil && *mb.Dropout > 0 {
		return nil, fmt.Errorf("%s: model.dropout %g: BPE dropout is not implemented (tokenization here is deterministic)", path, *mb.Dropout)
	}
	merges, err := parseMerges(mb.Merges)
	if err != nil {
		return nil, fmt.Errorf("%s: model.merges: %w", path, err)
	}
	prefix := ""
	if mb.ContinuingSubwordPrefix != nil {
		prefix = *mb.ContinuingSubwordPrefix
	}
	bpe, err := newBPEModel(mb.Vocab, merges, mb.UnkToken, prefix)
	if err != nil {
		return nil, fmt.Errorf("%s: model: %w", path, err)
	}
	bpe.fuseUnk = mb.FuseUnk
	bpe.byteFallback = mb.ByteFallback
	bpe.ignoreMerges = mb.IgnoreMerges
	if mb.EndOfWordSuffix != nil {
		bpe.endOfWordSuffix = *mb.EndOfWordSuffix
	}
	p := &parsed{model: bpe, isBPE: true, byteFB: mb.ByteFallback}
	for _, t := range f.AddedTokens {
		p.added = append(p.added, AddedToken{ID: t.ID, Content: t.Content, Special: t.Special,
			LStrip: t.LStrip, RStrip: t.RStrip, Normalized: t.Normalized, SingleWord: t.SingleWord})
	}
	if p.norm, err = parseNormalizer(f.Normalizer, path+": normalizer"); err != nil {
		return nil, err
	}
	if p.pre, err = parsePreTokenizer(f.PreTokenizer, path+": pre_tokenizer"); err != nil {
		return nil, err
	}
	if p.dec, err = parseDecoder(f.Decoder, path+": decoder"); err != nil {
		return nil, err
	}
	if p.post, err = parsePostProcessor(f.PostProcessor, path+": post_processor"); err != nil {
		return nil, err
	}
	return p, nil
}

// firstIsString says whether the JSON array raw starts with a string.
func firstIsString(raw []byte) bool {
	const space = " \t\r\n"
	rest := bytes.TrimLeft(bytes.TrimPrefix(bytes.TrimLeft(raw, space), []byte("[")), space)
	return len(rest) > 0 && rest[0] == '"'
}

// parseMerges accepts both spellings: ["a b", ...] (tokenizers < 0.20) and
// [["a", "b"], ...].
func parseMerges(raw json.RawMessage) ([][2]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	// tokenizers writes [a, b] pairs since 0.20, "a b" strings before:
	// the first element says which (one pass over the list, not two).
	var pairs [][2]string
	if !firstIsString(raw) {
		if err := json.Unmarshal(raw, &pairs); err == nil {
			return pairs, nil
		}
	}
	var lines []string
	if err := json.Unmarshal(raw, &lines); err != nil {
		return nil, fmt.Errorf("want a list of \"a b\" strings or of [a, b] pairs: %w", err)
	}
	pairs = make([][2]string, len(lines))
	for i, l := range lines {
		parts := strings.Split(l, " ")
		if len(parts) != 2 {
			return nil, fmt.Errorf("merge %d %q is not two tokens separated by one space", i, l)
		}
		pairs[i] = [2]string{parts[0], parts[1]}
	}
	return pairs, nil
}

// postProcessor adds special tokens around a single sequence (the pair
// template is not needed for causal language models).
type postProcessor struct {
	before, after []int32
}

func (p *postProcessor) apply(ids []int32) []int32 {
	if p == nil || len(p.before)+len(p.after) == 0 {
		return ids
	}
	out := make([]int32, 0, len(p.before)+len(ids)+len(p.after))
	out = append(out, p.before...)
	out = append(out, ids...)
	return append(out, p.after...)
}

func parsePostProcessor(raw json.RawMessage, where string) (*postProcessor, error) {
	c, err := readComponent(raw, where)
	if c == nil || err != nil {
		return nil, err
	}
	switch c.Type {
	case "TemplateProcessing":
		var v struct {
			Single []struct {
				Sequence *struct {
					ID string `json:"id"`
				} `json:"Sequence"`
				SpecialToken *struct {
					ID string `json:"id"`
				} `json:"SpecialToken"`
			} `json:"single"`
			SpecialTokens map[string]struct {
				IDs []int32 `json:"ids"`
			} `json:"special_tokens"`
		}
		if err := c.decode(&v); err != nil {
			return nil, err
		}
		p := &postProcessor{}
		seen := false
		for i, it := range v.Single {
			switch {
			case it.Sequence != nil:
				if seen {
					return nil, fmt.Errorf("%s: single[%d]: the sequence appears twice", c.where, i)
				}
				seen = true
			case it.SpecialToken != nil:
				st, ok := v.SpecialTokens[it.SpecialToken.ID]
				if !ok {
					return nil, fmt.Errorf("%s: single[%d]: special token %q is not in special_tokens", c.where, i, it.SpecialToken.ID)
				}
				if seen {
					p.after = append(p.after, st.IDs...)
				} else {
					p.before = append(p.before, st.IDs...)
				}
			default:
				return nil, fmt.Errorf("%s: single[%d]: want Sequence or SpecialToken", c.where, i)
			}
		}
		return p, nil
	case "BertProcessing", "RobertaProcessing":
		var v struct {
			Sep [2]json.RawMessage `json:"sep"`
			Cls [2]json.RawMessage `json:"cls"`
		}
		if err := c.decode(&v); err != nil {
			return nil, err
		}
		var sep, cls int32
		if err := json.Unmarshal(v.Sep[1], &sep); err != nil {
			return nil, fmt.Errorf("%s: sep: %w", c.where, err)
		}
		if err := json.Unmarshal(v.Cls[1], &cls); err != nil {
			return nil, fmt.Errorf("%s: cls: %w", c.where, err)
		}
		return &postProcessor{before: []int32{cls}, after: []int32{sep}}, nil
	case "ByteLevel":
		return nil, nil // only adjusts offsets
	case "Sequence":
		seq, err := parseSequence(c, "processors", parsePostProcessor)
		if err != nil {
			return nil, err
		}
		out := &postProcessor{}
		for _, p := range seq {
			if p != nil {
				out.before = append(append([]int32{}, p.before...), out.before...)
				out.after = append(out.after, p.after...)
			}
		}
		return out, nil
	}
	return nil, c.unsupported("post_processor", "TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence")
}
