package optim

import (
	"fmt"
	"math"
	"strings"
)

// Scheduler is a learning-rate schedule of transformers' get_scheduler.
// The rate for optimizer step s (0-based: the s-th update uses it) is
// baseLR * lambda(s), as torch's LambdaLR computes it.
type Scheduler int

const (
	Linear             Scheduler = iota // "linear": get_linear_schedule_with_warmup
	Cosine                              // "cosine": get_cosine_schedule_with_warmup (half a cycle)
	Constant                            // "constant": get_constant_schedule (ignores warmup, as transformers does)
	ConstantWithWarmup                  // "constant_with_warmup"
)

var schedulerNames = []string{"linear", "cosine", "constant", "constant_with_warmup"}

func (s Scheduler) String() string {
	if s >= 0 && int(s) < len(schedulerNames) {
		return schedulerNames[s]
	}
	return fmt.Sprintf("Scheduler(%d)", int(s))
}

// ParseScheduler maps a config's lr_scheduler_type to a Scheduler.
func ParseScheduler(name string) (Scheduler, error) {
	for i, n := range schedulerNames {
		if name == n {
			return Scheduler(i), nil
		}
	}
	return 0, fmt.Errorf("learning-rate scheduler %q is not supported; use one of %s", name, strings.Join(schedulerNames, ", "))
}

// LR is the learning rate of 0-based optimizer step `step` out of `total`,
// with `warmup` warm-up steps.
func (s Scheduler) LR(step, total, warmup int, baseLR float64) float64 {
	switch s {
	case Cosine:
		return CosineWithWarmup(step, total, warmup, baseLR)
	case Constant:
		return baseLR
	case ConstantWithWarmup:
		return ConstantWithWarmupLR(step, warmup, baseLR)
	default:
		return LinearWithWarmup(step, total, warmup, baseLR)
	}
}

// warmupFactor is step / max(1, warmup), the ramp all warm-up schedules share.
func warmupFactor(step, warmup int) float64 {
	return float64(step) / float64(max(1, warmup))
}

// LinearWithWarmup is transformers' get_linear_schedule_with_warmup:
// a ramp from 0 over the warm-up steps, then a straight line to 0 at total.
func LinearWithWarmup(step, total, warmup int, baseLR float64) float64 {
	if step < warmup {
		return baseLR * warmupFactor(step, warmup)
	}
	return baseLR * math.Max(0, float64(total-step)/float64(max(1, total-warmup)))
}

// CosineWithWarmup is transformers' get_cosine_schedule_with_warmup with
// num_cycles 0.5: after the ramp, 0.5*(1 + cos(pi*progress)).
func CosineWithWarmup(step, total, warmup int, baseLR float64) float64 {
	if step < warmup {
		return baseLR * warmupFactor(step, warmup)
	}
	progress := float64(step-warmup) / float64(max(1, total-warmup))
	return baseLR * math.Max(0, 0.5*(1+math.Cos(math.Pi*0.5*2*progress)))
}

// ConstantWithWarmupLR is transformers' get_constant_schedule_with_warmup.
func ConstantWithWarmupLR(step, warmup int, baseLR float64) float64 {
	if step < warmup {
		return baseLR * float64(step) / math.Max(1, float64(warmup))
	}
	return baseLR
}

// WarmupSteps is TrainingArguments.get_warmup_steps: warmupSteps when it
// is positive, else ceil(total * ratio) (in float64, as Python computes it:
// 100 * 0.07 is 7.000000000000001, so 8).
func WarmupSteps(total int, ratio float64, warmupSteps int) int {
	if warmupSteps > 0 {
		return warmupSteps
	}
	return int(math.Ceil(float64(total) * ratio))
}

// ClipScale is torch.nn.utils.clip_grad_norm_'s factor from the sum of
// squares of all gradients: norm = sqrt(sum), and the gradients are
// multiplied by min(1, maxNorm/(norm + 1e-6)), computed in float32 as torch
// does on the float32 norm. maxNorm <= 0 disables clipping (scale 1), as
// the Trainer does. A non-finite norm gives a non-finite scale, as in torch.
func ClipScale(totalNormSq float64, maxNorm float64) (norm float64, scale float32) {
	norm = math.Sqrt(totalNormSq)
	if maxNorm <= 0 {
		return norm, 1
	}
	coef := float32(maxNorm) / (float32(norm) + float32(1e-6))
	if coef > 1 {
		coef = 1
	}
	return norm, coef
}
