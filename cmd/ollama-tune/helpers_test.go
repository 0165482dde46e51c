package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/spf13/cobra"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/llama2c"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
	"github.com/ollama-tune/ollama-tune/finetune/testutil/tinymodel"
)

// runCmd executes a freshly built command in-process with args and returns
// what it wrote to stdout and stderr.
func runCmd(t *testing.T, cmd *cobra.Command, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SilenceUsage = true
	cmd.SilenceErrors = true
	err = cmd.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

// storiesCheckpoint converts ../shared/data/stories260K/stories260K.bin
// (llama2.c) into a Phi3ForCausalLM checkpoint in a temp dir.
func storiesCheckpoint(t *testing.T) string {
	t.Helper()
	m, err := llama2c.Read(testutil.SharedData(t, "stories260K", "stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := m.WritePhi3(dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

// storiesGreedy is the transformers greedy continuation of BOS on the
// converted stories260K checkpoint (finetune/testdata/golden/stories260k).
func storiesGreedy(t *testing.T) []int32 {
	t.Helper()
	p := filepath.Join(testutil.RepoRoot(t), "finetune", "testdata", "golden", "stories260k", "greedy.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Prompt []int32 `json:"prompt"`
		IDs    []int32 `json:"ids"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if len(g.Prompt) != 1 || g.Prompt[0] != 1 || len(g.IDs) < 20 {
		t.Fatalf("%s: prompt %v with %d ids; want [1] and at least 20", p, g.Prompt, len(g.IDs))
	}
	return g.IDs
}

// tinyPhi3Config is a small Phi-3 with the real vocabulary, so that the
// real Phi-3 tokenizer can drive it.
func tinyPhi3Config() *finetune.Config {
	c := finetune.Phi3Mini4k()
	c.HiddenSize, c.IntermediateSize, c.NumLayers, c.NumHeads, c.NumKVHeads = 32, 64, 2, 4, 2
	c.MaxPositionEmbeddings = 256
	c.SlidingWindow = 0
	return c
}

// tinyModelWithTokenizer writes a random tiny Phi-3 checkpoint with the
// shared Phi-3 tokenizer files copied in.
func tinyModelWithTokenizer(t *testing.T) string {
	t.Helper()
	return tinymodel.Dir(t, tinyPhi3Config(), 7, finetune.F32)
}
