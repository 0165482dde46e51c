//go:build cuda

// Command ollama-tune-bench-gpu measures the CUDA trainer at Phi-3-mini
// shapes (issue 8) and prints the table BENCHMARKS.md records:
//
//   - training: a synthetic Phi-3-mini (random weights drawn on the GPU,
//     NF4 with double quantization), LoRA r=8 alpha 16 dropout 0.05 on
//     qkv_proj, o_proj, gate_up_proj and down_proj, batches of 16 packed
//     rows of 64 tokens, the tutorial's schedule (8-bit AdamW, linear decay
//     from 3e-4 over 220 steps, gradients clipped to norm 1.0), with and
//     without gradient checkpointing; s/step is the mean over -steps steps
//     after -warmup steps, and the 220-step total is extrapolated from it;
//   - loading (-load DIR): a bf16 safetensors checkpoint read from the page
//     cache, uploaded as stored and quantized to NF4 on the GPU;
//   - -profile: one more step with every kernel timed by CUDA events.
//
// Results are appended as JSON lines to -out; scripts/bench/baseline_hf.py
// appends the transformers + peft baseline to the same file, and -table
// prints the comparison. scripts/bench-gpu.sh builds this command and
// prints how to run everything on a GPU machine.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ollama-tune/ollama-tune/cuda"
	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/optim"
)

// The tutorial's shapes and schedule (finetune.DefaultTrainConfig).
const (
	batchRows  = 16
	seqLen     = 64
	baseLR     = 3e-4
	maxNorm    = 1.0
	nParams    = 3.82e9 // Phi-3-mini's parameters, for MFU
	peakTFLOPS = 790.0  // bf16 dense on an H100 (issue 8's definition)
)

// result is one line of the results file (baseline_hf.py writes the same).
type result struct {
	Impl          string    `json:"impl"` // "ollama-tune" or "transformers+peft"
	Kind          string    `json:"kind"` // "train", "load" or "profile"
	Device        string    `json:"device"`
	Compute       string    `json:"compute,omitempty"`
	Kernels       string    `json:"kernels,omitempty"` // "fused" or "reference" (cuda.Options.ReferenceKernels)
	Ckpt          bool      `json:"ckpt"`
	KeepDeqGB     float64   `json:"keep_deq_gb,omitempty"`  // quantization.keep_dequantized_gb
	CkptKeepGB    float64   `json:"ckpt_keep_gb,omitempty"` // training.gradient_checkpointing_keep_gb
	Steps         int       `json:"steps,omitempty"`
	Warmup        int       `json:"warmup,omitempty"`
	TotalSteps    int       `json:"total_steps,omitempty"`
	TokensPerStep int       `json:"tokens_per_step,omitempty"`
	SPerStep      float64   `json:"s_per_step,omitempty"`
	SPerStepMed   float64   `json:"s_per_step_median,omitempty"`
	StepTimes     []float64 `json:"step_times,omitempty"`
	PeakGiB       float64   `json:"peak_gib,omitempty"`
	EstimateGiB   float64   `json:"estimate_gib,omitempty"` // the plan's estimate of the peak (finetune.EstimateGPUMemory)
	DeviceGiB     float64   `json:"device_gib,omitempty"`   // in use on the GPU (cuMemGetInfo / mem_get_info), context included
	LoadS         float64   `json:"load_s,omitempty"`
	LoadGB        float64   `json:"load_gb,omitempty"`
	SetupS        float64   `json:"setup_s,omitempty"` // building the synthetic model
	Losses        []float64 `json:"losses,omitempty"`
	GradNorms     []float64 `json:"grad_norms,omitempty"`
	Profile       []profRow `json:"profile,omitempty"`
	SMClockMHz    float64   `json:"sm_clock_mhz,omitempty"`  // the timed steps' mean SM clock (NVML)
	PowerW        float64   `json:"power_w,omitempty"`       // their mean board power
	PowerCapPct   float64   `json:"power_cap_pct,omitempty"` // the share of samples at the software power cap
	JPerStep      float64   `json:"j_per_step,omitempty"`    // the board's energy a timed step (NVML's counter)
	BusyMs        float64   `json:"busy_ms,omitempty"`
	WallMs        float64   `json:"wall_ms,omitempty"`
	Note          string    `json:"note,omitempty"`
}

