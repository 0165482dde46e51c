// Package testutil holds small helpers for tests across the repository:
// finding the repository root and the read-only shared data next to it,
// and writing tiny random Phi-3 checkpoints.
//
// Package finetune's own in-package tests cannot import this package
// (testutil imports finetune); they call finetune.WriteRandomCheckpoint
// directly.
package testutil

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// RepoRoot walks up from the test's working directory (its package
// directory) to the folder holding go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testutil: no go.mod above the test's directory")
		}
		dir = parent
	}
}

// SharedData is the path of rel under the shared data folder
// (../shared/data from the repository root). The test is skipped when that
// folder is absent (a checkout without the shared data); a missing file
// inside a present folder fails it, since that is a real error.
func SharedData(t testing.TB, rel ...string) string {
	t.Helper()
	root := filepath.Join(RepoRoot(t), "..", "shared", "data")
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		t.Skipf("shared data folder %s is absent", root)
	}
	p := filepath.Join(append([]string{root}, rel...)...)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("shared data: %v", err)
	}
	return p
}

// TinyCheckpoint writes a random Phi-3 checkpoint for cfg (see
// finetune.WriteRandomCheckpoint) into a fresh temporary directory and
// returns it.
func TinyCheckpoint(t testing.TB, cfg *finetune.Config, seed uint64, dtype finetune.DType) string {
	t.Helper()
	dir := t.TempDir()
	if err := finetune.WriteRandomCheckpoint(dir, cfg, seed, dtype); err != nil {
		t.Fatal(err)
	}
	return dir
}
