package tokenizer

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The facts below are from /work/shared/README.md (the seed's transformers
// 4.x fast tokenizer, i.e. tokenizers applied to tokenizer.json as written).
var row0Prefix = []int32{32010, 450, 29773, 305, 508, 7297, 2243, 333, 373, 278, 10597, 715, 1331, 29889, 32007, 32001}

const (
	yodaTotalLegacy    = 21801 // tokenizers / transformers 4.x / AutoTokenizer(legacy=True)
	yodaTotalNonLegacy = 22018 // transformers 5.17 default AutoTokenizer
)

func TestRow0PrefixAndNoBOS(t *testing.T) {
	tk := phi3(t, DefaultOptions())
	row := yodaRows(t)[0]
	text := renderChat(row.sentence, row.extra)
	for _, add := range []bool{false, true} {
		ids := tk.Encode(text, add)
		if !slices.Equal(ids[:len(row0Prefix)], row0Prefix) {
			t.Errorf("Encode(row 0, addSpecial=%v) starts %v, want %v", add, ids[:len(row0Prefix)], row0Prefix)
		}
		if ids[len(ids)-1] != 32000 {
			t.Errorf("Encode(row 0, addSpecial=%v) ends with %d, want <|endoftext|> 32000", add, ids[len(ids)-1])
		}
	}
	if got := tk.Encode(text, true); !slices.Equal(got, tk.Encode(text, false)) {
		t.Errorf("Phi-3's post-processor should add nothing (no BOS): %v", got[:3])
	}
}

func TestNonLegacyRow0(t *testing.T) {
	tk := phi3(t, Options{Legacy: false})
	row := yodaRows(t)[0]
	ids := tk.Encode(renderChat(row.sentence, row.extra), false)
	// transformers 5.17's default: no "▁" after <|user|>, so "The" is 1576.
	want := []int32{32010, 1576}
	if !slices.Equal(ids[:2], want) {
		t.Errorf("non-legacy row 0 starts %v, want %v", ids[:2], want)
	}
	// A segment that starts the text still gets its "▁" (prepend_scheme first).
	if got, want := tk.Encode("The cat", false), phi3(t, DefaultOptions()).Encode("The cat", false); !slices.Equal(got, want) {
		t.Errorf("non-legacy Encode(%q) = %v, want the legacy %v", "The cat", got, want)
	}
}

func TestYodaTotals(t *testing.T) {
	rows := yodaRows(t)
	if len(rows) != 720 {
		t.Fatalf("%d rows, want 720", len(rows))
	}
	for _, c := range []struct {
		opt  Options
		want int
	}{
		{DefaultOptions(), yodaTotalLegacy},
		{Options{Legacy: false}, yodaTotalNonLegacy},
	} {
		tk := phi3(t, c.opt)
		total := 0
		for _, r := range rows {
			total += len(tk.Encode(renderChat(r.sentence, r.extra), false))
		}
		if total != c.want {
			t.Errorf("Legacy=%v: 720 chat rows total %d tokens, want %d", c.opt.Legacy, total, c.want)
		}
	}
}

// TestSentencePieceAgrees checks the tokenizer.model path against the
// tokenizer.json path on the data set: the raw sentences and translations,
// and the chat-rendered rows (added tokens come from tokenizer_config.json).
func TestSentencePieceAgrees(t *testing.T) {
	js := phi3(t, DefaultOptions())
	sp := phi3(t, Options{Legacy: true, File: "tokenizer.model"})
	if !strings.HasSuffix(sp.Source(), "tokenizer.model") {
		t.Fatalf("source %s", sp.Source())
	}
	mismatch := 0
	for i, r := range yodaRows(t) {
		for _, text := range []string{r.sentence, r.translation, r.extra, renderChat(r.sentence, r.extra)} {
			a, b := js.Encode(text, false), sp.Encode(text, false)
			if !slices.Equal(a, b) {
				mismatch++
				if mismatch <= 5 {
					t.Errorf("row %d %q:\n json  %v\n model %v", i, text, a, b)
				}
			}
		}
	}
	for _, h := range hardStrings {
		if a, b := js.Encode(h, false), sp.Encode(h, false); !slices.Equal(a, b) {
			t.Errorf("hard string %q differs between tokenizer.json and tokenizer.model:\n json  %v\n model %v", h, a, b)
		}
	}
	if mismatch > 0 {
		t.Errorf("%d texts differ", mismatch)
	}
	// The two sources name the same tokens the same way.
	for _, id := range []int32{0, 1, 2, 3, 13, 259, 450, 29871, 31999, 32000, 32010} {
		a, okA := js.IDToToken(id)
		b, okB := sp.IDToToken(id)
		if a != b || okA != okB {
			t.Errorf("IDToToken(%d): json %q %v, model %q %v", id, a, okA, b, okB)
		}
	}
	if js.VocabSize() != sp.VocabSize() {
		t.Errorf("VocabSize: json %d, model %d", js.VocabSize(), sp.VocabSize())
	}
	if js.EOS() != sp.EOS() || js.BOS() != sp.BOS() {
		t.Errorf("EOS/BOS differ: %d/%d vs %d/%d", js.EOS(), js.BOS(), sp.EOS(), sp.BOS())
	}
}

// hardStrings are texts that exercise the corners: they are also in
// testdata/gen_reference.py, which records the reference ids for them.
var hardStrings = []string{
	"",
	" ",
	"   ",
	"Hello world",
	" Hello",
	"Hello ",
	"  two  spaces  between  ",
	"a\tb\t\tc",
	"line1\nline2",
	"\n",
	"\n\n\n",
	"\r\n",
	"windows\r\nline\r\n",
	"trailing newline\n",
	"naïve café résumé",
	"e\u0301 combining acute",
	"ﬁ ligature and ² superscript",
	"日本語のテキストです。",
	"中文字符测试",
	"한국어 텍스트",
	"Привет, мир!",
	"emoji 😀🎉👍🏽",
	"👨‍👩‍👧‍👦 family",
	"\u00a0non-breaking\u00a0space",
	"zero\u200bwidth",
	"Ω≈ç√∫˜µ≤≥÷",
	"1234567890 3.14159 1,000,000",
	"Strong in you, the Force is! Hrrrm.",
	"\"Quoted\" and 'single' and `back`",
	"▁already▁metaspace",
	"<0x0A>",
	"<0xZZ> not a byte",
	"<|notatoken|>",
	"< |user| >",
	"<s>",
	"</s>",
	"<unk>",
	"<|user|>",
	"mid<|user|>word",
	"<|user|>\nThe birch canoe.<|end|>\n<|assistant|>\n",
	"<s> hi",
	"a<s>b",
	"x </s>  y",
	"hello <|assistant|>   \n\t world",
	"<|end|><|end|>",
	"<|endoftext|>",
	"<|placeholder1|>text",
	strings.Repeat("a", 300),
	strings.Repeat("supercalifragilistic", 40),
	strings.Repeat("ab ", 200),
	"\x00null\x01ctrl",
	"tab\tat end\t",
}

// noRoundTrip tells whether decode(encode(x)) legitimately differs from x in
// the reference too: added tokens swallow whitespace (rstrip) and the text
// after them gets its own "▁"; a literal "▁" decodes as a space; and without
// the legacy normalizer a leading space is not doubled, so the decoder's
// strip of one leading space eats it.
func noRoundTrip(tk *Tokenizer, s string) bool {
	for _, a := range tk.AddedTokens() {
		if strings.Contains(s, a.Content) {
			return true
		}
	}
	return strings.Contains(s, metaspace) || (!tk.Legacy() && strings.HasPrefix(s, " "))
}

func TestRoundTrip(t *testing.T) {
	for _, opt := range []Options{DefaultOptions(), {Legacy: true, File: "tokenizer.model"}, {Legacy: false}} {
		tk := phi3(t, opt)
		n := 0
		for _, h := range hardStrings {
			if noRoundTrip(tk, h) {
				continue
			}
			n++
			if got := tk.Decode(tk.Encode(h, false), false); got != h {
				t.Errorf("%+v: Decode(Encode(%q)) = %q", opt, h, got)
			}
		}
		for _, r := range yodaRows(t)[:50] {
			if got := tk.Decode(tk.Encode(r.extra, false), true); got != r.extra {
				t.Errorf("%+v: Decode(Encode(%q)) = %q", opt, r.extra, got)
			}
		}
		if n < 30 {
			t.Fatalf("only %d hard strings round-trip-tested", n)
		}
	}
}

func TestAddedTokenStripping(t *testing.T) {
	tk := phi3(t, DefaultOptions())
	same := func(a, b string) {
		t.Helper()
		if x, y := tk.Encode(a, false), tk.Encode(b, false); !slices.Equal(x, y) {
			t.Errorf("Encode(%q) = %v, Encode(%q) = %v: want equal", a, x, b, y)
		}
	}
	differ := func(a, b string) {
		t.Helper()
		if x, y := tk.Encode(a, false), tk.Encode(b, false); slices.Equal(x, y) {
			t.Errorf("Encode(%q) = Encode(%q) = %v: want different", a, b, x)
		}
	}
	// <|end|> and <|user|> have rstrip: whitespace after them is swallowed.
	same("<|end|>\n\t  Hi", "<|end|>Hi")
	same("<|user|>\nHi", "<|user|>Hi")
	// No lstrip: the space before stays in the text before.
	differ("Hi <|end|>", "Hi<|end|>")
	// <s> has no rstrip: the space after it is text ("▁▁hi").
	differ("<s> hi", "<s>hi")
	if got, want := tk.Encode("<s>hi", false), []int32{1, 7251}; !slices.Equal(got, want) {
		t.Errorf("Encode(<s>hi) = %v, want %v (the segment after a special token gets its own ▁)", got, want)
	}
	// Matching is inside words too (single_word is false).
	if got := tk.Encode("mid<|user|>word", false); !slices.Contains(got, 32010) {
		t.Errorf("Encode(mid<|user|>word) = %v: want 32010 inside", got)
	}
	// Leftmost-longest: <|end|> must not be read as a prefix of a longer
	// non-token, and <|endoftext|> wins over <|end|>.
	if got := tk.Encode("<|endoftext|>", false); !slices.Equal(got, []int32{32000}) {
		t.Errorf("Encode(<|endoftext|>) = %v, want [32000]", got)
	}
	if got := tk.Encode("", true); len(got) != 0 {
		t.Errorf("Encode(\"\") = %v, want []", got)
	}
}

func TestDecode(t *testing.T) {
	tk := phi3(t, DefaultOptions())
	cases := []struct {
		ids  []int32
		skip bool
		want string
	}{
		{[]int32{13}, false, "\n"},           // <0x0A>
		{[]int32{3 + 0xE6}, false, "\uFFFD"}, // a lone UTF-8 lead byte
		{[]int32{3 + 0xE6, 3 + 0x97}, false, "\uFFFD\uFFFD"},
		{[]int32{3 + 0xE6, 3 + 0x97, 3 + 0xA5}, false, "日"}, // bytes E6 97 A5
		{[]int32{450, 29773, 305}, false, "The birch"},      // one leading space stripped
		{[]int32{29871, 450}, false, " The"},                // only one
		{[]int32{32010, 450, 32007}, false, "<|user|> The<|end|>"},
		{[]int32{32010, 450, 32007}, true, "The"},
		{[]int32{1, 450, 2}, true, "The</s>"}, // </s> is not special in this tokenizer.json
		{[]int32{99999, 450}, false, "The"},   // unknown ids are dropped
		{nil, false, ""},
	}
	for _, c := range cases {
		if got := tk.Decode(c.ids, c.skip); got != c.want {
			t.Errorf("Decode(%v, skip=%v) = %q, want %q", c.ids, c.skip, got, c.want)
		}
	}
}

func TestVocabularyAndConfig(t *testing.T) {
	tk := phi3(t, DefaultOptions())
	if n := tk.VocabSize(); n != 32011 {
		t.Errorf("VocabSize = %d, want 32011", n)
	}
	st := tk.SpecialTokens()
	want := SpecialTokens{BOS: "<s>", EOS: "<|endoftext|>", UNK: "<unk>", PAD: "<unk>",
		BOSID: 1, EOSID: 32000, UNKID: 0, PADID: 0}
	if st != want {
		t.Errorf("SpecialTokens = %+v, want %+v", st, want)
	}
	if tk.EOS() != 32000 || tk.BOS() != 1 {
		t.Errorf("EOS %d BOS %d", tk.EOS(), tk.BOS())
	}
	for tok, id := range map[string]int32{"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 13, "▁The": 450, "The": 1576,
		"<|endoftext|>": 32000, "<|assistant|>": 32001, "<|end|>": 32007, "<|user|>": 32010} {
		if got, ok := tk.TokenToID(tok); !ok || got != id {
			t.Errorf("TokenToID(%q) = %d %v, want %d", tok, got, ok, id)
		}
		if got, ok := tk.IDToToken(id); !ok || got != tok {
			t.Errorf("IDToToken(%d) = %q %v, want %q", id, got, ok, tok)
		}
	}
	if _, ok := tk.IDToToken(32011); ok {
		t.Error("IDToToken(32011) should not exist")
	}
}

// TestSpeed: the 720 rows must encode well under a second (the seed's data
// preparation step), with an empty word cache.
func TestSpeed(t *testing.T) {
	tk, err := Load(phi3Dir(t))
	if err != nil {
		t.Fatal(err)
	}
	rows := yodaRows(t)
	start := time.Now()
	for _, r := range rows {
		tk.Encode(renderChat(r.sentence, r.extra), false)
	}
	d := time.Since(start)
	t.Logf("720 rows in %v", d)
	if d > time.Second {
		t.Errorf("720 rows took %v, want well under 1s", d)
	}
}

func TestConcurrentEncode(t *testing.T) {
	tk := phi3(t, DefaultOptions())
	rows := yodaRows(t)
	want := make([][]int32, len(rows))
	for i, r := range rows {
		want[i] = tk.Encode(renderChat(r.sentence, r.extra), false)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g; i < len(rows); i += 4 {
				if got := tk.Encode(renderChat(rows[i].sentence, rows[i].extra), false); !slices.Equal(got, want[i]) {
					errs <- fmt.Sprintf("row %d differs under concurrency", i)
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func BenchmarkEncodeYoda(b *testing.B) {
	rows := yodaRows(b)
	texts := make([]string, len(rows))
	for i, r := range rows {
		texts[i] = renderChat(r.sentence, r.extra)
	}
	tk, err := Load(phi3Dir(b))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, s := range texts {
			tk.Encode(s, false)
		}
	}
}
