package trainerplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/plugin"
)

// SFTRunner implements plugin.Runner with finetune's SFT loop on the
// backend NewBackend makes for the job's compute dtype
// (bnb_4bit_compute_dtype): finetune.CPUBackendFactory in the CPU plugin,
// cuda.NewFactory in the CUDA worker. Its events are mapped to the
// contract's, and its errors get the contract's codes (TrainError).
type SFTRunner struct {
	NewBackend finetune.BackendFactory
	Device     string // the device name the Started event carries
	// IsDeviceError, when set, says which errors are the device's (a
	// failed CUDA op): they fail the run with CodeDevice rather than
	// CodeInternal. Out of memory is always CodeOutOfMemory.
	IsDeviceError func(error) bool
}

// DecodeConfig reads the job configuration the host sends (TrainConfig as
// JSON) over the seed's defaults; unknown keys are errors.
func DecodeConfig(raw []byte) (finetune.TrainConfig, error) {
	cfg := finetune.DefaultTrainConfig()
	// JSON merges an object into an existing map: a rename mapping that is
	// given replaces the default one instead.
	var probe struct {
		Dataset struct {
			Rename json.RawMessage `json:"rename"`
		} `json:"dataset"`
	}
	if json.Unmarshal(raw, &probe) == nil && probe.Dataset.Rename != nil {
		cfg.Dataset.Rename = nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return cfg, fmt.Errorf("config: %w", err)
	}
	return cfg, nil
}

// Run decodes the request, resolves the job and trains it. A valid
// config's backend is opened from the start on another goroutine
// (aheadBackend), beside the job's preparation on this one.
func (r SFTRunner) Run(ctx context.Context, req plugin.TrainRequest, emit func(plugin.Event)) error {
	cfg, err := DecodeConfig(req.Config)
	if err != nil {
		return plugin.Errorf(plugin.CodeInvalidConfig, "%v", err)
	}
	if req.OutputDir != "" {
		cfg.Training.OutputDir = req.OutputDir
	}
	newBackend := r.NewBackend
	if cfg.Validate() == nil { // else NewJob reports it, with nothing opened
		ahead := openAhead(r.NewBackend, cfg.Quantization.ComputeDType(), func(msg string) { emit(plugin.Log{Level: "debug", Message: msg}) })
		defer ahead.release()
		newBackend = ahead.factory
	}
	job, err := finetune.NewJob(ctx, cfg, finetune.JobOptions{
		NewBackend:   newBackend,
		Resume:       req.Resume,
		SaveOnCancel: plugin.SaveCheckpointOnCancel,
		DeviceName:   r.Device,
		Log:          func(msg string) { emit(plugin.Log{Level: "info", Message: msg}) },
	})
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return plugin.Errorf(plugin.CodeInvalidConfig, "%v", err)
	}
	started := false
	res, err := finetune.Train(ctx, job, func(e finetune.TrainEvent) {
		if _, ok := e.(finetune.StartedEvent); ok {
			started = true
		}
		for _, pe := range PluginEvents(e) {
			emit(pe)
		}
	})
	if err != nil {
		if r.IsDeviceError != nil && r.IsDeviceError(err) && !errors.Is(err, finetune.ErrOutOfMemory) {
			return plugin.Errorf(plugin.CodeDevice, "%v", err)
		}
		return TrainError(err, started)
	}
	emit(plugin.Finished{AdapterDir: res.OutputDir, FinalLoss: res.FinalLoss, Steps: int64(res.Steps)})
	return nil
}

// TrainError gives a Train error its plugin code: out of memory (any
// error that wraps finetune.ErrOutOfMemory, the GPU's included), a cancel,
// a problem with the inputs (before training started), or an internal
// error. An error that already is a *plugin.TrainError keeps its code.
func TrainError(err error, started bool) error {
	var ce *finetune.ConfigError
	var cancelled *finetune.CancelledError
	var te *plugin.TrainError
	switch {
	case errors.As(err, &cancelled):
		return err // CodeOf: cancelled (it wraps context.Canceled)
	case errors.Is(err, finetune.ErrOutOfMemory):
		return plugin.Errorf(plugin.CodeOutOfMemory, "%v", err)
	case errors.As(err, &te):
		return plugin.Errorf(te.Code, "%s", te.Message)
	case errors.As(err, &ce) || !started:
		return plugin.Errorf(plugin.CodeInvalidConfig, "%v", err)
	}
	return plugin.Errorf(plugin.CodeInternal, "%v", err)
}

// PluginEvents maps one finetune event to the contract's events.
func PluginEvents(e finetune.TrainEvent) []plugin.Event {
	switch e := e.(type) {
	case finetune.StartedEvent:
		p := e.Plan
		return []plugin.Event{
			plugin.Log{Level: "info", Message: fmt.Sprintf("%d training examples in %d sequences (%d tokens), %d steps of %d sequences, %d trainable parameters, about %.2f GiB",
				p.Data.Examples, p.Data.Sequences, p.Data.SequenceTokens, p.TotalSteps, p.EffectiveBatch, p.TrainableParams, float64(p.EstimatedBytes)/(1<<30))},
			plugin.Started{TotalSteps: int64(p.TotalSteps), StartStep: int64(e.StartStep), ResumedFrom: e.ResumedFrom, Device: e.Device,
				TrainableParams: p.TrainableParams, TotalParams: p.TotalParams},
		}
	case finetune.StepEvent:
		return []plugin.Event{plugin.Step{Step: int64(e.Step), Epoch: e.Epoch, Loss: e.Loss, GradNorm: e.GradNorm,
			LearningRate: e.LearningRate, TokensPerSecond: e.TokensPerSecond, MeanTokenAccuracy: e.MeanTokenAccuracy}}
	case finetune.EvalEvent:
		return []plugin.Event{plugin.Eval{Step: int64(e.Step), Loss: e.Loss, MeanTokenAccuracy: e.MeanTokenAccuracy}}
	case finetune.CheckpointEvent:
		return []plugin.Event{plugin.CheckpointSaved{Step: int64(e.Step), Path: e.Path}}
	case finetune.LogEvent:
		return []plugin.Event{plugin.Log{Level: e.Level, Message: e.Message}}
	}
	return nil
}
