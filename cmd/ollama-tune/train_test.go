package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/plugin"
)

// fakeClock advances only when told.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

// fakeRunner plays a scripted event stream.
type fakeRunner struct {
	mu      sync.Mutex
	script  func(ctx context.Context, emit func(plugin.Event)) (plugin.Finished, error)
	cancels []plugin.CancelMode
	req     plugin.TrainRequest
}

func (f *fakeRunner) Train(ctx context.Context, req plugin.TrainRequest, onEvent func(plugin.Event)) (plugin.Finished, error) {
	f.req = req
	return f.script(ctx, onEvent)
}

func (f *fakeRunner) Cancel(_ context.Context, mode plugin.CancelMode) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancels = append(f.cancels, mode)
	return nil
}

func (f *fakeRunner) cancelModes() []plugin.CancelMode {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]plugin.CancelMode(nil), f.cancels...)
}

// Not a terminal: one plain line per event, with the ETA from the wall
// time per step.
func TestTrainPlainProgress(t *testing.T) {
	clock := &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	var out bytes.Buffer
	view := newLineView(&out, clock.now)
	fin := plugin.Finished{AdapterDir: "/out/yoda", FinalLoss: 0.25, Steps: 4}
	r := &fakeRunner{script: func(_ context.Context, emit func(plugin.Event)) (plugin.Finished, error) {
		emit(plugin.Started{TotalSteps: 4, Device: "cpu (2 cores)", TrainableParams: 12582912, TotalParams: 3833662464})
		emit(plugin.Log{Level: "info", Message: "quantizing the base model to NF4"})
		emit(plugin.Log{Level: "debug", Message: "not shown"})
		for s := int64(1); s <= 4; s++ {
			clock.t = clock.t.Add(30 * time.Second)
			emit(plugin.Step{Step: s, Epoch: float64(s) / 2, Loss: 3 - 0.5*float64(s), GradNorm: 1.5, LearningRate: 3e-4 * float64(4-s) / 4,
				TokensPerSecond: 1234.4, MeanTokenAccuracy: 0.5})
			if s == 2 {
				emit(plugin.Eval{Step: 2, Loss: 2.25, MeanTokenAccuracy: 0.6})
				emit(plugin.CheckpointSaved{Step: 2, Path: "/out/yoda/checkpoint-2"})
			}
		}
		emit(plugin.Log{Level: "warn", Message: "loss.png skipped"})
		emit(fin)
		return fin, nil
	}}
	sigs := make(chan os.Signal)
	if err := runTraining(context.Background(), r, plugin.TrainRequest{}, sigs, view, "ollama-tune train --resume"); err != nil {
		t.Fatal(err)
	}
	want := `training on cpu (2 cores): 4 steps; trainable params: 12,582,912 || all params: 3,833,662,464 || trainable%: 0.3282
quantizing the base model to NF4
step 1/4  epoch 0.50  loss 2.5000  grad_norm 1.5000  lr 2.250e-04  accuracy 0.5000  1,234 tok/s  eta 1m30s
step 2/4  epoch 1.00  loss 2.0000  grad_norm 1.5000  lr 1.500e-04  accuracy 0.5000  1,234 tok/s  eta 1m00s
eval at step 2: loss 2.2500  accuracy 0.6000
checkpoint at step 2: /out/yoda/checkpoint-2
step 3/4  epoch 1.50  loss 1.5000  grad_norm 1.5000  lr 7.500e-05  accuracy 0.5000  1,234 tok/s  eta 30s
step 4/4  epoch 2.00  loss 1.0000  grad_norm 1.5000  lr 0.000e+00  accuracy 0.5000  1,234 tok/s  eta 0s
warn: loss.png skipped
finished after 4 steps: final loss 0.2500; adapter in /out/yoda
`
	if out.String() != want {
		t.Fatalf("output:\n%s\nwant:\n%s", out.String(), want)
	}
}

