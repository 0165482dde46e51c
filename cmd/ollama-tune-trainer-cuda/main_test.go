//go:build cuda

package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/ollama-tune/ollama-tune/plugin"
)

// TestNoGPUThroughTheHost starts the launcher the way ollama-tune does, on
// a machine whose probe fails (no driver here, or a worker that is not
// built): Capabilities, Train and Generate answer with a device error that
// says what to do, and ChooseDevice falls back to the CPU with that reason.
func TestNoGPUThroughTheHost(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to build the plugin")
	}
	if _, err := probeDriver("libcuda.so.1"); err == nil {
		t.Setenv(workerEnv, "/nonexistent/"+WorkerName) // a GPU machine: fail on the worker instead
	}
	bin := filepath.Join(t.TempDir(), plugin.BinaryPrefix+"cuda")
	if out, err := exec.Command(goTool, "build", "-tags", "cuda", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Warn, Output: os.Stderr})
	p, err := plugin.Launch(plugin.Binary{Backend: "cuda", Path: bin}, plugin.Options{Logger: logger, StartTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	caps, err := p.Capabilities(ctx)
	var te *plugin.TrainError
	if !errors.As(err, &te) || te.Code != plugin.CodeDevice || !(strings.Contains(te.Message, "device: cpu") || strings.Contains(te.Message, "make build-cuda")) {
		t.Fatalf("Capabilities = %+v, %v; want a device error that says what to do", caps, err)
	}
	t.Logf("Capabilities: %v", err)
	if _, err := p.Generate(ctx, plugin.GenerateRequest{ModelDir: t.TempDir(), PromptIDs: []int32{1}}); !errors.As(err, &te) || te.Code != plugin.CodeDevice {
		t.Errorf("Generate: %v", err)
	}
	c := plugin.Candidate{Binary: plugin.Binary{Backend: "cuda", Path: bin}, Err: err}
	cpu := plugin.Candidate{Binary: plugin.Binary{Backend: "cpu", Path: "/bin/ollama-tune-trainer-cpu"}, Caps: plugin.Capabilities{Backend: "cpu", Devices: []plugin.Device{{Name: "cpu"}}}}
	chosen, why, err := plugin.ChooseDevice("auto", []plugin.Candidate{c, cpu})
	if err != nil || chosen.Binary.Backend != "cpu" || !strings.Contains(why, "cuda") {
		t.Errorf("ChooseDevice = %v, %q, %v", chosen.Binary.Backend, why, err)
	}
}
