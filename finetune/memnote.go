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
// Where neither fits, training.gradient_checkpointing_keep_gb can keep
// every qkv_proj and gate_up_proj output checkpointing would recompute
// (1.6 GB for the tutorial's Phi-3-mini step: all of them on the device,
// none through host memory; 0.0475 against 0.0533 s a step on an H100,
// v16).
//
// It offers the fastest combination whose estimate (makePlan) fits in
// the free memory with room to spare (a tenth of it, at least 2 GiB: the
// estimate leaves out the CUDA context and cuBLAS's workspace): both
// settings, else checkpointing off, else every activation kept, else the
// weights kept.
func memoryForSpeedNote(job *Job, cfg *Config, prep *prepared, plan TrainPlan, free int64) string {
	t, q := job.Config.Training, job.Config.Quantization
	keepGB := 0.0
	if q.LoadIn4bit && q.KeepDequantizedGB <= 0 {
		all, _ := dequantizedLinearBytes(cfg, q.ComputeDType(), job.Config.LoRA.R, expandedTargets(job.Config.LoRA.TargetModules), true)
		keepGB = math.Ceil(float64(all) / 1e9)
	}
	// All the outputs gradient_checkpointing_keep_gb can keep, in GB
	// rounded up to a tenth, where it keeps less now.
	actGB := 0.0
	if t.GradientCheckpointing {
		all := keepableActivationBytes(cfg, t.PerDeviceTrainBatchSize*longestSequence(prep), stashElemBytes(q.ComputeDType()))
		if all > int64(t.GradientCheckpointingKeepGB*1e9) {
			actGB = math.Ceil(float64(all)/1e8) / 10
		}
	}
	type option struct {
		noCkpt        bool
		keepGB, actGB float64
	}
	var opts []option
	if t.GradientCheckpointing {
		if keepGB > 0 {
			opts = append(opts, option{noCkpt: true, keepGB: keepGB})
		}
		opts = append(opts, option{noCkpt: true})
		if actGB > 0 {
			opts = append(opts, option{actGB: actGB})
		}
	}
	if keepGB > 0 {
		opts = append(opts, option{keepGB: keepGB})
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
		if o.actGB > 0 {
			alt.Config.Training.GradientCheckpointingKeepGB = o.actGB
			sets = append(sets, fmt.Sprintf("training.gradient_checkpointing_keep_gb=%g", o.actGB))
			why = append(why, "keeps qkv_proj's and gate_up_proj's outputs on the device instead of recomputing them in the backward")
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

// longestSequence is the most tokens a training sequence of prep has (what
// the plan sizes a micro-batch's buffers by).
func longestSequence(prep *prepared) int {
	n := 0
	for _, s := range prep.train {
		n = max(n, len(s.InputIDs))
	}
	return n
}
