// Command ollama-tune-trainer-cpu is the CPU trainer plugin: the reference
// backend, always built. ollama-tune starts it through hashicorp/go-plugin;
// run by hand it only prints a hint.
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
	"github.com/ollama-tune/ollama-tune/plugin"
)

// version is set at link time (-ldflags "-X main.version=v0.1.0").
var version = "dev"

// runner is the training loop this plugin serves: finetune's SFT loop on
// the CPU backend, set in runner.go. Without it Train answers every
// request with Failed{unimplemented}.
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

// capabilities describes this machine: one "device", the CPU, with the
// machine's memory (all of it is the trainer's to use).
func capabilities(context.Context) (plugin.Capabilities, error) {
	dev := plugin.Device{Name: cpuModel(), Detail: fmt.Sprintf("%d cores", runtime.NumCPU())}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		dev.TotalMemory, dev.FreeMemory = parseMeminfo(f)
		f.Close()
	}
	return plugin.Capabilities{
		Backend: "cpu",
		Devices: []plugin.Device{dev},
		// bf16/fp16 round the weights and activations the way the GPU would
		// store them, but compute in fp32 (finetune.CPUOptions).
		ComputeDTypes: []plugin.DType{{Name: "fp32"}, {Name: "bf16", Emulated: true}, {Name: "fp16", Emulated: true}},
		// The 8-bit optimizers keep blockwise-quantized states as
		// bitsandbytes does; "paged" makes no difference on the CPU.
		Optimizers:     []string{"adamw_torch", "adamw_8bit", "paged_adamw_8bit"},
		TrainerVersion: version,
	}, nil
}

// parseMeminfo returns MemTotal and MemAvailable in bytes from a
// /proc/meminfo listing (values are in kB); 0 for a missing field.
func parseMeminfo(r io.Reader) (total, available uint64) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.ParseUint(fields[0], 10, 64)
		if err != nil {
			continue
		}
		if len(fields) > 1 && fields[1] == "kB" {
			n <<= 10
		}
		switch key {
		case "MemTotal":
			total = n
		case "MemAvailable":
			available = n
		}
	}
	return total, available
}

// cpuModel is the processor's name from /proc/cpuinfo, or "cpu".
func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "cpu"
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if key, val, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(key) == "model name" {
			if v := strings.TrimSpace(val); v != "" {
				return v
			}
		}
	}
	return "cpu"
}

// generator serves Generate on the CPU backend, keeping the last model it
// loaded (the host's checks ask several prompts of one model).
type generator struct {
	mu      sync.Mutex
	dir     string
	adapter string // the adapter folder applied, or ""
	model   *finetune.Model
	tok     *tokenizer.Tokenizer // nil when the model directory has none
}

func (g *generator) Generate(_ context.Context, req plugin.GenerateRequest) (plugin.GenerateResponse, error) {
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

// load reads the model in dir, with the PEFT adapter in adapterDir when
// given, unless it is the one already loaded. The base stays dense fp32:
// generation checks compare against the merged model.
func (g *generator) load(dir, adapterDir string) error {
	if dir == "" {
		return plugin.Errorf(plugin.CodeInvalidConfig, "generate: no model directory given")
	}
	if g.model != nil && g.dir == dir && g.adapter == adapterDir {
		return nil
	}
	g.model, g.tok, g.dir, g.adapter = nil, nil, "", ""
	m, err := loadForGenerate(dir, adapterDir)
	if err != nil {
		return plugin.Errorf(plugin.CodeInvalidConfig, "generate: %v", err)
	}
	if tok, err := tokenizer.Load(dir); err == nil {
		g.tok = tok
	}
	g.model, g.dir, g.adapter = m, dir, adapterDir
	return nil
}
