package trainerplugin

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/testutil/tinymodel"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
	"github.com/ollama-tune/ollama-tune/plugin"
)

// cpuLoad loads dir on the CPU backend and counts its calls.
func cpuLoad(calls *int) func(dir, adapterDir string) (*finetune.Model, error) {
	return func(dir, adapterDir string) (*finetune.Model, error) {
		*calls++
		if adapterDir != "" {
			return nil, errors.New("no adapters in this test")
		}
		return finetune.LoadCheckpointModel(finetune.NewCPUBackend(finetune.CPUOptions{}), dir, finetune.ModelOptions{}, "")
	}
}

func TestGenerator(t *testing.T) {
	cfg := finetune.Phi3Mini4k()
	cfg.HiddenSize, cfg.IntermediateSize, cfg.NumLayers, cfg.NumHeads, cfg.NumKVHeads = 32, 64, 1, 4, 4
	cfg.SlidingWindow = 0
	dir := tinymodel.Dir(t, cfg, 9, finetune.F32)
	calls := 0
	g := &Generator{Load: cpuLoad(&calls)}
	ctx := context.Background()

	const user = "<|user|>\nHello<|end|>\n<|assistant|>\n"
	resp, err := g.Generate(ctx, plugin.GenerateRequest{ModelDir: dir, Prompt: user, MaxNewTokens: 5})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	prompt := tok.Encode(user, false)
	m, err := cpuLoad(new(int))(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	want, err := m.Generate(prompt, finetune.GenerateOptions{MaxNewTokens: 5})
	if err != nil {
		t.Fatal(err)
	}
	if len(want) == 0 || !slices.Equal(resp.IDs, want) || resp.Text != tok.Decode(want, true) {
		t.Errorf("Generate(text) = %v %q, want %v %q", resp.IDs, resp.Text, want, tok.Decode(want, true))
	}
	// The same model again (by ids): no second load, the same answer.
	again, err := g.Generate(ctx, plugin.GenerateRequest{ModelDir: dir, PromptIDs: prompt, MaxNewTokens: 5})
	if err != nil || !slices.Equal(again.IDs, want) {
		t.Errorf("Generate(ids) = %v, %v; want %v", again.IDs, err, want)
	}
	if calls != 1 {
		t.Errorf("Load called %d times for one model, want 1", calls)
	}
	// Release frees the kept model; the next Generate loads it again.
	g.Release()
	if g.model != nil {
		t.Error("Release kept the model")
	}
	if again, err := g.Generate(ctx, plugin.GenerateRequest{ModelDir: dir, PromptIDs: prompt, MaxNewTokens: 5}); err != nil || !slices.Equal(again.IDs, want) || calls != 2 {
		t.Errorf("after Release: %v, %v after %d loads; want %v after 2", again.IDs, err, calls, want)
	}

	// Errors: each has the plugin code the host acts on.
	if _, err := g.Generate(ctx, plugin.GenerateRequest{PromptIDs: prompt}); plugin.CodeOf(err) != plugin.CodeInvalidConfig {
		t.Errorf("no model folder: %v", err)
	}
	_, err = g.Generate(ctx, plugin.GenerateRequest{ModelDir: dir, AdapterDir: dir, PromptIDs: prompt})
	if plugin.CodeOf(err) != plugin.CodeInvalidConfig || !strings.Contains(err.Error(), "generate: no adapters in this test") {
		t.Errorf("a failing Load: %v", err)
	}
	device := &Generator{Load: func(string, string) (*finetune.Model, error) {
		return nil, plugin.Errorf(plugin.CodeDevice, "no GPU")
	}}
	if _, err := device.Generate(ctx, plugin.GenerateRequest{ModelDir: dir, PromptIDs: prompt}); plugin.CodeOf(err) != plugin.CodeDevice {
		t.Errorf("a Load error with a code: %v, want it kept (%s)", err, plugin.CodeDevice)
	}

	bare := t.TempDir() // a checkpoint without tokenizer files
	if err := finetune.WriteRandomCheckpoint(bare, cfg, 9, finetune.F32); err != nil {
		t.Fatal(err)
	}
	_, err = g.Generate(ctx, plugin.GenerateRequest{ModelDir: bare, Prompt: "Hello"})
	if plugin.CodeOf(err) != plugin.CodeInvalidConfig || !strings.Contains(err.Error(), "has no tokenizer") {
		t.Errorf("a text prompt without a tokenizer: %v", err)
	}
	if calls != 4 {
		t.Errorf("Load called %d times for four loads, want 4", calls)
	}
}
