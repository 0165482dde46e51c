package demo

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/ollama-tune/ollama-tune/convert"
	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/chat"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

// The generated tokenizer must give the same ids in training (our
// transformers-exact tokenizer on tokenizer.json) and in serving
// (llama.cpp's tokenizer over the GGUF vocabulary from tokenizer.model),
// for every example and for the served prompt of every example.
func TestDemoTokenizerParity(t *testing.T) {
	dir := t.TempDir()
	if err := WriteTokenizer(dir); err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := chat.FromTokenizerDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := convert.LoadVocab(dir, VocabSize(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if v.Special["eos"] != int32(Config().EOSTokenIDs[0]) || v.Tokens[Config().EOSTokenIDs[1]] != "<|end|>" {
		t.Fatalf("special ids: %v; config eos %v", v.Special, Config().EOSTokenIDs)
	}
	words := 0
	for _, name := range []string{"demo", "phi3-demo"} {
		lt := convert.NewLlamaTokenizer(v, name)
		for _, p := range Pairs {
			full, err := tmpl.Render([]chat.Message{{Role: "user", Content: p[0]}, {Role: "assistant", Content: p[1]}}, false)
			if err != nil {
				t.Fatal(err)
			}
			want := tok.Encode(full, false)
			served, err := convert.RenderPrompt(convert.Phi3Template, "", p[0])
			if err != nil {
				t.Fatal(err)
			}
			got := append(lt.Encode(served+p[1], true, true), v.ID("<|end|>"), v.ID("<|endoftext|>"))
			if !slices.Equal(got, want) {
				t.Fatalf("%s: %q\nllama.cpp %v\ntraining  %v", name, p[0], got, want)
			}
			for _, id := range want {
				if len([]rune(v.Tokens[id])) > 2 {
					words++
				}
			}
			if s := tok.Decode(want, true); s != p[0]+" "+p[1] {
				// the decoder joins the turns with the "▁" of the answer
				t.Fatalf("decode %q", s)
			}
		}
	}
	if words == 0 {
		t.Fatal("no word pieces used: the vocabulary is only characters")
	}
	// Text outside the pairs still round-trips (characters, bytes).
	for _, s := range []string{"Zebras jump! ünïcödé 🙂", "the theater"} {
		want := tok.Encode(s, false)
		if got := convert.NewLlamaTokenizer(v, "").Encode(s, false, true); !slices.Equal(got, want) {
			t.Errorf("%q: llama.cpp %v, training %v", s, got, want)
		}
		if d := tok.Decode(want, false); d != s {
			t.Errorf("decode %q, want %q", d, s)
		}
	}
}

func TestDemoBaseModel(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "m")
	if err := WriteBaseModel(dir); err != nil {
		t.Fatal(err)
	}
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	ck.Close()
	out := filepath.Join(t.TempDir(), "m.gguf")
	if _, err := convert.WriteModel(out, convert.ModelOptions{BaseDir: dir, Name: "demo"}); err != nil {
		t.Fatal(err)
	}
}
