package peft

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// The golden adapter was written by peft 0.21's save_pretrained for the
// tiny Phi-3 of finetune/testdata/golden (hidden 64, intermediate 96,
// 2 layers, 4 heads, 2 KV heads, head dim 16; r 4 on all four linears).
const goldenAdapter = "../testdata/golden/tiny/adapter"

// tinyBase is that model's linears.
func tinyBase() Base {
	b := Base{}
	for l := range 2 {
		p := fmt.Sprintf("model.layers.%d.", l)
		b[p+"self_attn.qkv_proj"] = Shape{Out: 128, In: 64}
		b[p+"self_attn.o_proj"] = Shape{Out: 64, In: 64}
		b[p+"mlp.gate_up_proj"] = Shape{Out: 192, In: 64}
		b[p+"mlp.down_proj"] = Shape{Out: 64, In: 96}
	}
	return b
}

func TestGoldenRoundTrip(t *testing.T) {
	a, err := Read(goldenAdapter, tinyBase())
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Tensors) != 16 || a.Config.R != 4 || a.Config.LoRAAlpha != 8 || a.Config.Scale() != 2 || a.Config.BaseModelNameOrPath != ".." {
		t.Fatalf("read %d tensors, config %+v", len(a.Tensors), a.Config)
	}
	mods, err := a.Modules()
	if err != nil || len(mods) != 8 || mods[0].Name != "model.layers.0.mlp.down_proj" {
		t.Fatalf("modules %v, %v", mods, err)
	}

	out := filepath.Join(t.TempDir(), "adapter")
	if err := Write(out, a); err != nil {
		t.Fatal(err)
	}
	// The weights: byte for byte what peft wrote.
	want, _ := os.ReadFile(filepath.Join(goldenAdapter, WeightsName))
	got, _ := os.ReadFile(filepath.Join(out, WeightsName))
	if !bytes.Equal(got, want) {
		t.Errorf("adapter_model.safetensors differs from peft's (%d vs %d bytes)", len(got), len(want))
	}
	// The config: byte for byte too, once peft's set order of
	// target_modules is replaced by our sorted order.
	wantCfg, _ := os.ReadFile(filepath.Join(goldenAdapter, ConfigName))
	peftOrder := "\"qkv_proj\",\n    \"down_proj\",\n    \"o_proj\",\n    \"gate_up_proj\""
	sorted := "\"down_proj\",\n    \"gate_up_proj\",\n    \"o_proj\",\n    \"qkv_proj\""
	if !bytes.Contains(wantCfg, []byte(peftOrder)) {
		t.Fatalf("fixture's target_modules are not in the order this test expects:\n%s", wantCfg)
	}
	wantCfg = bytes.Replace(wantCfg, []byte(peftOrder), []byte(sorted), 1)
	gotCfg, _ := os.ReadFile(filepath.Join(out, ConfigName))
	if !bytes.Equal(gotCfg, wantCfg) {
		t.Errorf("adapter_config.json differs from peft's:\n--- ours\n%s\n--- peft\n%s", gotCfg, wantCfg)
	}
	// And it reads back to the same values.
	b, err := Read(out, tinyBase())
	if err != nil {
		t.Fatal(err)
	}
	for i := range a.Tensors {
		if a.Tensors[i].Name != b.Tensors[i].Name || fmt.Sprint(a.Tensors[i].Data) != fmt.Sprint(b.Tensors[i].Data) {
			t.Fatalf("tensor %s changed on the round trip", a.Tensors[i].Name)
		}
	}
	// Writing over an existing adapter replaces it (and leaves no temporaries).
	a.Tensors[0].Data[0] = 42
	if err := Write(out, a); err != nil {
		t.Fatal(err)
	}
	c, err := Read(out, tinyBase())
	if err != nil || c.Tensors[0].Data[0] != 42 {
		t.Fatalf("rewrite: %v", err)
	}
	checkNoTemps(t, out)
}

