package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/plugin"
)

// The CPU plugin's training loop: finetune.Train on the CPU backend,
// its events mapped to the plugin contract's.

func init() {
	runner = sftRunner{newBackend: finetune.CPUBackendFactory, device: cpuModel()}
}

// sftRunner implements plugin.Runner with finetune's SFT loop.
type sftRunner struct {
	newBackend finetune.BackendFactory
	device     string
}

// decodeConfig reads the job configuration the host sends (TrainConfig as
// JSON) over the seed's defaults; unknown keys are errors.
func decodeConfig(raw []byte) (finetune.TrainConfig, error) {
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

func (r sftRunner) Run(ctx context.Context, req plugin.TrainRequest, emit func(plugin.Event)) error {
	cfg, err := decodeConfig(req.Config)
	if err != nil {
		return plugin.Errorf(plugin.CodeInvalidConfig, "%v", err)
	}
	if req.OutputDir != "" {
		cfg.Training.OutputDir = req.OutputDir
	}
	job, err := finetune.NewJob(ctx, cfg, finetune.JobOptions{
		NewBackend:   r.newBackend,
		Resume:       req.Resume,
		SaveOnCancel: plugin.SaveCheckpointOnCancel,
		DeviceName:   r.device,
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
		for _, pe := range pluginEvents(e) {
			emit(pe)
		}
	})
	if err != nil {
		return trainError(err, started)
	}
	emit(plugin.Finished{AdapterDir: res.OutputDir, FinalLoss: res.FinalLoss, Steps: int64(res.Steps)})
	return nil
}

// trainError gives a Train error its plugin code: out of memory, a
// cancel, a problem with the inputs (before training started), or an
// internal error.
func trainError(err error, started bool) error {
	var ce *finetune.ConfigError
	var cancelled *finetune.CancelledError
	switch {
	case errors.As(err, &cancelled):
		return err // CodeOf: cancelled (it wraps context.Canceled)
	case errors.Is(err, finetune.ErrOutOfMemory):
		return plugin.Errorf(plugin.CodeOutOfMemory, "%v", err)
	case errors.As(err, &ce) || !started:
		return plugin.Errorf(plugin.CodeInvalidConfig, "%v", err)
	}
	return plugin.Errorf(plugin.CodeInternal, "%v", err)
}

// pluginEvents maps one finetune event to the contract's events.
func pluginEvents(e finetune.TrainEvent) []plugin.Event {
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

// loadForGenerate builds the base model of dir (dense fp32), with the PEFT
// adapter in adapterDir applied when it is not "".
func loadForGenerate(dir, adapterDir string) (*finetune.Model, error) {
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	b := finetune.NewCPUBackend(finetune.CPUOptions{})
	if adapterDir == "" {
		return finetune.LoadModel(b, ck, finetune.ModelOptions{})
	}
	return finetune.LoadModelWithAdapter(b, ck, finetune.ModelOptions{}, adapterDir)
}
