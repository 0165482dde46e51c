package tokenizer

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// writeDir makes a tokenizer folder from file name -> contents.
func writeDir(t *testing.T, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tinyJSON is a tokenizer.json with a seven-token BPE and the given merges
// (either spelling), no normalizer.
func tinyJSON(t *testing.T, merges any, extra map[string]any) []byte {
	t.Helper()
	vocab := map[string]int{"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "bc": 5, "abc": 6, "<0x78>": 7}
	model := map[string]any{"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": false,
		"vocab": vocab, "merges": merges}
	f := map[string]any{"model": model, "added_tokens": []any{}, "normalizer": nil, "pre_tokenizer": nil,
		"post_processor": nil, "decoder": nil}
	for k, v := range extra {
		if k == "model" {
			for mk, mv := range v.(map[string]any) {
				model[mk] = mv
			}
			continue
		}
		f[k] = v
	}
	return mustJSON(t, f)
}

func TestBPEMergeOrder(t *testing.T) {
	cases := []struct {
		merges any
		text   string
		want   []int32
	}{
		// bc has the better rank, then a+bc.
		{[][2]string{{"b", "c"}, {"a", "b"}, {"a", "bc"}}, "abc", []int32{6}},
		// ab first, and there is no ab+c merge.
		{[][2]string{{"a", "b"}, {"b", "c"}, {"a", "bc"}}, "abc", []int32{4, 3}},
		// the string spelling of the same merges
		{[]string{"a b", "b c", "a bc"}, "abc", []int32{4, 3}},
		// equal ranks: leftmost first
		{[][2]string{{"a", "b"}}, "ababa", []int32{4, 4, 1}},
		{[][2]string{{"b", "c"}}, "bcbc", []int32{5, 5}},
		// unknown characters fuse into one <unk> (fuse_unk), "x" has no byte fallback here
		{[][2]string{{"a", "b"}}, "ayzb", []int32{1, 0, 2}},
		{[][2]string{}, "", []int32{}},
	}
	for i, c := range cases {
		dir := writeDir(t, map[string][]byte{"tokenizer.json": tinyJSON(t, c.merges, nil)})
		tk, err := Load(dir)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if got := tk.Encode(c.text, false); !slices.Equal(got, c.want) {
			t.Errorf("case %d: merges %v: Encode(%q) = %v, want %v", i, c.merges, c.text, got, c.want)
		}
	}
}

func TestBPEOptions(t *testing.T) {
	merges := [][2]string{{"a", "b"}}
	// fuse_unk false: one <unk> per unknown character.
	dir := writeDir(t, map[string][]byte{"tokenizer.json": tinyJSON(t, merges, map[string]any{"model": map[string]any{"fuse_unk": false}})})
	tk, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tk.Encode("ayzb", false), []int32{1, 0, 0, 2}; !slices.Equal(got, want) {
		t.Errorf("fuse_unk=false: %v, want %v", got, want)
	}
	// byte_fallback: "x" is <0x78>; "y" has no byte piece, so it is <unk>.
	dir = writeDir(t, map[string][]byte{"tokenizer.json": tinyJSON(t, merges, map[string]any{"model": map[string]any{"byte_fallback": true}})})
	if tk, err = Load(dir); err != nil {
		t.Fatal(err)
	}
	if got, want := tk.Encode("axyb", false), []int32{1, 7, 0, 2}; !slices.Equal(got, want) {
		t.Errorf("byte_fallback: %v, want %v", got, want)
	}
	// ignore_merges: a whole word in the vocabulary is taken as is, even
	// when the merges would not build it.
	dir = writeDir(t, map[string][]byte{"tokenizer.json": tinyJSON(t, merges, map[string]any{"model": map[string]any{"ignore_merges": true}})})
	if tk, err = Load(dir); err != nil {
		t.Fatal(err)
	}
	if got, want := tk.Encode("abc", false), []int32{6}; !slices.Equal(got, want) {
		t.Errorf("ignore_merges: %v, want %v", got, want)
	}
}

func TestPipelinePieces(t *testing.T) {
	// Metaspace with split: every "▁" opens a word, so no merge crosses it.
	vocab := map[string]int{"<unk>": 0, "▁": 1, "a": 2, "▁a": 3, "a▁": 4}
	f := map[string]any{
		"model": map[string]any{"type": "BPE", "unk_token": "<unk>", "vocab": vocab,
			"merges": [][2]string{{"a", "▁"}, {"▁", "a"}}},
		"added_tokens": []any{
			map[string]any{"id": 5, "content": "[X]", "special": true, "lstrip": true, "rstrip": false, "normalized": false, "single_word": false},
			map[string]any{"id": 6, "content": "w", "special": false, "lstrip": false, "rstrip": false, "normalized": true, "single_word": true},
		},
		"normalizer":     map[string]any{"type": "Sequence", "normalizers": []any{map[string]any{"type": "Lowercase"}, map[string]any{"type": "Strip", "strip_left": false, "strip_right": true}}},
		"pre_tokenizer":  map[string]any{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
		"post_processor": map[string]any{"type": "TemplateProcessing", "single": []any{map[string]any{"SpecialToken": map[string]any{"id": "[X]", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}}, "special_tokens": map[string]any{"[X]": map[string]any{"id": "[X]", "ids": []int{5}, "tokens": []string{"[X]"}}}},
		"decoder":        map[string]any{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true},
	}
	tk, err := Load(writeDir(t, map[string][]byte{"tokenizer.json": mustJSON(t, f)}))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		text string
		add  bool
		want []int32
	}{
		{"a a", false, []int32{3, 3}},         // "▁a▁a" split into "▁a" "▁a"
		{"A A  ", false, []int32{3, 3}},       // lowercased, right-stripped
		{"a[X]a", false, []int32{3, 5, 3}},    // each segment gets its own ▁
		{"a   [X]a", false, []int32{3, 5, 3}}, // lstrip swallows the spaces before [X]
		{"a", true, []int32{5, 3}},            // template adds [X] first
		{"w a", false, []int32{6, 3}},         // single_word "w" matches as a word (in the normalized text)
		{"aw", false, []int32{3, 0}},          // ... not inside one: "w" is then unknown
	}
	for _, c := range cases {
		if got := tk.Encode(c.text, c.add); !slices.Equal(got, c.want) {
			t.Errorf("Encode(%q, %v) = %v, want %v", c.text, c.add, got, c.want)
		}
	}
	if got := tk.Decode([]int32{3, 3}, false); got != "a a" {
		t.Errorf("Metaspace decode = %q, want %q", got, "a a")
	}
}

func TestLoadErrors(t *testing.T) {
	okModel := tinyJSON(t, [][2]string{{"a", "b"}}, nil)
	cases := []struct {
		name  string
		files map[string][]byte
		opt   Options
		want  []string // substrings of the error
	}{
		{"empty folder", map[string][]byte{}, DefaultOptions(), []string{"neither tokenizer.json nor tokenizer.model"}},
		{"malformed tokenizer.json", map[string][]byte{"tokenizer.json": []byte(`{"model": `)}, DefaultOptions(),
			[]string{"tokenizer.json", "malformed JSON"}},
		{"malformed config", map[string][]byte{"tokenizer.json": okModel, "tokenizer_config.json": []byte(`{`)}, DefaultOptions(),
			[]string{"tokenizer_config.json", "malformed JSON"}},
		{"WordPiece", map[string][]byte{"tokenizer.json": []byte(`{"model": {"type": "WordPiece", "vocab": {}}}`)}, DefaultOptions(),
			[]string{"tokenizer.json", `"WordPiece"`, "not implemented"}},
		{"Unigram json", map[string][]byte{"tokenizer.json": []byte(`{"model": {"type": "Unigram", "vocab": []}}`)}, DefaultOptions(),
			[]string{`"Unigram"`, "not implemented"}},
		{"merge out of vocab", map[string][]byte{"tokenizer.json": tinyJSON(t, [][2]string{{"a", "b"}, {"q", "b"}}, nil)}, DefaultOptions(),
			[]string{"merges[1]", `"q"`}},
		{"bad merge string", map[string][]byte{"tokenizer.json": tinyJSON(t, []string{"a b", "abc"}, nil)}, DefaultOptions(),
			[]string{"merge 1", "abc"}},
		{"Precompiled normalizer", map[string][]byte{"tokenizer.json": tinyJSON(t, [][2]string{}, map[string]any{"normalizer": map[string]any{"type": "Precompiled", "precompiled_charsmap": ""}})}, DefaultOptions(),
			[]string{"normalizer", `"Precompiled"`, "not implemented"}},
		{"ByteLevel pre-tokenizer", map[string][]byte{"tokenizer.json": tinyJSON(t, [][2]string{}, map[string]any{"pre_tokenizer": map[string]any{"type": "ByteLevel"}})}, DefaultOptions(),
			[]string{"pre_tokenizer", `"ByteLevel"`, "not implemented"}},
		{"non-legacy for another class", map[string][]byte{"tokenizer.json": okModel, "tokenizer_config.json": []byte(`{"tokenizer_class": "GPT2Tokenizer"}`)}, Options{Legacy: false},
			[]string{"Legacy=false", "GPT2Tokenizer"}},
		{"eos not in vocab", map[string][]byte{"tokenizer.json": okModel, "tokenizer_config.json": []byte(`{"eos_token": "<eos>"}`)}, DefaultOptions(),
			[]string{"eos_token", `"<eos>"`}},
		{"garbage tokenizer.model", map[string][]byte{"tokenizer.model": {0xff, 0xff, 0xff}}, DefaultOptions(),
			[]string{"tokenizer.model", "malformed protobuf"}},
		{"unigram tokenizer.model", map[string][]byte{"tokenizer.model": spModelBytes(spUnigram, nil)}, DefaultOptions(),
			[]string{"tokenizer.model", "UNIGRAM", "not implemented"}},
		{"bad File option", map[string][]byte{"tokenizer.json": okModel, "vocab.txt": nil}, Options{Legacy: true, File: "vocab.txt"},
			[]string{"vocab.txt", "want tokenizer.json or tokenizer.model"}},
	}
	for _, c := range cases {
		dir := writeDir(t, c.files)
		_, err := LoadWithOptions(dir, c.opt)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", c.name, err, w)
			}
		}
	}
}

type spTestPiece struct {
	piece string
	score float32
	typ   int
}

// spModelBytes serializes a ModelProto with protowire: the pieces, a
// trainer_spec with model_type and byte_fallback, and a normalizer_spec with
// the defaults written out.
func spModelBytes(modelType int, pieces []spTestPiece) []byte {
	if pieces == nil {
		pieces = []spTestPiece{{"<unk>", 0, spUnknown}, {"a", 0, spNormal}}
	}
	var b []byte
	for _, p := range pieces {
		var m []byte
		m = protowire.AppendTag(m, 1, protowire.BytesType)
		m = protowire.AppendString(m, p.piece)
		m = protowire.AppendTag(m, 2, protowire.Fixed32Type)
		m = protowire.AppendFixed32(m, math.Float32bits(p.score))
		m = protowire.AppendTag(m, 3, protowire.VarintType)
		m = protowire.AppendVarint(m, uint64(p.typ))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, m)
	}
	var ts []byte
	ts = protowire.AppendTag(ts, 3, protowire.VarintType)
	ts = protowire.AppendVarint(ts, uint64(modelType))
	ts = protowire.AppendTag(ts, 35, protowire.VarintType)
	ts = protowire.AppendVarint(ts, 1)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, ts)
	var ns []byte
	ns = protowire.AppendTag(ns, 1, protowire.BytesType)
	ns = protowire.AppendString(ns, "identity")
	ns = protowire.AppendTag(ns, 4, protowire.VarintType)
	ns = protowire.AppendVarint(ns, 0) // remove_extra_whitespaces false, as Llama's
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	b = protowire.AppendBytes(b, ns)
	return b
}

