package tokenizer

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Tokenizer encodes text to token ids and back. It is safe for concurrent
// use.
type Tokenizer struct {
	model   model
	added   *addedVocab
	norm    normalizer   // nil: none
	pre     preTokenizer // nil: the whole segment is one word
	dec     decoder      // nil: tokens joined by spaces, as tokenizers does
	post    *postProcessor
	special SpecialTokens
	legacy  bool
	source  string
}

// Options choose how a tokenizer folder is read.
type Options struct {
	// Legacy keeps tokenizer.json's pipeline as written (the seed's
	// transformers 4.x behaviour: every segment after a special token gets
	// its own leading "▁"). False rebuilds a Llama-style tokenizer the way
	// transformers 5's LlamaTokenizer does by default: no normalizer and a
	// Metaspace pre-tokenizer with prepend_scheme "first".
	Legacy bool
	// File forces a source: "tokenizer.json" or "tokenizer.model". Empty
	// picks tokenizer.json, else tokenizer.model.
	File string
}

// DefaultOptions is Legacy: true, file picked automatically.
func DefaultOptions() Options { return Options{Legacy: true} }

// Load reads a Hugging Face tokenizer folder with DefaultOptions.
func Load(dir string) (*Tokenizer, error) { return LoadWithOptions(dir, DefaultOptions()) }

// LoadWithOptions reads tokenizer.json (else the SentencePiece
// tokenizer.model) plus tokenizer_config.json, special_tokens_map.json and
// chat_template.jinja where present.
func LoadWithOptions(dir string, opt Options) (*Tokenizer, error) {
	cfg, haveCfg, err := readConfig(dir)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	file := opt.File
	if file == "" {
		file = "tokenizer.json"
		if _, err := os.Stat(filepath.Join(dir, file)); errors.Is(err, fs.ErrNotExist) {
			file = "tokenizer.model"
			if _, err := os.Stat(filepath.Join(dir, file)); errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("tokenizer: %s has neither tokenizer.json nor tokenizer.model", dir)
			}
		}
	}
	path := filepath.Join(dir, file)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	var p *parsed
	switch file {
	case "tokenizer.json":
		p, err = parseTokenizerJSON(b, path)
	case "tokenizer.model":
		p, err = fromSentencePiece(b, path, cfg, haveCfg)
		if err != nil {
			break
		}
		// LlamaTokenizer's defaults name the special tokens a bare
		// SentencePiece folder does not.
		for _, d := range []struct {
			name *tokenName
			tok  string
		}{{&cfg.BOSToken, "<s>"}, {&cfg.EOSToken, "</s>"}, {&cfg.UNKToken, "<unk>"}} {
			if _, ok := p.model.tokenToID(d.tok); ok && !d.name.set {
				*d.name = tokenName{set: true, content: d.tok}
			}
		}
	default:
		return nil, fmt.Errorf("tokenizer: Options.File %q: want tokenizer.json or tokenizer.model", opt.File)
	}
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}

	if !opt.Legacy {
		if err := makeNonLegacy(p, cfg, path); err != nil {
			return nil, fmt.Errorf("tokenizer: %w", err)
		}
	}

	t := &Tokenizer{model: p.model, norm: p.norm, pre: p.pre, dec: p.dec, post: p.post,
		legacy: opt.Legacy, source: path}
	t.added = newAddedVocab(p.added, p.norm)
	t.special = SpecialTokens{
		BOS: cfg.BOSToken.content, EOS: cfg.EOSToken.content,
		UNK: cfg.UNKToken.content, PAD: cfg.PADToken.content,
		AddBOS: cfg.AddBOSToken != nil && *cfg.AddBOSToken,
		AddEOS: cfg.AddEOSToken != nil && *cfg.AddEOSToken,
	}
	for _, s := range []struct {
		name string
		tok  string
		id   *int32
	}{
		{"bos_token", t.special.BOS, &t.special.BOSID}, {"eos_token", t.special.EOS, &t.special.EOSID},
		{"unk_token", t.special.UNK, &t.special.UNKID}, {"pad_token", t.special.PAD, &t.special.PADID},
	} {
		*s.id = -1
		if s.tok == "" {
			continue
		}
		id, ok := t.TokenToID(s.tok)
		if !ok {
			return nil, fmt.Errorf("tokenizer: %s: %s %q is not in the vocabulary of %s", filepath.Join(dir, "tokenizer_config.json"), s.name, s.tok, path)
		}
		*s.id = id
	}
	return t, nil
}

