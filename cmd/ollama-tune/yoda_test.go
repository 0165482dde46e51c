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
