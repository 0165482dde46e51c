package convert

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// TestMergeMatchesPEFT compares the merge WriteModel does (mergeLoRA) with
// PEFT's merge_and_unload on the engine's tiny fp32 golden model and its
// PEFT adapter (testdata/merge_golden.safetensors, made by
// gen_merge_golden.py on the reference machine).
func TestMergeMatchesPEFT(t *testing.T) {
	golden := filepath.Join("testdata", "merge_golden.safetensors")
	if _, err := os.Stat(golden); os.IsNotExist(err) {
		t.Skip("testdata/merge_golden.safetensors not generated yet: run convert/testdata/gen_merge_golden.py (see its header)")
	}
	root := testutil.RepoRoot(t)
	modelDir := filepath.Join(root, "finetune", "testdata", "golden", "tiny_fp32")
	ck, err := finetune.LoadCheckpoint(modelDir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	ad, err := peft.Read(filepath.Join(modelDir, "adapter"), nil)
	if err != nil {
		t.Fatal(err)
	}
	g, err := safetensors.Open(golden)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	mods, err := ad.Modules()
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) == 0 {
		t.Fatal("adapter has no modules")
	}
	for _, m := range mods {
		w, shape, err := ck.Float32(m.Name + ".weight")
		if err != nil {
			t.Fatal(err)
		}
		orig := append([]float32(nil), w...)
		mergeLoRA(w, m.B.Data, m.A.Data, shape[0], shape[1], ad.Config.R, float32(ad.Config.Scale()))
		ti, err := g.Tensor(m.Name + ".weight")
		if err != nil {
			t.Fatal(err)
		}
		want, err := safetensors.ToFloat32(ti)
		if err != nil {
			t.Fatal(err)
		}
		moved := 0.0
		for i := range w {
			if e := math.Abs(float64(w[i] - want[i])); e > 2e-7 {
				t.Fatalf("%s[%d] = %g, PEFT merged %g", m.Name, i, w[i], want[i])
			}
			moved = max(moved, math.Abs(float64(want[i]-orig[i])))
		}
		if moved == 0 {
			t.Errorf("%s: PEFT's merge left the weight unchanged; the fixture proves nothing", m.Name)
		}
	}
}
