package tokenizer

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestSequenceParsing: the Sequence of each pipeline stage parses its
// members, drops null ones, and an error inside names the member's place.
func TestSequenceParsing(t *testing.T) {
	n, err := parseNormalizer(json.RawMessage(`{"type":"Sequence","normalizers":[
		{"type":"Prepend","prepend":"▁"}, null, {"type":"Replace","pattern":{"String":" "},"content":"▁"}]}`), "normalizer")
	if err != nil {
		t.Fatal(err)
	}
	if seq, ok := n.(normalizerSeq); !ok || len(seq) != 2 {
		t.Fatalf("normalizer %#v: want a Sequence of 2 (null dropped)", n)
	}
	if got := n.normalize("a b"); got != "▁a▁b" {
		t.Errorf("normalize(%q) = %q, want %q", "a b", got, "▁a▁b")
	}

	d, err := parseDecoder(json.RawMessage(`{"type":"Sequence","decoders":[
		{"type":"Replace","pattern":{"String":"▁"},"content":" "}, {"type":"ByteFallback"}, {"type":"Fuse"},
		{"type":"Strip","content":" ","start":1,"stop":0}]}`), "decoder")
	if err != nil {
		t.Fatal(err)
	}
	if got := d.decodeChain([]string{"▁Hello", "▁wor", "ld", "<0x21>"}); len(got) != 1 || got[0] != "Hello world!" {
		t.Errorf("decode = %q, want [\"Hello world!\"]", got)
	}

	p, err := parsePreTokenizer(json.RawMessage(`{"type":"Sequence","pretokenizers":[
		{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":false}]}`), "pre_tokenizer")
	if err != nil {
		t.Fatal(err)
	}
	if got := p.preTokenize("a b", true, nil); len(got) != 1 || got[0] != "▁a▁b" {
		t.Errorf("preTokenize = %q, want [\"▁a▁b\"]", got)
	}

	pp, err := parsePostProcessor(json.RawMessage(`{"type":"Sequence","processors":[
		{"type":"ByteLevel"},
		{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>"}},{"Sequence":{"id":"A"}}],
		 "special_tokens":{"<s>":{"ids":[1]}}}]}`), "post_processor")
	if err != nil {
		t.Fatal(err)
	}
	if got := pp.apply([]int32{5}); len(got) != 2 || got[0] != 1 || got[1] != 5 {
		t.Errorf("post-process [5] = %v, want [1 5]", got)
	}

	for _, tc := range []struct {
		parse func(json.RawMessage, string) error
		raw   string
		want  []string
	}{
		{func(r json.RawMessage, w string) error { _, err := parseNormalizer(r, w); return err },
			`{"type":"Sequence","normalizers":[{"type":"NFC"},{"type":"Precompiled"}]}`,
			[]string{"normalizer (type Sequence).normalizers[1] (type Precompiled)", `normalizer type "Precompiled" is not implemented`}},
		{func(r json.RawMessage, w string) error { _, err := parseDecoder(r, w); return err },
			`{"type":"Sequence","decoders":[{"type":"Metaspace","prepend_scheme":"sometimes"}]}`,
			[]string{"decoder (type Sequence).decoders[0] (type Metaspace)", `prepend_scheme "sometimes"`}},
		{func(r json.RawMessage, w string) error { _, err := parseDecoder(r, w); return err },
			`{"type":"Replace","pattern":{"Regex":"(?<=a)b"},"content":""}`,
			[]string{"decoder (type Replace)", "not supported by Go's regexp"}},
		{func(r json.RawMessage, w string) error { _, err := parsePreTokenizer(r, w); return err },
			`{"type":"Sequence","pretokenizers":{"not":"a list"}}`,
			[]string{"pre_tokenizer (type Sequence): ", "pretokenizers"}},
		{func(r json.RawMessage, w string) error { _, err := parsePostProcessor(r, w); return err },
			`{"type":"Sequence","processors":[{"type":"BertProcessing","sep":["</s>","x"],"cls":["<s>",0]}]}`,
			[]string{"post_processor (type Sequence).processors[0] (type BertProcessing): sep"}},
	} {
		err := tc.parse(json.RawMessage(tc.raw), strings.Fields(tc.want[0])[0])
		if err == nil {
			t.Errorf("%s: no error", tc.raw)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not say %q", tc.raw, err, w)
			}
		}
	}
}
