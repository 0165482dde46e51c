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

	"github.com/ollama-tune/ollama-tune/internal/trainerplugin"
	"github.com/ollama-tune/ollama-tune/plugin"
)

// version is set at link time (-ldflags "-X main.version=v0.1.0").
var version = "dev"

// runner is the training loop this plugin serves: finetune's SFT loop on
// the CPU backend, set in runner.go.
var runner plugin.Runner

func main() {
	gen := &trainerplugin.Generator{Load: loadForGenerate}
	trainerplugin.Serve(capabilities, runner, gen.Generate)
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
