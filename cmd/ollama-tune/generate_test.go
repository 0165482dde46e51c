package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

// The acceptance test of issue 2's CLI: on stories260K converted to Phi-3,
// greedy generation from BOS prints transformers' first 20 ids.
func TestGenerateStoriesPrintIDs(t *testing.T) {
	dir := storiesCheckpoint(t)
	want := storiesGreedy(t)[:20]
	out, _, err := runCmd(t, newGenerateCmd(), "--model", dir, "--prompt-ids", "1", "--max-new-tokens", "20", "--print-ids")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSuffix(out, "\n"); got != formatIDs(want) {
		t.Fatalf("generate printed\n%q\nwant (transformers, greedy.json)\n%q", out, formatIDs(want)+"\n")
	}
}

// An adapter changes the continuation, and the CLI's result is what the
// engine gives for the same model and adapter built in memory.
func TestGenerateWithAdapter(t *testing.T) {
	dir := storiesCheckpoint(t)
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	lc := &finetune.LoRAConfig{R: 4, Alpha: 8, TargetModules: []string{"qkv_proj", "down_proj"}, Bias: "none", Seed: 3}
	m, err := finetune.LoadModel(finetune.NewCPUBackend(finetune.CPUOptions{}), ck, finetune.ModelOptions{LoRA: lc})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Free()
	// B starts at zero (the adapter would be the identity); give it values.
	for i, p := range m.LoRAParams() {
		if !strings.Contains(p.Name, "lora_B") {
			continue
		}
		data := make([]float32, p.Numel())
		for k := range data {
			data[k] = 0.3 * finetune.Normal(uint64(i), uint64(k))
		}
		if err := m.SetLoRA(p.Name, data); err != nil {
			t.Fatal(err)
		}
	}
	want, err := m.Generate([]int32{1, 403, 407}, finetune.GenerateOptions{MaxNewTokens: 12, IgnoreEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	a, err := m.Adapter(dir, lc)
	if err != nil {
		t.Fatal(err)
	}
	adDir := t.TempDir()
	if err := peft.Write(adDir, a); err != nil {
		t.Fatal(err)
	}

	args := []string{"--model", dir, "--prompt-ids", "1 403 407", "--max-new-tokens", "12", "--print-ids", "--ignore-eos"}
	base, _, err := runCmd(t, newGenerateCmd(), args...)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := runCmd(t, newGenerateCmd(), append(args, "--adapter", adDir)...)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(got) != formatIDs(want) {
		t.Fatalf("with adapter: %q, want the engine's %q", got, formatIDs(want))
	}
	if got == base {
		t.Fatalf("the adapter changed nothing: %q", got)
	}
}

// Text in, text out with the real Phi-3 tokenizer: --chat encodes the
// prompt through the chat template with the generation prompt, and the
// printed text is the decoding of the printed ids.
func TestGenerateChatText(t *testing.T) {
	dir := tinyModelWithTokenizer(t)
	args := []string{"--model", dir, "--prompt", "The Force is strong in you!", "--chat", "--max-new-tokens", "6", "--ignore-eos"}
	ids, _, err := runCmd(t, newGenerateCmd(), append(args, "--print-ids")...)
	if err != nil {
		t.Fatal(err)
	}
	text, _, err := runCmd(t, newGenerateCmd(), args...)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := parseIDs(ids)
	if err != nil || len(parsed) != 6 {
		t.Fatalf("--print-ids printed %q (%v); want 6 ids", ids, err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := tok.Decode(parsed, true) + "\n"; text != want {
		t.Fatalf("text %q, want the decoding of the ids %q", text, want)
	}

	// The chat prompt is what `tokenize --chat` prints, and the model saw it:
	// the same ids given directly continue the same way.
	chatIDs, _, err := runCmd(t, newTokenizeCmd(), "--tokenizer", dir, "--chat", "The Force is strong in you!")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(chatIDs, "32010 ") || !strings.HasSuffix(chatIDs, " 32007 32001\n") {
		t.Fatalf("tokenize --chat printed %q; want <|user|> ... <|end|> <|assistant|>", chatIDs)
	}
	again, _, err := runCmd(t, newGenerateCmd(), "--model", dir, "--prompt-ids", chatIDs, "--max-new-tokens", "6", "--ignore-eos", "--print-ids")
	if err != nil {
		t.Fatal(err)
	}
	if again != ids {
		t.Fatalf("ids of tokenize --chat continue as %q, --chat as %q", again, ids)
	}
}

// Stop ids: the config's EOS, the tokenizer's EOS and <|end|>.
func TestGenerateStopIDs(t *testing.T) {
	dir := tinyModelWithTokenizer(t)
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := tinyPhi3Config()
	got := stopIDs(cfg, tok)
	for _, id := range []int32{32000, 32007} {
		if !slices.Contains(got, id) {
			t.Errorf("stop ids %v lack %d", got, id)
		}
	}
	if got := stopIDs(&finetune.Config{}, nil); got == nil || len(got) != 0 {
		t.Errorf("no config EOS and no tokenizer: %v, want an empty non-nil list", got)
	}
}

func TestGenerateErrors(t *testing.T) {
	dir := storiesCheckpoint(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--model", dir, "--prompt", "hello"}, "tokenizer"},
		{[]string{"--model", dir, "--prompt-ids", "1 x", "--print-ids"}, `token id "x"`},
		{[]string{"--model", dir, "--prompt-ids", "1", "--chat"}, "--chat"},
		{[]string{"--model", dir, "--prompt-ids", "1", "--top-p", "0"}, "--top-p"},
		{[]string{"--model", dir, "--prompt-ids", "9999", "--print-ids"}, "outside the vocabulary"},
		{[]string{"--model", dir + "/nope", "--prompt-ids", "1"}, "no such directory"},
		{[]string{"--model", dir, "--prompt-ids", "1", "--print-ids", "--adapter", t.TempDir()}, "adapter"},
		{[]string{"--model", dir}, "prompt"},
	} {
		_, _, err := runCmd(t, newGenerateCmd(), tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v; want one mentioning %q", tc.args, err, tc.want)
		}
	}
}