func TestNewConfigMarshal(t *testing.T) {
	c := NewConfig("microsoft/Phi-3-mini-4k-instruct", 8, 16, 0.05, []string{"o_proj", "qkv_proj", "gate_up_proj", "down_proj", "o_proj"})
	js, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	s := string(js)
	for _, want := range []string{
		"{\n  \"alora_invocation_tokens\": null,\n  \"alpha_pattern\": {},",
		`"lora_alpha": 16,`, `"lora_dropout": 0.05,`, `"r": 8,`, `"task_type": "CAUSAL_LM",`,
		`"base_model_name_or_path": "microsoft/Phi-3-mini-4k-instruct",`,
		"\"target_modules\": [\n    \"down_proj\",\n    \"gate_up_proj\",\n    \"o_proj\",\n    \"qkv_proj\"\n  ],",
		"\"velora_config\": null\n}",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("config lacks %q:\n%s", want, s)
		}
	}
	if strings.HasSuffix(s, "\n") {
		t.Error("peft writes no final newline")
	}
	back, err := ParseConfig(js)
	if err != nil {
		t.Fatal(err)
	}
	if back.R != 8 || back.LoRAAlpha != 16 || back.LoRADropout != 0.05 || len(back.TargetModules) != 4 || !back.InferenceMode {
		t.Errorf("parsed back %+v", back)
	}
	c.LoRAAlpha = 12.5
	js, _ = c.Marshal()
	if !strings.Contains(string(js), `"lora_alpha": 12.5,`) {
		t.Errorf("a fractional alpha: %s", js)
	}
}

