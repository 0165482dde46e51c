package finetune

import (
	"errors"
	"fmt"
	"math"
	"strings"
)

// TrainConfig is the whole fine-tuning job. Keys keep the names of the
// Hugging Face stack the seed notebook used (BitsAndBytesConfig, LoraConfig,
// SFTConfig), grouped; cmd/ollama-tune fills it with viper from a YAML file,
// OLLAMA_TUNE_* environment variables and flags. Validate says what is wrong
// with a key and what is allowed.
type TrainConfig struct {
	Model        string             `mapstructure:"model" json:"model" yaml:"model"`
	Quantization QuantizationConfig `mapstructure:"quantization" json:"quantization" yaml:"quantization"`
	LoRA         LoRASettings       `mapstructure:"lora" json:"lora" yaml:"lora"`
	Dataset      DatasetConfig      `mapstructure:"dataset" json:"dataset" yaml:"dataset"`
	Training     TrainingArgs       `mapstructure:"training" json:"training" yaml:"training"`
	Device       string             `mapstructure:"device" json:"device" yaml:"device"`
}

// QuantizationConfig mirrors transformers' BitsAndBytesConfig.
type QuantizationConfig struct {
	LoadIn4bit            bool   `mapstructure:"load_in_4bit" json:"load_in_4bit" yaml:"load_in_4bit"`
	Bnb4bitQuantType      string `mapstructure:"bnb_4bit_quant_type" json:"bnb_4bit_quant_type" yaml:"bnb_4bit_quant_type"`
	Bnb4bitUseDoubleQuant bool   `mapstructure:"bnb_4bit_use_double_quant" json:"bnb_4bit_use_double_quant" yaml:"bnb_4bit_use_double_quant"`
	Bnb4bitComputeDType   string `mapstructure:"bnb_4bit_compute_dtype" json:"bnb_4bit_compute_dtype" yaml:"bnb_4bit_compute_dtype"`
	// KeepGGUF trains on a GGUF base (model: ollama://NAME) with its linear
	// layers kept in the file's own quantization, dequantized a few rows at
	// a time as the matmuls need them, instead of re-quantized to NF4
	// (load_in_4bit) or expanded to the compute dtype. Not a
	// BitsAndBytesConfig key; it excludes load_in_4bit.
	KeepGGUF bool `mapstructure:"keep_gguf" json:"keep_gguf,omitempty" yaml:"keep_gguf"`
	// KeepDequantizedGB trades GPU memory for speed: up to this many GB
	// (1e9 bytes) of the NF4 weights stay dequantized to the compute dtype
	// on the GPU for the whole run, so that the steps do not dequantize
	// them again (the same results: the values are those each step would
	// compute). 0, the default, keeps none; Phi-3-mini's decoder takes 7.4
	// GB in bfloat16. The CUDA backend keeps what fits, leaving 1 GiB of
	// the GPU free; the CPU backend has nothing to keep. Not a
	// BitsAndBytesConfig key; it needs load_in_4bit.
	KeepDequantizedGB float64 `mapstructure:"keep_dequantized_gb" json:"keep_dequantized_gb,omitempty" yaml:"keep_dequantized_gb"`
}

// LoRASettings mirrors peft's LoraConfig.
type LoRASettings struct {
	R             int      `mapstructure:"r" json:"r" yaml:"r"`
	LoRAAlpha     float64  `mapstructure:"lora_alpha" json:"lora_alpha" yaml:"lora_alpha"`
	LoRADropout   float64  `mapstructure:"lora_dropout" json:"lora_dropout" yaml:"lora_dropout"`
	Bias          string   `mapstructure:"bias" json:"bias" yaml:"bias"`
	TargetModules []string `mapstructure:"target_modules" json:"target_modules" yaml:"target_modules"`
	TaskType      string   `mapstructure:"task_type" json:"task_type" yaml:"task_type"`
}