type profRow struct {
	Name  string  `json:"name"`
	Calls int     `json:"calls"`
	Ms    float64 `json:"ms"`
}

func main() {
	steps := flag.Int("steps", 20, "timed training steps per run")
	warmup := flag.Int("warmup", 3, "untimed steps before them")
	total := flag.Int("total", 220, "steps of the tutorial run (the schedule's length; totals are extrapolated to it)")
	ckptFlag := flag.String("ckpt", "on,off", "gradient checkpointing settings to run: on, off or on,off (none: no training, with -load)")
	compute := flag.String("compute", "bf16", "compute dtype: bf16, f16 or f32")
	load := flag.String("load", "", "also time loading this checkpoint directory (bf16 safetensors) with NF4 quantization")
	profile := flag.Bool("profile", false, "profile one extra step of each run, kernel by kernel")
	out := flag.String("out", "", "append the results as JSON lines to this file")
	table := flag.String("table", "", "print the comparison table of a results file and exit")
	seed := flag.Uint64("seed", 42, "seed of the weights, the adapter and the batch")
	reference := flag.Bool("reference", false, "run the reference kernels (cuda.Options.ReferenceKernels), for A/B comparisons")
	firstSteps := flag.Bool("first-steps", false, "with -load: time the loaded model's first three steps (forward and backward), with a step rehearsed beside the load unless OLLAMA_TUNE_CUDA_REFERENCE=rehearse")
	keepDeq := flag.Float64("keep-deq-gb", 0, "keep up to this many GB of dequantized weights (quantization.keep_dequantized_gb)")
	flag.BoolVar(&useTF32, "tf32", false, "float32 GEMMs on TF32 tensor cores (training.tf32; matters under -compute f32)")
	keepAct := flag.Float64("ckpt-keep-gb", 0, "with checkpointing, keep up to this many GB of activations instead of recomputing them (training.gradient_checkpointing_keep_gb)")
	flag.Parse()
	if *table != "" {
		if err := printTable(os.Stdout, *table, *total); err != nil {
			fatal(err)
		}
		return
	}
	dt := finetune.BF16
	switch *compute {
	case "bf16":
	case "f32", "float32":
		dt = finetune.F32
	case "f16", "float16":
		dt = finetune.F16
	default:
		fatal(fmt.Errorf("-compute %q: use bf16, f16 or f32", *compute))
	}
	var results []result
	emit := func(r result) {
		results = append(results, r)
		if *out == "" {
			return
		}
		if err := appendJSON(*out, r); err != nil {
			fatal(err)
		}
	}
	if *load != "" {
		r, err := benchLoad(*load, dt, *reference, *firstSteps)
		if err != nil {
			fmt.Fprintln(os.Stderr, "load benchmark:", err)
		} else {
			emit(r)
		}
	}
	for _, c := range strings.Split(*ckptFlag, ",") {
		if strings.TrimSpace(c) == "none" { // -load alone
			break
		}
		var ckpt bool
		switch strings.TrimSpace(c) {
		case "on":
			ckpt = true
		case "off":
		default:
			fatal(fmt.Errorf("-ckpt %q: use on, off or on,off", *ckptFlag))
		}
		tr, prof, err := benchTrain(dt, ckpt, *reference, *steps, *warmup, *total, *seed, *profile, *keepDeq, *keepAct)
		if err != nil {
			fmt.Fprintf(os.Stderr, "training benchmark (checkpointing %v): %v\n", ckpt, err)
			continue
		}
		emit(tr)
		if prof != nil {
			emit(*prof)
		}
	}
	if *out == "" {
		f, err := os.CreateTemp("", "bench-*.jsonl")
		if err != nil {
			fatal(err)
		}
		defer os.Remove(f.Name())
		f.Close()
		for _, r := range results {
			appendJSON(f.Name(), r)
		}
		printTable(os.Stdout, f.Name(), *total)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "ollama-tune-bench-gpu:", err)
	os.Exit(1)
}

func appendJSON(path string, r result) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if err := json.NewEncoder(f).Encode(r); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

