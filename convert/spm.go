package convert

import (
	"fmt"
	"math"

	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
	"google.golang.org/protobuf/encoding/protowire"
)

// SentencePiece piece types (sentencepiece_model.proto's
// ModelProto.SentencePiece.Type), which are also the values of GGUF's
// tokenizer.ggml.token_type.
const (
	TokenNormal      int32 = 1
	TokenUnknown     int32 = 2
	TokenControl     int32 = 3
	TokenUserDefined int32 = 4
	TokenUnused      int32 = 5
	TokenByte        int32 = 6
)

// SPPiece is one entry of a SentencePiece model's vocabulary.
type SPPiece struct {
	Piece string
	Score float32
	Type  int32
}

// ParseSentencePiece reads the pieces of a tokenizer.model file (a
// serialized sentencepiece ModelProto) with finetune/tokenizer's parser,
// and checks every piece type is one GGUF knows.
func ParseSentencePiece(b []byte) ([]SPPiece, error) {
	read, err := tokenizer.ReadSentencePiecePieces(b)
	if err != nil {
		return nil, err
	}
	pieces := make([]SPPiece, len(read))
	for i, p := range read {
		if p.Type < TokenNormal || p.Type > TokenByte {
			return nil, fmt.Errorf("sentencepiece model: piece %d: piece %q has unknown type %d", i, p.Piece, p.Type)
		}
		pieces[i] = SPPiece{Piece: p.Piece, Score: p.Score, Type: p.Type}
	}
	return pieces, nil
}

// EncodeSentencePiece serializes pieces as a minimal ModelProto: the
// vocabulary, a BPE trainer spec with byte fallback, and a normalizer spec
// that adds the dummy prefix and escapes spaces (what Llama's tokenizer.model
// says). The demo writes its generated tokenizer with it.
func EncodeSentencePiece(pieces []SPPiece) []byte {
	var b []byte
	for _, p := range pieces {
		var m []byte
		m = protowire.AppendTag(m, 1, protowire.BytesType)
		m = protowire.AppendString(m, p.Piece)
		m = protowire.AppendTag(m, 2, protowire.Fixed32Type)
		m = protowire.AppendFixed32(m, math.Float32bits(p.Score))
		if p.Type != TokenNormal {
			m = protowire.AppendTag(m, 3, protowire.VarintType)
			m = protowire.AppendVarint(m, uint64(p.Type))
		}
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	// TrainerSpec: model_type (3) = BPE (2), byte_fallback (35) = true.
	var ts []byte
	ts = protowire.AppendTag(ts, 3, protowire.VarintType)
	ts = protowire.AppendVarint(ts, 2)
	ts = protowire.AppendTag(ts, 35, protowire.VarintType)
	ts = protowire.AppendVarint(ts, 1)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, ts)
	// NormalizerSpec: name (1) "identity", add_dummy_prefix (3) true,
	// remove_extra_whitespaces (4) false, escape_whitespaces (5) true.
	var ns []byte
	ns = protowire.AppendTag(ns, 1, protowire.BytesType)
	ns = protowire.AppendString(ns, "identity")
	ns = protowire.AppendTag(ns, 3, protowire.VarintType)
	ns = protowire.AppendVarint(ns, 1)
	ns = protowire.AppendTag(ns, 4, protowire.VarintType)
	ns = protowire.AppendVarint(ns, 0)
	ns = protowire.AppendTag(ns, 5, protowire.VarintType)
	ns = protowire.AppendVarint(ns, 1)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, ns)
	return b
}
