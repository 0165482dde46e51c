package tokenizer

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// SentencePiece piece types (sentencepiece_model.proto, SentencePiece.Type).
const (
	spNormal      = 1
	spUnknown     = 2
	spControl     = 3
	spUserDefined = 4
	spUnused      = 5
	spByte        = 6
)

// SentencePiece model types (TrainerSpec.ModelType).
const (
	spUnigram = 1
	spBPE     = 2
	spWord    = 3
	spChar    = 4
)

type spPiece struct {
	piece string
	score float32
	typ   int
}

// spProto is the part of sentencepiece_model.proto's ModelProto a BPE
// tokenizer needs. Field numbers: ModelProto pieces=1, trainer_spec=2,
// normalizer_spec=3; SentencePiece piece=1, score=2, type=3; TrainerSpec
// model_type=3, treat_whitespace_as_suffix=24, byte_fallback=35;
// NormalizerSpec name=1, precompiled_charsmap=2, add_dummy_prefix=3,
// remove_extra_whitespaces=4, escape_whitespaces=5.
type spProto struct {
	pieces                  []spPiece
	modelType               int
	byteFallback            bool
	treatWhitespaceAsSuffix bool
	normName                string
	precompiledCharsmap     []byte
	addDummyPrefix          bool
	removeExtraWhitespaces  bool
	escapeWhitespaces       bool
}

var errTruncated = errors.New("truncated or malformed protobuf")

