package finetune_test

import (
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/testutil/tinymodel"
)

// countingBackend is the CPU backend counting its allocations.
type countingBackend struct {
	*finetune.CPUBackend
	allocs int
}

func (b *countingBackend) Alloc(shape ...int) finetune.Tensor {
	b.allocs++
	return b.CPUBackend.Alloc(shape...)
}

func (b *countingBackend) AllocInt32(n int) finetune.Tensor {
	b.allocs++
	return b.CPUBackend.AllocInt32(n)
}

// viewModel is a small random Phi-3 (grouped-query attention, odd sizes)
// with a random all-linear adapter on b.
func viewModel(t *testing.T, b finetune.Backend) *finetune.Model {
	cfg := &finetune.Config{
		Architecture: "Phi3ForCausalLM", ModelType: "phi3",
		HiddenSize: 48, IntermediateSize: 70, NumLayers: 2, NumHeads: 6, NumKVHeads: 2,
		VocabSize: 301, RMSNormEps: 1e-5, RopeTheta: 10000, PartialRotaryFactor: 1,
		MaxPositionEmbeddings: 128, HiddenAct: "silu", EOSTokenIDs: []int{2}, PadTokenID: -1,
	}
	lc := &finetune.LoRAConfig{R: 4, Alpha: 8, Dropout: 0.1, TargetModules: []string{"all-linear"}, Bias: "none", Seed: 7}
	m, err := finetune.NewModel(b, cfg, finetune.RandomWeights(cfg, 3), finetune.ModelOptions{Quantize: true, DoubleQuant: true, LoRA: lc})
	if err != nil {
		t.Fatal(err)
	}
	tinymodel.RandomLoRAB(t, m)
	return m
}

// TestBufferViews (finetune.Viewer): batches of other shapes on one model
// give, bit for bit, what a fresh model gives for each (CheckShapeChanges),
// and after the first batch a smaller one and the first shape again
// allocate nothing: the smaller one views the first's buffers.
func TestBufferViews(t *testing.T) {
	tinymodel.CheckShapeChanges(t, func() *finetune.Model { return viewModel(t, finetune.NewCPUBackend(finetune.CPUOptions{})) })

	b := &countingBackend{CPUBackend: finetune.NewCPUBackend(finetune.CPUOptions{})}
	m := viewModel(t, b)
	defer m.Free()
	tinymodel.CheckNoAllocOnShapeChange(t, m, func() int64 { return int64(b.allocs) })
	n := b.allocs
	tinymodel.Step(t, m, tinymodel.PackedBatch(4, 24, m.Cfg.VocabSize, []int{7, 13, 30, 4}), 5) // larger: a new set
	if b.allocs == n {
		t.Error("a larger batch allocated nothing")
	}
	// After ReleaseBuffers (a retry after running out of memory), a
	// smaller batch gets buffers of its own size, not views of the old.
	m.ReleaseBuffers()
	n = b.allocs
	tinymodel.Step(t, m, tinymodel.PackedBatch(2, 24, m.Cfg.VocabSize, []int{7, 13, 30, 4}), 5)
	if b.allocs == n {
		t.Error("a batch after ReleaseBuffers allocated nothing")
	}
}
