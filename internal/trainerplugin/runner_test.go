package trainerplugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
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
// its own sentinel, which errors.Is finetune.ErrOutOfMemory.
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

// errDevice stands for a failed CUDA op.
var errDevice = errors.New("device lost (simulated)")

// TestSFTRunnerErrorCodes runs the runner on a tiny model with backend
// factories that fail: the compute dtype reaches the factory, a device
// failure is CodeDevice, an out-of-memory (the GPU's sentinel) is
// CodeOutOfMemory, and a *plugin.TrainError keeps its code.
func TestSFTRunnerErrorCodes(t *testing.T) {
	raw := tinyJob(t, func(tc *finetune.TrainConfig) { tc.Quantization.Bnb4bitComputeDType = "float16" })
	isDevice := func(err error) bool { return errors.Is(err, errDevice) }
	for _, c := range []struct {
		fail error
		want plugin.ErrorCode
	}{
		{fmt.Errorf("cuda: New: %w", errDevice), plugin.CodeDevice},
		{fmt.Errorf("cuda: Alloc: %w", gpuOOM), plugin.CodeOutOfMemory},
		{plugin.Errorf(plugin.CodeUnimplemented, "not here"), plugin.CodeUnimplemented},
	} {
		var got finetune.DType = -1
		r := SFTRunner{IsDeviceError: isDevice, NewBackend: func(d finetune.DType) (finetune.Backend, error) {
			got = d
			return nil, c.fail
		}}
		err := r.Run(context.Background(), plugin.TrainRequest{Config: raw, OutputDir: filepath.Join(t.TempDir(), "out")}, func(plugin.Event) {})
		if code := plugin.CodeOf(err); code != c.want || !strings.Contains(err.Error(), strings.TrimPrefix(c.fail.Error(), "unimplemented: ")) {
			t.Errorf("factory error %v: run fails with %v (code %s), want %s", c.fail, err, code, c.want)
		}
		if got != finetune.F16 {
			t.Errorf("the factory got compute dtype %v, want float16", got)
		}
	}
}
