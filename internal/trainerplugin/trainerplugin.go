// Package trainerplugin holds what the trainer plugins (the CPU plugin,
// cmd/ollama-tune-trainer-cpu, and the CUDA worker,
// cmd/ollama-tune-trainer-cuda/worker) share around the plugin contract:
// serving it, training with finetune's SFT loop on a backend factory
// (SFTRunner, runner.go), and answering Generate with a finetune model.
package trainerplugin

import (
	"context"
	"errors"
	"sync"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
	"github.com/ollama-tune/ollama-tune/plugin"
)

// Serve serves the plugin contract until the host goes away: caps reports
// the backend, runner runs fine-tunes and gen answers Generate. A nil
// runner answers every Train request with Failed{unimplemented}.
func Serve(caps func(context.Context) (plugin.Capabilities, error), runner plugin.Runner,
	gen func(context.Context, plugin.GenerateRequest) (plugin.GenerateResponse, error)) {
	if runner == nil {
		runner = plugin.RunnerFunc(func(context.Context, plugin.TrainRequest, func(plugin.Event)) error {
			return plugin.Errorf(plugin.CodeUnimplemented, "this trainer plugin cannot train yet")
		})
	}
	plugin.Serve(&plugin.RunnerTrainer{Caps: caps, Runner: runner, Generator: gen})
}

// Generator answers Generate requests on one backend. It keeps the last
// model it loaded (the host's checks ask several prompts of one model),
// with the model folder's tokenizer when it has one.
type Generator struct {
	// Load reads the model in dir, with the PEFT adapter in adapterDir
	// applied when it is not "". An error that is a *plugin.TrainError
	// keeps its code; any other is CodeInvalidConfig.
	Load func(dir, adapterDir string) (*finetune.Model, error)

	mu      sync.Mutex
	dir     string
	adapter string // the adapter folder applied, or ""
	model   *finetune.Model
	tok     *tokenizer.Tokenizer // nil when the model folder has none
}

// Generate continues req's prompt (its ids, else its text encoded with the
// model's tokenizer) and decodes the new ids when there is a tokenizer.
func (g *Generator) Generate(_ context.Context, req plugin.GenerateRequest) (plugin.GenerateResponse, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.load(req.ModelDir, req.AdapterDir); err != nil {
		return plugin.GenerateResponse{}, err
	}
	prompt := req.PromptIDs
	if len(prompt) == 0 {
		if g.tok == nil {
			return plugin.GenerateResponse{}, plugin.Errorf(plugin.CodeInvalidConfig,
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
		return plugin.GenerateResponse{}, plugin.Errorf(plugin.CodeInvalidConfig, "%v", err)
	}
	resp := plugin.GenerateResponse{IDs: ids}
	if g.tok != nil {
		resp.Text = g.tok.Decode(ids, true)
	}
	return resp, nil
}

// Release frees the model the generator keeps (a trainer plugin calls it
// before training, so the model does not hold device memory the run
// needs); the next Generate loads it again.
func (g *Generator) Release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.model != nil {
		g.model.Free()
	}
	g.model, g.tok, g.dir, g.adapter = nil, nil, "", ""
}

// load makes the model of dir with the adapter of adapterDir the current
// one, unless it already is; the model it replaces is freed.
func (g *Generator) load(dir, adapterDir string) error {
	if dir == "" {
		return plugin.Errorf(plugin.CodeInvalidConfig, "generate: no model directory given")
	}
	if g.model != nil && g.dir == dir && g.adapter == adapterDir {
		return nil
	}
	if g.model != nil {
		g.model.Free()
	}
	g.model, g.tok, g.dir, g.adapter = nil, nil, "", ""
	m, err := g.Load(dir, adapterDir)
	if err != nil {
		var te *plugin.TrainError
		if errors.As(err, &te) {
			return err
		}
		return plugin.Errorf(plugin.CodeInvalidConfig, "generate: %v", err)
	}
	if tok, err := tokenizer.Load(dir); err == nil {
		g.tok = tok
	}
	g.model, g.dir, g.adapter = m, dir, adapterDir
	return nil
}
