package trainerplugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/plugin"
)

func TestDecodeConfig(t *testing.T) {
	cfg, err := DecodeConfig([]byte(`{"dataset": {"rename": {"question": "prompt", "answer": "completion"}}, "training": {"learning_rate": 0.001}}`))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(cfg.Dataset.Rename) != "map[answer:completion question:prompt]" || cfg.Training.LearningRate != 0.001 || cfg.Training.Optim != "paged_adamw_8bit" {
		t.Errorf("decoded %+v", cfg)
	}
	if _, err := DecodeConfig([]byte(`{"training": {"learning_rat": 1}}`)); err == nil {
		t.Error("an unknown key decodes")
	}
}

// gpuOOM is how the CUDA backend reports an allocation it could not make:
// its own sentinel, which wraps finetune.ErrOutOfMemory.
var gpuOOM = fmt.Errorf("out of GPU memory: %w", finetune.ErrOutOfMemory)

func TestTrainError(t *testing.T) {
	for _, c := range []struct {
		err     error
		started bool
		want    plugin.ErrorCode
	}{
		{fmt.Errorf("step 3: %w", finetune.ErrOutOfMemory), true, plugin.CodeOutOfMemory},
		{fmt.Errorf("loading the model: cuda: Alloc: %w", gpuOOM), false, plugin.CodeOutOfMemory},
		{&finetune.CancelledError{Step: 2, Err: context.Canceled}, true, plugin.CodeCancelled},
		{io.ErrUnexpectedEOF, true, plugin.CodeInternal},
		{io.ErrUnexpectedEOF, false, plugin.CodeInvalidConfig},
		{&finetune.ConfigError{Key: "training.optim", Problem: "x"}, true, plugin.CodeInvalidConfig},
		{fmt.Errorf("backend: %w", plugin.Errorf(plugin.CodeUnimplemented, "fp16 compute")), false, plugin.CodeUnimplemented},
	} {
		got := TrainError(c.err, c.started)
		if code := plugin.CodeOf(got); code != c.want {
			t.Errorf("%v (started %v) maps to %s, want %s", c.err, c.started, code, c.want)
		}
		var te *plugin.TrainError
		if c.want != plugin.CodeCancelled && !errors.As(got, &te) {
			t.Errorf("%v: %T is not a *plugin.TrainError", c.err, got)
		}
	}
}
