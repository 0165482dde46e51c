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
	"sync"

	"github.com/ollama-tune/ollama-tune/cuda"
	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
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
	r := runner
	if r == nil {
		r = plugin.RunnerFunc(func(context.Context, plugin.TrainRequest, func(plugin.Event)) error {
			return plugin.Errorf(plugin.CodeUnimplemented, "not implemented yet: the SFT loop lands with issue 5")
		})
	}
	gen := &generator{}
	plugin.Serve(&plugin.RunnerTrainer{
		Caps:      capabilities,
		Runner:    r,
		Generator: gen.Generate,
	})
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

// generator serves Generate on GPU 0, keeping the last model it loaded.
type generator struct {
	mu    sync.Mutex
	b     *cuda.Backend
	dir   string
	model *finetune.Model
	tok   *tokenizer.Tokenizer
}

func (g *generator) Generate(_ context.Context, req plugin.GenerateRequest) (resp plugin.GenerateResponse, err error) {
	if req.AdapterDir != "" {
		return resp, plugin.Errorf(plugin.CodeUnimplemented,
			"generate with adapter %s: the CUDA trainer cannot load adapters yet", req.AdapterDir)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	defer func() {
		var cerr error
		cuda.Recover(&cerr)
		if cerr != nil {
			err = plugin.Errorf(plugin.CodeDevice, "generate: %v", cerr)
		}
	}()
	if err := g.load(req.ModelDir); err != nil {
		return resp, err
	}
	prompt := req.PromptIDs
	if len(prompt) == 0 {
		if g.tok == nil {
			return resp, plugin.Errorf(plugin.CodeInvalidConfig,
				"generate: %s has no tokenizer, so the prompt must be given as token ids", req.ModelDir)
		}
		prompt = g.tok.Encode(req.Prompt, false)
	}
	ids, err := g.model.Generate(prompt, finetune.GenerateOptions{
		MaxNewTokens: req.MaxNewTokens,
		Temperature:  float32(req.Temperature),
		TopP:         float32(req.TopP),
		Seed:         req.Seed,
	})
	if err != nil {
		return resp, plugin.Errorf(plugin.CodeInvalidConfig, "%v", err)
	}
	resp.IDs = ids
	if g.tok != nil {
		resp.Text = g.tok.Decode(ids, true)
	}
	return resp, nil
}

// load reads the model in dir onto the GPU (dense fp32 base) unless it is
// the one already loaded.
func (g *generator) load(dir string) error {
	if dir == "" {
		return plugin.Errorf(plugin.CodeInvalidConfig, "generate: no model directory given")
	}
	if g.model != nil && g.dir == dir {
		return nil
	}
	if g.model != nil {
		g.model.Free()
	}
	g.model, g.tok, g.dir = nil, nil, ""
	if g.b == nil {
		b, err := cuda.New(cuda.Options{})
		if err != nil {
			return plugin.Errorf(plugin.CodeDevice, "generate: %v", err)
		}
		g.b = b
	}
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		return plugin.Errorf(plugin.CodeInvalidConfig, "generate: %v", err)
	}
	defer ck.Close()
	m, err := finetune.LoadModel(g.b, ck, finetune.ModelOptions{})
	if err != nil {
		return plugin.Errorf(plugin.CodeInvalidConfig, "generate: %v", err)
	}
	if tok, err := tokenizer.Load(dir); err == nil {
		g.tok = tok
	}
	g.model, g.dir = m, dir
	return nil
}
