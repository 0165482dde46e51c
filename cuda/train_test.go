//go:build cuda

package cuda

// finetune.Train on the GPU: the SFT loop on cuda.Backend (its LoadModel
// and ClipGradNorm hooks; NF4 with double quantization; paged_adamw_8bit,
// so bitsandbytes' blockwise 8-bit AdamW for the large LoRA matrices and
// its 32-bit Adam for the small ones) against the same job on the CPU, a
// resume from a checkpoint, and the 16-bit compute dtypes. The model and
// data are convert/demo's (embedded, so the test needs no shared data).

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/convert/demo"
	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
)

// demoJob is the demo's job with the seed notebook's quantization,
// optimizer, dropout and clipping, for steps optimizer steps.
func demoJob(model, data, out, compute string, steps int) finetune.TrainConfig {
	c := demo.TrainConfig(model, data, out)
	c.Quantization = finetune.DefaultTrainConfig().Quantization
	c.Quantization.LoadIn4bit, c.Quantization.Bnb4bitUseDoubleQuant = true, true
	c.Quantization.Bnb4bitComputeDType = compute
	c.LoRA.R, c.LoRA.LoRAAlpha, c.LoRA.LoRADropout = 8, 16, 0.05
	t := &c.Training
	t.Optim = "paged_adamw_8bit"
	t.LRSchedulerType, t.LearningRate, t.MaxGradNorm = "linear", 3e-3, 0.3
	t.MaxSteps, t.NumTrainEpochs = steps, 0
	t.PerDeviceTrainBatchSize, t.GradientAccumulationSteps = 4, 2
	t.GradientCheckpointing = true
	t.LoggingSteps, t.SaveSteps = 1, 3
	return c
}

// trainDemo runs a job and returns its result and step metrics.
func trainDemo(t *testing.T, c finetune.TrainConfig, nb finetune.BackendFactory, resume string) (*finetune.Result, []finetune.StepMetrics) {
	t.Helper()
	ctx := context.Background()
	j, err := finetune.NewJob(ctx, c, finetune.JobOptions{NewBackend: nb, Resume: resume})
	if err != nil {
		t.Fatal(err)
	}
	var steps []finetune.StepMetrics
	res, err := finetune.Train(ctx, j, func(e finetune.TrainEvent) {
		if s, ok := e.(finetune.StepEvent); ok {
			steps = append(steps, s.StepMetrics)
		}
	})
	if err != nil {
		t.Fatalf("train (%s compute, resume %q): %v", c.Quantization.Bnb4bitComputeDType, resume, err)
	}
	return res, steps
}

// adapterValues reads an adapter's tensors as float32, by name.
func adapterValues(t *testing.T, dir string) map[string][]float32 {
	t.Helper()
	f, err := safetensors.Open(filepath.Join(dir, peft.WeightsName))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]float32{}
	for _, name := range f.Names() {
		ti, err := f.Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		if out[name], err = safetensors.ToFloat32(ti); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// adapterRelErr is the largest relative error of got's tensors against
// want's (infinite when the names differ).
func adapterRelErr(got, want map[string][]float32) float64 {
	if len(got) != len(want) || len(want) == 0 {
		return math.Inf(1)
	}
	worst := 0.0
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			return math.Inf(1)
		}
		worst = max(worst, relErr(g, w))
	}
	return worst
}

func TestTrainMatchesCPU(t *testing.T) {
	dir := t.TempDir()
	model, data := filepath.Join(dir, "base"), filepath.Join(dir, "data.csv")
	if err := demo.WriteBaseModel(model); err != nil {
		t.Fatal(err)
	}
	if err := demo.WriteDataset(data); err != nil {
		t.Fatal(err)
	}
	const steps = 6
	gpuRes, gpuSteps := trainDemo(t, demoJob(model, data, filepath.Join(dir, "gpu"), "float32", steps), NewFactory(0), "")
	_, cpuSteps := trainDemo(t, demoJob(model, data, filepath.Join(dir, "cpu"), "float32", steps), finetune.CPUBackendFactory, "")
	if len(gpuSteps) != steps || len(cpuSteps) != steps {
		t.Fatalf("%d steps on the GPU, %d on the CPU, want %d", len(gpuSteps), len(cpuSteps), steps)
	}
	clipped := false
	for k := range steps {
		g, c := gpuSteps[k], cpuSteps[k]
		el, en := math.Abs(g.Loss-c.Loss)/c.Loss, math.Abs(g.GradNorm-c.GradNorm)/c.GradNorm
		t.Logf("step %d: loss %.6f (cpu %.6f, rel %.2g), grad norm %.5f (cpu %.5f, rel %.2g)", g.Step, g.Loss, c.Loss, el, g.GradNorm, c.GradNorm, en)
		if !(el <= 1e-3) || !(en <= 1e-2) {
			t.Errorf("step %d: loss %v, grad norm %v; cpu %v, %v", g.Step, g.Loss, g.GradNorm, c.Loss, c.GradNorm)
		}
		clipped = clipped || c.GradNorm > 0.3
	}
	if !clipped {
		t.Error("no step's gradient norm exceeded max_grad_norm: clipping went untested")
	}
	if gpuSteps[steps-1].Loss >= gpuSteps[0].Loss {
		t.Errorf("the loss did not fall: %v -> %v", gpuSteps[0].Loss, gpuSteps[steps-1].Loss)
	}
	gpuA, cpuA := adapterValues(t, gpuRes.OutputDir), adapterValues(t, filepath.Join(dir, "cpu"))
	e := adapterRelErr(gpuA, cpuA)
	t.Logf("adapter after %d steps: largest relative error against the CPU %.2g", steps, e)
	if !(e <= 2e-2) {
		t.Errorf("adapter: relative error %.3g against the CPU", e)
	}

	// Resume from the uninterrupted run's checkpoint-3, in another folder:
	// the same adapter, bit for bit (the GPU ops are deterministic).
	resumed, rSteps := trainDemo(t, demoJob(model, data, filepath.Join(dir, "resumed"), "float32", steps), NewFactory(0),
		filepath.Join(gpuRes.OutputDir, "checkpoint-3"))
	if len(rSteps) != steps-3 || rSteps[0].Step != 4 {
		t.Errorf("the resumed run took %d steps from %+v", len(rSteps), rSteps)
	}
	if e := adapterRelErr(adapterValues(t, resumed.OutputDir), gpuA); e != 0 {
		t.Errorf("resumed at step 3: adapter differs from the uninterrupted run (relative error %.3g)", e)
	}

	// 16-bit compute: the first step (the base with a zero LoRA B) within
	// 2% of float32, and a finite, falling loss.
	for _, compute := range []string{"bfloat16", "float16"} {
		_, s := trainDemo(t, demoJob(model, data, filepath.Join(dir, compute), compute, 3), NewFactory(0), "")
		e := math.Abs(s[0].Loss-gpuSteps[0].Loss) / gpuSteps[0].Loss
		t.Logf("%s: losses %.5f %.5f %.5f (step 1 rel %.2g to float32)", compute, s[0].Loss, s[1].Loss, s[2].Loss, e)
		if !(e <= 2e-2) || !(s[2].Loss < s[0].Loss) || math.IsNaN(s[2].Loss) {
			t.Errorf("%s compute: losses %v %v %v, float32's first %v", compute, s[0].Loss, s[1].Loss, s[2].Loss, gpuSteps[0].Loss)
		}
	}
}

