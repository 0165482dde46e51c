// Command testplugin is a fake trainer plugin for plugin's tests: its runner
// emits step events at a pace the config sets and writes fake checkpoints,
// so the tests can cancel it, kill it mid-run and resume it.
//
// Its backend is the part of its file name after "ollama-tune-trainer-"
// (copy it to ollama-tune-trainer-cuda to play a GPU plugin); a "cuda"
// plugin reports $TESTPLUGIN_GPUS fake GPUs (default 0).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ollama-tune/ollama-tune/plugin"
)

// config is the test runner's whole "fine-tune config".
type config struct {
	Steps           int64  `json:"steps"`
	StepMS          int    `json:"step_ms"`
	CheckpointEvery int64  `json:"checkpoint_every"`
	SaveMS          int    `json:"save_ms"`   // how long saving a checkpoint takes
	FailAt          int64  `json:"fail_at"`   // return an error at this step
	FailCode        string `json:"fail_code"` // its code
	PanicAt         int64  `json:"panic_at"`  // panic in a goroutine (kills the process) at this step
	Invalid         bool   `json:"invalid"`   // reject the config
}

func backend() string {
	exe, _ := os.Executable()
	name := strings.TrimSuffix(filepath.Base(exe), ".exe")
	if b, ok := strings.CutPrefix(name, plugin.BinaryPrefix); ok {
		return b
	}
	return "test"
}

func capabilities(context.Context) (plugin.Capabilities, error) {
	caps := plugin.Capabilities{
		Backend:        backend(),
		ComputeDTypes:  []plugin.DType{{Name: "fp32"}, {Name: "bf16", Emulated: true}},
		Optimizers:     []string{"adamw_torch"},
		TrainerVersion: "test",
	}
	switch caps.Backend {
	case "cuda":
		n, _ := strconv.Atoi(os.Getenv("TESTPLUGIN_GPUS"))
		for i := range n {
			caps.Devices = append(caps.Devices, plugin.Device{
				Name: fmt.Sprintf("Fake GPU %d", i), TotalMemory: 80 << 30, Detail: "sm_90",
			})
		}
	default:
		caps.Devices = []plugin.Device{{Name: "cpu", TotalMemory: 1 << 30, Detail: "1 core"}}
	}
	return caps, nil
}

func run(ctx context.Context, req plugin.TrainRequest, emit func(plugin.Event)) error {
	var cfg config
	if err := json.Unmarshal(req.Config, &cfg); err != nil {
		return plugin.Errorf(plugin.CodeInvalidConfig, "parse config: %v", err)
	}
	if cfg.Invalid {
		return plugin.Errorf(plugin.CodeInvalidConfig, "config: invalid: true; set it to false")
	}
	if err := os.MkdirAll(req.OutputDir, 0o755); err != nil {
		return fmt.Errorf("create output dir: %w", err)
	}
	var start int64
	if req.Resume != "" {
		data, err := os.ReadFile(filepath.Join(req.Resume, "state.json"))
		if err != nil {
			return plugin.Errorf(plugin.CodeInvalidConfig, "resume: %v", err)
		}
		var st struct{ Step int64 }
		if err := json.Unmarshal(data, &st); err != nil {
			return plugin.Errorf(plugin.CodeInvalidConfig, "resume: %s: %v", req.Resume, err)
		}
		start = st.Step
	}
	emit(plugin.Started{TotalSteps: cfg.Steps, StartStep: start, ResumedFrom: req.Resume, Device: "test device"})
	emit(plugin.Log{Level: "info", Message: "test runner ready"})

	save := func(step int64) error {
		time.Sleep(time.Duration(cfg.SaveMS) * time.Millisecond)
		path, err := saveCheckpoint(req.OutputDir, step)
		if err != nil {
			return err
		}
		emit(plugin.CheckpointSaved{Step: step, Path: path})
		return nil
	}
	var loss float64
	for step := start + 1; step <= cfg.Steps; step++ {
		select {
		case <-ctx.Done():
			if plugin.SaveCheckpointOnCancel(ctx) {
				if err := save(step - 1); err != nil {
					return err
				}
			}
			return ctx.Err()
		case <-time.After(time.Duration(cfg.StepMS) * time.Millisecond):
		}
		if step == cfg.FailAt {
			return plugin.Errorf(plugin.ErrorCode(cfg.FailCode), "failing at step %d as configured", step)
		}
		if step == cfg.PanicAt {
			go func() { panic(fmt.Sprintf("test plugin panics at step %d", step)) }()
			time.Sleep(time.Hour)
		}
		loss = 2.0 / float64(step)
		emit(plugin.Step{Step: step, Epoch: float64(step) / float64(cfg.Steps), Loss: loss, GradNorm: 1, LearningRate: 1e-4, TokensPerSecond: 1000})
		if cfg.CheckpointEvery > 0 && step%cfg.CheckpointEvery == 0 {
			if err := save(step); err != nil {
				return err
			}
		}
	}
	if err := os.WriteFile(filepath.Join(req.OutputDir, "adapter_model.safetensors"), []byte("fake"), 0o644); err != nil {
		return err
	}
	emit(plugin.Finished{AdapterDir: req.OutputDir, FinalLoss: loss, Steps: cfg.Steps})
	return nil
}

// saveCheckpoint writes dir/checkpoint-<step> through a temporary directory
// and a rename, so a crash never leaves a half-written checkpoint.
func saveCheckpoint(dir string, step int64) (string, error) {
	final := filepath.Join(dir, fmt.Sprintf("checkpoint-%d", step))
	tmp, err := os.MkdirTemp(dir, ".checkpoint-*")
	if err != nil {
		return "", err
	}
	state := fmt.Sprintf(`{"Step": %d}`, step)
	if err := os.WriteFile(filepath.Join(tmp, "state.json"), []byte(state), 0o644); err != nil {
		return "", err
	}
	_ = os.RemoveAll(final)
	if err := os.Rename(tmp, final); err != nil {
		return "", err
	}
	return final, nil
}

func generate(_ context.Context, req plugin.GenerateRequest) (plugin.GenerateResponse, error) {
	ids := slices.Clone(req.PromptIDs)
	slices.Reverse(ids)
	if len(ids) > req.MaxNewTokens {
		ids = ids[:req.MaxNewTokens]
	}
	return plugin.GenerateResponse{IDs: ids, Text: "echo: " + req.Prompt + " adapter=" + req.AdapterDir}, nil
}

func main() {
	plugin.Serve(&plugin.RunnerTrainer{
		Caps:      capabilities,
		Runner:    plugin.RunnerFunc(run),
		Generator: generate,
	})
}