func gib(n int64) float64 { return float64(n) / (1 << 30) }

func tutorialLoRA(seed uint64) *finetune.LoRAConfig {
	return &finetune.LoRAConfig{R: 8, Alpha: 16, Dropout: 0.05, Bias: "none", Seed: seed,
		TargetModules: []string{"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}}
}

// benchLoad times LoadCheckpoint + LoadModel (NF4, double quantization)
// of dir, from the page cache.
func benchLoad(dir string, dt finetune.DType, reference, firstSteps bool) (result, error) {
	var bytes int64
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".safetensors") {
				if fi, err := e.Info(); err == nil {
					bytes += fi.Size()
				}
			}
		}
	}
	b, err := cuda.New(cuda.Options{ComputeDType: dt, ReferenceKernels: reference})
	if err != nil {
		return result{}, err
	}
	defer b.Close()
	if err := b.Sync(); err != nil {
		return result{}, err
	}
	start := time.Now()
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		return result{}, err
	}
	defer ck.Close()
	mo := finetune.ModelOptions{Quantize: true, DoubleQuant: true, LoRA: tutorialLoRA(1), GradientCheckpointing: true}
	rehearsed := func() string { return "" }
	if firstSteps {
		// As the trainer does: a step rehearsed beside the load.
		rehearsed = b.RehearseStep(ck.Config, mo, batchRows, seqLen, 4<<30)
	}
	m, err := b.LoadModel(ck, mo)
	if err != nil {
		return result{}, err
	}
	if err := b.Sync(); err != nil {
		return result{}, err
	}
	secs := time.Since(start).Seconds()
	_, peak := b.Allocated()
	defer m.Free()
	if firstSteps {
		// The first steps' times (forward and backward, synchronised):
		// the first pays cuBLAS's first calls unless a rehearsal did.
		t0 := time.Now()
		msg := rehearsed()
		waited := time.Since(t0).Seconds()
		batch := syntheticBatch(ck.Config.VocabSize, 1)
		var times []string
		for k := range 3 {
			t0 := time.Now()
			m.ZeroGrads()
			if _, _, _, err := m.Forward(batch, true, uint64(k)); err != nil {
				return result{}, err
			}
			if err := m.Backward(); err != nil {
				return result{}, err
			}
			if err := b.Sync(); err != nil {
				return result{}, err
			}
			times = append(times, fmt.Sprintf("%.3f", time.Since(t0).Seconds()))
		}
		fmt.Printf("first steps: %s s (forward + backward); waited %.3f s for the rehearsal: %s\n", strings.Join(times, ", "), waited, msg)
	}
	r := result{Impl: "ollama-tune", Kind: "load", Device: deviceName(b), Compute: dt.String(), LoadS: secs, LoadGB: float64(bytes) / 1e9,
		PeakGiB: gib(peak), Note: fmt.Sprintf("LoadCheckpoint + cuda LoadModel (bf16 bytes uploaded, NF4 double quant on the GPU) of %s, %.2f GB, page cache", dir, float64(bytes)/1e9)}
	fmt.Printf("load: %.2f GB in %.2f s (%.1f GB/s), backend peak %.2f GiB; %s\n", float64(bytes)/1e9, secs, float64(bytes)/1e9/secs, gib(peak), b.LoadTimes())
	return r, nil
}

func kernelsName(b *cuda.Backend) string {
	switch lora, attn := b.FastPaths(); {
	case lora && attn && b.TensorCoreLoRA():
		return "fused, LoRA on tensor cores"
	case lora && attn:
		return "fused"
	case lora:
		return "fused LoRA, reference attention"
	case attn:
		return "reference LoRA, fused attention"
	}
	return "reference"
}

func deviceName(b *cuda.Backend) string {
	i := b.Info()
	return fmt.Sprintf("%s (%s; kernels: %s; cuBLASLt pins: %s)", i.Name, i.Detail(), b.KernelCode(), i.CublasLtPins)
}

