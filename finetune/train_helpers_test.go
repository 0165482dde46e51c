package finetune

import (
	"context"
	"encoding/csv"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// Helpers of the training tests (package finetune cannot import testutil,
// which imports finetune).

// trainRepoRoot walks up from the test's directory to the folder holding go.mod.
func trainRepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test's directory")
		}
		dir = parent
	}
}

// trainSharedData is ../shared/data/<rel> from the repository root; the
// test is skipped when the shared data folder is absent.
func trainSharedData(t testing.TB, rel ...string) string {
	t.Helper()
	root := filepath.Join(trainRepoRoot(t), "..", "shared", "data")
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		t.Skipf("shared data folder %s is absent", root)
	}
	p := filepath.Join(append([]string{root}, rel...)...)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("shared data: %v", err)
	}
	return p
}

// copyFile copies src to dst.
func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

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
	tokDir := trainSharedData(t, "phi3-tokenizer")
	dir := filepath.Join(t.TempDir(), "base")
	if err := WriteRandomCheckpoint(dir, cfg, seed, F32); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "tokenizer.model"} {
		copyFile(t, filepath.Join(tokDir, f), filepath.Join(dir, f))
	}
	return dir
}

// yodaRows writes the header and the first n rows of the Yoda sentences
// to a CSV file and returns its path and the rows.
func yodaRows(t testing.TB, n int) (string, [][]string) {
	t.Helper()
	f, err := os.Open(trainSharedData(t, "yoda_sentences.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	rows = rows[:n+1]
	path := filepath.Join(t.TempDir(), "yoda.csv")
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := csv.NewWriter(out)
	w.WriteAll(rows)
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return path, rows[1:]
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
	path := filepath.Join(dir, safetensors.SingleFileName)
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var ts []safetensors.TensorInfo
	found := false
	for _, n := range f.Names() {
		ti, _ := f.Tensor(n)
		if n == name {
			v, err := safetensors.ToFloat32(ti)
			if err != nil {
				t.Fatal(err)
			}
			for k := range v {
				v[k] *= factor
			}
			if ti, err = safetensors.FromFloat32(n, ti.DType, ti.Shape, v); err != nil {
				t.Fatal(err)
			}
			found = true
		} else {
			ti.Data = append([]byte(nil), ti.Data...)
		}
		ts = append(ts, ti)
	}
	f.Close()
	if !found {
		t.Fatalf("%s has no tensor %s", path, name)
	}
	if err := safetensors.Write(path, ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
}
