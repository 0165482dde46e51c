package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/convert"
	"github.com/ollama-tune/ollama-tune/convert/demo"
	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
)

// demoModelAndAdapter writes the demo base model and a random adapter on it
// (no training: these tests are about files, not answers).
func demoModelAndAdapter(t *testing.T) (model, adapter string) {
	t.Helper()
	model = filepath.Join(t.TempDir(), "base")
	if err := demo.WriteBaseModel(model); err != nil {
		t.Fatal(err)
	}
	cfg := demo.Config()
	a := &peft.Adapter{Config: peft.NewConfig(model, 4, 8, 0, []string{"qkv_proj", "o_proj", "gate_up_proj", "down_proj"})}
	for l := range cfg.NumLayers {
		for i, m := range finetune.LinearModules {
			out, in := finetune.LinearShape(cfg, m)
			A, B := make([]float32, 4*in), make([]float32, out*4)
			for j := range A {
				A[j] = 0.01 * finetune.Normal(uint64(l*4+i), uint64(j))
			}
			for j := range B {
				B[j] = 0.01 * finetune.Normal(uint64(100+l*4+i), uint64(j))
			}
			name := finetune.LayerName(l, m)
			a.Tensors = append(a.Tensors, peft.Tensor{Name: peft.TensorName(name, "A"), Shape: []int{4, in}, Data: A},
				peft.Tensor{Name: peft.TensorName(name, "B"), Shape: []int{out, 4}, Data: B})
		}
	}
	adapter = filepath.Join(t.TempDir(), "adapter")
	if err := peft.Write(adapter, a); err != nil {
		t.Fatal(err)
	}
	return model, adapter
}

func TestExportCommand(t *testing.T) {
	model, adapter := demoModelAndAdapter(t)
	out := filepath.Join(t.TempDir(), "a.gguf")
	// The adapter names its base folder, so no --base is needed.
	stdout, _, err := runCmd(t, newExportCmd(), "--adapter", adapter, "--out", out, "--dtype", "f16")
	if err != nil || !strings.Contains(stdout, "phi3 LoRA adapter, 8 modules, r=4") || !strings.Contains(stdout, "f16") {
		t.Fatalf("export: %v\n%s", err, stdout)
	}
	if g, err := convert.ReadGGUF(out); err != nil || g.KV().Kind() != "adapter" {
		t.Fatalf("read back: %v", err)
	}
	merged := filepath.Join(t.TempDir(), "m.gguf")
	stdout, _, err = runCmd(t, newExportCmd(), "--merge", "--adapter", adapter, "--base", model, "--quant", "q8_0", "--out", merged)
	if err != nil || !strings.Contains(stdout, "merged into 8 linears, q8_0") {
		t.Fatalf("export --merge: %v\n%s", err, stdout)
	}
	if _, _, err := runCmd(t, newExportCmd(), "--adapter", adapter, "--out", out, "--dtype", "q4_0"); err == nil || !strings.Contains(err.Error(), "f32 or f16") ||
		!strings.Contains(err.Error(), "use --merge --quant q4_0") {
		t.Errorf("--dtype q4_0: %v", err)
	}
	// create reads --dtype the same way, before it touches any file.
	if _, _, err := runCmd(t, newCreateCmd(), "tiny", "--adapter", adapter, "--modelfile-only", "--dtype", "q8_0"); err == nil ||
		!strings.Contains(err.Error(), "f32 or f16") || !strings.Contains(err.Error(), "use --route merged --quant q8_0") {
		t.Errorf("create --dtype q8_0: %v", err)
	}
	if _, _, err := runCmd(t, newExportCmd(), "--merge", "--out", out); err == nil || !strings.Contains(err.Error(), "--base is required") {
		t.Errorf("--merge without --base: %v", err)
	}
}

func TestCreateModelfileOnly(t *testing.T) {
	model, adapter := demoModelAndAdapter(t)
	outDir := filepath.Join(t.TempDir(), "ollama")
	stdout, stderr, err := runCmd(t, newCreateCmd(), "yoda", "--adapter", adapter, "--base", model, "--modelfile-only", "--out", outDir)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if !strings.Contains(stdout, "ollama create yoda -f "+filepath.Join(outDir, "Modelfile")) {
		t.Errorf("stdout:\n%s", stdout)
	}
	mf, err := os.ReadFile(filepath.Join(outDir, "Modelfile"))
	if err != nil || !strings.HasPrefix(string(mf), "FROM ./base-f16.gguf\nADAPTER ./adapter.gguf\n") {
		t.Fatalf("Modelfile: %v\n%s", err, mf)
	}
	for _, f := range []string{"base-f16.gguf", "adapter.gguf"} {
		if _, err := os.Stat(filepath.Join(outDir, f)); err != nil {
			t.Error(err)
		}
	}
	if _, _, err := runCmd(t, newCreateCmd(), "yoda", "--adapter", adapter, "--route", "sideways", "--modelfile-only"); err == nil {
		t.Error("--route sideways accepted")
	}
}