// syntheticBatch is 16 rows of 64 tokens packing examples of varied
// lengths (position ids restart at each), every token a label.
func syntheticBatch(V int, seed uint64) *finetune.Batch {
	lens := []int{23, 41, 17, 64, 30, 9, 52, 35, 12, 47}
	T := batchRows * seqLen
	b := &finetune.Batch{B: batchRows, S: seqLen, InputIDs: make([]int32, T), PositionIDs: make([]int32, T), Labels: make([]int32, T)}
	k := 0
	for r := 0; r < batchRows; r++ {
		p, n := 0, lens[k%len(lens)]
		for s := 0; s < seqLen; s++ {
			if p == n {
				k++
				p, n = 0, lens[k%len(lens)]
			}
			t := r*seqLen + s
			b.InputIDs[t] = int32(finetune.Mix64(seed^uint64(t)) % uint64(min(V, 32000)))
			b.Labels[t] = b.InputIDs[t]
			b.PositionIDs[t] = int32(p)
			p++
		}
		k++
	}
	return b
}

// useTF32 is -tf32: the training runs' float32 GEMMs on TF32 tensor cores.
var useTF32 bool

// computeName names a run's compute: the dtype, and TF32 where -tf32 is on.
func computeName(dt finetune.DType) string {
	if useTF32 {
		return dt.String() + " (TF32)"
	}
	return dt.String()
}

// benchJob is the trainer's configuration of a run: the seed's job
// (NF4 with double quantization, LoRA r=8 on the four modules,
// paged_adamw_8bit) with the run's compute type, TF32, checkpointing and
// keep options.
func benchJob(dt finetune.DType, ckpt bool, keepDeqGB, keepActGB float64) finetune.TrainConfig {
	tc := finetune.DefaultTrainConfig()
	tc.Quantization.Bnb4bitComputeDType = dt.String()
	tc.Quantization.KeepDequantizedGB = keepDeqGB
	tc.Training.GradientCheckpointing = ckpt
	tc.Training.GradientCheckpointingKeepGB = keepActGB
	tf32 := useTF32
	tc.Training.TF32 = &tf32
	return tc
}