// limitFactory opens GPU 0 for each job with a memory limit (0: none) and
// keeps the last backend, to read its peak.
func limitFactory(limit int64, last **Backend) finetune.BackendFactory {
	return func(compute finetune.DType) (finetune.Backend, error) {
		b, err := New(Options{ComputeDType: compute, MemoryLimit: limit})
		*last = b
		return b, err
	}
}

// TestAutoFindBatchSizeOnGPU: the GPU running out of memory is
// finetune.ErrOutOfMemory to the trainer. With a memory limit
// (Options.MemoryLimit, the same error path as a full GPU) between what
// micro-batches of 4 and of 8 sequences need, auto_find_batch_size halves
// the micro-batch and trains to the adapter of a 4 x 2 run, byte for byte;
// without it the run fails with ErrOutOfMemory and says what to do.
func TestAutoFindBatchSizeOnGPU(t *testing.T) {
	dir := t.TempDir()
	model, data := filepath.Join(dir, "base"), filepath.Join(dir, "data.csv")
	if err := demo.WriteBaseModel(model); err != nil {
		t.Fatal(err)
	}
	if err := demo.WriteDataset(data); err != nil {
		t.Fatal(err)
	}
	job := func(name string, bs, ga int, auto bool) finetune.TrainConfig {
		// One step: its micro-batches are the largest each run makes, so the
		// peaks below bound what step 1 needs.
		c := demoJob(model, data, filepath.Join(dir, name), "bfloat16", 1)
		c.Training.PerDeviceTrainBatchSize, c.Training.GradientAccumulationSteps = bs, ga
		c.Training.AutoFindBatchSize, c.Training.SaveSteps = auto, 0
		c.Training.GradientCheckpointing = false // activations scale with the batch
		return c
	}
	var b *Backend
	ref, _ := trainDemo(t, job("ref", 4, 2, false), limitFactory(0, &b), "")
	_, peak4 := b.Allocated()
	trainDemo(t, job("big", 8, 1, false), limitFactory(0, &b), "")
	_, peak8 := b.Allocated()
	t.Logf("peak: %d bytes with micro-batches of 4, %d of 8", peak4, peak8)
	if peak8 <= peak4 {
		t.Fatalf("micro-batches of 8 (%d bytes) need no more than of 4 (%d)", peak8, peak4)
	}
	limit := peak4 + (peak8-peak4)/4

	c := job("auto", 8, 1, true)
	j, err := finetune.NewJob(context.Background(), c, finetune.JobOptions{NewBackend: limitFactory(limit, &b)})
	if err != nil {
		t.Fatal(err)
	}
	var warns []string
	res, err := finetune.Train(context.Background(), j, func(e finetune.TrainEvent) {
		if l, ok := e.(finetune.LogEvent); ok && l.Level == "warn" {
			warns = append(warns, l.Message)
		}
	})
	if err != nil {
		t.Fatalf("auto_find_batch_size under a %d-byte limit: %v", limit, err)
	}
	if len(warns) != 1 || !strings.Contains(warns[0], "retrying step 1 with 4 sequences and 2 accumulation steps") {
		t.Errorf("warnings %q", warns)
	}
	got, err := os.ReadFile(filepath.Join(res.OutputDir, peft.WeightsName))
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(ref.OutputDir, peft.WeightsName))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("auto_find_batch_size 8 -> 4 differs from a 4 x 2 run")
	}

	j, err = finetune.NewJob(context.Background(), job("fail", 8, 1, false), finetune.JobOptions{NewBackend: limitFactory(limit, &b)})
	if err != nil {
		t.Fatal(err)
	}
	_, err = finetune.Train(context.Background(), j, nil)
	if !errors.Is(err, finetune.ErrOutOfMemory) || !errors.Is(err, ErrOutOfMemory) || !strings.Contains(err.Error(), "auto_find_batch_size") {
		t.Errorf("without auto_find_batch_size: %v", err)
	}
	t.Logf("as expected: %v", err)
}
