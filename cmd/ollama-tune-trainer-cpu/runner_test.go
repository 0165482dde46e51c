package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
	"github.com/ollama-tune/ollama-tune/finetune/testutil/tinymodel"
	"github.com/ollama-tune/ollama-tune/internal/trainerplugin"
	"github.com/ollama-tune/ollama-tune/plugin"
)

// tinyModel writes a tiny random Phi-3 with Phi-3's vocabulary and
// tokenizer files.
func tinyModel(t *testing.T) string {
	t.Helper()
	cfg := finetune.Phi3Mini4k()
	cfg.HiddenSize, cfg.IntermediateSize, cfg.NumLayers, cfg.NumHeads, cfg.NumKVHeads = 32, 64, 1, 4, 4
	cfg.SlidingWindow = 0
	return tinymodel.Dir(t, cfg, 3, finetune.F32)
}

// TestRunnerTrainsAndGenerates runs the plugin's runner in process on a
// tiny model: the events arrive in the contract's order, the adapter is
// written, and Generate with that adapter answers as finetune does.
func TestRunnerTrainsAndGenerates(t *testing.T) {
	model := tinyModel(t)
	cfg := finetune.DefaultTrainConfig()
	cfg.Model = model
	cfg.Dataset.Path = testutil.YodaCSV(t, 6)
	cfg.Training.MaxSteps, cfg.Training.NumTrainEpochs = 2, 0
	cfg.Training.PerDeviceTrainBatchSize, cfg.Training.LoggingSteps, cfg.Training.SaveSteps = 2, 1, 1
	cfg.Training.LearningRate = 1e-2
	raw, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "adapter")
	var kinds []string
	var steps []plugin.Step
	err = runner.Run(context.Background(), plugin.TrainRequest{Config: raw, OutputDir: out}, func(e plugin.Event) {
		kinds = append(kinds, strings.TrimPrefix(fmt.Sprintf("%T", e), "plugin."))
		if s, ok := e.(plugin.Step); ok {
			steps = append(steps, s)
		}
		if f, ok := e.(plugin.Finished); ok && (f.AdapterDir != out || f.Steps != 2 || !(f.FinalLoss > 0)) {
			t.Errorf("finished: %+v", f)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(kinds, " ")
	// (each checkpoint's debug Log before it; the steps' host times, a
	// debug Log, before the adapter's)
	if !strings.HasSuffix(got, "Log Started Step Log CheckpointSaved Step Log CheckpointSaved Log Log Finished") {
		t.Errorf("events: %s", got)
	}
	if len(steps) != 2 || steps[1].Step != 2 || !(steps[1].Loss > 0) || !(steps[1].LearningRate >= 0) || steps[1].Epoch <= 0 {
		t.Errorf("steps: %+v", steps)
	}

	prompt := []int32{32010, 450, 29773, 305, 508, 7297, 32007, 32001}
	g := &trainerplugin.Generator{Load: loadForGenerate}
	resp, err := g.Generate(context.Background(), plugin.GenerateRequest{ModelDir: model, AdapterDir: out, PromptIDs: prompt, MaxNewTokens: 6})
	if err != nil {
		t.Fatal(err)
	}
	ck, err := finetune.LoadCheckpoint(model)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	m, err := finetune.LoadModelWithAdapter(finetune.NewCPUBackend(finetune.CPUOptions{}), ck, finetune.ModelOptions{}, out)
	if err != nil {
		t.Fatal(err)
	}
	want, err := m.Generate(prompt, finetune.GenerateOptions{MaxNewTokens: 6})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(resp.IDs, want) {
		t.Errorf("Generate with the adapter = %v, in process = %v", resp.IDs, want)
	}
	base, err := g.Generate(context.Background(), plugin.GenerateRequest{ModelDir: model, PromptIDs: prompt, MaxNewTokens: 6})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("base %v, with adapter %v", base.IDs, resp.IDs)
}

func TestRunnerErrors(t *testing.T) {
	ignore := func(plugin.Event) {}
	err := runner.Run(context.Background(), plugin.TrainRequest{Config: []byte(`{"training": {"learning_rat": 1}}`)}, ignore)
	if plugin.CodeOf(err) != plugin.CodeInvalidConfig || !strings.Contains(err.Error(), "learning_rat") {
		t.Errorf("unknown key: %v", err)
	}
	cfg := finetune.DefaultTrainConfig()
	cfg.Model = filepath.Join(t.TempDir(), "missing")
	raw, _ := json.Marshal(cfg)
	err = runner.Run(context.Background(), plugin.TrainRequest{Config: raw}, ignore)
	if plugin.CodeOf(err) != plugin.CodeInvalidConfig || !strings.Contains(err.Error(), "no such folder") {
		t.Errorf("missing model: %v", err)
	}
}