// benchTrain runs warmup+steps optimizer steps of the tutorial schedule.
func benchTrain(dt finetune.DType, ckpt, reference bool, steps, warmup, total int, seed uint64, profile bool, keepDeqGB, keepActGB float64) (res result, prof *result, err error) {
	defer cuda.Recover(&err)
	b, err := cuda.New(cuda.Options{ComputeDType: dt, ReferenceKernels: reference, TF32: useTF32})
	if err != nil {
		return res, nil, err
	}
	defer b.Close()
	b.KeepDequantized(int64(keepDeqGB * 1e9))
	free0, _, err := b.MemInfo()
	if err != nil {
		return res, nil, err
	}
	cfg := finetune.Phi3Mini4k()
	start := time.Now()
	m, err := b.RandomModel(cfg, seed, finetune.ModelOptions{Quantize: true, DoubleQuant: true, LoRA: tutorialLoRA(seed), GradientCheckpointing: ckpt})
	if err != nil {
		return res, nil, err
	}
	defer m.Free()
	if ckpt && keepActGB > 0 {
		// As the trainer does (training.gradient_checkpointing_keep_gb),
		// the stash told what a step offers, so that a budget for all of
		// it keeps it all on the device.
		m.CheckpointKeepBytes = int64(keepActGB * 1e9)
		b.PrepareStash(m.CheckpointKeepBytes, finetune.StashSizes(b, cfg, tutorialLoRA(seed), batchRows, seqLen))
		if os.Getenv("OLLAMA_TUNE_BENCH_EMBED") != "device" {
			if err := b.MoveToHost(m.Embed); err != nil {
				return res, nil, err
			}
		}
	}
	if err := b.Sync(); err != nil {
		return res, nil, err
	}
	setup := time.Since(start).Seconds()
	b.FreeScratch()
	b.ResetPeak()
	params := m.LoRAParams()
	grads := make([]finetune.Tensor, len(params))
	states := make([]*finetune.Adam8State, len(params))
	moments := make([][2]finetune.Tensor, len(params))
	for k, p := range params {
		grads[k] = p.Grad
		n := p.Numel()
		if optim.Uses8bit(n) {
			nb := optim.Blocks8bit(n)
			states[k] = &finetune.Adam8State{M: b.AllocBytes(n), V: b.AllocBytes(n), AbsmaxM: b.Alloc(nb), AbsmaxV: b.Alloc(nb)}
		} else {
			moments[k] = [2]finetune.Tensor{b.Alloc(p.Shape...), b.Alloc(p.Shape...)}
		}
	}
	batch := syntheticBatch(cfg.VocabSize, seed)
	res = result{Impl: "ollama-tune", Kind: "train", Device: deviceName(b), Compute: computeName(dt), Kernels: kernelsName(b), Ckpt: ckpt, KeepDeqGB: keepDeqGB, CkptKeepGB: keepActGB, Steps: steps, Warmup: warmup,
		TotalSteps: total, TokensPerStep: batchRows * seqLen, SetupS: setup,
		Note: "synthetic Phi-3-mini drawn on the GPU, NF4 double quant, LoRA r=8 on 4 modules, paged_adamw_8bit (bitsandbytes 8-bit AdamW), linear lr 3e-4, clip 1.0"}
	minFree := free0
	// hostS is the last step's host time up to its final Sync: the
	// enqueueing (and the loss's download, which waits for the forward).
	// Near the step's time, the host, not the GPU, sets the pace.
	// fwdS is the time to the forward's loss (the GPU's forward, as the
	// loss's download waits for it).
	var hostS, fwdS float64
	step := func(g int) (float64, error) {
		t0 := time.Now()
		m.ZeroGrads()
		loss, _, _, err := m.Forward(batch, true, finetune.DeriveSeed(seed, uint64(g), 0))
		if err != nil {
			return 0, err
		}
		fwdS = time.Since(t0).Seconds()
		if err := m.Backward(); err != nil {
			return 0, err
		}
		b.ClipGradNorm(grads, maxNorm)
		lr := baseLR * float64(max(0, total-g)) / float64(total)
		hp := finetune.AdamParams{LR: float32(lr), Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0, Step: g + 1}
		// As the trainer's optimizer does: the 8-bit states in one
		// launch (finetune.MultiAdamW8bit), the rest one by one.
		var ps8, gs8 []finetune.Tensor
		var sts8 []*finetune.Adam8State
		for k, p := range params {
			if states[k] != nil {
				ps8, gs8, sts8 = append(ps8, p.Param), append(gs8, p.Grad), append(sts8, states[k])
			} else {
				b.AdamW(p.Param, p.Grad, moments[k][0], moments[k][1], hp)
			}
		}
		b.AdamW8bitMulti(ps8, gs8, sts8, hp)
		hostS = time.Since(t0).Seconds()
		if err := b.Sync(); err != nil {
			return 0, err
		}
		secs := time.Since(t0).Seconds()
		norm, err := b.GradNorm()
		if err != nil {
			return 0, err
		}
		if math.IsNaN(loss) || math.IsNaN(norm) {
			return 0, fmt.Errorf("step %d: loss %v, grad norm %v", g+1, loss, norm)
		}
		res.Losses = append(res.Losses, loss)
		res.GradNorms = append(res.GradNorms, norm)
		if free, _, err := b.MemInfo(); err == nil {
			minFree = min(minFree, free)
		}
		return secs, nil
	}
	var power *cuda.PowerSampler
	for g := 0; g < warmup+steps; g++ {
		if g == warmup {
			if _, _, _, err := b.MainStreamWaits(); err != nil { // from the timed steps on (OLLAMA_TUNE_CUDA_WAITS=1)
				return res, nil, err
			}
			// The clock and power of the timed steps (v22: the board
			// reaches its power cap within a second and the clock
			// follows). Without NVML the rows say nothing of it.
			if power, err = b.StartPowerSampling(20 * time.Millisecond); err != nil {
				fmt.Fprintf(os.Stderr, "no clock samples: %v\n", err)
			}
		}
		// OLLAMA_TUNE_BENCH_PPROF=file: a CPU profile of the first step
		// (10 kHz), to see where its extra time goes (allocations, first
		// launches, cuBLAS's first calls).
		var pf *os.File
		if path := os.Getenv("OLLAMA_TUNE_BENCH_PPROF"); path != "" && g == 0 {
			if pf, err = os.Create(path); err != nil {
				return res, nil, err
			}
			runtime.SetCPUProfileRate(10000)
			if err := pprof.StartCPUProfile(pf); err != nil {
				return res, nil, err
			}
		}
		// OLLAMA_TUNE_BENCH_PROFILE_FIRST=1: the per-kernel profile of the
		// first step (its spans include what a launch waits for: a
		// kernel's first load, say), printed like the others.
		firstProf := g == 0 && os.Getenv("OLLAMA_TUNE_BENCH_PROFILE_FIRST") == "1"
		if firstProf {
			b.StartProfile()
		}
		secs, err := step(g)
		if pf != nil {
			pprof.StopCPUProfile()
			pf.Close()
		}
		if firstProf && err == nil {
			p, perr := b.StopProfile()
			if perr != nil {
				return res, nil, perr
			}
			fp := result{Impl: "ollama-tune", Kind: "profile-first", Device: deviceName(b), Compute: computeName(dt), Kernels: kernelsName(b), Ckpt: ckpt, BusyMs: p.BusyMs, WallMs: p.WallMs}
			for _, e := range p.Entries {
				fp.Profile = append(fp.Profile, profRow{Name: e.Name, Calls: e.Calls, Ms: e.Ms})
			}
			printProfile(os.Stdout, fp)
		}
		if err != nil {
			return res, nil, err
		}
		if g >= warmup {
			res.StepTimes = append(res.StepTimes, secs)
		}
		fmt.Printf("ckpt %-5v step %3d: %.4f s (forward %.4f s, host done %.4f s), loss %.4f, grad norm %.4f\n", ckpt, g+1, secs, fwdS, hostS, res.Losses[g], res.GradNorms[g])
	}
	var clocks string
	if power != nil {
		ps := power.Stop()
		res.SMClockMHz, res.PowerW, res.PowerCapPct = ps.MeanSMMHz, ps.MeanPowerW, 100*ps.CappedFrac
		res.JPerStep = ps.EnergyJ / float64(steps)
		clocks = fmt.Sprintf("; %s, %.2f J a step", ps, res.JPerStep)
	}
	var sum float64
	for _, s := range res.StepTimes {
		sum += s
	}
	res.SPerStep = sum / float64(len(res.StepTimes))
	sorted := slices.Clone(res.StepTimes)
	sort.Float64s(sorted)
	res.SPerStepMed = sorted[len(sorted)/2]
	_, peak := b.Allocated()
	res.PeakGiB = gib(peak)
	res.DeviceGiB = gib(free0 - minFree)
	if est, err := finetune.EstimateGPUMemory(cfg, benchJob(dt, ckpt, keepDeqGB, keepActGB), batchRows, seqLen); err == nil {
		res.EstimateGiB = gib(est)
	}
	fmt.Printf("ckpt %v: %s %s kernels: %.4f s/step (median %.4f), %.0f tokens/s, setup %.1f s, backend peak %.2f GiB (the plan's estimate %.2f), device in use %.2f GiB%s\n",
		ckpt, res.Compute, res.Kernels, res.SPerStep, res.SPerStepMed, float64(res.TokensPerStep)/res.SPerStep, setup, res.PeakGiB, res.EstimateGiB, res.DeviceGiB, clocks)
	if n, ms, byShape, err := b.MainStreamWaits(); err != nil {
		return res, nil, err
	} else if n > 0 {
		steps := float64(len(res.StepTimes))
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(byShape)) {
			parts = append(parts, fmt.Sprintf("%s %.3f", k, byShape[k]/steps))
		}
		fmt.Printf("ckpt %v: the main stream waited for the prefetch stream's dequantizations %.3f ms a step (%d waits a step; by weight, ms: %s)\n",
			ckpt, ms/steps, n/len(res.StepTimes), strings.Join(parts, ", "))
	}
	if mm := b.MemoryAtPeak(); mm != "" {
		fmt.Fprint(os.Stderr, mm) // OLLAMA_TUNE_CUDA_MEMMAP
	}
	if !profile {
		return res, nil, nil
	}
	b.StartProfile()
	if _, err := step(warmup + steps); err != nil {
		return res, nil, err
	}
	p, err := b.StopProfile()
	if err != nil {
		return res, nil, err
	}
	pr := result{Impl: "ollama-tune", Kind: "profile", Device: res.Device, Compute: res.Compute, Kernels: res.Kernels, Ckpt: ckpt, BusyMs: p.BusyMs, WallMs: p.WallMs}
	for _, e := range p.Entries {
		pr.Profile = append(pr.Profile, profRow{Name: e.Name, Calls: e.Calls, Ms: e.Ms})
	}
	printProfile(os.Stdout, pr)
	return res, &pr, nil
}