// parseSPModel decodes a serialized ModelProto by hand with protowire; proto2
// defaults apply to absent fields.
func parseSPModel(b []byte) (*spProto, error) {
	p := &spProto{modelType: spUnigram, addDummyPrefix: true, removeExtraWhitespaces: true, escapeWhitespaces: true}
	err := walkFields(b, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
		switch {
		case num == 1 && typ == protowire.BytesType:
			piece := spPiece{typ: spNormal}
			err := walkFields(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch {
				case num == 1 && typ == protowire.BytesType:
					piece.piece = string(v)
				case num == 2 && typ == protowire.Fixed32Type:
					piece.score = math.Float32frombits(uint32(x))
				case num == 3 && typ == protowire.VarintType:
					piece.typ = int(x)
				}
				return nil
			})
			if err != nil {
				return fmt.Errorf("pieces[%d]: %w", len(p.pieces), err)
			}
			p.pieces = append(p.pieces, piece)
		case num == 2 && typ == protowire.BytesType:
			return walkFields(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				if typ != protowire.VarintType {
					return nil
				}
				switch num {
				case 3:
					p.modelType = int(x)
				case 24:
					p.treatWhitespaceAsSuffix = x != 0
				case 35:
					p.byteFallback = x != 0
				}
				return nil
			})
		case num == 3 && typ == protowire.BytesType:
			return walkFields(v, func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error {
				switch {
				case num == 1 && typ == protowire.BytesType:
					p.normName = string(v)
				case num == 2 && typ == protowire.BytesType:
					p.precompiledCharsmap = append([]byte(nil), v...)
				case num == 3 && typ == protowire.VarintType:
					p.addDummyPrefix = x != 0
				case num == 4 && typ == protowire.VarintType:
					p.removeExtraWhitespaces = x != 0
				case num == 5 && typ == protowire.VarintType:
					p.escapeWhitespaces = x != 0
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(p.pieces) == 0 {
		return nil, errors.New("no pieces: not a SentencePiece model")
	}
	return p, nil
}

// walkFields calls f for every field of one message: v holds a
// length-delimited payload, x a varint or fixed value.
func walkFields(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, x uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errTruncated
		}
		b = b[n:]
		var v []byte
		var x uint64
		switch typ {
		case protowire.VarintType:
			x, n = protowire.ConsumeVarint(b)
		case protowire.Fixed32Type:
			var y uint32
			y, n = protowire.ConsumeFixed32(b)
			x = uint64(y)
		case protowire.Fixed64Type:
			x, n = protowire.ConsumeFixed64(b)
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return errTruncated
		}
		b = b[n:]
		if err := f(num, typ, v, x); err != nil {
			return err
		}
	}
	return nil
}

// spModel is SentencePiece's BPE encoder (bpe_model.cc): the text starts as
// one symbol per character (a user-defined piece is one frozen symbol), and
// the adjacent pair whose concatenation is a piece with the highest score is
// merged, the leftmost first among equals. Unknown symbols fall back to
// <0xXX> byte pieces.
type spModel struct {
	pieces       []spPiece
	pieceIDs     map[string]int32 // NORMAL, USER_DEFINED, UNUSED: what merges may produce
	reserved     map[string]int32 // CONTROL, UNKNOWN, BYTE
	userDefined  map[byte][]string
	unkID        int32
	byteIDs      [256]int32
	byteFallback bool
	cache        wordCache
}

func newSPModel(p *spProto) (*spModel, error) {
	m := &spModel{pieces: p.pieces, pieceIDs: map[string]int32{}, reserved: map[string]int32{},
		userDefined: map[byte][]string{}, unkID: -1, byteFallback: p.byteFallback}
	for i := range m.byteIDs {
		m.byteIDs[i] = -1
	}
	for i, sp := range p.pieces {
		id := int32(i)
		normal := sp.typ == spNormal || sp.typ == spUserDefined || sp.typ == spUnused
		dst := m.reserved
		if normal {
			dst = m.pieceIDs
		}
		if _, dup := dst[sp.piece]; dup {
			return nil, fmt.Errorf("pieces[%d]: %q is already defined", i, sp.piece)
		}
		dst[sp.piece] = id
		switch sp.typ {
		case spUserDefined:
			if sp.piece != "" {
				m.userDefined[sp.piece[0]] = append(m.userDefined[sp.piece[0]], sp.piece)
			}
		case spUnknown:
			m.unkID = id
		case spByte:
			if b, ok := byteToken(sp.piece); ok {
				m.byteIDs[b] = id
			}
		}
	}
	if m.unkID < 0 {
		return nil, errors.New("no UNKNOWN piece")
	}
	return m, nil
}

func (m *spModel) tokenToID(tok string) (int32, bool) {
	if id, ok := m.reserved[tok]; ok {
		return id, true
	}
	id, ok := m.pieceIDs[tok]
	return id, ok
}

func (m *spModel) idToToken(id int32) (string, bool) {
	if id < 0 || int(id) >= len(m.pieces) {
		return "", false
	}
	return m.pieces[id].piece, true
}

func (m *spModel) size() int { return len(m.pieces) }

// pieceToID is ModelInterface::PieceToId: reserved pieces first, then the
// normal ones, else unk.
func (m *spModel) pieceToID(s string) int32 {
	if id, ok := m.reserved[s]; ok {
		return id
	}
	if id, ok := m.pieceIDs[s]; ok {
		return id
	}
	return m.unkID
}

func (m *spModel) tokenize(w string, dst []int32) []int32 {
	if w == "" {
		return dst
	}
	if ids, ok := m.cache.get(w); ok {
		return append(dst, ids...)
	}
	ids := m.encode(w)
	m.cache.put(w, ids)
	return append(dst, ids...)
}

type spSymbol struct {
	prev, next int
	start, end int // byte range in the text; start == end once merged away
	freeze     bool
}

type spPair struct {
	left, right int
	score       float32
	size        int
}

func (m *spModel) encode(text string) []int32 {
	var syms []spSymbol
	for i := 0; i < len(text); {
		n, freeze := 0, false
		for _, u := range m.userDefined[text[i]] {
			if len(u) > n && strings.HasPrefix(text[i:], u) {
				n, freeze = len(u), true
			}
		}
		if n == 0 {
			_, n = utf8.DecodeRuneInString(text[i:])
		}
		idx := len(syms)
		s := spSymbol{prev: idx - 1, next: idx + 1, start: i, end: i + n, freeze: freeze}
		i += n
		if i == len(text) {
			s.next = -1
		}
		syms = append(syms, s)
	}

	var agenda queue[spPair]
	revMerge := map[string][2]string{}
	maybeAdd := func(left, right int) {
		if left == -1 || right == -1 || syms[left].freeze || syms[right].freeze {
			return
		}
		piece := text[syms[left].start:syms[right].end]
		id, ok := m.pieceIDs[piece]
		if !ok {
			return
		}
		agenda.push(spPair{left: left, right: right, score: m.pieces[id].score, size: len(piece)})
		if m.pieces[id].typ == spUnused {
			revMerge[piece] = [2]string{text[syms[left].start:syms[left].end], text[syms[right].start:syms[right].end]}
		}
	}
	for i := 1; i < len(syms); i++ {
		maybeAdd(i-1, i)
	}
	for agenda.len() > 0 {
		top := agenda.pop()
		l, r := &syms[top.left], &syms[top.right]
		if l.start == l.end || r.start == r.end || (l.end-l.start)+(r.end-r.start) != top.size {
			continue // stale
		}
		l.end = r.end
		l.next = r.next
		if r.next >= 0 {
			syms[r.next].prev = top.left
		}
		r.start = r.end
		maybeAdd(l.prev, top.left)
		maybeAdd(top.left, l.next)
	}

	var ids []int32
	var resegment func(w string)
	resegment = func(w string) {
		id := m.pieceToID(w)
		if m.pieces[id].typ == spUnused {
			if p, ok := revMerge[w]; ok {
				resegment(p[0])
				resegment(p[1])
				return
			}
		}
		if id == m.unkID && m.byteFallback {
			for j := 0; j < len(w); j++ {
				b := m.byteIDs[w[j]]
				if b < 0 {
					b = m.unkID // a model without that byte piece: PieceToId gives unk
				}
				ids = append(ids, b)
			}
			return
		}
		if id == m.unkID && len(ids) > 0 && ids[len(ids)-1] == m.unkID {
			return // consecutive unknowns fuse into one
		}
		ids = append(ids, id)
	}
	for i := 0; i != -1 && len(syms) > 0; i = syms[i].next {
		resegment(text[syms[i].start:syms[i].end])
	}
	return ids
}

// before orders the agenda as SymbolPairComparator in bpe_model.cc does:
// highest score first, then the leftmost pair.
func (x spPair) before(y spPair) bool {
	if x.score != y.score {
		return x.score > y.score
	}
	return x.left < y.left
}
