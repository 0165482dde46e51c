package testutil_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

func TestRepoRoot(t *testing.T) {
	root := testutil.RepoRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "module github.com/ollama-tune/ollama-tune\n"; string(raw[:len(want)]) != want {
		t.Errorf("go.mod at %s is not this module's", root)
	}
}

func TestSharedData(t *testing.T) {
	p := testutil.SharedData(t, "phi3-tokenizer", "tokenizer.json")
	if st, err := os.Stat(p); err != nil || st.Size() == 0 {
		t.Errorf("%s: %v", p, err)
	}
}

func TestTinyCheckpoint(t *testing.T) {
	cfg := &finetune.Config{
		Architecture: "Phi3ForCausalLM", ModelType: "phi3", HiddenSize: 32, IntermediateSize: 48,
		NumLayers: 1, NumHeads: 2, NumKVHeads: 2, VocabSize: 64, RMSNormEps: 1e-5, RopeTheta: 10000,
		PartialRotaryFactor: 1, MaxPositionEmbeddings: 64, HiddenAct: "silu", PadTokenID: -1,
	}
	dir := testutil.TinyCheckpoint(t, cfg, 5, finetune.BF16)
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if ck.Config.TorchDType != "bfloat16" || ck.Config.HiddenSize != 32 {
		t.Errorf("config %+v", ck.Config)
	}
}
