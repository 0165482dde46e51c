package tokenizer

import (
	"errors"
	"fmt"
)

// SentencePiece piece types, as GGUF's tokenizer.ggml.token_type stores
// them (llama.cpp's LLAMA_TOKEN_TYPE_* share the numbers).
const (
	PieceNormal      = spNormal
	PieceUnknown     = spUnknown
	PieceControl     = spControl
	PieceUserDefined = spUserDefined
	PieceUnused      = spUnused
	PieceByte        = spByte
)

// SentencePieceVocab is a SentencePiece BPE vocabulary given as lists, the
// way a GGUF file carries it (tokenizer.ggml.model "llama": tokens, scores,
// token_type), with the settings the file states or implies.
type SentencePieceVocab struct {
	Pieces []string
	Scores []float32
	Types  []int32 // PieceNormal ... PieceByte
	// Added are the tokens split out of the raw text before the model sees
	// it. nil means every control, unknown and user-defined piece, special,
	// with no whitespace stripping (what a bare tokenizer.model gives).
	Added []AddedToken
	// BOS, EOS, UNK, PAD are token ids, -1 for none.
	BOS, EOS, UNK, PAD int32
	// AddBOS and AddEOS: what Encode(text, true) adds.
	AddBOS, AddEOS bool
	// AddDummyPrefix is SentencePiece's add_dummy_prefix (GGUF:
	// tokenizer.ggml.add_space_prefix, true unless stated): each text
	// segment gets a leading "▁".
	AddDummyPrefix bool
	// RemoveExtraWhitespaces is SentencePiece's remove_extra_whitespaces
	// (GGUF: tokenizer.ggml.remove_extra_whitespaces, false unless stated).
	RemoveExtraWhitespaces bool
	// Source names where the vocabulary came from, for errors and Source().
	Source string
}

// NewSentencePiece builds a tokenizer from a SentencePiece BPE vocabulary:
// the same pipeline LoadWithOptions builds from a tokenizer.model (Legacy:
// every segment after an added token gets its own dummy prefix, byte
// fallback when the vocabulary has byte pieces), with the added tokens and
// special ids given.
func NewSentencePiece(v SentencePieceVocab) (*Tokenizer, error) {
	t, err := newSentencePiece(v)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %s: %w", v.Source, err)
	}
	return t, nil
}

func newSentencePiece(v SentencePieceVocab) (*Tokenizer, error) {
	n := len(v.Pieces)
	if n == 0 {
		return nil, errors.New("the vocabulary is empty")
	}
	if len(v.Scores) != n || len(v.Types) != n {
		return nil, fmt.Errorf("%d pieces, %d scores and %d types: the lists must have the same length", n, len(v.Scores), len(v.Types))
	}
	sp := &spProto{modelType: spBPE, addDummyPrefix: v.AddDummyPrefix,
		removeExtraWhitespaces: v.RemoveExtraWhitespaces, escapeWhitespaces: true}
	sp.pieces = make([]spPiece, n)
	for i := range sp.pieces {
		typ := int(v.Types[i])
		if typ < spNormal || typ > spByte {
			return nil, fmt.Errorf("piece %d (%q) has type %d; SentencePiece types are 1 (normal) to 6 (byte)", i, v.Pieces[i], typ)
		}
		if typ == spByte {
			sp.byteFallback = true
		}
		sp.pieces[i] = spPiece{piece: v.Pieces[i], score: v.Scores[i], typ: typ}
	}
	m, err := newSPModel(sp)
	if err != nil {
		return nil, err
	}
	added := v.Added
	if added == nil {
		for i, pc := range sp.pieces {
			if pc.typ == spControl || pc.typ == spUnknown || pc.typ == spUserDefined {
				added = append(added, AddedToken{ID: int32(i), Content: pc.piece, Special: true})
			}
		}
	}
	for _, a := range added {
		if a.ID < 0 || int(a.ID) >= n {
			return nil, fmt.Errorf("added token %q has id %d, outside the vocabulary of %d pieces", a.Content, a.ID, n)
		}
		if a.Content != v.Pieces[a.ID] {
			return nil, fmt.Errorf("added token %d is %q, but piece %d is %q", a.ID, a.Content, a.ID, v.Pieces[a.ID])
		}
	}
	norm := spNormalizer{addDummyPrefix: sp.addDummyPrefix, removeExtraWhitespaces: sp.removeExtraWhitespaces, escapeWhitespaces: true}
	t := &Tokenizer{model: m, norm: norm, dec: llamaDecoder(sp.addDummyPrefix),
		legacy: true, source: v.Source, post: &postProcessor{}}
	t.added = newAddedVocab(added, norm)

	t.special = SpecialTokens{AddBOS: v.AddBOS, AddEOS: v.AddEOS}
	for _, s := range []struct {
		name    string
		id      int32
		content *string
		dst     *int32
	}{
		{"bos", v.BOS, &t.special.BOS, &t.special.BOSID}, {"eos", v.EOS, &t.special.EOS, &t.special.EOSID},
		{"unk", v.UNK, &t.special.UNK, &t.special.UNKID}, {"pad", v.PAD, &t.special.PAD, &t.special.PADID},
	} {
		*s.dst = -1
		if s.id < 0 {
			continue
		}
		if int(s.id) >= n {
			return nil, fmt.Errorf("%s token id %d is outside the vocabulary of %d pieces", s.name, s.id, n)
		}
		*s.dst, *s.content = s.id, v.Pieces[s.id]
	}
	if v.AddBOS {
		if v.BOS < 0 {
			return nil, errors.New("add_bos_token is set but there is no bos token id")
		}
		t.post.before = []int32{v.BOS}
	}
	if v.AddEOS {
		if v.EOS < 0 {
			return nil, errors.New("add_eos_token is set but there is no eos token id")
		}
		t.post.after = []int32{v.EOS}
	}
	return t, nil
}
