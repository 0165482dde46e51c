// Package optim is the reference math of the optimizers, learning-rate
// schedules and gradient clipping that fine-tuning uses, on []float32:
//
//   - AdamW: torch.optim.AdamW (decoupled weight decay, bias correction),
//     the optimizer named adamw_torch;
//   - AdamW8bit: bitsandbytes' blockwise 8-bit AdamW
//     (optimizer_update_8bit_blockwise, kernel
//     kOptimizerStatic8bit2StateBlockwise), named adamw_8bit and
//     paged_adamw_8bit (paging moves the state between host and GPU memory;
//     the numbers are the same); parameters with fewer than 4096 values keep
//     32-bit state and take bitsandbytes' 32-bit Adam kernel (BnbAdam32);
//   - the schedules of transformers' get_scheduler and
//     torch.nn.utils.clip_grad_norm_'s scale.
//
// The CPU backend calls these functions; the CUDA kernels mirror them
// operation for operation. Each float32 operation is written as its own
// rounding (explicit float32 conversions keep the Go compiler from fusing
// multiply-adds), and where PyTorch's kernels fuse one (lerp, addcmul in
// AdamW) it is an explicit fma32, so a kernel that uses __fmaf_rn there and
// __fmul_rn/__fadd_rn/__fdiv_rn elsewhere reproduces them bit for bit.
// AdamW is bit-identical to torch 2.11's CPU AdamW. bitsandbytes is
// compiled with contraction and uses __powf and __fdividef, so AdamW8bit
// and BnbAdam32 agree with it to a few ulps, not bitwise.
package optim

import (
	"fmt"
	"strings"
)

// Params are one update's hyper-parameters. They are float64 because
// torch keeps them as Python floats and computes the bias corrections in
// double precision; bitsandbytes rounds them to float32 (ctypes c_float),
// which AdamW8bit does too.
type Params struct {
	LR, Beta1, Beta2, Eps, WeightDecay float64
	Step                               int // 1-based: the count of updates including this one
}

func (hp Params) check() error {
	if hp.Step < 1 {
		return fmt.Errorf("optim: step %d: the first update is step 1", hp.Step)
	}
	return nil
}

// Kind is an optimizer that a training config can name.
type Kind int

const (
	KindAdamWTorch     Kind = iota // "adamw_torch": torch.optim.AdamW, fp32 moments
	KindAdamW8bit                  // "adamw_8bit": bitsandbytes AdamW, 8-bit blockwise moments
	KindPagedAdamW8bit             // "paged_adamw_8bit": the same numbers, paged state memory
)

var kindNames = []string{"adamw_torch", "adamw_8bit", "paged_adamw_8bit"}

func (k Kind) String() string {
	if k >= 0 && int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Is8bit reports whether the optimizer keeps 8-bit moments (for
// parameters large enough; see Uses8bit).
func (k Kind) Is8bit() bool { return k == KindAdamW8bit || k == KindPagedAdamW8bit }

// ParseOptimizer maps a config's optimizer name (transformers'
// TrainingArguments.optim spelling) to a Kind.
func ParseOptimizer(name string) (Kind, error) {
	for i, n := range kindNames {
		if name == n {
			return Kind(i), nil
		}
	}
	return 0, fmt.Errorf("optimizer %q is not supported; use one of %s", name, strings.Join(kindNames, ", "))
}

// BlockSize8bit is the number of values that share one absmax in the 8-bit
// optimizer state (bitsandbytes' blocksize for blockwise optimizers).
const BlockSize8bit = 256

// Min8bitSize is bitsandbytes' min_8bit_size: smaller parameters keep
// 32-bit state even under an 8-bit optimizer.
const Min8bitSize = 4096

// Uses8bit reports whether a parameter of numel values gets 8-bit state
// under adamw_8bit / paged_adamw_8bit.
func Uses8bit(numel int) bool { return numel >= Min8bitSize }

// Blocks8bit is the number of absmax values per moment for numel values.
func Blocks8bit(numel int) int { return (numel + BlockSize8bit - 1) / BlockSize8bit }
