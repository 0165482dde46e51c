//go:build cuda

package cuda

import (
	"fmt"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// TestRehearseStep: a step rehearsed beside a load leaves the loaded
// model's results as they are (the same logits, bit for bit, as a model
// loaded without one), ends before the wait returns, and does nothing when
// the GPU has not the room beside what the job needs.
func TestRehearseStep(t *testing.T) {
	cfg := smallConfig()
	lc := &finetune.LoRAConfig{R: 4, Alpha: 8, Dropout: 0.1, TargetModules: []string{"all-linear"}, Bias: "none", Seed: 7}
	ck := randomCheckpoint(t, cfg, 11, finetune.BF16)
	batch := smallBatch(cfg.VocabSize)
	// NF4 with checkpointing (the tutorial's), and a dense base without.
	for _, opts := range []finetune.ModelOptions{
		{Quantize: true, DoubleQuant: true, LoRA: lc, GradientCheckpointing: true},
		{LoRA: lc},
	} {
		logits := func(rehearse bool) ([]float32, string) {
			wait := func() string { return "" }
			if rehearse {
				wait = gpuB16.RehearseStep(cfg, opts, 3, 24, 0)
			}
			m, err := gpuB16.LoadModel(ck, opts)
			msg := wait()
			if err != nil {
				t.Fatal(err)
			}
			defer m.Free()
			l, err := m.Logits(batch)
			if err != nil {
				t.Fatal(err)
			}
			return l, msg
		}
		want, _ := logits(false)
		got, msg := logits(true)
		checkBits(t, fmt.Sprintf("logits after a rehearsal (nf4 %v)", opts.Quantize), got, want)
		if !strings.Contains(msg, "rehearsed (3 x 24 tokens)") {
			t.Errorf("nf4 %v: the rehearsal says %q", opts.Quantize, msg)
		}
	}
	_, total, err := gpuB16.MemInfo()
	if err != nil {
		t.Fatal(err)
	}
	if msg := gpuB16.RehearseStep(cfg, finetune.ModelOptions{LoRA: lc}, 3, 24, total)(); msg != "" {
		t.Errorf("no room beside the job's need, yet: %q", msg)
	}
}
