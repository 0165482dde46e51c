package safetensors

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeSharded writes shards (file name -> tensors) and an index mapping
// every tensor to its shard, with edits applied to the weight map.
func writeSharded(t *testing.T, dir string, shards map[string][]TensorInfo, edit func(map[string]string)) {
	t.Helper()
	wm := map[string]string{}
	total := 0
	for file, ts := range shards {
		if err := Write(filepath.Join(dir, file), ts, map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
		for _, ti := range ts {
			wm[ti.Name] = file
			total += len(ti.Data)
		}
	}
	if edit != nil {
		edit(wm)
	}
	b, _ := json.MarshalIndent(map[string]any{"metadata": map[string]any{"total_size": total}, "weight_map": wm}, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, IndexFileName), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func tensorF32(name string, vals ...float32) TensorInfo {
	return TensorInfo{Name: name, DType: F32, Shape: []int{len(vals)}, Data: f32Bytes(vals...)}
}

func twoShards() map[string][]TensorInfo {
	return map[string][]TensorInfo{
		"model-00001-of-00002.safetensors": {tensorF32("model.embed_tokens.weight", 1, 2), tensorF32("model.norm.weight", 3)},
		"model-00002-of-00002.safetensors": {tensorF32("lm_head.weight", 4, 5, 6), tensorF32("model.layers.0.input_layernorm.weight", 1)},
	}
}

func TestOpenDirSharded(t *testing.T) {
	dir := t.TempDir()
	writeSharded(t, dir, twoShards(), nil)
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := strings.Join(d.Names(), ","); got != "lm_head.weight,model.embed_tokens.weight,model.layers.0.input_layernorm.weight,model.norm.weight" {
		t.Errorf("Names = %s", got)
	}
	if len(d.Files()) != 2 || d.IndexPath() != filepath.Join(dir, IndexFileName) {
		t.Errorf("Files = %v, IndexPath = %s", d.Files(), d.IndexPath())
	}
	if got := filepath.Base(d.FileOf("lm_head.weight")); got != "model-00002-of-00002.safetensors" {
		t.Errorf("FileOf(lm_head.weight) = %s", got)
	}
	ti, err := d.Tensor("lm_head.weight")
	if err != nil {
		t.Fatal(err)
	}
	v, _ := ToFloat32(ti)
	if len(v) != 3 || v[0] != 4 || v[2] != 6 {
		t.Errorf("lm_head = %v", v)
	}
	if d.Metadata()["format"] != "pt" {
		t.Errorf("Metadata = %v", d.Metadata())
	}
	if _, err := d.Tensor("nope"); err == nil || !strings.Contains(err.Error(), IndexFileName) {
		t.Errorf("missing tensor: %v", err)
	}
	// The index file itself may be named.
	d2, err := OpenDir(filepath.Join(dir, IndexFileName))
	if err != nil {
		t.Fatal(err)
	}
	d2.Close()
}

func TestOpenDirPrefersSingleFile(t *testing.T) {
	dir := t.TempDir()
	writeSharded(t, dir, twoShards(), nil)
	if err := Write(filepath.Join(dir, SingleFileName), []TensorInfo{tensorF32("only", 7)}, nil); err != nil {
		t.Fatal(err)
	}
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got := strings.Join(d.Names(), ","); got != "only" || d.IndexPath() != "" {
		t.Errorf("Names = %s, IndexPath %q; want model.safetensors's tensors", got, d.IndexPath())
	}
	// And a .safetensors file named directly.
	d2, err := OpenDir(filepath.Join(dir, "model-00002-of-00002.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if !d2.Has("lm_head.weight") || d2.Has("only") {
		t.Errorf("direct file: names %v", d2.Names())
	}
}

func TestOpenDirErrors(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  []string
	}{
		{"no weights", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "pytorch_model.bin"), []byte("x"), 0o644)
		}, []string{"has neither model.safetensors nor model.safetensors.index.json", "pytorch_model.bin", "safe_serialization=True"}},
		{"missing shard", func(t *testing.T, dir string) {
			writeSharded(t, dir, twoShards(), nil)
			os.Remove(filepath.Join(dir, "model-00002-of-00002.safetensors"))
		}, []string{`lists shard "model-00002-of-00002.safetensors" (for tensor "lm_head.weight"`, "does not exist"}},
		{"tensor absent from its shard", func(t *testing.T, dir string) {
			writeSharded(t, dir, twoShards(), func(wm map[string]string) {
				wm["model.layers.0.mlp.down_proj.weight"] = "model-00001-of-00002.safetensors"
			})
		}, []string{`lists tensor "model.layers.0.mlp.down_proj.weight" in`, "model-00001-of-00002.safetensors, but that shard does not contain it"}},
		{"tensor in another shard", func(t *testing.T, dir string) {
			writeSharded(t, dir, twoShards(), func(wm map[string]string) { wm["lm_head.weight"] = "model-00001-of-00002.safetensors" })
		}, []string{`lists tensor "lm_head.weight" in`, "(it is in", "model-00002-of-00002.safetensors)"}},
		{"duplicate across shards", func(t *testing.T, dir string) {
			s := twoShards()
			s["model-00002-of-00002.safetensors"] = append(s["model-00002-of-00002.safetensors"], tensorF32("model.norm.weight", 9))
			writeSharded(t, dir, s, nil)
		}, []string{`tensor "model.norm.weight" is stored twice`, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}},
		{"empty weight map", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, IndexFileName), []byte(`{"metadata":{}}`), 0o644)
		}, []string{`"weight_map" is missing or empty`}},
		{"bad json", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, IndexFileName), []byte(`{"weight_map":`), 0o644)
		}, []string{"is not valid JSON"}},
		{"escaping shard path", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, IndexFileName), []byte(`{"weight_map":{"a":"../x.safetensors"}}`), 0o644)
		}, []string{`maps to shard "../x.safetensors", which is not a file inside`}},
		{"malformed shard", func(t *testing.T, dir string) {
			writeSharded(t, dir, twoShards(), nil)
			os.WriteFile(filepath.Join(dir, "model-00002-of-00002.safetensors"), []byte{1, 2}, 0o644)
		}, []string{"model-00002-of-00002.safetensors: file is 2 bytes"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			c.setup(t, dir)
			d, err := OpenDir(dir)
			if err == nil {
				d.Close()
				t.Fatal("OpenDir succeeded")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not say %q", err, w)
				}
			}
		})
	}
}

func TestDirTensorDataIsMapped(t *testing.T) {
	// A single-file Dir hands out views, not copies: the bytes equal the
	// file's at the header-declared offset.
	dir := t.TempDir()
	want := tensorF32("w", 1, 2, 3, 4)
	if err := Write(filepath.Join(dir, SingleFileName), []TensorInfo{want}, nil); err != nil {
		t.Fatal(err)
	}
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	got, _ := d.Tensor("w")
	raw, _ := os.ReadFile(filepath.Join(dir, SingleFileName))
	if !bytes.HasSuffix(raw, got.Data) || !bytes.Equal(got.Data, want.Data) {
		t.Errorf("tensor bytes differ from the file's")
	}
}
