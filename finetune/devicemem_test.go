package finetune

import (
	"math"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/data"
)

// TestDeviceMemoryEstimate: the plan's GPU memory estimate against the
// CUDA backend's measured peaks (its Allocated peak: tensors, weights and
// scratch) for the seed's job on Phi-3-mini, 16 rows x 64 tokens, under
// each compute type and memory setting. The peaks are what
// `OLLAMA_TUNE_CUDA_MEMMAP=1 ollama-tune-bench-gpu -steps 2 -warmup 1`
// printed on an NVIDIA H200 on 2026-11-28 (BENCHMARKS.md v26, session 21
// calls 1-2, raw in scripts/bench/results/2026-11-28-h200-v26-dev.txt),
// to the 0.01 GiB it prints. The estimate must come within 3% of each, and
// within 0.15 GiB: it is what the plan prints, what the memory note
// compares with the free memory, and what the step rehearsal leaves room
// for.
func TestDeviceMemoryEstimate(t *testing.T) {
	cases := []struct {
		name    string
		compute string
		tf32    bool
		ckpt    bool
		keepAct float64 // training.gradient_checkpointing_keep_gb
		keepDeq float64 // quantization.keep_dequantized_gb
		peakGiB float64 // measured
	}{
		{"bfloat16, checkpointing (the tutorial's)", "bfloat16", false, true, 0, 0, 3.37},
		{"bfloat16, no checkpointing", "bfloat16", false, false, 0, 0, 9.80},
		{"bfloat16, keep_gb 0.34", "bfloat16", false, true, 0.34, 0, 3.50},
		{"bfloat16, keep_gb 1.7 (every output)", "bfloat16", false, true, 1.7, 0, 4.70},
		{"bfloat16, weights kept, checkpointing", "bfloat16", false, true, 0, 8, 9.97},
		{"bfloat16, weights kept, no checkpointing", "bfloat16", false, false, 0, 8, 16.46},
		{"float16, checkpointing", "float16", false, true, 0, 0, 3.37},
		{"float16, no checkpointing", "float16", false, false, 0, 0, 8.78},
		{"float16, keep_gb 0.34", "float16", false, true, 0.34, 0, 3.48},
		{"float32 (the seed's), checkpointing", "float32", false, true, 0, 0, 4.02},
		{"float32, TF32, checkpointing", "float32", true, true, 0, 0, 3.97},
		{"float32, no checkpointing", "float32", false, false, 0, 0, 9.37},
		{"float32, keep_gb 3.2 (half through host memory)", "float32", false, true, 3.2, 0, 5.28},
		{"float32, 1 GB of weights kept", "float32", false, true, 0, 1, 4.93},
	}
	cfg := Phi3Mini4k()
	prep := &prepared{train: []data.Sequence{{InputIDs: make([]int32, 64)}}, plan: data.Plan{Sequences: 341, StepsPerEpoch: 22}}
	for _, c := range cases {
		tc := DefaultTrainConfig()
		tc.Quantization.Bnb4bitComputeDType = c.compute
		tc.Quantization.KeepDequantizedGB = c.keepDeq
		tc.Training.GradientCheckpointing = c.ckpt
		tc.Training.GradientCheckpointingKeepGB = c.keepAct
		tf32 := c.tf32
		tc.Training.TF32 = &tf32
		p, err := makePlan(&Job{Config: tc}, cfg, prep)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if e, err := EstimateGPUMemory(cfg, tc, 16, 64); err != nil || e != p.EstimatedBytes {
			t.Errorf("%s: EstimateGPUMemory %d, %v; the plan's %d", c.name, e, err, p.EstimatedBytes)
		}
		est := float64(p.EstimatedBytes) / (1 << 30)
		t.Logf("%-48s estimate %5.2f GiB, measured %5.2f (weights %.2f, optimizer %.2f, activations %.2f, slots and scratch %.2f, kept weights %.2f, kept activations %.2f)",
			c.name, est, c.peakGiB, gib(p.WeightBytes), gib(p.OptimizerBytes), gib(p.ActivationBytes), gib(p.WorkingBytes), gib(p.KeptBytes), gib(p.KeptActivationBytes))
		if d := math.Abs(est - c.peakGiB); d > 0.03*c.peakGiB || d > 0.15 {
			t.Errorf("%s: the plan estimates %.2f GiB; the backend measured %.2f", c.name, est, c.peakGiB)
		}
	}
}

func gib(n int64) float64 { return float64(n) / (1 << 30) }