// category groups the profile's names for the notes.
func category(name string) string {
	switch {
	case strings.HasPrefix(name, "gemm ") && loraShape(name):
		return "LoRA GEMMs (" + gemmType(name) + ", cuBLAS)"
	case strings.HasPrefix(name, "gemm "):
		return "base GEMMs (" + gemmType(name) + ", cuBLAS)"
	case strings.HasPrefix(name, "skinny bf16"):
		return "LoRA GEMMs (bf16, skinny kernels)"
	case strings.HasPrefix(name, "nf4_dequant"):
		return "NF4 dequantization"
	case strings.HasPrefix(name, "attn_"):
		return "attention"
	case name == "ce_rows" || name == "gather_rows" || name == "scatter_add_rows":
		return "cross-entropy (softmax, gather/scatter)"
	case strings.HasPrefix(name, "lora_"):
		return "LoRA (fused kernels)"
	case strings.HasPrefix(name, "f32_to_bf16"):
		return "fp32 -> bf16 casts of GEMM inputs"
	case strings.HasPrefix(name, "f32_to_f16"):
		return "fp32 -> f16 casts of GEMM inputs"
	case strings.HasPrefix(name, "adamw") || strings.HasPrefix(name, "sumsq_multi") || name == "clip_finish" || strings.HasPrefix(name, "scale_multi"):
		return "optimizer and clipping"
	case name == "memset" || name == "memcpy":
		return "memset / memcpy"
	case strings.HasPrefix(name, "dropout"):
		return "LoRA dropout"
	}
	return "norms, RoPE, SwiGLU, adds, embedding"
}

