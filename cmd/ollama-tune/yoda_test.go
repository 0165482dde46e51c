package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestYodaDemoRunsAgain: the README's first command, run a second time
// in the same folder, continues the first run's training (finished: no
// more steps) instead of refusing the folder's checkpoints, and ends as
// the first did (no Ollama here: the Modelfile).
func TestYodaDemoRunsAgain(t *testing.T) {
	if testing.Short() {
		t.Skip("trains the demo (about 10 s)")
	}
	ollamaEnv(t)
	out := filepath.Join(t.TempDir(), "demo")
	for run := 1; run <= 2; run++ {
		stdout, stderr, err := runCmd(t, newYodaCmd(), "--demo", "--out", out)
		if err != nil {
			t.Fatalf("run %d: %v\n%s%s", run, err, stdout, stderr)
		}
		all := stdout + stderr
		continued := strings.Contains(all, "2/4 continuing the demo's earlier training")
		if continued != (run == 2) || !strings.Contains(all, "4/4 to finish") || !strings.Contains(all, "240 steps") {
			t.Errorf("run %d:\n%s", run, all)
		}
	}
}

// TestYodaSet: yoda's --set takes train's keys over the seed's defaults
// (a bad key or value fails before anything is fetched, naming the key),
// and is refused with --demo.
func TestYodaSet(t *testing.T) {
	ollamaEnv(t)
	_, _, err := runCmd(t, newYodaCmd(), "--demo", "--set", "training.tf32=true")
	if err == nil || !strings.Contains(err.Error(), "--set is for the real run") {
		t.Errorf("--demo --set: %v", err)
	}
	_, _, err = runCmd(t, newYodaCmd(), "--set", "training.optim=adamw_8bits")
	if err == nil || !strings.Contains(err.Error(), "training.optim") || !strings.Contains(err.Error(), "adamw_8bits") {
		t.Errorf("a bad --set value: %v", err)
	}
	_, _, err = runCmd(t, newYodaCmd(), "--set", "training.no_such_key=1")
	if err == nil || !strings.Contains(err.Error(), "no_such_key") {
		t.Errorf("an unknown --set key: %v", err)
	}
	// Good keys pass on to the run, which here stops at the model folder.
	missing := filepath.Join(t.TempDir(), "no-model")
	_, _, err = runCmd(t, newYodaCmd(), "--set", "training.tf32=true", "--set", "quantization.bnb_4bit_compute_dtype=bfloat16", "--model", missing)
	if err == nil || strings.Contains(err.Error(), "--set") || !strings.Contains(err.Error(), "no-model") {
		t.Errorf("good --set keys with a missing model: %v", err)
	}
}
