package finetune

import (
	"fmt"
	"math"
	"strings"
)

// MemoryReporter is a backend that knows how much of its device's memory
// is free (the CUDA backend: cuMemGetInfo). The trainer asks it once,
// before the load, for the memory-for-speed note (memoryForSpeedNote).
type MemoryReporter interface {
	MemInfo() (free, total int64, err error)
}

// memoryForSpeedNote says which of the job's memory-saving settings the
// device's free memory makes unnecessary, or "". Gradient checkpointing
// (the tutorial's, for GPUs of a few GiB) recomputes every layer's
// forward in the backward, about a quarter of a step's matrix products;
// NF4 dequantizes every weight twice a step unless
// quantization.keep_dequantized_gb keeps the dequantized copies. Neither
// changes the results (the CUDA backend's losses are the same bits either
// way, BENCHMARKS.md v22), only the memory: on an H200 the tutorial's
// step takes 0.049 s at 3.4 GiB, 0.037 s without checkpointing at 9.8
// GiB and 0.033 s with the weights kept too at 16.5 GiB (v23).
//
// It offers the fastest combination whose estimate (makePlan) fits in
// the free memory with room to spare (a tenth of it, at least 2 GiB: the
// estimate leaves out the CUDA context and cuBLAS's workspace): both
// settings, else checkpointing off, else the weights kept.
func memoryForSpeedNote(job *Job, cfg *Config, prep *prepared, plan TrainPlan, free int64) string {
	t, q := job.Config.Training, job.Config.Quantization
	keepGB := 0.0
	if q.LoadIn4bit && q.KeepDequantizedGB <= 0 {
		keepGB = math.Ceil(float64(dequantizedBytes(cfg, q.ComputeDType())) / 1e9)
	}
	type option struct {
		noCkpt bool
		keepGB float64
	}
	var opts []option
	switch {
	case t.GradientCheckpointing && keepGB > 0:
		opts = []option{{true, keepGB}, {true, 0}, {false, keepGB}}
	case t.GradientCheckpointing:
		opts = []option{{true, 0}}
	case keepGB > 0:
		opts = []option{{false, keepGB}}
	}
	margin := max(int64(2)<<30, free/10)
	for _, o := range opts {
		alt := *job
		var sets, why []string
		if o.noCkpt {
			alt.Config.Training.GradientCheckpointing = false
			sets = append(sets, "training.gradient_checkpointing=false")
			why = append(why, "keeps every layer's activations instead of recomputing the forward in the backward")
		}
		if o.keepGB > 0 {
			alt.Config.Quantization.KeepDequantizedGB = o.keepGB
			sets = append(sets, fmt.Sprintf("quantization.keep_dequantized_gb=%g", o.keepGB))
			why = append(why, "keeps the dequantized weights instead of dequantizing the NF4 ones twice a step")
		}
		ap, err := makePlan(&alt, cfg, prep)
		if err != nil || ap.EstimatedBytes+margin > free {
			continue
		}
		gib := func(n int64) float64 { return float64(n) / (1 << 30) }
		return fmt.Sprintf("note: the device has %.1f GiB free; --set %s would use about %.1f GiB instead of %.1f and take less time "+
			"a step, with the same results (it %s); the seed's settings are for GPUs of a few GiB",
			gib(free), strings.Join(sets, " --set "), gib(ap.EstimatedBytes), gib(plan.EstimatedBytes), strings.Join(why, ", and "))
	}
	return ""
}

// dequantizedBytes is what keeping every decoder linear's dequantized
// weight takes in compute type dt (float32: 4 bytes a value, else 2), the
// plan's KeptBytes at most.
func dequantizedBytes(cfg *Config, dt DType) int64 {
	elem := int64(2)
	if dt == F32 {
		elem = 4
	}
	var all int64
	for _, m := range LinearModules {
		out, in := LinearShape(cfg, m)
		all += elem * int64(out) * int64(in) * int64(cfg.NumLayers)
	}
	return all
}
