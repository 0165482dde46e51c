package convert

import (
	"errors"
	"fmt"
	"math"

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
// serialized sentencepiece ModelProto). Only the vocabulary is needed to
// write a GGUF vocabulary, so the trainer and normalizer specs are skipped.
func ParseSentencePiece(b []byte) ([]SPPiece, error) {
	var pieces []SPPiece
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, fmt.Errorf("sentencepiece model: %w", protowire.ParseError(n))
		}
		b = b[n:]
		if num == 1 && typ == protowire.BytesType {
			msg, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, fmt.Errorf("sentencepiece model: piece %d: %w", len(pieces), protowire.ParseError(n))
			}
			p, err := parsePiece(msg)
			if err != nil {
				return nil, fmt.Errorf("sentencepiece model: piece %d: %w", len(pieces), err)
			}
			pieces = append(pieces, p)
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return nil, fmt.Errorf("sentencepiece model: field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
	}
	if len(pieces) == 0 {
		return nil, errors.New("sentencepiece model: no pieces (is this a tokenizer.model file?)")
	}
	return pieces, nil
}

func parsePiece(b []byte) (SPPiece, error) {
	p := SPPiece{Type: TokenNormal} // the proto's default
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return p, protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return p, protowire.ParseError(n)
			}
			p.Piece = string(v)
			b = b[n:]
		case num == 2 && typ == protowire.Fixed32Type:
			v, n := protowire.ConsumeFixed32(b)
			if n < 0 {
				return p, protowire.ParseError(n)
			}
			p.Score = math.Float32frombits(v)
			b = b[n:]
		case num == 3 && typ == protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return p, protowire.ParseError(n)
			}
			p.Type = int32(v)
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return p, protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	if p.Type < TokenNormal || p.Type > TokenByte {
		return p, fmt.Errorf("piece %q has unknown type %d", p.Piece, p.Type)
	}
	return p, nil
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
