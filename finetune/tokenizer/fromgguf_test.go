package tokenizer

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// phi3Vocab lists Phi-3's vocabulary as Ollama's converter writes it into
// a GGUF (convert/tokenizer_spm.go): the pieces of tokenizer.model with
// their scores and types, then the added tokens 32000-32010 as
// user-defined pieces with score -1000.
func phi3Vocab(t *testing.T) SentencePieceVocab {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(phi3Dir(t), "tokenizer.model"))
	if err != nil {
		t.Fatal(err)
	}
	sp, err := parseSPModel(b)
	if err != nil {
		t.Fatal(err)
	}
	v := SentencePieceVocab{BOS: 1, EOS: 32000, UNK: 0, PAD: 32000, AddDummyPrefix: true, Source: "phi3 test vocabulary"}
	for _, p := range sp.pieces {
		v.Pieces = append(v.Pieces, p.piece)
		v.Scores = append(v.Scores, p.score)
		v.Types = append(v.Types, int32(p.typ))
	}
	for _, a := range phi3(t, DefaultOptions()).AddedTokens() {
		if a.ID < int32(len(sp.pieces)) {
			continue
		}
		if int(a.ID) != len(v.Pieces) {
			t.Fatalf("added token %d is not next", a.ID)
		}
		v.Pieces = append(v.Pieces, a.Content)
		v.Scores = append(v.Scores, -1000)
		v.Types = append(v.Types, PieceUserDefined)
	}
	// llama.cpp's attributes for a model named phi3 (llama-vocab.cpp): every
	// control, unknown and user-defined token strips the whitespace on its
	// right, and </s> too, except <unk>, <s> and <|endoftext|>.
	for i, typ := range v.Types {
		if typ != PieceControl && typ != PieceUnknown && typ != PieceUserDefined {
			continue
		}
		p := v.Pieces[i]
		v.Added = append(v.Added, AddedToken{ID: int32(i), Content: p, Special: true,
			RStrip: p != "<unk>" && p != "<s>" && p != "<|endoftext|>"})
	}
	return v
}

func TestSentencePieceVocabMatchesHF(t *testing.T) {
	ref := loadReference(t)
	tk, err := NewSentencePiece(phi3Vocab(t))
	if err != nil {
		t.Fatal(err)
	}
	c := &check{t: t, name: "vocabulary lists"}
	for _, r := range ref.Rows {
		c.ids("row", tk.Encode(r.Text, false), r.A)
		c.ids("prompt", tk.Encode(r.Prompt, false), r.PromptA)
		c.ids("row with special tokens", tk.Encode(r.Text, true), r.A) // add_bos_token false
	}
	for _, d := range ref.DecodeCases {
		c.str("decode "+idsString(d.IDs), tk.Decode(d.IDs, false), d.A)
	}
	c.done()
	if tk.VocabSize() != 32011 || tk.EOS() != 32000 || tk.BOS() != 1 || tk.Pad() != 32000 {
		t.Errorf("vocab %d eos %d bos %d pad %d", tk.VocabSize(), tk.EOS(), tk.BOS(), tk.Pad())
	}
	if id, ok := tk.TokenToID("<|assistant|>"); !ok || id != 32001 {
		t.Errorf("<|assistant|> = %d %v", id, ok)
	}
	if got := tk.Encode("hi", true); got[0] == 1 {
		t.Errorf("BOS added with AddBOS false: %v", got)
	}
}

// TestSentencePieceVocabRStripMatters: without the stripping attributes the
// newline after <|user|> becomes tokens, so the attributes are what makes
// the rows match (the test above would catch their loss).
func TestSentencePieceVocabRStripMatters(t *testing.T) {
	v := phi3Vocab(t)
	v.Added = nil
	tk, err := NewSentencePiece(v)
	if err != nil {
		t.Fatal(err)
	}
	got := tk.Encode("<|user|>\nHello<|end|>\n", false)
	hf := phi3(t, DefaultOptions()).Encode("<|user|>\nHello<|end|>\n", false)
	if slices.Equal(got, hf) {
		t.Errorf("without rstrip the ids still equal HF's %v", hf)
	}
	v.AddBOS = true
	tk, err = NewSentencePiece(v)
	if err != nil {
		t.Fatal(err)
	}
	if got := tk.Encode("Hello", true); got[0] != 1 {
		t.Errorf("AddBOS: %v", got)
	}
}

func TestSentencePieceVocabErrors(t *testing.T) {
	base := func() SentencePieceVocab {
		return SentencePieceVocab{Pieces: []string{"<unk>", "<s>", "▁a"}, Scores: []float32{0, 0, -1},
			Types: []int32{PieceUnknown, PieceControl, PieceNormal}, BOS: 1, EOS: -1, UNK: 0, PAD: -1, AddDummyPrefix: true, Source: "x.gguf"}
	}
	for name, c := range map[string]struct {
		mod  func(*SentencePieceVocab)
		want string
	}{
		"lengths":  {func(v *SentencePieceVocab) { v.Scores = v.Scores[:2] }, "must have the same length"},
		"type":     {func(v *SentencePieceVocab) { v.Types[2] = 9 }, "has type 9"},
		"no unk":   {func(v *SentencePieceVocab) { v.Types[0] = PieceControl }, "no UNKNOWN piece"},
		"dup":      {func(v *SentencePieceVocab) { v.Pieces[2] = "<s>"; v.Types[2] = PieceControl }, "already defined"},
		"bos":      {func(v *SentencePieceVocab) { v.BOS = 7 }, "bos token id 7 is outside"},
		"addbos":   {func(v *SentencePieceVocab) { v.BOS, v.AddBOS = -1, true }, "no bos token id"},
		"added":    {func(v *SentencePieceVocab) { v.Added = []AddedToken{{ID: 2, Content: "<x>"}} }, `added token 2 is "<x>"`},
		"added id": {func(v *SentencePieceVocab) { v.Added = []AddedToken{{ID: 5, Content: "<x>"}} }, "outside the vocabulary"},
		"empty":    {func(v *SentencePieceVocab) { *v = SentencePieceVocab{Source: "x.gguf"} }, "empty"},
	} {
		v := base()
		c.mod(&v)
		_, err := NewSentencePiece(v)
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "x.gguf") {
			t.Errorf("%s: %v", name, err)
		}
	}
	tk, err := NewSentencePiece(base())
	if err != nil {
		t.Fatal(err)
	}
	if got := tk.Encode("a", false); !slices.Equal(got, []int32{2}) {
		t.Errorf("tiny vocabulary: %v", got)
	}
	// Without byte pieces there is no byte fallback: an unknown character is <unk>.
	if got := tk.Encode("a€", false); !slices.Equal(got, []int32{2, 0}) {
		t.Errorf("unknown character: %v", got)
	}
}