// DatasetConfig says where the examples come from and how columns map.
type DatasetConfig struct {
	Path      string            `mapstructure:"path" json:"path" yaml:"path"` // local file or Hub data set id
	Split     string            `mapstructure:"split" json:"split" yaml:"split"`
	Format    string            `mapstructure:"format" json:"format" yaml:"format"` // auto, csv, json, jsonl, parquet
	Rename    map[string]string `mapstructure:"rename" json:"rename" yaml:"rename"`
	Remove    []string          `mapstructure:"remove" json:"remove" yaml:"remove"`
	Type      string            `mapstructure:"type" json:"type" yaml:"type"`                   // prompt_completion, messages
	EvalSplit float64           `mapstructure:"eval_split" json:"eval_split" yaml:"eval_split"` // fraction (<1) or count (>=1) held out
	Shuffle   bool              `mapstructure:"shuffle" json:"shuffle" yaml:"shuffle"`
}

// TrainingArgs mirrors the SFTConfig / TrainingArguments fields the seed uses.
type TrainingArgs struct {
	PerDeviceTrainBatchSize   int  `mapstructure:"per_device_train_batch_size" json:"per_device_train_batch_size" yaml:"per_device_train_batch_size"`
	GradientAccumulationSteps int  `mapstructure:"gradient_accumulation_steps" json:"gradient_accumulation_steps" yaml:"gradient_accumulation_steps"`
	AutoFindBatchSize         bool `mapstructure:"auto_find_batch_size" json:"auto_find_batch_size" yaml:"auto_find_batch_size"`
	GradientCheckpointing     bool `mapstructure:"gradient_checkpointing" json:"gradient_checkpointing" yaml:"gradient_checkpointing"`
	// GradientCheckpointingKeepGB trades memory for speed under gradient
	// checkpointing: up to this many GB (1e9 bytes) of the training
	// forward's qkv_proj and gate_up_proj outputs are kept, layer 0 up while
	// they fit, so that the backward's recompute of those layers skips the
	// two largest matmuls (the same results). 0, the default, recomputes
	// everything, as transformers does. Phi-3-mini with 16 x 64 tokens
	// under bfloat16 compute keeps 52 MB a layer, 1.6 GB for all 31 it
	// recomputes (twice that under float32). Not a TrainingArguments key;
	// the CUDA and CPU backends honour it.
	GradientCheckpointingKeepGB float64 `mapstructure:"gradient_checkpointing_keep_gb" json:"gradient_checkpointing_keep_gb,omitempty" yaml:"gradient_checkpointing_keep_gb"`
	// TF32 (TrainingArguments' tf32) runs float32 matrix products on TF32
	// tensor cores where the backend has them (Ampere and later GPUs):
	// about 4x faster steps under the seed's float32 compute, at TF32's
	// precision (1e-5 of sum |a b| against float32's 1e-7). nil or false,
	// the default as in PyTorch, keeps IEEE float32. It does not touch
	// bfloat16 or float16 compute.
	TF32               *bool   `mapstructure:"tf32" json:"tf32,omitempty" yaml:"tf32"`
	MaxSeqLength       int     `mapstructure:"max_seq_length" json:"max_seq_length" yaml:"max_seq_length"`
	Packing            bool    `mapstructure:"packing" json:"packing" yaml:"packing"`
	PackingStrategy    string  `mapstructure:"packing_strategy" json:"packing_strategy" yaml:"packing_strategy"`
	CompletionOnlyLoss *bool   `mapstructure:"completion_only_loss" json:"completion_only_loss,omitempty" yaml:"completion_only_loss"`
	NumTrainEpochs     float64 `mapstructure:"num_train_epochs" json:"num_train_epochs" yaml:"num_train_epochs"`
	MaxSteps           int     `mapstructure:"max_steps" json:"max_steps" yaml:"max_steps"`
	LearningRate       float64 `mapstructure:"learning_rate" json:"learning_rate" yaml:"learning_rate"`
	LRSchedulerType    string  `mapstructure:"lr_scheduler_type" json:"lr_scheduler_type" yaml:"lr_scheduler_type"`
	WarmupRatio        float64 `mapstructure:"warmup_ratio" json:"warmup_ratio" yaml:"warmup_ratio"`
	WarmupSteps        int     `mapstructure:"warmup_steps" json:"warmup_steps" yaml:"warmup_steps"`
	Optim              string  `mapstructure:"optim" json:"optim" yaml:"optim"`
	WeightDecay        float64 `mapstructure:"weight_decay" json:"weight_decay" yaml:"weight_decay"`
	AdamBeta1          float64 `mapstructure:"adam_beta1" json:"adam_beta1" yaml:"adam_beta1"`
	AdamBeta2          float64 `mapstructure:"adam_beta2" json:"adam_beta2" yaml:"adam_beta2"`
	AdamEpsilon        float64 `mapstructure:"adam_epsilon" json:"adam_epsilon" yaml:"adam_epsilon"`
	MaxGradNorm        float64 `mapstructure:"max_grad_norm" json:"max_grad_norm" yaml:"max_grad_norm"`
	Seed               int64   `mapstructure:"seed" json:"seed" yaml:"seed"`
	LoggingSteps       int     `mapstructure:"logging_steps" json:"logging_steps" yaml:"logging_steps"`
	SaveSteps          int     `mapstructure:"save_steps" json:"save_steps" yaml:"save_steps"`
	SaveTotalLimit     int     `mapstructure:"save_total_limit" json:"save_total_limit" yaml:"save_total_limit"`
	EvalSteps          int     `mapstructure:"eval_steps" json:"eval_steps" yaml:"eval_steps"`
	OutputDir          string  `mapstructure:"output_dir" json:"output_dir" yaml:"output_dir"`
}

