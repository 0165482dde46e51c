// Package tinymodel writes tiny random Phi-3 models for tests: a
// checkpoint from finetune.WriteRandomCheckpoint with the shared Phi-3
// tokenizer files beside it.
//
// It is apart from testutil because it imports finetune: testutil must not,
// so that the packages finetune imports can use it in their own tests.
package tinymodel

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// Dir writes a random Phi-3 checkpoint for cfg (seeded, weights stored as
// dtype) into a fresh temporary folder, copies the shared Phi-3 tokenizer
// files (../shared/data/phi3-tokenizer) into it and returns it. cfg needs
// Phi-3's vocabulary (32064) for the tokenizer to fit. The test is skipped
// without the shared data.
func Dir(t testing.TB, cfg *finetune.Config, seed uint64, dtype finetune.DType) string {
	t.Helper()
	tokDir := testutil.SharedData(t, "phi3-tokenizer")
	dir := filepath.Join(t.TempDir(), "tiny-phi3")
	if err := finetune.WriteRandomCheckpoint(dir, cfg, seed, dtype); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(tokDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		testutil.CopyFile(t, filepath.Join(tokDir, e.Name()), filepath.Join(dir, e.Name()))
	}
	return dir
}