// A resumed run's ETA counts only the steps done since it started.
func TestTrainETAAfterResume(t *testing.T) {
	clock := &fakeClock{t: time.Unix(0, 0)}
	c := runClock{now: clock.now}
	c.started(plugin.Started{TotalSteps: 100, StartStep: 60})
	if got := c.eta(60); got != -1 {
		t.Errorf("eta before any step %v, want unknown", got)
	}
	clock.t = clock.t.Add(20 * time.Second)
	if got := c.eta(70); got != 60*time.Second {
		t.Errorf("eta %v, want 60s (2 s a step, 30 steps left)", got)
	}
	if formatETA(-1) != "?" || formatETA(3723*time.Second) != "1h02m" {
		t.Errorf("formatETA: %q %q", formatETA(-1), formatETA(3723*time.Second))
	}
}

// Ctrl-C once asks for a graceful stop, twice for an immediate one; the
// run's cancelled error says how to resume.
func TestTrainInterrupts(t *testing.T) {
	var out bytes.Buffer
	view := newLineView(&out, time.Now)
	sigs := make(chan os.Signal, 2)
	release := make(chan struct{})
	r := &fakeRunner{}
	r.script = func(ctx context.Context, emit func(plugin.Event)) (plugin.Finished, error) {
		emit(plugin.Started{TotalSteps: 10})
		sigs <- os.Interrupt
		waitFor(t, func() bool { return len(r.cancelModes()) == 1 })
		emit(plugin.CheckpointSaved{Step: 3, Path: "/out/checkpoint-3"})
		sigs <- os.Interrupt
		waitFor(t, func() bool { return len(r.cancelModes()) == 2 })
		close(release)
		return plugin.Finished{}, &plugin.TrainError{Code: plugin.CodeCancelled, Message: "stopped at once", LastCheckpoint: "/out/checkpoint-3"}
	}
	err := runTraining(context.Background(), r, plugin.TrainRequest{}, sigs, view, resumeHint("yoda.yaml"))
	<-release
	if got := r.cancelModes(); !reflect.DeepEqual(got, []plugin.CancelMode{plugin.CancelGraceful, plugin.CancelImmediate}) {
		t.Errorf("cancels %v, want graceful then immediate", got)
	}
	if err == nil || !strings.Contains(err.Error(), "continue with: ollama-tune train --config yoda.yaml --resume=/out/checkpoint-3") {
		t.Errorf("error %v; want the resume command", err)
	}
	for _, w := range []string{"interrupt: asking the trainer to save a checkpoint", "second interrupt: stopping the trainer now"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("output lacks %q:\n%s", w, out.String())
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

// A plugin crash comes back as the host's crash report, unchanged.
func TestTrainCrashReport(t *testing.T) {
	crash := &plugin.CrashError{Plugin: "/bin/ollama-tune-trainer-cuda", Pid: 42, During: "training", Status: "was killed by signal 9 (SIGKILL)",
		LastLog: []string{"step 7"}, LastCheckpoint: "/out/checkpoint-5", Err: errors.New("transport is closing")}
	r := &fakeRunner{script: func(_ context.Context, emit func(plugin.Event)) (plugin.Finished, error) {
		emit(plugin.Started{TotalSteps: 10})
		return plugin.Finished{}, crash
	}}
	var out bytes.Buffer
	err := runTraining(context.Background(), r, plugin.TrainRequest{}, make(chan os.Signal), newLineView(&out, time.Now), "x")
	var got *plugin.CrashError
	if !errors.As(err, &got) || got != crash {
		t.Fatalf("error %v, want the crash report", err)
	}
	for _, w := range []string{"the trainer plugin died during training", "SIGKILL", "step 7", "/out/checkpoint-5"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("crash report lacks %q:\n%s", w, err)
		}
	}

	// Other failures: the code's advice, and the checkpoint to resume.
	r.script = func(context.Context, func(plugin.Event)) (plugin.Finished, error) {
		return plugin.Finished{}, &plugin.TrainError{Code: plugin.CodeOutOfMemory, Message: "cuda: 80 GiB in use"}
	}
	err = runTraining(context.Background(), r, plugin.TrainRequest{}, make(chan os.Signal), newLineView(&out, time.Now), "x")
	if err == nil || !strings.Contains(err.Error(), "per_device_train_batch_size") {
		t.Errorf("out of memory: %v", err)
	}
}

// The request carries the config as JSON with local paths made absolute.
func TestTrainRequest(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.MkdirAll("model", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile("rows.csv", []byte("prompt,completion\na,b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tc := finetune.DefaultTrainConfig()
	tc.Model, tc.Dataset.Path, tc.Training.OutputDir = "model", "rows.csv", "out"
	req, err := trainRequest(tc, "out/checkpoint-5")
	if err != nil {
		t.Fatal(err)
	}
	var got finetune.TrainConfig
	if err := json.Unmarshal(req.Config, &got); err != nil {
		t.Fatal(err)
	}
	want := tc
	want.Model, want.Dataset.Path, want.Training.OutputDir = filepath.Join(dir, "model"), filepath.Join(dir, "rows.csv"), filepath.Join(dir, "out")
	if !reflect.DeepEqual(got, want) {
		t.Errorf("config\n got %+v\nwant %+v", got, want)
	}
	if req.OutputDir != want.Training.OutputDir || req.Resume != filepath.Join(dir, "out", "checkpoint-5") {
		t.Errorf("output %q resume %q", req.OutputDir, req.Resume)
	}
	// A Hub id stays as it is; "latest" passes through.
	tc.Model = "microsoft/Phi-3-mini-4k-instruct"
	req, _ = trainRequest(tc, finetune.ResumeLatest)
	if err := json.Unmarshal(req.Config, &got); err != nil || got.Model != tc.Model || req.Resume != finetune.ResumeLatest {
		t.Errorf("model %q resume %q", got.Model, req.Resume)
	}
}

// --dry-run validates and prints finetune.Plan without training.
func TestTrainDryRun(t *testing.T) {
	clearConfigEnv(t)
	dir := tinyModelWithTokenizer(t)
	out := filepath.Join(t.TempDir(), "adapter")
	cfgPath := yodaConfig(t, dir, "")
	got, _, err := runCmd(t, newTrainCmd(), "--config", cfgPath, "--dry-run", "--output-dir", out)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"examples:          720 for training", "tokens:            21801", "parameters:", "memory (estimate):",
		"output:            " + out, "dry run: the configuration is valid; nothing was trained"} {
		if !strings.Contains(got, w) {
			t.Errorf("dry run output lacks %q:\n%s", w, got)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("dry run created %s", out)
	}
	// Validation errors come first, naming the key.
	_, _, err = runCmd(t, newTrainCmd(), "--config", cfgPath, "--dry-run", "--set", "training.optim=sgd")
	if err == nil || !strings.Contains(err.Error(), `"training.optim"`) {
		t.Errorf("bad optimizer: %v", err)
	}
	// --resume takes an optional value, also after a space.
	if _, _, err := runCmd(t, newTrainCmd(), "--config", cfgPath, "--dry-run", "--resume", "somewhere"); err != nil {
		t.Errorf("--resume DIR: %v", err)
	}
	if _, _, err := runCmd(t, newTrainCmd(), "--config", cfgPath, "--dry-run", "stray"); err == nil {
		t.Error("a stray argument was accepted")
	}
}

// The terminal view draws a bar with the step count and the step's
// numbers, and prints the other events above it.
func TestTrainBarProgress(t *testing.T) {
	clock := &fakeClock{t: time.Unix(0, 0)}
	var out bytes.Buffer
	v := newBarView(&out, clock.now)
	v.Event(plugin.Started{TotalSteps: 4, Device: "cuda"})
	for s := int64(1); s <= 2; s++ {
		clock.t = clock.t.Add(10 * time.Second)
		v.Event(plugin.Step{Step: s, Epoch: 0.25 * float64(s), Loss: 2.5, TokensPerSecond: 5000})
	}
	v.Event(plugin.CheckpointSaved{Step: 2, Path: "/out/checkpoint-2"})
	v.Note("interrupt: asking the trainer to save a checkpoint and stop")
	for s := int64(3); s <= 4; s++ {
		v.Event(plugin.Step{Step: s, Epoch: 0.25 * float64(s), Loss: 2.0, TokensPerSecond: 5000})
	}
	v.Event(plugin.Finished{Steps: 4, FinalLoss: 2.0, AdapterDir: "/out"})
	v.Close()
	s := out.String()
	for _, w := range []string{"training on cuda: 4 steps", "(2/4", "epoch 0.50  loss 2.5000  5,000 tok/s  ETA 20s",
		"checkpoint at step 2: /out/checkpoint-2", "interrupt: asking", "(4/4", "finished after 4 steps"} {
		if !strings.Contains(s, w) {
			t.Errorf("bar output lacks %q:\n%q", w, s)
		}
	}
}

// The whole path: host, the real CPU trainer plugin over go-plugin, events
// drawn as lines, the adapter written.
func TestTrainWithCPUPlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the CPU trainer plugin")
	}
	clearConfigEnv(t)
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to build the plugin")
	}
	bin := t.TempDir()
	if out, err := exec.Command(goTool, "build", "-o", filepath.Join(bin, plugin.BinaryPrefix+"cpu"), "../ollama-tune-trainer-cpu").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Setenv(plugin.PluginsEnv, bin)
	t.Setenv("OLLAMA_TUNE_LOG", "error")
	model := tinyModelWithTokenizer(t)
	out := filepath.Join(t.TempDir(), "adapter")
	cfgPath := yodaConfig(t, model, "training:\n  logging_steps: 1\n  optim: adamw_torch\n")
	got, _, err := runCmd(t, newTrainCmd(), "--config", cfgPath, "--max-steps", "2", "--output-dir", out, "--device", "cpu")
	if err != nil {
		t.Fatalf("%v\noutput:\n%s", err, got)
	}
	for _, w := range []string{"device cpu: using", "training on", "step 1/2", "step 2/2", "finished after 2 steps"} {
		if !strings.Contains(got, w) {
			t.Errorf("output lacks %q:\n%s", w, got)
		}
	}
	for _, f := range []string{"adapter_config.json", "adapter_model.safetensors"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("adapter file: %v", err)
		}
	}
}