// DefaultTrainConfig is the seed notebook's job: Phi-3-mini, NF4 with double
// quantization, LoRA r=8/alpha=16/dropout 0.05 on the four fused modules,
// the Yoda sentences, batch 16, max_seq_length 64 with packing, 10 epochs,
// lr 3e-4 with linear decay, paged 8-bit AdamW, gradient checkpointing.
func DefaultTrainConfig() TrainConfig {
	return TrainConfig{
		Model: "microsoft/Phi-3-mini-4k-instruct",
		Quantization: QuantizationConfig{
			LoadIn4bit: true, Bnb4bitQuantType: "nf4", Bnb4bitUseDoubleQuant: true, Bnb4bitComputeDType: "float32",
		},
		LoRA: LoRASettings{
			R: 8, LoRAAlpha: 16, LoRADropout: 0.05, Bias: "none", TaskType: "CAUSAL_LM",
			TargetModules: []string{"o_proj", "qkv_proj", "gate_up_proj", "down_proj"},
		},
		Dataset: DatasetConfig{
			Path: "dvgodoy/yoda_sentences", Split: "train", Format: "auto", Type: "prompt_completion",
			Rename: map[string]string{"sentence": "prompt", "translation_extra": "completion"},
			Remove: []string{"translation"},
		},
		Training: TrainingArgs{
			PerDeviceTrainBatchSize: 16, GradientAccumulationSteps: 1, AutoFindBatchSize: true,
			GradientCheckpointing: true, MaxSeqLength: 64, Packing: true, PackingStrategy: "bfd",
			NumTrainEpochs: 10, MaxSteps: -1, LearningRate: 3e-4, LRSchedulerType: "linear",
			Optim: "paged_adamw_8bit", AdamBeta1: 0.9, AdamBeta2: 0.999, AdamEpsilon: 1e-8,
			MaxGradNorm: 1.0, Seed: 42, LoggingSteps: 10, SaveSteps: 500, EvalSteps: 0,
			OutputDir: "./phi3-mini-yoda-adapter",
		},
		Device: "auto",
	}
}

// ConfigError is a problem with one key of the job configuration.
type ConfigError struct {
	Key     string // dotted key, e.g. training.learning_rate
	Problem string // what is wrong and what is allowed
}

func (e *ConfigError) Error() string { return fmt.Sprintf("config key %q: %s", e.Key, e.Problem) }

func oneOf(key, val string, allowed ...string) error {
	for _, a := range allowed {
		if val == a {
			return nil
		}
	}
	return &ConfigError{Key: key, Problem: fmt.Sprintf("%q is not allowed; use one of %s", val, strings.Join(quoteAll(allowed), ", "))}
}

func quoteAll(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = fmt.Sprintf("%q", v)
	}
	return out
}

