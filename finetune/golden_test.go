package finetune_test

import (
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/testutil/golden"
)

// Golden tests: the engine against PyTorch + transformers + peft, run in
// float64 by testdata/gen_golden.py (see testdata/README.md). A tiny
// random Phi-3 with an all-linear LoRA adapter; golden.Run checks the
// logits, the loss, every LoRA gradient (with and without gradient
// checkpointing) and the adapter after 3 clipped AdamW steps, to relative
// L2 error 1e-5; in tiny/ also that our NF4 + double-quant dequantization
// is bit-identical to the weights the reference used. Package cuda runs the
// same checks on the GPU.
func TestGolden(t *testing.T) {
	for _, variant := range golden.Variants {
		t.Run(variant, func(t *testing.T) {
			dir, ok := golden.Dir(t, variant)
			if !ok {
				t.Skipf("golden fixture %s is missing: run python3 finetune/testdata/gen_golden.py --out finetune/testdata/golden on a machine with torch/transformers/peft and commit the result", dir)
			}
			golden.Run(t, finetune.NewCPUBackend(finetune.CPUOptions{}), dir)
		})
	}
}
