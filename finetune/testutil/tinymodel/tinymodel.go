// Package tinymodel builds tiny random Phi-3 models for tests: a
// checkpoint from finetune.WriteRandomCheckpoint with the shared Phi-3
// tokenizer files beside it, packed batches and adapters whose B matrices
// are random (so that every LoRA gradient is non-zero).
//
// It is apart from testutil because it imports finetune: testutil must not,
// so that the packages finetune imports can use it in their own tests.
package tinymodel

import (
	"os"
	"path/filepath"
	"strings"
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

// PackedPos returns position ids for B rows of S tokens packing examples
// of the given lengths (cycled; each row starts a new example).
func PackedPos(B, S int, lens []int) []int32 {
	pos := make([]int32, B*S)
	k := 0
	for r := 0; r < B; r++ {
		p, n := 0, lens[k%len(lens)]
		for s := 0; s < S; s++ {
			if p == n {
				k++
				p, n = 0, lens[k%len(lens)]
			}
			pos[r*S+s] = int32(p)
			p++
		}
		k++
	}
	return pos
}

// PackedBatch is B rows of S tokens (ids (k*131 + 7) mod vocab) packing
// examples of the given lengths; each example's first two tokens (its
// "prompt") are not trained on.
func PackedBatch(B, S, vocab int, lens []int) *finetune.Batch {
	pos := PackedPos(B, S, lens)
	ids := make([]int32, B*S)
	labels := make([]int32, B*S)
	for k := range ids {
		ids[k] = int32((k*131 + 7) % vocab)
		labels[k] = ids[k]
		if pos[k] < 2 {
			labels[k] = finetune.IgnoreIndex
		}
	}
	return &finetune.Batch{B: B, S: S, InputIDs: ids, PositionIDs: pos, Labels: labels}
}

// RandomLoRAB sets the k-th LoRA parameter, where it is a B matrix, to
// N(0, 0.2) values of seed 100+k: PEFT starts B at zero, which leaves the
// A gradients zero and the adapter without effect, so a test comparing
// backends would not see them.
func RandomLoRAB(t testing.TB, m *finetune.Model) {
	t.Helper()
	for k, p := range m.LoRAParams() {
		if !strings.Contains(p.Name, "lora_B") {
			continue
		}
		v := make([]float32, p.Numel())
		for i := range v {
			v[i] = 0.2 * finetune.Normal(uint64(100+k), uint64(i))
		}
		if err := m.SetLoRA(p.Name, v); err != nil {
			t.Fatal(err)
		}
	}
}
