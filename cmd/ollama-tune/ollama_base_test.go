package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/convert"
	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/ollamastore/storetest"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// ollamaEnv points the store at a temporary folder and OLLAMA_HOST at a
// port nothing listens on.
func ollamaEnv(t *testing.T) string {
	t.Helper()
	models := filepath.Join(t.TempDir(), "models")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	t.Setenv("OLLAMA_MODELS", models)
	t.Setenv("OLLAMA_HOST", addr)
	return models
}

// TestTrainAndCreateOnOllamaBase: train --base NAME plans on the model's
// blob; an adapter trained on it is created FROM that model with its
// TEMPLATE, and refused once the model's weights changed or another base
// is named.
func TestTrainAndCreateOnOllamaBase(t *testing.T) {
	clearConfigEnv(t)
	models := ollamaEnv(t)
	dir := tinyModelWithTokenizer(t)
	ggufPath := filepath.Join(t.TempDir(), "tiny.gguf")
	if _, err := convert.WriteModel(ggufPath, convert.ModelOptions{BaseDir: dir, Type: convert.F32, Name: "tiny"}); err != nil {
		t.Fatal(err)
	}
	blob := storetest.Put(t, models, "tiny", ggufPath, convert.Phi3Template)

	cfgPath := yodaConfig(t, "unused", "")
	got, _, err := runCmd(t, newTrainCmd(), "--config", cfgPath, "--base", "tiny", "--dry-run")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"model:             ollama://tiny (" + blob + ")", "examples:          720 for training", "tokens:            21801"} {
		if !strings.Contains(got, w) {
			t.Errorf("dry run output lacks %q:\n%s", w, got)
		}
	}
	if _, _, err := runCmd(t, newTrainCmd(), "--config", cfgPath, "--base", "tiny", "--model", dir, "--dry-run"); err == nil || !strings.Contains(err.Error(), "give one base model") {
		t.Errorf("--base and --model: %v", err)
	}
	if _, _, err := runCmd(t, newTrainCmd(), "--config", cfgPath, "--base", "nosuch", "--dry-run"); err == nil ||
		!strings.Contains(err.Error(), "nosuch:latest") || !strings.Contains(err.Error(), "could not be asked") {
		t.Errorf("a model neither in the store nor on a server: %v", err)
	}
	// keep_gguf is validated with the model --base sets.
	if _, _, err := runCmd(t, newTrainCmd(), "--config", cfgPath, "--base", "tiny", "--dry-run",
		"--set", "quantization.keep_gguf=true", "--set", "quantization.load_in_4bit=false"); err != nil {
		t.Errorf("keep_gguf with --base: %v", err)
	}

	// An adapter trained on ollama://tiny (two steps).
	tc := finetune.DefaultTrainConfig()
	tc.Model = "ollama://tiny"
	tc.Quantization.LoadIn4bit = false
	tc.Dataset.Path = testutil.YodaCSV(t, 4)
	tc.Training.MaxSteps, tc.Training.PerDeviceTrainBatchSize, tc.Training.SaveSteps = 2, 4, 0
	tc.Training.OutputDir = filepath.Join(t.TempDir(), "adapter")
	job, err := finetune.NewJob(context.Background(), tc, finetune.JobOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := finetune.Train(context.Background(), job, nil); err != nil {
		t.Fatal(err)
	}
	adapter := tc.Training.OutputDir
	if ref, rev := ollamaBaseOf(adapter); ref != "ollama://tiny" || rev != finetune.BlobDigest(blob) {
		t.Fatalf("adapter base %q revision %q", ref, rev)
	}

	out := filepath.Join(t.TempDir(), "ollama")
	stdout, stderr, err := runCmd(t, newCreateCmd(), "yoda-tiny", "--adapter", adapter, "--modelfile-only", "--out", out)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	mf, _ := os.ReadFile(filepath.Join(out, "Modelfile"))
	if !strings.HasPrefix(string(mf), "FROM tiny:latest\nADAPTER ./adapter.gguf\nTEMPLATE \"\"\""+convert.Phi3Template+"\"\"\"\n") {
		t.Errorf("Modelfile:\n%s\nstdout:\n%s", mf, stdout)
	}
	if _, err := os.Stat(filepath.Join(out, "adapter.gguf")); err != nil {
		t.Error(err)
	}
	// Another base, or other tokenizer/weights, are refused.
	if _, _, err := runCmd(t, newCreateCmd(), "x", "--adapter", adapter, "--modelfile-only", "--base", "phi3:mini"); err == nil ||
		!strings.Contains(err.Error(), "trained on ollama://tiny") {
		t.Errorf("--base phi3:mini: %v", err)
	}
	if _, _, err := runCmd(t, newCreateCmd(), "x", "--adapter", adapter, "--modelfile-only", "--base", "tiny:latest"); err != nil {
		t.Errorf("--base tiny:latest (the same model): %v", err)
	}
	if _, _, err := runCmd(t, newCreateCmd(), "x", "--adapter", adapter, "--modelfile-only", "--base-weights", dir); err == nil ||
		!strings.Contains(err.Error(), "do not apply") {
		t.Errorf("--base-weights: %v", err)
	}
	// The model is created again from other weights: the adapter is refused.
	other := filepath.Join(t.TempDir(), "other.gguf")
	if _, err := convert.WriteModel(other, convert.ModelOptions{BaseDir: dir, Type: convert.F16, Name: "tiny"}); err != nil {
		t.Fatal(err)
	}
	storetest.Put(t, models, "tiny", other, convert.Phi3Template)
	if _, _, err := runCmd(t, newCreateCmd(), "x", "--adapter", adapter, "--modelfile-only"); err == nil ||
		!strings.Contains(err.Error(), finetune.BlobDigest(blob)) || !strings.Contains(err.Error(), "train again") {
		t.Errorf("changed base: %v", err)
	}
	// export finds the base through the store too.
	stdout, _, err = runCmd(t, newExportCmd(), "--adapter", adapter, "--out", filepath.Join(t.TempDir(), "a.gguf"))
	if err != nil || !strings.Contains(stdout, "checked against ollama://tiny") {
		t.Errorf("export: %v\n%s", err, stdout)
	}
	if c, err := peft.ReadConfig(filepath.Join(adapter, peft.ConfigName)); err != nil || c.BaseModelNameOrPath != "ollama://tiny" {
		t.Errorf("adapter config %+v, %v", c, err)
	}
}