// gemmType is a "gemm T MxNxK ..." span's operand type, as the categories
// name it (fp32 for f32).
func gemmType(name string) string {
	f := strings.Fields(name)
	if len(f) < 2 {
		return "?"
	}
	t, _, _ := strings.Cut(f[1], "->")
	if t == "f32" {
		return "fp32"
	}
	return t
}

// loraShape says whether a "gemm T MxNxK ..." span (a batched one ends in
// " xN", a pinned one in " pinned") is a LoRA product: one of its
// dimensions is a rank (at most 16), where the base GEMMs' are all model
// widths or token counts.
func loraShape(name string) bool {
	f := strings.Fields(name)
	if len(f) < 3 {
		return false
	}
	for _, d := range strings.Split(f[2], "x") {
		if n, err := strconv.Atoi(d); err == nil && n <= 16 {
			return true
		}
	}
	return false
}

func printProfile(w io.Writer, p result) {
	fmt.Fprintf(w, "\nprofile, %s %s kernels, checkpointing %v: GPU busy %.1f ms of %.1f ms (%.0f%%)\n", p.Compute, p.Kernels, p.Ckpt, p.BusyMs, p.WallMs, 100*p.BusyMs/max(p.WallMs, 1e-9))
	cats := map[string]float64{}
	calls := map[string]int{}
	for _, e := range p.Profile {
		cats[category(e.Name)] += e.Ms
		calls[category(e.Name)] += e.Calls
	}
	names := make([]string, 0, len(cats))
	for c := range cats {
		names = append(names, c)
	}
	sort.Slice(names, func(i, j int) bool { return cats[names[i]] > cats[names[j]] })
	for _, c := range names {
		fmt.Fprintf(w, "  %-42s %8.2f ms  %5d calls\n", c, cats[c], calls[c])
	}
	fmt.Fprintln(w, "  top kernels:")
	for k, e := range p.Profile {
		if k == 25 {
			break
		}
		fmt.Fprintf(w, "    %-44s %8.2f ms  %5d calls\n", e.Name, e.Ms, e.Calls)
	}
}