func TestSentencePieceBPE(t *testing.T) {
	pieces := []spTestPiece{
		{"<unk>", 0, spUnknown}, {"<s>", 0, spControl}, {"</s>", 0, spControl},
		{"<0x7A>", 0, spByte}, // z
		{"▁", -1, spNormal}, {"a", -2, spNormal}, {"b", -3, spNormal}, {"c", -4, spNormal},
		{"ab", -6, spNormal}, {"bc", -5, spNormal}, {"abc", -7, spNormal}, {"▁a", -9, spNormal},
		{"<X>", 0, spUserDefined},
	}
	id := func(s string) int32 {
		for i, p := range pieces {
			if p.piece == s {
				return int32(i)
			}
		}
		t.Fatalf("no piece %q", s)
		return -1
	}
	dir := writeDir(t, map[string][]byte{"tokenizer.model": spModelBytes(spBPE, pieces),
		"tokenizer_config.json": []byte(`{"add_bos_token": true}`)})
	tk, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		text string
		want []int32
	}{
		// ▁a (-9) loses to bc (-5); then a+bc = abc (-7).
		{"abc", []int32{id("▁"), id("abc")}},
		// ab (-6) beats ▁a (-9); nothing joins ▁ and ab.
		{"ab", []int32{id("▁"), id("ab")}},
		{"a", []int32{id("▁a")}},
		// z has a byte piece; q has none (unk); the user-defined <X> is one
		// frozen piece and, as an added token, splits the text.
		{"az", []int32{id("▁a"), id("<0x7A>")}},
		{"a<X>b", []int32{id("▁a"), id("<X>"), id("▁"), id("b")}},
		{"</s>", []int32{id("</s>")}},
	}
	for _, c := range cases {
		if got := tk.Encode(c.text, false); !slices.Equal(got, c.want) {
			t.Errorf("Encode(%q) = %v, want %v", c.text, got, c.want)
		}
	}
	if got := tk.Encode("a", true); !slices.Equal(got, []int32{id("<s>"), id("▁a")}) {
		t.Errorf("add_bos_token: %v", got)
	}
	if got := tk.Decode([]int32{id("▁a"), id("bc"), id("<0x7A>")}, false); got != "abcz" {
		t.Errorf("Decode = %q", got)
	}
	// No config names the special tokens: LlamaTokenizer's defaults apply.
	if st := tk.SpecialTokens(); st.BOSID != id("<s>") || st.EOSID != id("</s>") || st.UNKID != id("<unk>") || st.PADID != -1 {
		t.Errorf("SpecialTokens = %+v", st)
	}
}

func TestByteFallbackDecoder(t *testing.T) {
	got := byteFallbackDec{}.decodeChain([]string{"a", "<0xE6>", "<0x97>", "b", "<0xE6>", "<0x97>", "<0xA5>", "<0xZZ>", "<0x0A>"})
	want := []string{"a", "\uFFFD", "\uFFFD", "b", "日", "<0xZZ>", "\n"}
	if !slices.Equal(got, want) {
		t.Errorf("ByteFallback = %q, want %q", got, want)
	}
	if got := (stripDec{content: ' ', start: 1, stop: 1}).decodeChain([]string{"  a  ", " "}); !slices.Equal(got, []string{" a ", ""}) {
		t.Errorf("Strip = %q", got)
	}
}