// LinearModuleNames are the module names LoRA may target on Phi-3.
var LinearModuleNames = []string{"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}

// Validate checks every key and returns all problems at once, joined.
func (c *TrainConfig) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	bad := func(key, format string, a ...any) {
		errs = append(errs, &ConfigError{Key: key, Problem: fmt.Sprintf(format, a...)})
	}

	if strings.TrimSpace(c.Model) == "" {
		bad("model", "is empty; give a Hugging Face repo id (microsoft/Phi-3-mini-4k-instruct), a local model directory, or ollama://NAME")
	}
	q := c.Quantization
	if q.LoadIn4bit {
		add(oneOf("quantization.bnb_4bit_quant_type", q.Bnb4bitQuantType, "nf4"))
	}
	add(oneOf("quantization.bnb_4bit_compute_dtype", q.Bnb4bitComputeDType, "float32", "bfloat16", "float16"))
	if q.KeepGGUF && q.LoadIn4bit {
		bad("quantization.keep_gguf", "is true and so is load_in_4bit; choose one: keep_gguf keeps the GGUF base's own quantization, load_in_4bit re-quantizes it to NF4 (set load_in_4bit: false to keep the GGUF blocks)")
	}
	switch {
	case q.KeepDequantizedGB < 0 || math.IsNaN(q.KeepDequantizedGB) || math.IsInf(q.KeepDequantizedGB, 0):
		bad("quantization.keep_dequantized_gb", "is %g; give the GB of dequantized weights to keep on the GPU (0: none, 8: all of Phi-3-mini's)", q.KeepDequantizedGB)
	case q.KeepDequantizedGB > 0 && !q.LoadIn4bit:
		bad("quantization.keep_dequantized_gb", "is %g but load_in_4bit is false: there are no NF4 weights to keep dequantized; remove it or set load_in_4bit: true", q.KeepDequantizedGB)
	}
	if q.KeepGGUF && !strings.HasPrefix(strings.TrimSpace(c.Model), "ollama://") {
		bad("quantization.keep_gguf", "is true but model %q is not a GGUF base; keep_gguf needs model: ollama://NAME", c.Model)
	}

	l := c.LoRA
	if l.R <= 0 {
		bad("lora.r", "is %d; it must be a positive integer (the seed uses 8)", l.R)
	}
	if l.LoRAAlpha <= 0 {
		bad("lora.lora_alpha", "is %g; it must be positive (the seed uses 16)", l.LoRAAlpha)
	}
	if l.LoRADropout < 0 || l.LoRADropout >= 1 {
		bad("lora.lora_dropout", "is %g; it must be in [0, 1)", l.LoRADropout)
	}
	add(oneOf("lora.bias", l.Bias, "none"))
	if l.TaskType != "" {
		add(oneOf("lora.task_type", l.TaskType, "CAUSAL_LM"))
	}
	if len(l.TargetModules) == 0 {
		bad("lora.target_modules", "is empty; use some of %s, or [all-linear]", strings.Join(quoteAll(LinearModuleNames), ", "))
	}
	for _, m := range l.TargetModules {
		if m == "all-linear" {
			continue
		}
		if err := oneOf("lora.target_modules", m, LinearModuleNames...); err != nil {
			errs = append(errs, &ConfigError{Key: "lora.target_modules", Problem: fmt.Sprintf("module %q is not a Phi-3 linear module; use some of %s, or all-linear (Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj)", m, strings.Join(quoteAll(LinearModuleNames), ", "))})
		}
	}

	d := c.Dataset
	if strings.TrimSpace(d.Path) == "" {
		bad("dataset.path", "is empty; give a local CSV/JSON/JSONL/Parquet file or a Hub data set id such as dvgodoy/yoda_sentences")
	}
	if d.Format != "" {
		add(oneOf("dataset.format", d.Format, "auto", "csv", "json", "jsonl", "parquet"))
	}
	if d.Type != "" {
		add(oneOf("dataset.type", d.Type, "prompt_completion", "messages"))
	}
	if d.EvalSplit < 0 {
		bad("dataset.eval_split", "is %g; use a fraction in (0, 1) or a row count >= 1, or 0 for none", d.EvalSplit)
	}

	t := c.Training
	if t.PerDeviceTrainBatchSize <= 0 {
		bad("training.per_device_train_batch_size", "is %d; it must be a positive integer", t.PerDeviceTrainBatchSize)
	}
	if t.GradientAccumulationSteps <= 0 {
		bad("training.gradient_accumulation_steps", "is %d; it must be a positive integer", t.GradientAccumulationSteps)
	}
	if t.MaxSeqLength <= 0 {
		bad("training.max_seq_length", "is %d; it must be a positive integer (the seed uses 64)", t.MaxSeqLength)
	}
	switch k := t.GradientCheckpointingKeepGB; {
	case k < 0 || math.IsNaN(k) || math.IsInf(k, 0):
		bad("training.gradient_checkpointing_keep_gb", "is %g; give the GB of activations to keep instead of recomputing (0: recompute everything)", k)
	case k > 0 && !t.GradientCheckpointing:
		bad("training.gradient_checkpointing_keep_gb", "is %g but gradient_checkpointing is false: nothing is recomputed, so there is nothing to keep; remove it or set gradient_checkpointing: true", k)
	}
	if t.PackingStrategy != "" {
		add(oneOf("training.packing_strategy", t.PackingStrategy, "bfd", "wrapped"))
	}
	if t.MaxSteps <= 0 && t.NumTrainEpochs <= 0 {
		bad("training.num_train_epochs", "is %g and max_steps is %d; set num_train_epochs > 0 or max_steps > 0", t.NumTrainEpochs, t.MaxSteps)
	}
	if t.LearningRate <= 0 {
		bad("training.learning_rate", "is %g; it must be positive (the seed uses 3e-4)", t.LearningRate)
	}
	add(oneOf("training.lr_scheduler_type", t.LRSchedulerType, "linear", "constant", "cosine", "constant_with_warmup"))
	if t.WarmupRatio < 0 || t.WarmupRatio >= 1 {
		bad("training.warmup_ratio", "is %g; it must be in [0, 1)", t.WarmupRatio)
	}
	if t.WarmupSteps < 0 {
		bad("training.warmup_steps", "is %d; it must be >= 0", t.WarmupSteps)
	}
	add(oneOf("training.optim", t.Optim, "adamw_torch", "adamw_8bit", "paged_adamw_8bit"))
	if t.WeightDecay < 0 {
		bad("training.weight_decay", "is %g; it must be >= 0", t.WeightDecay)
	}
	if t.AdamBeta1 < 0 || t.AdamBeta1 >= 1 || t.AdamBeta2 < 0 || t.AdamBeta2 >= 1 {
		bad("training.adam_beta1", "betas are (%g, %g); each must be in [0, 1)", t.AdamBeta1, t.AdamBeta2)
	}
	if t.AdamEpsilon <= 0 {
		bad("training.adam_epsilon", "is %g; it must be positive", t.AdamEpsilon)
	}
	if t.MaxGradNorm < 0 {
		bad("training.max_grad_norm", "is %g; it must be >= 0 (0 disables clipping)", t.MaxGradNorm)
	}
	if t.LoggingSteps <= 0 {
		bad("training.logging_steps", "is %d; it must be a positive integer", t.LoggingSteps)
	}
	if t.SaveSteps < 0 || t.SaveTotalLimit < 0 || t.EvalSteps < 0 {
		bad("training.save_steps", "save_steps, save_total_limit and eval_steps must be >= 0 (0 disables)")
	}
	if strings.TrimSpace(t.OutputDir) == "" {
		bad("training.output_dir", "is empty; give the folder the adapter is written to")
	}
	add(oneOf("device", c.Device, "auto", "cpu", "cuda"))

	if len(errs) == 0 {
		return nil
	}
	return errors.Join(errs...)
}

// ComputeDType maps bnb_4bit_compute_dtype to a DType.
func (q QuantizationConfig) ComputeDType() DType {
	switch q.Bnb4bitComputeDType {
	case "bfloat16":
		return BF16
	case "float16":
		return F16
	}
	return F32
}

// TargetModulesResolved expands all-linear and removes duplicates, in the
// fixed order qkv_proj, o_proj, gate_up_proj, down_proj.
func (l LoRASettings) TargetModulesResolved() []string {
	want := map[string]bool{}
	for _, m := range l.TargetModules {
		if m == "all-linear" {
			for _, n := range LinearModuleNames {
				want[n] = true
			}
		}
		want[m] = true
	}
	var out []string
	for _, n := range LinearModuleNames {
		if want[n] {
			out = append(out, n)
		}
	}
	return out
}
