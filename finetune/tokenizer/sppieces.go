package tokenizer

import "fmt"

// SentencePiecePiece is one vocabulary entry of a tokenizer.model file:
// the piece, its score and its sentencepiece_model.proto type (1 normal,
// 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte — also GGUF's
// tokenizer.ggml.token_type values).
type SentencePiecePiece struct {
	Piece string
	Score float32
	Type  int32
}

// ReadSentencePiecePieces returns the vocabulary of a serialized
// SentencePiece ModelProto with the same parser the tokenizer loads
// tokenizer.model with (convert writes GGUF vocabularies from it).
func ReadSentencePiecePieces(b []byte) ([]SentencePiecePiece, error) {
	p, err := parseSPModel(b)
	if err != nil {
		return nil, fmt.Errorf("sentencepiece model: %w", err)
	}
	out := make([]SentencePiecePiece, len(p.pieces))
	for i, sp := range p.pieces {
		out[i] = SentencePiecePiece{Piece: sp.piece, Score: sp.score, Type: int32(sp.typ)}
	}
	return out, nil
}
