package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/plugin"
)

func TestParseMeminfo(t *testing.T) {
	in := "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   12288000 kB\nHugePages_Total:       0\n"
	total, avail := parseMeminfo(strings.NewReader(in))
	if total != 24576000<<10 || avail != 12288000<<10 {
		t.Errorf("parseMeminfo = %d, %d", total, avail)
	}
	if total, avail := parseMeminfo(strings.NewReader("garbage\nMemTotal: x kB\n")); total != 0 || avail != 0 {
		t.Errorf("garbage gave %d, %d", total, avail)
	}
}

// TestServedThroughTheHost builds this plugin and talks to it the way
// ollama-tune does: capabilities, a training request (not implemented yet)
// and generation on a tiny random Phi-3, compared with finetune in process.
func TestServedThroughTheHost(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to build the plugin")
	}
	bin := filepath.Join(t.TempDir(), plugin.BinaryPrefix+"cpu")
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr})
	p, err := plugin.Launch(plugin.Binary{Backend: "cpu", Path: bin}, plugin.Options{Logger: logger, StartTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	caps, err := p.Capabilities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if caps.Backend != "cpu" || caps.ProtocolVersion != plugin.ProtocolVersion || len(caps.Devices) != 1 ||
		caps.Devices[0].Detail != fmt.Sprintf("%d cores", runtime.NumCPU()) ||
		fmt.Sprint(caps.ComputeDTypes) != "[fp32 bf16 (emulated) fp16 (emulated)]" ||
		fmt.Sprint(caps.Optimizers) != "[adamw_torch adamw_8bit paged_adamw_8bit]" {
		t.Errorf("Capabilities = %+v", caps)
	}
	if runtime.GOOS == "linux" && (caps.Devices[0].TotalMemory == 0 || caps.Devices[0].FreeMemory > caps.Devices[0].TotalMemory) {
		t.Errorf("memory: %+v", caps.Devices[0])
	}

	// The runner (runner.go) validates the config before anything else.
	_, err = p.Train(ctx, plugin.TrainRequest{Config: []byte(`{"training": {"optim": "sgd"}}`), OutputDir: t.TempDir()}, nil)
	var te *plugin.TrainError
	if !errors.As(err, &te) || te.Code != plugin.CodeInvalidConfig || !strings.Contains(te.Message, "training.optim") {
		t.Errorf("Train with an invalid config: %v", err)
	}

	cfg := finetune.Phi3Mini4k()
	cfg.HiddenSize, cfg.IntermediateSize, cfg.NumLayers, cfg.NumHeads, cfg.NumKVHeads = 32, 64, 2, 4, 2
	cfg.VocabSize, cfg.EOSTokenIDs, cfg.PadTokenID = 64, []int{63}, 63
	dir := t.TempDir()
	if err := finetune.WriteRandomCheckpoint(dir, cfg, 7, finetune.F32); err != nil {
		t.Fatal(err)
	}
	prompt := []int32{1, 5, 9, 12}
	got, err := p.Generate(ctx, plugin.GenerateRequest{ModelDir: dir, PromptIDs: prompt, MaxNewTokens: 8})
	if err != nil {
		t.Fatal(err)
	}
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	m, err := finetune.LoadModel(finetune.NewCPUBackend(finetune.CPUOptions{}), ck, finetune.ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want, err := m.Generate(prompt, finetune.GenerateOptions{MaxNewTokens: 8})
	if err != nil {
		t.Fatal(err)
	}
	if len(want) == 0 || !slices.Equal(got.IDs, want) {
		t.Errorf("Generate through the plugin = %v, in process = %v", got.IDs, want)
	}

	// A model folder is not an adapter folder (runner_test.go generates with a real adapter).
	_, err = p.Generate(ctx, plugin.GenerateRequest{ModelDir: dir, AdapterDir: dir, PromptIDs: prompt, MaxNewTokens: 1})
	if plugin.CodeOf(err) != plugin.CodeInvalidConfig || !strings.Contains(err.Error(), "adapter_config.json") {
		t.Errorf("Generate with a folder that holds no adapter: %v", err)
	}
	_, err = p.Generate(ctx, plugin.GenerateRequest{ModelDir: filepath.Join(dir, "missing"), PromptIDs: prompt, MaxNewTokens: 1})
	if plugin.CodeOf(err) != plugin.CodeInvalidConfig {
		t.Errorf("Generate from a missing model: %v", err)
	}
}