// fromSentencePiece builds the tokenizer.json-equivalent pipeline from a
// SentencePiece BPE model. The added tokens come from tokenizer_config.json's
// added_tokens_decoder, else from the model's control and user-defined
// pieces.
func fromSentencePiece(b []byte, path string, cfg hfConfig, haveCfg bool) (*parsed, error) {
	sp, err := parseSPModel(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	switch sp.modelType {
	case spBPE:
	case spUnigram:
		return nil, fmt.Errorf("%s: SentencePiece model type UNIGRAM is not implemented (only BPE)", path)
	case spWord, spChar:
		return nil, fmt.Errorf("%s: SentencePiece model type %d (WORD/CHAR) is not implemented (only BPE)", path, sp.modelType)
	default:
		return nil, fmt.Errorf("%s: unknown SentencePiece model type %d", path, sp.modelType)
	}
	if len(sp.precompiledCharsmap) > 0 {
		return nil, fmt.Errorf("%s: normalizer_spec %q has a precompiled charsmap, which is not implemented (only identity normalization)", path, sp.normName)
	}
	if sp.treatWhitespaceAsSuffix {
		return nil, fmt.Errorf("%s: trainer_spec.treat_whitespace_as_suffix is not implemented", path)
	}
	m, err := newSPModel(sp)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	p := &parsed{model: m, isBPE: true, byteFB: sp.byteFallback}
	p.norm = spNormalizer{addDummyPrefix: sp.addDummyPrefix,
		removeExtraWhitespaces: sp.removeExtraWhitespaces, escapeWhitespaces: sp.escapeWhitespaces}
	p.dec = llamaDecoder(sp.addDummyPrefix)

	cfgPath := filepath.Join(filepath.Dir(path), "tokenizer_config.json")
	if p.added, err = addedTokensFromConfig(cfg, cfgPath); err != nil {
		return nil, err
	}
	have := map[int32]bool{}
	for _, a := range p.added {
		have[a.ID] = true
	}
	for i, pc := range sp.pieces {
		if have[int32(i)] || !(pc.typ == spControl || pc.typ == spUnknown || pc.typ == spUserDefined) {
			continue
		}
		p.added = append(p.added, AddedToken{ID: int32(i), Content: pc.piece, Special: pc.typ != spUserDefined})
	}
	// LlamaTokenizer adds BOS unless tokenizer_config.json says otherwise.
	addBOS := !haveCfg || cfg.AddBOSToken == nil || *cfg.AddBOSToken
	addEOS := cfg.AddEOSToken != nil && *cfg.AddEOSToken
	p.post = bosEOSPost(addBOS, addEOS, cfg, m)
	return p, nil
}

func bosEOSPost(addBOS, addEOS bool, cfg hfConfig, m model) *postProcessor {
	p := &postProcessor{}
	if addBOS {
		bos := cfg.BOSToken.content
		if !cfg.BOSToken.set {
			bos = "<s>"
		}
		if id, ok := m.tokenToID(bos); ok {
			p.before = []int32{id}
		}
	}
	if addEOS {
		eos := cfg.EOSToken.content
		if !cfg.EOSToken.set {
			eos = "</s>"
		}
		if id, ok := m.tokenToID(eos); ok {
			p.after = []int32{id}
		}
	}
	return p
}

// makeNonLegacy rebuilds the pipeline as transformers 5's LlamaTokenizer
// does (models/llama/tokenization_llama.py): vocab, merges and added tokens
// are kept; normalizer none; Metaspace(replacement "▁", prepend_scheme
// "first" when add_prefix_space, else "never", split false); decoder
// Replace("▁", " "), ByteFallback, Fuse, and Strip(" ", 1, 0) when
// add_prefix_space; BOS/EOS from add_bos_token/add_eos_token.
func makeNonLegacy(p *parsed, cfg hfConfig, path string) error {
	switch cfg.TokenizerClass {
	case "LlamaTokenizer", "LlamaTokenizerFast":
	case "":
		if !p.isBPE || !p.byteFB {
			return fmt.Errorf("%s: Legacy=false is implemented only for Llama-style BPE tokenizers with byte fallback", path)
		}
	default:
		return fmt.Errorf("%s: Legacy=false is not implemented for tokenizer_class %q (only LlamaTokenizer)", path, cfg.TokenizerClass)
	}
	addPrefixSpace := cfg.AddPrefixSpace == nil || *cfg.AddPrefixSpace
	scheme := prependFirst
	if !addPrefixSpace {
		scheme = prependNever
	}
	p.norm = nil
	p.pre = metaspacePre{replacement: metaspace, scheme: scheme, split: false}
	p.dec = llamaDecoder(addPrefixSpace)
	p.post = bosEOSPost(cfg.AddBOSToken != nil && *cfg.AddBOSToken, cfg.AddEOSToken != nil && *cfg.AddEOSToken, cfg, p.model)
	return nil
}

// Encode returns the ids of text. With addSpecial the post-processor runs
// (tokenizers' add_special_tokens=True); for Phi-3 it adds nothing, so both
// give the same ids and no BOS.
func (t *Tokenizer) Encode(text string, addSpecial bool) []int32 {
	var ids []int32
	var words []string
	for _, sp := range t.added.findMatches(text, &t.added.raw) {
		if sp.id >= 0 {
			ids = append(ids, sp.id)
			continue
		}
		seg := text[sp.start:sp.stop]
		if t.norm != nil {
			seg = t.norm.normalize(seg)
		}
		for _, sp2 := range t.added.findMatches(seg, &t.added.norm) {
			if sp2.id >= 0 {
				ids = append(ids, sp2.id)
				continue
			}
			piece := seg[sp2.start:sp2.stop]
			if t.pre == nil {
				ids = t.model.tokenize(piece, ids)
				continue
			}
			// "first" prepends only to the piece that starts the original
			// text (offsets_original().0 == 0).
			words = t.pre.preTokenize(piece, sp.start == 0 && sp2.start == 0, words[:0])
			for _, w := range words {
				ids = t.model.tokenize(w, ids)
			}
		}
	}
	if addSpecial {
		ids = t.post.apply(ids)
	}
	if ids == nil {
		ids = []int32{}
	}
	return ids
}

// Decode turns ids back into text as tokenizers' decode does: unknown ids
// are dropped, special added tokens are dropped with skipSpecial, and the
// decoder chain runs over the token strings.
func (t *Tokenizer) Decode(ids []int32, skipSpecial bool) string {
	toks := make([]string, 0, len(ids))
	for _, id := range ids {
		tok, ok := t.IDToToken(id)
		if !ok {
			continue
		}
		if skipSpecial && t.added.special[tok] {
			continue
		}
		toks = append(toks, tok)
	}
	if t.dec == nil {
		return strings.Join(toks, " ")
	}
	return strings.Join(t.dec.decodeChain(toks), "")
}

// IDToToken is the token string of id (an added token's content, or the
// model's piece, with "▁" and <0xXX> spelled as in the vocabulary).
func (t *Tokenizer) IDToToken(id int32) (string, bool) {
	if a, ok := t.added.byID[id]; ok {
		return a.Content, true
	}
	return t.model.idToToken(id)
}

// TokenToID is the id of a token string, added tokens first.
func (t *Tokenizer) TokenToID(tok string) (int32, bool) {
	if id, ok := t.added.byContent[tok]; ok {
		return id, true
	}
	return t.model.tokenToID(tok)
}

// VocabSize is one past the largest id the tokenizer can produce (32,011 for
// Phi-3; the model's embedding is padded to 32,064).
func (t *Tokenizer) VocabSize() int {
	n := t.model.size()
	for id := range t.added.byID {
		n = max(n, int(id)+1)
	}
	return n
}

// SpecialTokens are the bos/eos/unk/pad tokens of the folder's config.
func (t *Tokenizer) SpecialTokens() SpecialTokens { return t.special }

// BOS is the bos_token id, -1 if there is none. Encode adds it only when the
// post-processor says so (Phi-3: never).
func (t *Tokenizer) BOS() int32 { return t.special.BOSID }

// EOS is the eos_token id (Phi-3: <|endoftext|>, 32000), -1 if none.
func (t *Tokenizer) EOS() int32 { return t.special.EOSID }

// Pad is the padding id: pad_token when the config names one, else EOS
// (what TRL does when a tokenizer has no pad token), else 0.
func (t *Tokenizer) Pad() int32 {
	if t.special.PADID >= 0 {
		return t.special.PADID
	}
	if t.special.EOSID >= 0 {
		return t.special.EOSID
	}
	return 0
}

// AddedTokens lists the added tokens in the order the file gives them.
func (t *Tokenizer) AddedTokens() []AddedToken {
	return append([]AddedToken(nil), t.added.tokens...)
}

// Legacy tells which pipeline Encode follows (see Options.Legacy).
func (t *Tokenizer) Legacy() bool { return t.legacy }

// Source is the file the vocabulary came from.
func (t *Tokenizer) Source() string { return t.source }