// A plugin's debug and trace log lines are shown only where
// $OLLAMA_TUNE_LOG asks for their level.
func TestDebugLogLines(t *testing.T) {
	clock := &runClock{}
	for _, c := range []struct {
		env, level string
		shown      bool
	}{{"", "debug", false}, {"warn", "debug", false}, {"info", "debug", false}, {"debug", "debug", true},
		{"debug", "trace", false}, {"trace", "trace", true}, {"trace", "debug", true}, {"", "info", true}} {
		t.Setenv("OLLAMA_TUNE_LOG", c.env)
		line := eventLine(plugin.Log{Level: c.level, Message: "checkpoint-2 written"}, clock)
		if shown := strings.Contains(line, "checkpoint-2 written"); shown != c.shown {
			t.Errorf("OLLAMA_TUNE_LOG=%q, a %s line: %q, want shown %v", c.env, c.level, line, c.shown)
		}
	}
}

// TestSpeedHint: the float32-on-the-GPU note appears for the seed's
// settings on the CUDA plugin only, and not once the job says anything
// about TF32 or computes in bfloat16; float16 on the GPU gets its own.
func TestSpeedHint(t *testing.T) {
	yes, no := true, false
	cuda, cpu := plugin.Capabilities{Backend: "cuda"}, plugin.Capabilities{Backend: "cpu"}
	seed := finetune.DefaultTrainConfig()
	bf16, f16 := seed, seed
	bf16.Quantization.Bnb4bitComputeDType = "bfloat16"
	f16.Quantization.Bnb4bitComputeDType = "float16"
	on, off := seed, seed
	on.Training.TF32, off.Training.TF32 = &yes, &no
	for _, c := range []struct {
		name string
		caps plugin.Capabilities
		tc   finetune.TrainConfig
		want bool
	}{
		{"seed on cuda", cuda, seed, true}, {"seed on cpu", cpu, seed, false}, {"bfloat16", cuda, bf16, false},
		{"tf32 true", cuda, on, false}, {"tf32 false", cuda, off, false}, {"float16", cuda, f16, true}, {"float16 on cpu", cpu, f16, false},
	} {
		h := speedHint(c.caps, c.tc)
		tf32 := c.tc.Quantization.Bnb4bitComputeDType == "float32"
		if (h != "") != c.want || c.want && (tf32 != strings.Contains(h, "--set training.tf32=true") || !strings.Contains(h, "bnb_4bit_compute_dtype=bfloat16")) {
			t.Errorf("%s: hint %q", c.name, h)
		}
	}
}
