package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ollama-tune/ollama-tune/plugin"
)

// The real CPU trainer plugin is killed with SIGKILL mid-run: the host must
// say so with the plugin's last log lines and the last checkpoint, keep that
// checkpoint, and `train --resume` must finish with the very adapter an
// uninterrupted run writes (the CPU backend is deterministic, and resume
// restores optimizer, scheduler, RNG and data position).
func TestKillTrainerPluginThenResume(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the CPU trainer plugin three times")
	}
	clearConfigEnv(t)
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool to build the plugin")
	}
	bin := t.TempDir()
	pluginPath := filepath.Join(bin, plugin.BinaryPrefix+"cpu")
	if out, err := exec.Command(goTool, "build", "-o", pluginPath, "../ollama-tune-trainer-cpu").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Setenv(plugin.PluginsEnv, bin)
	t.Setenv("OLLAMA_TUNE_LOG", "info")
	model := tinyModelWithTokenizer(t)
	// 8-bit AdamW state, dropout and checkpoints every 2 steps: everything
	// resume has to restore.
	cfgPath := yodaConfig(t, model, "training:\n  logging_steps: 1\n  save_steps: 2\n  optim: paged_adamw_8bit\n  per_device_train_batch_size: 4\n")
	const steps = "24"

	ref := filepath.Join(t.TempDir(), "ref")
	if out, _, err := runCmd(t, newTrainCmd(), "--config", cfgPath, "--max-steps", steps, "--output-dir", ref, "--device", "cpu"); err != nil {
		t.Fatalf("uninterrupted run: %v\n%s", err, out)
	}

	out := filepath.Join(t.TempDir(), "run")
	done := make(chan struct{})
	var stdout, stderr string
	var runErr error
	go func() {
		defer close(done)
		stdout, stderr, runErr = runCmd(t, newTrainCmd(), "--config", cfgPath, "--max-steps", steps, "--output-dir", out, "--device", "cpu")
	}()
	killed := false
	deadline := time.Now().Add(2 * time.Minute)
	for !killed && time.Now().Before(deadline) {
		select {
		case <-done:
			t.Fatalf("the run finished before it could be killed; make it longer\n%s", stdout)
		default:
		}
		if _, err := os.Stat(filepath.Join(out, "checkpoint-4")); err == nil {
			for _, pid := range pidsRunning(pluginPath) {
				if syscall.Kill(pid, syscall.SIGKILL) == nil {
					killed = true
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !killed {
		t.Fatal("no checkpoint-4 or no plugin process to kill within 2 minutes")
	}
	<-done
	if runErr == nil {
		t.Fatalf("the killed run reported success\n%s", stdout)
	}
	report := runErr.Error() + "\n" + stdout + "\n" + stderr
	for _, w := range []string{"SIGKILL", "checkpoint-", "--resume"} {
		if !strings.Contains(report, w) {
			t.Errorf("crash report lacks %q:\n%s", w, report)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "checkpoint-4", "adapter_model.safetensors")); err != nil {
		t.Errorf("the last checkpoint was not kept: %v", err)
	}

	if got, _, err := runCmd(t, newTrainCmd(), "--config", cfgPath, "--max-steps", steps, "--output-dir", out, "--device", "cpu", "--resume"); err != nil {
		t.Fatalf("resume: %v\n%s", err, got)
	}
	want, err := os.ReadFile(filepath.Join(ref, "adapter_model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(out, "adapter_model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the resumed adapter differs from the uninterrupted run's")
	}
}

// pidsRunning lists the processes whose executable is path.
func pidsRunning(path string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe")); err == nil && exe == path {
			pids = append(pids, pid)
		}
	}
	return pids
}
