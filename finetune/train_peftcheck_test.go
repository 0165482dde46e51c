package finetune

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/chat"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// PEFTCheckEnv names a folder into which TestPEFTCheckExport writes what
// testdata/check_peft_logits.py needs to compare our adapter, loaded by
// peft.PeftModel.from_pretrained, with our own logits:
//
//	base/                   a tiny random Phi-3 (fp32, GQA) with the Phi-3 tokenizer
//	adapter/                the adapter Train wrote after a few steps on it
//	batch.safetensors       input_ids, position_ids I64 [2,S] (no padding);
//	                        logits F32 [2,S,V]: base + adapter, our CPU engine in
//	                        fp32; base_logits F32 [2,S,V]: the base alone
const PEFTCheckEnv = "OLLAMA_TUNE_EXPORT_PEFT_CHECK"

// TestPEFTCheckExport trains a few steps, reloads the written adapter and
// checks that it reproduces the trained model's logits (and differs from
// the base's); with OLLAMA_TUNE_EXPORT_PEFT_CHECK=dir it also writes the
// files for the check against PEFT.
func TestPEFTCheckExport(t *testing.T) {
	cfg := tinyPhi3(48, 96, 2, 4)
	cfg.NumKVHeads = 2
	model := tinyModelDir(t, cfg, 21)
	csvPath, rows := testutil.YodaCSV(t, 12), testutil.YodaRows(t)[:12]
	c := tinyJobConfig(model, csvPath, filepath.Join(t.TempDir(), "adapter"))
	c.Quantization.LoadIn4bit = false
	c.LoRA.LoRADropout = 0.1
	c.Training.PerDeviceTrainBatchSize = 2
	c.Training.NumTrainEpochs, c.Training.MaxSteps = 0, 5
	c.Training.LearningRate, c.Training.SaveSteps = 2e-2, 0
	c.Training.Optim = "adamw_torch"
	job := newTestJob(t, c, "")
	res, err := Train(context.Background(), job, nil)
	if err != nil {
		t.Fatal(err)
	}

	// A batch of two prompts, cut to the same length (no padding, so any
	// attention implementation agrees on it).
	var ids [][]int32
	for _, r := range rows[:2] {
		s, err := job.Template.Render([]chat.Message{{Role: "user", Content: r[0]}, {Role: "assistant", Content: r[2]}}, false)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, job.Tokenizer.Encode(s, false))
	}
	S := min(len(ids[0]), len(ids[1]), 32)
	batch := &Batch{B: 2, S: S}
	for _, row := range ids {
		for p := range S {
			batch.InputIDs = append(batch.InputIDs, row[p])
			batch.PositionIDs = append(batch.PositionIDs, int32(p))
		}
	}

	ck, err := LoadCheckpoint(model)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	b := NewCPUBackend(CPUOptions{})
	withAdapter, err := LoadModelWithAdapter(b, ck, ModelOptions{}, res.OutputDir)
	if err != nil {
		t.Fatal(err)
	}
	base, err := LoadModel(b, ck, ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	logits, err := withAdapter.Logits(batch)
	if err != nil {
		t.Fatal(err)
	}
	baseLogits, err := base.Logits(batch)
	if err != nil {
		t.Fatal(err)
	}
	// The adapter matters: the logits move by a visible fraction.
	var diff, norm float64
	for k := range logits {
		d := float64(logits[k] - baseLogits[k])
		diff += d * d
		norm += float64(baseLogits[k]) * float64(baseLogits[k])
	}
	rel := math.Sqrt(diff / norm)
	t.Logf("adapter moves the logits by %.3g (relative L2)", rel)
	if rel < 1e-3 {
		t.Errorf("the trained adapter hardly changes the logits (%.3g); the check against PEFT would not see a wrong adapter", rel)
	}
	// Loading the written adapter into a model reproduces the logits of the
	// same model with the adapter set from its matrices.
	a, err := peft.Read(res.OutputDir, PEFTBase(cfg))
	if err != nil {
		t.Fatal(err)
	}
	lc, _ := LoRAConfigOf(a)
	m2, err := LoadModel(b, ck, ModelOptions{LoRA: lc})
	if err != nil {
		t.Fatal(err)
	}
	for _, ts := range a.Tensors {
		if err := m2.SetLoRA(ts.Name, ts.Data); err != nil {
			t.Fatal(err)
		}
	}
	again, _ := m2.Logits(batch)
	for k := range again {
		if again[k] != logits[k] {
			t.Fatalf("logit %d: %v vs %v", k, again[k], logits[k])
		}
	}

	dir := os.Getenv(PEFTCheckEnv)
	if dir == "" {
		return
	}
	if err := os.CopyFS(filepath.Join(dir, "base"), os.DirFS(model)); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "adapter"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{peft.ConfigName, peft.WeightsName} {
		testutil.CopyFile(t, filepath.Join(res.OutputDir, f), filepath.Join(dir, "adapter", f))
	}
	i64 := func(v []int32) []int64 {
		out := make([]int64, len(v))
		for k, x := range v {
			out[k] = int64(x)
		}
		return out
	}
	V := cfg.VocabSize
	var ts []safetensors.TensorInfo
	add := func(ti safetensors.TensorInfo, err error) {
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, ti)
	}
	add(safetensors.FromInt64("input_ids", []int{2, S}, i64(batch.InputIDs)))
	add(safetensors.FromInt64("position_ids", []int{2, S}, i64(batch.PositionIDs)))
	add(safetensors.FromFloat32("logits", safetensors.F32, []int{2, S, V}, logits))
	add(safetensors.FromFloat32("base_logits", safetensors.F32, []int{2, S, V}, baseLogits))
	if err := safetensors.Write(filepath.Join(dir, "batch.safetensors"), ts, map[string]string{"generator": "finetune TestPEFTCheckExport (CPU backend, fp32)"}); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s: now run python3 finetune/testdata/check_peft_logits.py %s", dir, dir)
}
