//go:build cuda

// Command ollama-tune-cuda-worker is the half of the CUDA trainer plugin
// that links the NVIDIA driver (through gorgonia.org/cu, package cuda).
// ollama-tune-trainer-cuda execs it once its driver probe has found a
// usable GPU; it serves the plugin contract like the CPU plugin does
// (trainerplugin.SFTRunner and Generator), on package cuda's backend on
// GPU 0. Build it with
//
//	go build -tags cuda -o bin/ollama-tune-cuda-worker ./cmd/ollama-tune-trainer-cuda/worker
package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/ollama-tune/ollama-tune/cuda"
	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/internal/trainerplugin"
	"github.com/ollama-tune/ollama-tune/plugin"
)

// version is set at link time (-ldflags "-X main.version=v0.1.0").
var version = "dev"

// device is the GPU this plugin trains and generates on.
const device = 0

func main() {
	// The GPU's context and cuBLAS, made while the host and this process
	// shake hands and the job reads its data (a few tenths of a second).
	cuda.Preload(device)
	w := &worker{}
	w.gen.Load = w.load
	trainerplugin.Serve(capabilities, plugin.RunnerFunc(w.train), w.generate)
}

// capabilities lists the GPUs (name, memory, compute capability, driver).
func capabilities(context.Context) (plugin.Capabilities, error) {
	infos, free, err := cuda.ListDevices()
	if err != nil {
		return plugin.Capabilities{}, plugin.Errorf(plugin.CodeDevice, "%v", err)
	}
	caps := plugin.Capabilities{
		Backend: "cuda",
		// bf16, fp16: 16-bit weights and GEMM inputs (cuBLAS), float32
		// accumulation, activations, LoRA and optimizer state.
		ComputeDTypes: []plugin.DType{{Name: "fp32"}, {Name: "bf16"}, {Name: "fp16"}},
		// The 8-bit optimizers are bitsandbytes' blockwise kernels (with
		// its 32-bit Adam for parameters under 4096 values); the paged one
		// keeps its state in GPU memory, which a LoRA's state fits.
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

// worker serves Train and Generate on GPU 0: trainerplugin.SFTRunner on a
// backend made for each job, and trainerplugin.Generator on a backend made
// on first use.
type worker struct {
	b   *cuda.Backend
	gen trainerplugin.Generator
}

// train runs a fine-tune with finetune's SFT loop on a cuda.Backend made
// for the job's compute dtype (bnb_4bit_compute_dtype); the model is
// loaded with cuda.Backend.LoadModel (NF4 quantized on the GPU) and the
// gradients clipped on the device (the backend's finetune.ModelLoader and
// finetune.GradClipper). The GPU running out of memory is the contract's
// out_of_memory failure (and, with auto_find_batch_size, a smaller
// micro-batch first); any other failed CUDA op is a device failure.
func (w *worker) train(ctx context.Context, req plugin.TrainRequest, emit func(plugin.Event)) (err error) {
	defer func() {
		var ce *cuda.Error
		switch {
		case errors.Is(err, finetune.ErrOutOfMemory) && plugin.CodeOf(err) != plugin.CodeOutOfMemory:
			err = plugin.Errorf(plugin.CodeOutOfMemory, "%v", err)
		case errors.As(err, &ce):
			err = plugin.Errorf(plugin.CodeDevice, "%v", err)
		}
	}()
	defer cuda.Recover(&err) // a failed CUDA op outside the trainer's guard
	// The model Generate keeps would take GPU memory from training.
	w.gen.Release()
	r := trainerplugin.SFTRunner{NewBackend: newBackend, Device: deviceName(), IsDeviceError: func(err error) bool {
		var ce *cuda.Error
		return errors.As(err, &ce)
	}}
	return r.Run(ctx, req, emit)
}

// newBackend opens GPU 0 for a job's compute dtype; a failure is the
// device's (driver, GPU, cuBLAS).
func newBackend(compute finetune.DType) (finetune.Backend, error) {
	b, err := cuda.New(cuda.Options{Device: device, ComputeDType: compute})
	if err != nil {
		return nil, plugin.Errorf(plugin.CodeDevice, "%v", err)
	}
	return b, nil
}

// deviceName names GPU 0 for the Started event ("cuda" when it cannot be read).
func deviceName() string {
	infos, _, err := cuda.ListDevices()
	if err != nil || len(infos) <= device {
		return "cuda"
	}
	return fmt.Sprintf("%s (cuda:%d, %s)", infos[device].Name, device, infos[device].Detail())
}

func (w *worker) generate(ctx context.Context, req plugin.GenerateRequest) (resp plugin.GenerateResponse, err error) {
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

// load reads the model in dir onto the GPU (dense fp32 base), with the
// PEFT adapter in adapterDir applied when it is not "".
func (w *worker) load(dir, adapterDir string) (*finetune.Model, error) {
	if w.b == nil {
		b, err := cuda.New(cuda.Options{Device: device})
		if err != nil {
			return nil, plugin.Errorf(plugin.CodeDevice, "generate: %v", err)
		}
		w.b = b
	}
	return finetune.LoadCheckpointModel(w.b, dir, finetune.ModelOptions{}, adapterDir)
}
