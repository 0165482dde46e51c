package tinymodel_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/testutil/tinymodel"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

func TestDir(t *testing.T) {
	cfg := finetune.Phi3Mini4k()
	cfg.HiddenSize, cfg.IntermediateSize, cfg.NumLayers, cfg.NumHeads, cfg.NumKVHeads = 32, 48, 1, 2, 2
	dir := tinymodel.Dir(t, cfg, 5, finetune.BF16)
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	if ck.Config.TorchDType != "bfloat16" || ck.Config.HiddenSize != 32 {
		t.Errorf("config %+v", ck.Config)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.Encode("<|user|>", false); len(got) != 1 || got[0] != 32010 {
		t.Errorf("<|user|> encodes to %v, want [32010] (Phi-3's tokenizer)", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "chat_template.jinja")); err != nil {
		t.Error(err)
	}
}