// printTable prints the markdown comparison of a results file.
func printTable(w io.Writer, path string, total int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var rs []result
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var r result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		rs = append(rs, r)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	loads := map[string]result{}
	// The baseline rows, by checkpointing and compute ("bfloat16",
	// "float32", "float32 (TF32)"): each of ours is compared with the
	// baseline of its own compute.
	type baseKey struct {
		ckpt    bool
		compute string
	}
	base := map[baseKey]result{}
	var device string
	for _, r := range rs {
		switch r.Kind {
		case "load":
			loads[r.Impl] = r
		case "train":
			if r.Impl != "ollama-tune" {
				base[baseKey{r.Ckpt, r.Compute}] = r
			}
			if device == "" && r.Impl == "ollama-tune" {
				device = r.Device
			}
		}
	}
	if device == "" && len(rs) > 0 {
		device = rs[0].Device
	}
	fmt.Fprintf(w, "Phi-3-mini shapes, batch 16 x 64 tokens, LoRA r=8 on qkv/o/gate_up/down; %s. s/step: mean of the timed steps after warm-up; total: s/step x %d (extrapolated); MFU: 4 x %.2fe9 FLOPs per token at %.0f TFLOP/s.\n\n",
		device, total, nParams/1e9, peakTFLOPS)
	fmt.Fprintln(w, "| run | s/step | total s (220 steps, extrapolated) | tokens/s | MFU | peak GiB (the plan's estimate) | load+quantize s | speed-up vs baseline | SM clock MHz (at the power cap) |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	for _, r := range rs {
		if r.Kind != "train" || r.SPerStep <= 0 {
			continue
		}
		name := "ollama-tune, NF4 + " + r.Compute
		if r.Kernels != "" && r.Kernels != "fused" {
			name += " (" + r.Kernels + " kernels)"
		}
		if r.CkptKeepGB > 0 && r.Ckpt {
			name += fmt.Sprintf(", gradient_checkpointing_keep_gb %g", r.CkptKeepGB)
		}
		if r.KeepDeqGB > 0 {
			name += fmt.Sprintf(", keep_dequantized_gb %g", r.KeepDeqGB)
		}
		if r.Impl != "ollama-tune" {
			name = r.Impl + ", " + r.Compute + " base"
			if strings.HasPrefix(r.Compute, "float32") {
				name = r.Impl + ", float32 base and compute" + strings.TrimPrefix(r.Compute, "float32")
			}
		}
		if r.Ckpt {
			name += ", grad. checkpointing"
		} else {
			name += ", no checkpointing"
		}
		tps := float64(r.TokensPerStep) / r.SPerStep
		mfu := tps * 4 * nParams / (peakTFLOPS * 1e12)
		ld := "-"
		if l, ok := loads[r.Impl]; ok {
			ld = fmt.Sprintf("%.2f", l.LoadS)
		}
		ratio := "-"
		if bl, ok := base[baseKey{r.Ckpt, r.Compute}]; ok && bl.SPerStep > 0 {
			ratio = fmt.Sprintf("%.2fx", bl.SPerStep/r.SPerStep)
		}
		clock := "-"
		if r.SMClockMHz > 0 {
			clock = fmt.Sprintf("%.0f (%.0f%%)", r.SMClockMHz, r.PowerCapPct)
		}
		peak := fmt.Sprintf("%.2f", r.PeakGiB)
		if r.EstimateGiB > 0 {
			peak += fmt.Sprintf(" (plan %.2f)", r.EstimateGiB) // finetune.EstimateGPUMemory: a gap means the estimate needs its terms again
		}
		fmt.Fprintf(w, "| %s | %.4f | %.1f | %.0f | %.1f%% | %s | %s | %s | %s |\n", name, r.SPerStep, r.SPerStep*float64(total), tps, 100*mfu, peak, ld, ratio, clock)
	}
	for _, r := range rs {
		if r.Kind == "load" {
			fmt.Fprintf(w, "\nload, %s: %.2f s for %.2f GB (%s)", r.Impl, r.LoadS, r.LoadGB, r.Note)
		}
	}
	fmt.Fprintln(w)
	for _, r := range rs {
		if r.Kind == "profile" {
			printProfile(w, r)
		}
	}
	return nil
}
