// Package tinymodel builds tiny random Phi-3 models for tests: a
// checkpoint from finetune.WriteRandomCheckpoint with the shared Phi-3
// tokenizer files beside it, packed batches and adapters whose B matrices
// are random (so that every LoRA gradient is non-zero).
//
// It is apart from testutil because it imports finetune: testutil must not,
// so that the packages finetune imports can use it in their own tests.
package tinymodel

import (
	"math"
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

// CheckShapeChanges runs, with and without gradient checkpointing, a
// training forward and backward of a batch of 3 rows of 24 tokens, then
// of smaller ones (2 x 20, 1 x 24: the buffers of the first shape viewed
// where the backend is a finetune.Viewer), then of the first again, and
// wants for each the loss and LoRA gradients that a fresh model (from
// newModel) gives for that batch alone, bit for bit: no state of one
// shape leaks into another.
func CheckShapeChanges(t *testing.T, newModel func() *finetune.Model) {
	t.Helper()
	run := func(m *finetune.Model, batch *finetune.Batch, seed uint64) []float32 {
		t.Helper()
		loss := Step(t, m, batch, seed)
		out := []float32{float32(loss)}
		for _, p := range m.LoRAParams() {
			out = append(out, m.B.Download(p.Grad)...)
		}
		return out
	}
	for _, ckpt := range []bool{true, false} {
		m := newModel()
		m.GradientCheckpointing = ckpt
		V := m.Cfg.VocabSize
		batches := []*finetune.Batch{PackedBatch(3, 24, V, []int{7, 13, 30, 4}), PackedBatch(2, 20, V, []int{11, 20, 5}),
			PackedBatch(1, 24, V, []int{24}), PackedBatch(3, 24, V, []int{7, 13, 30, 4})}
		for k, batch := range batches {
			got := run(m, batch, uint64(40+k%3))
			fresh := newModel()
			fresh.GradientCheckpointing = ckpt
			want := run(fresh, batch, uint64(40+k%3))
			fresh.Free()
			for i := range want {
				if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
					t.Fatalf("checkpointing %v, batch %d (%d x %d): value %d is %v after the other shapes, %v from a fresh model",
						ckpt, k, batch.B, batch.S, i, got[i], want[i])
				}
			}
		}
		m.Free()
	}
}

// Step zeroes m's LoRA gradients and runs a training forward and backward
// of batch; it returns the loss.
func Step(t testing.TB, m *finetune.Model, batch *finetune.Batch, seed uint64) float64 {
	t.Helper()
	for _, p := range m.LoRAParams() {
		m.B.Zero(p.Grad)
	}
	loss, _, _, err := m.Forward(batch, true, seed)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Backward(); err != nil {
		t.Fatal(err)
	}
	return loss
}

// CheckNoAllocOnShapeChange runs m on a batch of 3 x 24 tokens, then on a
// smaller one and on the first shape again, and wants held (what the
// backend holds, or how many allocations it made) unchanged after the
// first: the smaller batch views the first's buffers (finetune.Viewer).
func CheckNoAllocOnShapeChange(t *testing.T, m *finetune.Model, held func() int64) {
	t.Helper()
	V := m.Cfg.VocabSize
	Step(t, m, PackedBatch(3, 24, V, []int{7, 13, 30, 4}), 5)
	n := held()
	Step(t, m, PackedBatch(2, 20, V, []int{11, 20, 5}), 5)
	Step(t, m, PackedBatch(3, 24, V, []int{7, 13, 30, 4}), 5)
	if got := held(); got != n {
		t.Errorf("%d more after a smaller batch and the first shape again, want none (views of the first's buffers)", got-n)
	}
}
