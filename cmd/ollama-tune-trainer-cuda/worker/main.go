//go:build cuda

// Command ollama-tune-cuda-worker is the half of the CUDA trainer plugin
// that links the NVIDIA driver (through gorgonia.org/cu, package cuda).
// ollama-tune-trainer-cuda execs it once its driver probe has found a
// usable GPU; it serves the plugin contract like the CPU plugin does, on
// package cuda's backend. Build it with
//
//	go build -tags cuda -o bin/ollama-tune-cuda-worker ./cmd/ollama-tune-trainer-cuda/worker
package main

import (
	"context"

	"github.com/ollama-tune/ollama-tune/cuda"
	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/internal/trainerplugin"
	"github.com/ollama-tune/ollama-tune/plugin"
)

// version is set at link time (-ldflags "-X main.version=v0.1.0").
var version = "dev"

// runner is the training loop this plugin serves.
//
// TODO(issue 5): set it to finetune's SFT loop with cuda.NewFactory(0) as
// the job's backend factory, as the CPU plugin does with its backend. Until
// then Train answers every request with Failed{unimplemented}.
var runner plugin.Runner

func main() {
	w := &worker{}
	w.gen.Load = w.load
	trainerplugin.Serve(capabilities, runner, w.generate)
}

// capabilities lists the GPUs (name, memory, compute capability, driver).
func capabilities(context.Context) (plugin.Capabilities, error) {
	infos, free, err := cuda.ListDevices()
	if err != nil {
		return plugin.Capabilities{}, plugin.Errorf(plugin.CodeDevice, "%v", err)
	}
	caps := plugin.Capabilities{
		Backend: "cuda",
		// bf16: bfloat16 weights and GEMM inputs, float32 accumulation,
		// activations and LoRA; fp16 is not implemented yet.
		ComputeDTypes:  []plugin.DType{{Name: "fp32"}, {Name: "bf16"}},
		Optimizers:     []string{"adamw_torch", "adamw_8bit", "paged_adamw_8bit"},
		TrainerVersion: version,
	}
	for k, d := range infos {
		caps.Devices = append(caps.Devices, plugin.Device{
			Name:        d.Name,
			TotalMemory: uint64(d.TotalMemory),
			FreeMemory:  uint64(max(free[k], 0)),
			Detail:      d.Detail(),
		})
	}
	return caps, nil
}

// worker serves Generate on GPU 0: trainerplugin.Generator, on a backend
// made on first use.
type worker struct {
	b   *cuda.Backend
	gen trainerplugin.Generator
}

func (w *worker) generate(ctx context.Context, req plugin.GenerateRequest) (resp plugin.GenerateResponse, err error) {
	if req.AdapterDir != "" {
		return resp, plugin.Errorf(plugin.CodeUnimplemented,
			"generate with adapter %s: the CUDA trainer cannot load adapters yet", req.AdapterDir)
	}
	// A failed CUDA op panics with a *cuda.Error; Recover (deferred
	// directly, so that its recover sees the panic) turns it into err, and
	// the function deferred before it gives that a plugin code.
	defer func() {
		if _, ok := err.(*cuda.Error); ok {
			err = plugin.Errorf(plugin.CodeDevice, "generate: %v", err)
		}
	}()
	defer cuda.Recover(&err)
	return w.gen.Generate(ctx, req)
}

// load reads the model in dir onto the GPU (dense fp32 base).
func (w *worker) load(dir, _ string) (*finetune.Model, error) {
	if w.b == nil {
		b, err := cuda.New(cuda.Options{})
		if err != nil {
			return nil, plugin.Errorf(plugin.CodeDevice, "generate: %v", err)
		}
		w.b = b
	}
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	return finetune.LoadModel(w.b, ck, finetune.ModelOptions{})
}
