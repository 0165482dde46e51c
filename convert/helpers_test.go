package convert

import (
	"path/filepath"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
	"github.com/ollama-tune/ollama-tune/finetune/testutil/tinymodel"
)

// tinyConfig is a small Phi-3 with the real vocabulary size (so the real
// tokenizer fits), grouped-query attention and rows that are multiples of
// 32 (so Q8_0 and Q4_0 apply to every matrix).
func tinyConfig() *finetune.Config {
	return &finetune.Config{Architecture: "Phi3ForCausalLM", ModelType: "phi3",
		HiddenSize: 64, IntermediateSize: 96, NumLayers: 2, NumHeads: 4, NumKVHeads: 2, VocabSize: 32064,
		RMSNormEps: 1e-5, RopeTheta: 10000, PartialRotaryFactor: 1, MaxPositionEmbeddings: 4096,
		HiddenAct: "silu", TorchDType: "float32", BOSTokenID: 1, EOSTokenIDs: []int{32000}, PadTokenID: 32000}
}

// tinyModelDir writes a random tiny Phi-3 checkpoint with the shared
// Phi-3 tokenizer files beside it (skips without the shared data).
func tinyModelDir(t *testing.T, dtype finetune.DType) string {
	t.Helper()
	return tinymodel.Dir(t, tinyConfig(), 7, dtype)
}

// randomAdapter is a PEFT adapter of rank r on every linear of every layer
// of cfg with non-zero A and B (seeded), so merging changes every weight.
func randomAdapter(cfg *finetune.Config, r int, alpha float64, seed uint64) *peft.Adapter {
	a := &peft.Adapter{Config: peft.NewConfig("tiny", r, alpha, 0, []string{"qkv_proj", "o_proj", "gate_up_proj", "down_proj"})}
	for l := range cfg.NumLayers {
		for mi, m := range finetune.LinearModules {
			out, in := finetune.LinearShape(cfg, m)
			name := finetune.LayerName(l, m)
			A := make([]float32, r*in)
			B := make([]float32, out*r)
			s := finetune.DeriveSeed(seed, uint64(l*8+mi))
			for i := range A {
				A[i] = 0.1 * finetune.Normal(s, uint64(i))
			}
			for i := range B {
				B[i] = 0.1 * finetune.Normal(s, uint64(1<<30+i))
			}
			a.Tensors = append(a.Tensors,
				peft.Tensor{Name: peft.TensorName(name, "A"), Shape: []int{r, in}, Data: A},
				peft.Tensor{Name: peft.TensorName(name, "B"), Shape: []int{out, r}, Data: B})
		}
	}
	return a
}

func writeAdapter(t *testing.T, a *peft.Adapter) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "adapter")
	if err := peft.Write(dir, a); err != nil {
		t.Fatal(err)
	}
	return dir
}
