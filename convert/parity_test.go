package convert

import (
	"slices"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/chat"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

// phi3Vocab loads the shared Phi-3 tokenizer as the GGUF vocabulary of a
// 32,064-row model.
func phi3Vocab(t *testing.T) (*Vocab, string) {
	t.Helper()
	dir := testutil.SharedData(t, "phi3-tokenizer")
	v, err := LoadVocab(dir, 32064, nil)
	if err != nil {
		t.Fatal(err)
	}
	return v, dir
}

func TestLoadVocabPhi3(t *testing.T) {
	v, _ := phi3Vocab(t)
	if len(v.Tokens) != 32064 || len(v.Scores) != 32064 || len(v.Types) != 32064 {
		t.Fatalf("sizes %d %d %d, want 32064", len(v.Tokens), len(v.Scores), len(v.Types))
	}
	// What convert_hf_to_gguf.py's Phi3MiniModel writes for this folder.
	for _, c := range []struct {
		id   int
		tok  string
		typ  int32
		scor float32
	}{
		{0, "<unk>", TokenControl, -1000}, // special in added_tokens_decoder
		{1, "<s>", TokenControl, -1000},
		{2, "</s>", TokenUserDefined, -1000}, // "special": false there
		{3, "<0x00>", TokenByte, 0},
		{259, "▁▁", TokenNormal, -1000000000},
		{450, "▁The", TokenNormal, v.Scores[450]},
		{32000, "<|endoftext|>", TokenControl, -1000},
		{32001, "<|assistant|>", TokenControl, -1000},
		{32007, "<|end|>", TokenControl, -1000},
		{32010, "<|user|>", TokenControl, -1000},
		{32011, "[PAD32011]", TokenUnused, -10000},
		{32063, "[PAD32063]", TokenUnused, -10000},
	} {
		if v.Tokens[c.id] != c.tok || v.Types[c.id] != c.typ || v.Scores[c.id] != c.scor {
			t.Errorf("id %d = (%q, type %d, score %g), want (%q, %d, %g)", c.id, v.Tokens[c.id], v.Types[c.id], v.Scores[c.id], c.tok, c.typ, c.scor)
		}
	}
	if v.Scores[450] >= 0 {
		t.Errorf("▁The score %g: want the SentencePiece model's negative score", v.Scores[450])
	}
	want := map[string]int32{"bos": 1, "eos": 32000, "unk": 0, "pad": 0}
	if len(v.Special) != len(want) {
		t.Errorf("special ids %v, want %v", v.Special, want)
	}
	for k, id := range want {
		if v.Special[k] != id {
			t.Errorf("%s id %d, want %d", k, v.Special[k], id)
		}
	}
	if add, ok := v.Add["bos"]; !ok || add {
		t.Errorf("add_bos_token = %v (set %v), want false as tokenizer_config.json says", add, ok)
	}
	if !strings.Contains(v.ChatTemplate, "<|assistant|>") {
		t.Errorf("chat template not read from chat_template.jinja: %q", v.ChatTemplate)
	}
}

// trainIDs renders one training example as the trainer does (the chat
// template, then our transformers-exact tokenizer without special tokens).
func trainIDs(t *testing.T, tmpl *chat.Template, tok *tokenizer.Tokenizer, msgs []chat.Message, gen bool) []int32 {
	t.Helper()
	text, err := tmpl.Render(msgs, gen)
	if err != nil {
		t.Fatal(err)
	}
	return tok.Encode(text, false)
}

// TestServePromptParityPhi3 is the train/serve token parity check: for
// every row of the Yoda data set, the ids llama.cpp (modelled by
// LlamaTokenizer over the GGUF vocabulary we write) gives the prompt
// Ollama renders with Phi3Template equal the ids training gave the same
// prompt, and the Library-style template with newlines does not (unless
// general.name turns on llama.cpp's Phi-3 rstrip).
func TestServePromptParityPhi3(t *testing.T) {
	v, dir := phi3Vocab(t)
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := chat.FromTokenizerDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	rows := testutil.YodaRows(t)
	if len(rows) != 720 {
		t.Fatalf("%d rows, want 720", len(rows))
	}
	plain := NewLlamaTokenizer(v, "tiny")      // no rstrip attributes
	named := NewLlamaTokenizer(v, "phi3-yoda") // llama.cpp's Phi-3 rstrip
	libraryTemplate := "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}<|assistant|>\n{{ .Response }}<|end|>\n"
	libDiffers := 0
	for i, r := range rows {
		prompt, answer := r[0], r[1]
		want := trainIDs(t, tmpl, tok, []chat.Message{{Role: "user", Content: prompt}}, true)
		served, err := RenderPrompt(Phi3Template, "", prompt)
		if err != nil {
			t.Fatal(err)
		}
		for _, lt := range []*LlamaTokenizer{plain, named} {
			if got := lt.Encode(served, true, true); !slices.Equal(got, want) {
				t.Fatalf("row %d %q: served prompt ids\n%v\nwant (training)\n%v", i, prompt, got, want)
			}
		}
		// The whole example: the served prompt followed by the answer and
		// the stop token must be the training sequence (the answer's first
		// piece gets its "▁" after <|assistant|> in both).
		full := trainIDs(t, tmpl, tok, []chat.Message{{Role: "user", Content: prompt}, {Role: "assistant", Content: answer}}, false)
		got := append(plain.Encode(served+answer, true, true), v.ID("<|end|>"), v.ID("<|endoftext|>"))
		if !slices.Equal(got, full) {
			t.Fatalf("row %d: prompt+answer ids\n%v\nwant\n%v", i, got, full)
		}
		lib, err := RenderPrompt(libraryTemplate, "", prompt)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(plain.Encode(lib, true, true), want) {
			libDiffers++
		}
		if !slices.Equal(named.Encode(lib, true, true), want) {
			t.Fatalf("row %d: with general.name containing phi3 llama.cpp strips the newlines too, but ids differ", i)
		}
	}
	if libDiffers != len(rows) {
		t.Errorf("the newline template gave training ids for %d of %d rows without rstrip; the parity test cannot tell templates apart", len(rows)-libDiffers, len(rows))
	}
}

// TestLlamaTokenizerKnownIDs pins the example of the project's notes: the
// chat-formatted row tokenizes (no BOS) to these ids in training.
func TestLlamaTokenizerKnownIDs(t *testing.T) {
	v, _ := phi3Vocab(t)
	lt := NewLlamaTokenizer(v, "")
	served, err := RenderPrompt(Phi3Template, "", "The birch canoe slid on the smooth planks.")
	if err != nil {
		t.Fatal(err)
	}
	if served != "<|user|>The birch canoe slid on the smooth planks.<|end|><|assistant|>" {
		t.Fatalf("rendered %q", served)
	}
	want := []int32{32010, 450, 29773, 305, 508, 7297, 2243, 333, 373, 278, 10597, 715, 1331, 29889, 32007, 32001}
	if got := lt.Encode(served, true, true); !slices.Equal(got, want) {
		t.Fatalf("ids %v\nwant %v", got, want)
	}
	// llama.cpp keeps a newline after a special token as "▁" + <0x0A>
	// when no rstrip applies: the failure the template avoids.
	got := lt.Encode("<|user|>\nHi", false, true)
	if want := []int32{32010, 29871, 13, 18567}; !slices.Equal(got, want) {
		t.Errorf("newline after <|user|>: %v, want %v", got, want)
	}
	// Without parse_special the markers are text.
	if got := lt.Encode("<|end|>", false, false); slices.Contains(got, 32007) {
		t.Errorf("parse_special=false still matched <|end|>: %v", got)
	}
	if s := lt.Decode(want[1:14]); s != " The birch canoe slid on the smooth planks." {
		t.Errorf("decode %q", s)
	}
}
