package tinymodel_test

import (
	"fmt"
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

func TestPackedBatch(t *testing.T) {
	b := tinymodel.PackedBatch(2, 5, 11, []int{3, 4})
	// Row 0: an example of 3, then one of 4 cut after 2; row 1 starts the
	// next (3) afresh and a 4 follows.
	wantPos := []int32{0, 1, 2, 0, 1, 0, 1, 2, 0, 1}
	if fmt.Sprint(b.PositionIDs) != fmt.Sprint(wantPos) {
		t.Errorf("positions %v, want %v", b.PositionIDs, wantPos)
	}
	for k, id := range b.InputIDs {
		if want := int32((k*131 + 7) % 11); id != want {
			t.Errorf("id %d is %d, want %d", k, id, want)
		}
		if want := id; wantPos[k] < 2 {
			if b.Labels[k] != finetune.IgnoreIndex {
				t.Errorf("label %d (a prompt token) is %d", k, b.Labels[k])
			}
		} else if b.Labels[k] != want {
			t.Errorf("label %d is %d, want %d", k, b.Labels[k], want)
		}
	}
}