// writeAdapter writes a modified copy of the golden adapter into a new
// folder: cfg edits the config JSON text, tensors the tensor list.
func writeAdapter(t *testing.T, cfg func(string) string, tensors func([]safetensors.TensorInfo) []safetensors.TensorInfo) string {
	t.Helper()
	dir := t.TempDir()
	c, err := os.ReadFile(filepath.Join(goldenAdapter, ConfigName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ConfigName), []byte(cfg(string(c))), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(filepath.Join(goldenAdapter, WeightsName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ts []safetensors.TensorInfo
	for _, n := range f.Names() {
		ti, _ := f.Tensor(n)
		ti.Data = bytes.Clone(ti.Data)
		ts = append(ts, ti)
	}
	if err := safetensors.Write(filepath.Join(dir, WeightsName), tensors(ts), WeightsMetadata); err != nil {
		t.Fatal(err)
	}
	return dir
}

func same(s string) string                                             { return s }
func sameTensors(ts []safetensors.TensorInfo) []safetensors.TensorInfo { return ts }

func TestReadErrors(t *testing.T) {
	const qkvA = "base_model.model.model.layers.1.self_attn.qkv_proj.lora_A.weight"
	const qkvB = "base_model.model.model.layers.1.self_attn.qkv_proj.lora_B.weight"
	drop := func(name string) func([]safetensors.TensorInfo) []safetensors.TensorInfo {
		return func(ts []safetensors.TensorInfo) []safetensors.TensorInfo {
			var out []safetensors.TensorInfo
			for _, t := range ts {
				if t.Name != name {
					out = append(out, t)
				}
			}
			return out
		}
	}
	replace := func(old, new string) func(string) string {
		return func(s string) string {
			if !strings.Contains(s, old) {
				panic("fixture lacks " + old)
			}
			return strings.Replace(s, old, new, 1)
		}
	}
	cases := []struct {
		name    string
		cfg     func(string) string
		tensors func([]safetensors.TensorInfo) []safetensors.TensorInfo
		base    Base
		want    []string // substrings of the error
	}{
		{"peft type", replace(`"peft_type": "LORA"`, `"peft_type": "IA3"`), sameTensors, tinyBase(), []string{ConfigName, `"peft_type" is "IA3"`, "LORA"}},
		{"dora", replace(`"use_dora": false`, `"use_dora": true`), sameTensors, tinyBase(), []string{ConfigName, `"use_dora" is true: not implemented`}},
		{"rslora", replace(`"use_rslora": false`, `"use_rslora": true`), sameTensors, tinyBase(), []string{`"use_rslora" is true: not implemented`}},
		{"rank pattern", replace(`"rank_pattern": {}`, `"rank_pattern": {"o_proj": 8}`), sameTensors, tinyBase(), []string{`"rank_pattern" is not empty`}},
		{"layers to transform", replace(`"layers_to_transform": null`, `"layers_to_transform": [0]`), sameTensors, tinyBase(), []string{`"layers_to_transform" is [0]: not implemented`}},
		{"rank mismatch", replace(`"r": 4`, `"r": 8`), sameTensors, tinyBase(), []string{WeightsName[:0] + "adapter", "has rank 4, but adapter_config.json says r = 8"}},
		{"A without B", same, drop(qkvB), tinyBase(), []string{qkvA, "has no matching", "lora_B"}},
		{"B without A", same, drop(qkvA), tinyBase(), []string{qkvB, "has no matching", "lora_A"}},
		{"module not in base", same, sameTensors, func() Base { b := tinyBase(); delete(b, "model.layers.1.self_attn.qkv_proj"); return b }(), []string{qkvA, "the base model has no linear module"}},
		{"base of another shape", same, sameTensors, func() Base {
			b := tinyBase()
			b["model.layers.1.self_attn.qkv_proj"] = Shape{Out: 128, In: 32}
			return b
		}(), []string{qkvA, "takes 32 inputs", "another base model"}},
		{"targeted module missing", same, func(ts []safetensors.TensorInfo) []safetensors.TensorInfo {
			return drop(qkvA)(drop(qkvB)(ts))
		}, tinyBase(), []string{"targets", "no lora_A/lora_B for [model.layers.1.self_attn.qkv_proj]"}},
		{"not targeted", replace(`"qkv_proj",`, ``), sameTensors, tinyBase(), []string{"is not among adapter_config.json's target_modules"}},
		{"foreign tensor", same, func(ts []safetensors.TensorInfo) []safetensors.TensorInfo {
			x, _ := safetensors.FromFloat32("base_model.model.lm_head.weight", safetensors.F32, []int{1}, []float32{1})
			return append(ts, x)
		}, tinyBase(), []string{`"base_model.model.lm_head.weight" is not a LoRA matrix`, WeightsName}},
		{"not json", func(string) string { return "{" }, sameTensors, tinyBase(), []string{ConfigName, "not a JSON object"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := writeAdapter(t, c.cfg, c.tensors)
			_, err := Read(dir, c.base)
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), dir) {
				t.Errorf("error %q does not name the folder", err)
			}
		})
	}
	if _, err := Read(filepath.Join(t.TempDir(), "nope"), nil); err == nil || !strings.Contains(err.Error(), ConfigName) {
		t.Errorf("missing folder: %v", err)
	}
}

func TestWriteFilesAllOrNothing(t *testing.T) {
	files := func(fail bool) []File {
		second := func(w io.Writer) error {
			if fail {
				w = testutil.FullDisk(w, 10)
			}
			_, err := w.Write(bytes.Repeat([]byte("b"), 100))
			return err
		}
		return []File{
			NewFile("one", func(w io.Writer) error { _, err := w.Write([]byte("new one")); return err }),
			NewFile("two", second),
		}
	}
	// A folder that does not exist stays absent.
	parent := t.TempDir()
	dir := filepath.Join(parent, "out")
	if err := WriteFiles(dir, files(true)); !errors.Is(err, testutil.ErrDiskFull) {
		t.Fatalf("err = %v", err)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 0 {
		t.Errorf("a failed write left %v", entries)
	}
	// An existing folder keeps its old files, untouched.
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "one"), []byte("old one"), 0o644)
	os.WriteFile(filepath.Join(dir, "two"), []byte("old two"), 0o644)
	if err := WriteFiles(dir, files(true)); !errors.Is(err, testutil.ErrDiskFull) {
		t.Fatalf("err = %v", err)
	}
	for name, want := range map[string]string{"one": "old one", "two": "old two"} {
		if b, _ := os.ReadFile(filepath.Join(dir, name)); string(b) != want {
			t.Errorf("%s is %q after a failed write, want %q", name, b, want)
		}
	}
	checkNoTemps(t, dir)
	// And a good write replaces both.
	if err := WriteFiles(dir, files(false)); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "one")); string(b) != "new one" {
		t.Errorf("one = %q", b)
	}
	// Replaced files are readable by others (an Ollama server running as
	// its own user), not os.CreateTemp's 0600.
	for _, name := range []string{"one", "two"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != 0o644 {
			t.Errorf("%s after a rewrite: %v, err %v; want -rw-r--r--", name, fi.Mode(), err)
		}
	}
	checkNoTemps(t, dir)
}

func checkNoTemps(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary %s left in %s", e.Name(), dir)
		}
	}
}
