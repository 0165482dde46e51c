package finetune

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// Helpers of the training tests. The repository root, the shared data and
// the Yoda CSV come from testutil; tinymodel cannot be used here (it
// imports finetune), hence tinyModelDir.

// tinyPhi3 is a small Phi-3 shape with Phi-3's real vocabulary (32064), so
// the Phi-3 tokenizer works with it.
func tinyPhi3(hidden, inter, layers, heads int) *Config {
	c := Phi3Mini4k()
	c.HiddenSize, c.IntermediateSize, c.NumLayers, c.NumHeads, c.NumKVHeads = hidden, inter, layers, heads, heads
	c.MaxPositionEmbeddings, c.SlidingWindow = 256, 0
	c.EOSTokenIDs = []int{32000, 32007} // <|endoftext|>, <|end|> (Phi-3's generation_config)
	return c
}

// tinyModelDir writes a random tiny Phi-3 with the Phi-3 tokenizer files.
func tinyModelDir(t testing.TB, cfg *Config, seed uint64) string {
	t.Helper()
	tokDir := testutil.SharedData(t, "phi3-tokenizer")
	dir := filepath.Join(t.TempDir(), "base")
	if err := WriteRandomCheckpoint(dir, cfg, seed, F32); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "tokenizer.model"} {
		testutil.CopyFile(t, filepath.Join(tokDir, f), filepath.Join(dir, f))
	}
	return dir
}

// tinyJobConfig is the seed's configuration scaled to a tiny model.
func tinyJobConfig(model, dataPath, out string) TrainConfig {
	c := DefaultTrainConfig()
	c.Model = model
	c.Dataset.Path = dataPath
	c.Training.OutputDir = out
	c.Device = "cpu"
	return c
}

func newTestJob(t testing.TB, c TrainConfig, resume string) *Job {
	t.Helper()
	j, err := NewJob(context.Background(), c, JobOptions{Resume: resume})
	if err != nil {
		t.Fatal(err)
	}
	return j
}

// collectEvents returns an emit function and the events it saw.
func collectEvents() (func(TrainEvent), *[]TrainEvent) {
	var evs []TrainEvent
	return func(e TrainEvent) { evs = append(evs, e) }, &evs
}

// scaleWeight multiplies one tensor of dir/model.safetensors by factor.
func scaleWeight(t testing.TB, dir, name string, factor float32) {
	t.Helper()
	ckptRewrite(t, dir, func(ts []safetensors.TensorInfo) []safetensors.TensorInfo {
		for i, ti := range ts {
			if ti.Name != name {
				continue
			}
			v, err := safetensors.ToFloat32(ti)
			if err != nil {
				t.Fatal(err)
			}
			for k := range v {
				v[k] *= factor
			}
			if ts[i], err = safetensors.FromFloat32(name, ti.DType, ti.Shape, v); err != nil {
				t.Fatal(err)
			}
			return ts
		}
		t.Fatalf("%s/%s has no tensor %s", dir, safetensors.SingleFileName, name)
		return nil
	})
}
