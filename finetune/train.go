package finetune

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ollama-tune/ollama-tune/finetune/data"
	"github.com/ollama-tune/ollama-tune/finetune/optim"
)

// The SFT loop: what transformers' Trainer with TRL's SFTTrainer does for
// the seed notebook, on the Backend.
//
//	data     read, map columns, (shuffle), hold out eval_split, tokenize
//	         with the chat template, pack (bfd) or truncate; epoch e visits
//	         the sequences in data.EpochBatches(seed, e) order (the
//	         RandomSampler's role), in micro-batches of
//	         per_device_train_batch_size
//	step     gradient_accumulation_steps micro-batches (fewer at the end of
//	         an epoch, as the Trainer does); gradients are of
//	         sum(token losses) / num_items_in_batch, the label tokens of the
//	         whole step (Model.NumItemsInBatch), then clipped to
//	         max_grad_norm (clip_grad_norm_), then one AdamW / 8-bit AdamW
//	         update at the scheduler's rate for this step
//	dropout  the LoRA dropout masks of micro-batch i of step g are drawn
//	         from DeriveSeed(seed, g, i), so a resumed run draws the same
//	log      every logging_steps: loss averaged over the steps since the
//	         last log (the Trainer's tr_loss / steps), the last step's grad
//	         norm, the learning rate the next step will use (the Trainer
//	         logs after scheduler.step()), epoch progress, tokens/s, the
//	         mean of the micro-batches' token accuracies (TRL); the last
//	         step is logged too when its window is not empty
//	eval     every eval_steps and at the end, on the held-out split:
//	         token-weighted mean loss and accuracy
//	save     every save_steps and at the last step: output_dir/checkpoint-N
//	         (see train_checkpoint.go), keeping the newest save_total_limit
//	outputs  once training has succeeded: see outputs.go
//
// The data position is a pure function of the global step (epoch = step /
// steps per epoch), so a checkpoint needs only the step, the adapter, the
// optimizer state and the logging history to continue bit for bit.

// TrainEvent is what Train reports while it runs.
type TrainEvent interface{ trainEvent() }

// StartedEvent is the first event: the plan, and where training starts.
type StartedEvent struct {
	Plan        TrainPlan
	StartStep   int    // > 0 when resumed
	ResumedFrom string // the checkpoint folder, or ""
	Device      string
}

// StepMetrics are the metrics of the steps since the last log.
type StepMetrics struct {
	Step  int     // optimizer steps done (1-based)
	Epoch float64 // fractional epochs done
	// Loss and MeanTokenAccuracy are averaged over the steps since the
	// last logged step, this one included; at a logged step they are what
	// metrics.jsonl records.
	Loss              float64
	MeanTokenAccuracy float64
	GradNorm          float64 // this step's total gradient norm, before clipping
	LearningRate      float64 // the rate the next step uses (as the Trainer logs it)
	TokensPerSecond   float64 // over the steps since the last log
	Tokens            int64   // tokens trained on so far (not counting padding)
	// Logged marks a logging step (every logging_steps, and the last).
	Logged bool
}

// StepEvent reports one optimizer step.
type StepEvent struct{ StepMetrics }

// EvalEvent reports an evaluation on the held-out split.
type EvalEvent struct {
	Step              int
	Epoch             float64
	Loss              float64
	MeanTokenAccuracy float64
}

// CheckpointEvent says a checkpoint is complete on disk.
type CheckpointEvent struct {
	Step int
	Path string
}

// LogEvent is a status line for the user.
type LogEvent struct {
	Level   string // debug, info, warn
	Message string
}

func (StartedEvent) trainEvent()    {}
func (StepEvent) trainEvent()       {}
func (EvalEvent) trainEvent()       {}
func (CheckpointEvent) trainEvent() {}
func (LogEvent) trainEvent()        {}

// Result is what a finished run produced.
type Result struct {
	OutputDir     string
	Steps         int
	FinalLoss     float64 // the last logged training loss
	FinalEvalLoss float64 // NaN without an eval split
	TrainLoss     float64 // mean loss over all steps of this run (the Trainer's train_loss)
	History       []LogEntry
	Plan          TrainPlan
	Runtime       time.Duration
}

// ErrOutOfMemory is what backends wrap when an allocation or a kernel runs
// out of device memory. Backend.Alloc returns no error, so a backend
// reports it by panicking with an error that wraps ErrOutOfMemory (or by
// returning one from Sync); Train recovers it, and with
// auto_find_batch_size halves the micro-batch and retries the step.
var ErrOutOfMemory = errors.New("out of memory")

// CancelledError is returned when the context ends a run. It wraps the
// context's error (errors.Is(err, context.Canceled) holds).
type CancelledError struct {
	Step       int    // optimizer steps completed
	Checkpoint string // the checkpoint saved on the way out, or ""
	Err        error
}

func (e *CancelledError) Error() string {
	if e.Checkpoint != "" {
		return fmt.Sprintf("training cancelled after step %d; checkpoint saved in %s (resume with --resume)", e.Step, e.Checkpoint)
	}
	return fmt.Sprintf("training cancelled after step %d; no checkpoint saved", e.Step)
}

func (e *CancelledError) Unwrap() error { return e.Err }

// ---------------------------------------------------------------------------
// Plan

// TrainPlan is what a job amounts to, computed without training (the
// CLI's --dry-run prints it).
type TrainPlan struct {
	Model    string // as configured
	ModelDir string
	Config   *Config
	Data     data.Plan // the training split
	// Held-out split (zero without eval_split).
	EvalExamples, EvalSequences int
	Skipped                     int // empty rows dropped
	Epochs                      float64
	TotalSteps, WarmupSteps     int
	MicroBatchSize, GradAccum   int // as configured; auto_find_batch_size may halve/double them
	EffectiveBatch              int
	Optimizer                   string
	TrainableParams             int64
	TotalParams                 int64
	// ModelBytes: the model as transformers' get_memory_footprint counts
	// it after the k-bit preparation (float32 non-quantized weights, LoRA),
	// for comparison with the Hugging Face stack.
	ModelBytes int64
	// The estimate of the GPU memory the CUDA backend holds at a step's
	// peak (devicemem.go), EstimatedBytes in all: the weights as it holds
	// them (NF4, embeddings and lm_head in the compute type, LoRA with
	// gradients), the optimizer state, the activations of one micro-batch
	// of the longest sequences the model's buffers hold (with or without
	// gradient checkpointing; without it under bfloat16, also every
	// layer's 16-bit LoRA inputs, which the backend keeps), its working
	// memory (the dequantization slots and scratch). KeptBytes: the
	// dequantized weights quantization.keep_dequantized_gb keeps (at most
	// all of them). KeptActivationBytes: the device memory of the outputs
	// training.gradient_checkpointing_keep_gb keeps from recomputation (at
	// most all it can keep; where the budget holds less than a step
	// offers, a share of them goes through host memory instead).
	WeightBytes, OptimizerBytes, ActivationBytes, WorkingBytes, KeptBytes, KeptActivationBytes, EstimatedBytes int64
}

// String formats the plan for people.
func (p TrainPlan) String() string {
	var b strings.Builder
	gib := func(n int64) string { return fmt.Sprintf("%.2f GiB (%d bytes)", float64(n)/(1<<30), n) }
	fmt.Fprintf(&b, "model:             %s (%s)\n", p.Model, p.ModelDir)
	if p.Config != nil {
		fmt.Fprintf(&b, "                   %d layers, hidden %d, intermediate %d, %d/%d heads, vocab %d\n",
			p.Config.NumLayers, p.Config.HiddenSize, p.Config.IntermediateSize, p.Config.NumHeads, p.Config.NumKVHeads, p.Config.VocabSize)
	}
	fmt.Fprintf(&b, "examples:          %d for training", p.Data.Examples)
	if p.EvalExamples > 0 {
		fmt.Fprintf(&b, ", %d held out for evaluation", p.EvalExamples)
	}
	if p.Skipped > 0 {
		fmt.Fprintf(&b, " (%d empty rows skipped)", p.Skipped)
	}
	fmt.Fprintf(&b, "\ntokens:            %d (%d truncated examples)\n", p.Data.Tokens, p.Data.Truncated)
	fmt.Fprintf(&b, "sequences:         %d holding %d tokens", p.Data.Sequences, p.Data.SequenceTokens)
	if p.EvalSequences > 0 {
		fmt.Fprintf(&b, "; %d for evaluation", p.EvalSequences)
	}
	fmt.Fprintf(&b, "\nbatch:             %d sequences x %d accumulation steps = %d per optimizer step\n", p.MicroBatchSize, p.GradAccum, p.EffectiveBatch)
	fmt.Fprintf(&b, "steps:             %d per epoch, %d in total (%g epochs), %d warm-up\n", p.Data.StepsPerEpoch, p.TotalSteps, p.Epochs, p.WarmupSteps)
	fmt.Fprintf(&b, "optimizer:         %s\n", p.Optimizer)
	pct := 0.0
	if p.TotalParams > 0 {
		pct = 100 * float64(p.TrainableParams) / float64(p.TotalParams)
	}
	fmt.Fprintf(&b, "parameters:        %d trainable of %d (%.4f%%)\n", p.TrainableParams, p.TotalParams, pct)
	fmt.Fprintf(&b, "memory (estimate): %s of GPU memory at the step's peak (the CUDA backend's, besides the CUDA context)\n", gib(p.EstimatedBytes))
	fmt.Fprintf(&b, "  weights:         %s\n", gib(p.WeightBytes))
	fmt.Fprintf(&b, "  optimizer state: %s\n", gib(p.OptimizerBytes))
	fmt.Fprintf(&b, "  activations:     %s\n", gib(p.ActivationBytes))
	fmt.Fprintf(&b, "  dequantization slots and scratch: %s\n", gib(p.WorkingBytes))
	if p.KeptBytes > 0 {
		fmt.Fprintf(&b, "  kept dequantized weights (keep_dequantized_gb): %s\n", gib(p.KeptBytes))
	}
	if p.KeptActivationBytes > 0 {
		fmt.Fprintf(&b, "  kept activations (gradient_checkpointing_keep_gb): %s on the device\n", gib(p.KeptActivationBytes))
	}
	fmt.Fprintf(&b, "model (transformers' get_memory_footprint): %s\n", gib(p.ModelBytes))
	return b.String()
}

// Plan prepares the data and counts what training the job would do,
// without loading weights or training.
func Plan(ctx context.Context, job *Job) (TrainPlan, error) {
	cfg := job.ggufConfig
	if cfg == nil {
		var err error
		if cfg, err = LoadConfig(job.ModelDir); err != nil {
			return TrainPlan{}, err
		}
	}
	prep, err := prepareData(ctx, job)
	if err != nil {
		return TrainPlan{}, err
	}
	return makePlan(job, cfg, prep)
}

func makePlan(job *Job, cfg *Config, prep *prepared) (TrainPlan, error) {
	t := job.Config.Training
	p := TrainPlan{
		Model: job.Config.Model, ModelDir: job.modelSource(), Config: cfg, Data: prep.plan,
		EvalExamples: prep.evalExamples, EvalSequences: len(prep.eval), Skipped: prep.skipped,
		MicroBatchSize: t.PerDeviceTrainBatchSize, GradAccum: t.GradientAccumulationSteps,
		EffectiveBatch: t.PerDeviceTrainBatchSize * t.GradientAccumulationSteps, Optimizer: t.Optim,
	}
	if t.MaxSteps > 0 {
		p.TotalSteps = t.MaxSteps
		p.Epochs = float64(t.MaxSteps) / float64(prep.plan.StepsPerEpoch)
	} else {
		p.TotalSteps = prep.plan.Steps(t.NumTrainEpochs)
		p.Epochs = t.NumTrainEpochs
	}
	p.WarmupSteps = optim.WarmupSteps(p.TotalSteps, t.WarmupRatio, t.WarmupSteps)
	l := job.Config.LoRA
	p.TrainableParams = TrainableParams(cfg, l.R, l.TargetModules)
	p.TotalParams = totalParams(cfg) + p.TrainableParams
	q := job.Config.Quantization
	dt := q.ComputeDType()
	p.ModelBytes = MemoryFootprint(cfg, q.LoadIn4bit, 4, &LoRAShape{Rank: l.R, Modules: l.TargetModules})
	var ggufLinear int64
	if q.KeepGGUF && job.GGUF != "" {
		ggufLinear = job.ggufLinearBytes
		// The decoder linears stay as the file's blocks instead of float32.
		var dense int64
		for _, m := range LinearModules {
			out, in := LinearShape(cfg, m)
			dense += 4 * int64(out) * int64(in) * int64(cfg.NumLayers)
		}
		p.ModelBytes += job.ggufLinearBytes - dense
	}
	kind, err := optim.ParseOptimizer(t.Optim)
	if err != nil {
		return p, &ConfigError{Key: "training.optim", Problem: err.Error()}
	}
	for _, m := range expandedTargets(l.TargetModules) {
		out, in := LinearShape(cfg, m)
		for _, n := range []int{l.R * in, out * l.R} {
			p.OptimizerBytes += int64(cfg.NumLayers) * optimizerStateBytes(kind, n)
		}
	}
	tokens := t.PerDeviceTrainBatchSize * longestSequence(prep)
	targets := expandedTargets(l.TargetModules)
	p.ActivationBytes = activationBytes(cfg, tokens, l.R, t.GradientCheckpointing)
	if dt == BF16 {
		// The CUDA backend keeps a layer's rounded LoRA inputs from its
		// forward for its backward (a LoRAInputKeeper, v8); without
		// checkpointing every layer's, through the forward (a
		// LoRAInputForwardKeeper, v18).
		layers := int64(cfg.NumLayers)
		if t.GradientCheckpointing {
			layers = 1
		}
		for _, m := range targets {
			_, in := LinearShape(cfg, m)
			p.ActivationBytes += 2 * int64(tokens) * int64(in) * layers
		}
	}
	p.WorkingBytes = scratchBytes(cfg, dt, t.TF32 != nil && *t.TF32, tokens, l.R)
	// Dequantized weights: NF4 ones, or a kept GGUF base's blocks (into
	// the same slots, without the spare); a dense base has none.
	slots := q.LoadIn4bit || ggufLinear > 0
	if q.KeepDequantizedGB > 0 && q.LoadIn4bit {
		all, _ := dequantizedLinearBytes(cfg, dt, l.R, targets, true)
		p.KeptBytes = min(all, int64(q.KeepDequantizedGB*1e9))
		slots = p.KeptBytes < all // every weight kept: no slots
	}
	if slots {
		p.WorkingBytes += dequantSlotBytes(cfg, dt, l.R, targets, t.GradientCheckpointing, q.LoadIn4bit)
	}
	embedOnHost := false
	if t.GradientCheckpointing && t.GradientCheckpointingKeepGB > 0 {
		sizes := stashOutputSizes(cfg, tokens, stashElemBytes(dt), stashElemBytes(dt))
		p.KeptActivationBytes = stashDeviceBytes(sizes, int64(t.GradientCheckpointingKeepGB*1e9), StashHostEvery(dt))
		embedOnHost = true // the trainer moves the token embeddings to host memory for them
	}
	p.WeightBytes = deviceWeightBytes(cfg, q, p.TrainableParams, ggufLinear, embedOnHost)
	p.EstimatedBytes = p.WeightBytes + p.OptimizerBytes + p.ActivationBytes + p.WorkingBytes + p.KeptBytes + p.KeptActivationBytes
	return p, nil
}

func expandedTargets(targets []string) []string {
	ms, err := expandModules(targets)
	if err != nil {
		return nil
	}
	return ms
}

// totalParams counts the base model's parameters (PEFT's "all params"
// without the adapter).
func totalParams(cfg *Config) int64 {
	var n int64
	for _, s := range Phi3Tensors(cfg) {
		n += int64(numel(s.Shape))
	}
	return n
}

// optimizerStateBytes is the state one parameter of n values needs.
func optimizerStateBytes(kind optim.Kind, n int) int64 {
	if kind.Is8bit() && optim.Uses8bit(n) {
		return 2*int64(n) + 2*4*int64(optim.Blocks8bit(n))
	}
	return 8 * int64(n)
}

// keepableActivationBytes is what Model.CheckpointKeepBytes can keep: the
// outputs a checkpointed step of T tokens offers the stash, elem bytes a
// value.
func keepableActivationBytes(c *Config, T int, elem int64) int64 {
	var n int64
	for _, size := range stashOutputSizes(c, T, elem, elem) {
		n += size
	}
	return n
}

// stashOutputSizes are the byte sizes of the outputs a checkpointed
// training step of T tokens offers the ActivationStasher, in the order the
// model offers them (Model.layerForward: each layer's qkv_proj output, then
// its gate_up_proj output; not the last layer's), qkvElem and guElem bytes
// a value.
func stashOutputSizes(c *Config, T int, qkvElem, guElem int64) []int64 {
	if c.NumLayers < 2 {
		return nil
	}
	qkv, gateUp := int64(T)*int64(c.QKVOut())*qkvElem, int64(T)*int64(2*c.IntermediateSize)*guElem
	sizes := make([]int64, 0, 2*(c.NumLayers-1))
	for range c.NumLayers - 1 {
		sizes = append(sizes, qkv, gateUp)
	}
	return sizes
}

// StashSizes are stashOutputSizes as Model.newBuffers allocates the
// outputs on b: 16-bit where b holds them so (HalfAllocator under a 16-bit
// compute type: qkv where attention takes RoPE fused, gate_up where
// down_proj has an adapter), else float32. For StashPreparer (the trainer,
// and the GPU benchmark, which prepares the stash as the trainer does).
func StashSizes(b Backend, c *Config, lora *LoRAConfig, B, S int) []int64 {
	targets, err := lora.Validate()
	if err != nil {
		return nil
	}
	_, ha := b.(HalfAllocator)
	elem := func(half bool) int64 {
		if half && ha && b.ComputeDType() != F32 {
			return 2
		}
		return 4
	}
	ra, ok := b.(RoPEAttentioner)
	rope := ok && ra.RoPEAttention(B, S, c.NumHeads, c.NumKVHeads, c.HeadDim(), c.RotaryDim())
	return stashOutputSizes(c, B*S, elem(rope), elem(targets[modDown]))
}

// activationBytes is what Model.newBuffers allocates for T tokens in
// training (float32 and int32 values), the gradients included.
func activationBytes(c *Config, T, r int, ckpt bool) int64 {
	C, I, H, D, L := int64(c.HiddenSize), int64(c.IntermediateSize), int64(c.NumHeads), int64(c.HeadDim()), int64(c.NumLayers)
	t := int64(T)
	qkv := int64(c.QKVOut())
	perLayer := t * (C + 1 + qkv + H*D + H + C + C + 1 + 2*I + I + 4*int64(r))
	layers := L
	if ckpt {
		layers = 1
	}
	n := 3*t + (L+1)*t*C + layers*perLayer + t*C + t*C + t
	// The gradients: dlnf, dres, dln, datt, dqkv, dact; no d gate_up, which
	// a backend that fuses SwiGLU's backward never takes (the CUDA
	// backend's float16 and float32 paths hold one as scratch:
	// scratchBytes).
	n += 3*t*C + t*H*D + t*qkv + t*I
	return 4 * n // (the cross-entropy's chunk of logits: scratchBytes)
}

// ---------------------------------------------------------------------------
// Data

// prepared is the tokenized, packed data of a job.
type prepared struct {
	train, eval  []data.Sequence
	collator     data.Collator
	plan         data.Plan
	evalExamples int
	skipped      int
	fingerprint  string // identifies the training sequences and their order's inputs
}

// prepareData reads, splits, tokenizes and packs the job's data set.
func prepareData(ctx context.Context, job *Job) (*prepared, error) {
	c := &job.Config
	ds, err := LoadDataset(ctx, c, job)
	if err != nil {
		return nil, err
	}
	if job.serving != nil {
		if err := job.serving.checkExamples(ds.Examples); err != nil {
			return nil, fmt.Errorf("dataset: %w", err)
		}
	}
	if job.Template == nil && job.Tokenizer.EOS() < 0 {
		return nil, fmt.Errorf("tokenizer of %s has no eos_token; plain-text training appends it to every example (set eos_token in tokenizer_config.json)", job.modelSource())
	}
	td, err := PrepareData(ds, c, job.Tokenizer, job.Template)
	if err != nil {
		return nil, err
	}
	// Keep the sequences, not the examples and their tokens.
	p := &prepared{
		train: td.TrainSeqs, eval: td.EvalSeqs, collator: td.Collator, plan: td.Plan,
		evalExamples: len(td.Eval), skipped: len(ds.Skipped),
	}
	// Padding-free micro-batches as one row per packed sequence: TRL's
	// tokens, attention and targets in rows the CUDA backend's short-row
	// kernels take (data.Collator.RowPerSequence).
	p.collator.RowPerSequence = true
	p.fingerprint = fingerprint(p.train, p.collator, c)
	return p, nil
}

// fingerprint hashes what fixes the sequence of micro-batches: the
// training sequences, the collator, the seed and the batch settings. A
// checkpoint records it; resuming with other data or settings is refused.
func fingerprint(seqs []data.Sequence, col data.Collator, c *TrainConfig) string {
	h := sha256.New()
	w := func(v ...int64) {
		for _, x := range v {
			binary.Write(h, binary.LittleEndian, x)
		}
	}
	w(int64(len(seqs)), c.Training.Seed, int64(c.Training.PerDeviceTrainBatchSize), int64(c.Training.GradientAccumulationSteps))
	w(int64(col.Pad), int64(col.PadToMultipleOf), b2i(col.CompletionOnlyLoss), b2i(col.PaddingFree), b2i(col.RowPerSequence))
	for _, s := range seqs {
		w(int64(len(s.InputIDs)), int64(len(s.CompletionMask)), int64(len(s.SeqLengths)))
		binary.Write(h, binary.LittleEndian, s.InputIDs)
		h.Write(s.CompletionMask)
		for _, l := range s.SeqLengths {
			w(int64(l))
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// ---------------------------------------------------------------------------
// The trainer

// trainer is one run's state.
type trainer struct {
	job   *Job
	cfg   *TrainConfig
	emit  func(TrainEvent)
	prep  *prepared
	plan  TrainPlan
	b     Backend
	m     *Model
	lora  *LoRAConfig
	opt   *optimizer
	sched optim.Scheduler
	seed  uint64

	step    int // optimizer steps completed
	microBS int // sequences per physical micro-batch (auto_find_batch_size may lower it)
	// keepingDeq: the backend was asked to keep dequantized weights
	// (quantization.keep_dequantized_gb) and has not been told to drop them.
	keepingDeq bool

	epochCache struct {
		epoch   int
		batches [][]int
	}

	history []LogEntry
	win     logWindow
	tokens  int64 // tokens trained on, over the whole run (resumes included)
	// this process's run, for train_loss and the runtime
	runLossSum float64
	runSteps   int
	started    time.Time

	lastSave int // step of the last checkpoint (-1: none)
	// savedDir: the checkpoint this process wrote last (at lastSave unless
	// a resume set lastSave since), whose adapter files the outputs copy
	// (finalAdapterFiles).
	savedDir string
	// fileTimes: what each file of the checkpoint being written took
	// (stageFile), for its debug log line.
	fileTimes []fileTime
	// hostTimes: where the host's time of the steps went (the debug line
	// at the end of the run).
	hostTimes stepTimes
}

// stepTimes sums, over a run's steps after its first, the host's time in
// each part of a step: making the micro-batches, the forwards (each waits
// for its loss), queueing the backwards, the gradient norm's clipping and
// download (a wait for the whole backward), queueing the optimizer, and
// the rest between two steps (metrics, events, evaluation, checkpoints).
// The GPU sets the pace where the waits hold the time; the host where the
// rest does (issue 8: the CLI's steps took ~1-2 ms longer than the
// bench's, v17).
type stepTimes struct {
	n                                              int
	batches, forward, backward, norm, optim, other time.Duration
	stepEnd                                        time.Time
}

// String is the debug line's breakdown, in ms a step.
func (s stepTimes) String() string {
	if s.n == 0 {
		return ""
	}
	ms := func(d time.Duration) float64 { return d.Seconds() * 1e3 / float64(s.n) }
	return fmt.Sprintf("the host's time a step (mean of %d after the first): batches %.2f ms, forwards to their loss %.2f ms, queueing the backwards %.2f ms, clipping and the gradient norm %.2f ms, queueing the optimizer %.2f ms, between steps %.2f ms",
		s.n, ms(s.batches), ms(s.forward), ms(s.backward), ms(s.norm), ms(s.optim), ms(s.other))
}

// logWindow accumulates the steps since the last log.
type logWindow struct {
	LossSum  float64 `json:"loss_sum"`
	Steps    int     `json:"steps"`
	AccSum   float64 `json:"accuracy_sum"`
	AccCount int     `json:"accuracy_count"`
	Tokens   int64   `json:"tokens"`
	start    time.Time
	elapsed  time.Duration
}

// Train runs the job: it prepares the data, builds the model, trains,
// checkpoints and writes the outputs (outputs.go), reporting progress to
// emit (which may be nil). On a cancelled ctx it saves a checkpoint
// (unless job.SaveOnCancel says not to) and returns a *CancelledError.
func Train(ctx context.Context, job *Job, emit func(TrainEvent)) (*Result, error) {
	if emit == nil {
		emit = func(TrainEvent) {}
	}
	if err := job.Config.Validate(); err != nil {
		return nil, err
	}
	outDir := job.outputDir()
	if err := checkWritable(outDir); err != nil {
		return nil, &ConfigError{Key: "training.output_dir", Problem: err.Error()}
	}
	resumeDir, err := findResume(outDir, job.Resume)
	if err != nil {
		return nil, err
	}
	if resumeDir == "" {
		if ck := listCheckpoints(outDir); len(ck) > 0 {
			return nil, fmt.Errorf("output_dir %s already holds checkpoints of an earlier run (%s); continue it with --resume, or choose another output_dir", outDir, filepath.Base(ck[len(ck)-1].dir))
		}
	}
	t0 := time.Now()
	prep, err := prepareData(ctx, job)
	if err != nil {
		return nil, err
	}
	tData := time.Now()
	// The base: a checkpoint folder, or a GGUF blob (kept open while the
	// model lives: keep_gguf weights read its blocks).
	var ck *Checkpoint
	var gb *GGUFBase
	var baseCfg *Config
	if job.GGUF != "" {
		if gb, err = LoadGGUFBase(job.GGUF); err != nil {
			return nil, fmt.Errorf("model %s: %w", job.Config.Model, err)
		}
		defer gb.Close()
		baseCfg = gb.Config
	} else {
		if ck, err = LoadCheckpoint(job.ModelDir); err != nil {
			return nil, err
		}
		defer ck.Close()
		baseCfg = ck.Config
	}
	plan, err := makePlan(job, baseCfg, prep)
	if err != nil {
		return nil, err
	}
	if tv := job.Tokenizer.VocabSize(); tv > baseCfg.VocabSize {
		return nil, fmt.Errorf("model %s: the tokenizer has %d tokens but the model's vocabulary only %d; they do not belong together", job.modelSource(), tv, baseCfg.VocabSize)
	}

	tr := &trainer{job: job, cfg: &job.Config, emit: emit, prep: prep, plan: plan, seed: uint64(job.Config.Training.Seed),
		microBS: job.Config.Training.PerDeviceTrainBatchSize, lastSave: -1}
	tr.epochCache.epoch = -1
	if tr.sched, err = optim.ParseScheduler(tr.cfg.Training.LRSchedulerType); err != nil {
		return nil, &ConfigError{Key: "training.lr_scheduler_type", Problem: err.Error()}
	}
	tPlan := time.Now()
	if tr.b, err = job.backend(); err != nil {
		return nil, err
	}
	defer tr.b.Close()
	tBackend := time.Now()
	if mr, ok := tr.b.(MemoryReporter); ok && resumeDir == "" {
		if free, _, err := mr.MemInfo(); err == nil {
			if note := memoryForSpeedNote(job, baseCfg, prep, plan, free); note != "" {
				emit(LogEvent{Level: "info", Message: note})
			}
		}
	}
	if tf := job.Config.Training.TF32; tf != nil && *tf {
		if ts, ok := tr.b.(TF32Setter); ok {
			if err := ts.SetTF32(true); err != nil {
				return nil, fmt.Errorf("training.tf32: %w", err)
			}
			if job.Config.Quantization.ComputeDType() == F32 {
				emit(LogEvent{Level: "info", Message: "training.tf32: the float32 matrix products run on TF32 tensor cores (inputs rounded to a 10-bit mantissa, float32 sums)"})
			}
		} else {
			emit(LogEvent{Level: "info", Message: fmt.Sprintf("training.tf32: backend %s has no TF32 and computes in IEEE float32; ignored", tr.b.Name())})
		}
	}
	if gb := job.Config.Quantization.KeepDequantizedGB; gb > 0 {
		if dk, ok := tr.b.(DequantKeeper); ok {
			dk.KeepDequantized(int64(gb * 1e9))
			tr.keepingDeq = true
		} else {
			emit(LogEvent{Level: "info", Message: fmt.Sprintf("quantization.keep_dequantized_gb: backend %s dequantizes nothing it could keep; ignored", tr.b.Name())})
		}
	}
	l := job.Config.LoRA
	tr.lora = &LoRAConfig{R: l.R, Alpha: float32(l.LoRAAlpha), Dropout: float32(l.LoRADropout), TargetModules: l.TargetModules, Bias: l.Bias, Seed: tr.seed}
	emit(LogEvent{Level: "info", Message: loadMessage(job)})
	q := job.Config.Quantization
	tModel := tBackend
	mo := ModelOptions{Quantize: q.LoadIn4bit, DoubleQuant: q.Bnb4bitUseDoubleQuant, LoRA: tr.lora, GradientCheckpointing: job.Config.Training.GradientCheckpointing}
	if sp, ok := tr.b.(StashPreparer); ok && mo.GradientCheckpointing && job.Config.Training.GradientCheckpointingKeepGB > 0 {
		// The stash's memory (page-locked host memory) made beside the load.
		sp.PrepareStash(int64(job.Config.Training.GradientCheckpointingKeepGB*1e9),
			StashSizes(tr.b, baseCfg, tr.lora, tr.microBS, job.Config.Training.MaxSeqLength))
	}
	rehearsed := func() string { return "" }
	if r, ok := tr.b.(StepRehearser); ok {
		rehearsed = r.RehearseStep(baseCfg, mo, tr.microBS, job.Config.Training.MaxSeqLength, plan.EstimatedBytes)
	}
	err = guard(tr.b, func() (err error) {
		switch ml, own := tr.b.(ModelLoader); {
		case gb != nil:
			tr.m, err = LoadGGUFModel(tr.b, gb, mo, q.KeepGGUF)
		case own:
			tr.m, err = ml.LoadModel(ck, mo) // e.g. quantized on the GPU
		default:
			tr.m, err = LoadModel(tr.b, ck, mo)
		}
		if err != nil {
			return err
		}
		tModel = time.Now()
		tr.m.CheckpointKeepBytes = int64(job.Config.Training.GradientCheckpointingKeepGB * 1e9)
		if hw, ok := tr.b.(HostWeighter); ok && tr.m.CheckpointKeepBytes > 0 && tr.m.LMHead != tr.m.Embed {
			// Room for the kept activations: the frozen token embeddings
			// go to host memory (the step reads its rows of them).
			if err := hw.MoveToHost(tr.m.Embed); err != nil {
				emit(LogEvent{Level: "warn", Message: fmt.Sprintf("training.gradient_checkpointing_keep_gb: the token embeddings stay on the device: %v", err)})
			}
		}
		tr.opt, err = newOptimizer(tr.b, tr.m.LoRAParams(), job.Config.Training.Optim)
		return err
	})
	rehearsal := rehearsed() // ended, its memory freed, before the first step
	if tr.m != nil {
		defer tr.m.Free()
	}
	if tr.opt != nil {
		defer tr.opt.free()
	}
	if err != nil {
		if errors.Is(err, ErrOutOfMemory) {
			return nil, fmt.Errorf("loading the model and the optimizer state (about %.2f GiB): %w; the model does not fit this device", float64(plan.ModelBytes+plan.OptimizerBytes)/(1<<30), err)
		}
		return nil, err
	}
	if resumeDir != "" {
		if err := tr.restore(resumeDir); err != nil {
			return nil, err
		}
		emit(LogEvent{Level: "info", Message: fmt.Sprintf("resuming from %s at step %d of %d", resumeDir, tr.step, plan.TotalSteps)})
	}
	dev := job.DeviceName
	if dev == "" {
		dev = tr.b.Name()
	}
	ready := fmt.Sprintf("ready to train after %.2f s: data %.2f s, checkpoint headers and plan %.2f s, backend %.2f s, model load %.2f s, optimizer %.2f s",
		time.Since(t0).Seconds(), tData.Sub(t0).Seconds(), tPlan.Sub(tData).Seconds(), tBackend.Sub(tPlan).Seconds(), tModel.Sub(tBackend).Seconds(), time.Since(tModel).Seconds())
	if lt, ok := tr.b.(interface{ LoadTimes() string }); ok && lt.LoadTimes() != "" {
		ready += " (" + lt.LoadTimes() + ")"
	}
	if rehearsal != "" {
		ready += "; " + rehearsal
	}
	emit(LogEvent{Level: "debug", Message: ready})
	emit(StartedEvent{Plan: plan, StartStep: tr.step, ResumedFrom: resumeDir, Device: dev})

	tr.started = time.Now()
	tr.win.start = time.Now()
	total := plan.TotalSteps
	for tr.step < total {
		if ctx.Err() != nil {
			return nil, tr.cancelled(ctx)
		}
		loss, acc, norm, tokens, err := tr.trainStep(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, tr.cancelled(ctx)
			}
			return nil, err
		}
		if tr.runSteps == 0 && tr.m.CheckpointKeepBytes > 0 {
			if r, ok := tr.b.(interface{ StashReport() string }); ok {
				tr.emit(LogEvent{Level: "info", Message: fmt.Sprintf("training.gradient_checkpointing_keep_gb %g: %s",
					tr.cfg.Training.GradientCheckpointingKeepGB, r.StashReport())})
			}
		}
		if tr.keepingDeq && tr.runSteps == 0 {
			// The first step of this process made what the backend keeps.
			q := tr.cfg.Quantization
			tr.emit(LogEvent{Level: "info", Message: fmt.Sprintf("quantization.keep_dequantized_gb %g: %.2f GB of dequantized weights kept on the device (at most the budget, leaving 1 GiB free)",
				q.KeepDequantizedGB, float64(tr.b.(DequantKeeper).KeptDequantized())/1e9)})
		}
		tr.step++
		tr.tokens += tokens
		tr.runLossSum += loss
		tr.runSteps++
		tr.win.LossSum += loss
		tr.win.Steps++
		tr.win.AccSum += acc.sum
		tr.win.AccCount += acc.n
		tr.win.Tokens += tokens
		last := tr.step == total
		logged := tr.step%tr.cfg.Training.LoggingSteps == 0 || last
		sm := tr.metrics(norm, logged)
		if logged {
			tr.history = append(tr.history, sm.entry())
			tr.win = logWindow{start: time.Now()}
		}
		emit(StepEvent{sm})
		if len(prep.eval) > 0 && ((tr.cfg.Training.EvalSteps > 0 && tr.step%tr.cfg.Training.EvalSteps == 0) || last) {
			if err := tr.evaluate(ctx); err != nil {
				if ctx.Err() != nil {
					return nil, tr.cancelled(ctx)
				}
				return nil, err
			}
		}
		if s := tr.cfg.Training.SaveSteps; s > 0 && (tr.step%s == 0 || last) {
			if _, err := tr.saveCheckpoint(); err != nil {
				return nil, err
			}
		}
	}
	res := &Result{OutputDir: outDir, Steps: tr.step, FinalLoss: math.NaN(), FinalEvalLoss: math.NaN(), Plan: plan, Runtime: time.Since(tr.started)}
	if tr.runSteps > 0 {
		res.TrainLoss = tr.runLossSum / float64(tr.runSteps)
	}
	for _, e := range tr.history {
		if e.Loss != nil {
			res.FinalLoss = *e.Loss
		}
		if e.EvalLoss != nil {
			res.FinalEvalLoss = *e.EvalLoss
		}
	}
	tr.history = append(tr.history, LogEntry{Step: tr.step, Epoch: tr.epochAt(tr.step), TrainLoss: ptr(res.TrainLoss), TrainRuntime: ptr(res.Runtime.Seconds())})
	res.History = tr.history
	if ht := tr.hostTimes.String(); ht != "" {
		emit(LogEvent{Level: "debug", Message: ht})
	}
	if err := tr.writeOutputs(res); err != nil {
		return nil, err
	}
	emit(LogEvent{Level: "info", Message: fmt.Sprintf("adapter written to %s", outDir)})
	return res, nil
}

func loadMessage(job *Job) string {
	q := job.Config.Quantization
	src := job.modelSource()
	if job.GGUF != "" {
		src = fmt.Sprintf("%s (GGUF %s)", job.Config.Model, strings.TrimSpace(job.ggufFileType+" "+job.GGUF))
	}
	switch {
	case q.KeepGGUF:
		return fmt.Sprintf("loading %s, keeping its linear layers in their GGUF quantization", src)
	case q.LoadIn4bit:
		dq := ""
		if q.Bnb4bitUseDoubleQuant {
			dq = " with double quantization"
		}
		return fmt.Sprintf("loading %s and quantizing its linear layers to NF4%s", src, dq)
	}
	return fmt.Sprintf("loading %s", src)
}

// cancelled saves a checkpoint (unless told not to) and builds the error.
func (tr *trainer) cancelled(ctx context.Context) error {
	e := &CancelledError{Step: tr.step, Err: ctx.Err()}
	save := tr.job.SaveOnCancel == nil || tr.job.SaveOnCancel(ctx)
	switch {
	case !save || tr.step == 0:
	case tr.lastSave == tr.step:
		e.Checkpoint = checkpointDir(tr.job.outputDir(), tr.step)
	default:
		dir, err := tr.saveCheckpoint()
		if err != nil {
			return errors.Join(e, fmt.Errorf("saving the checkpoint on cancel: %w", err))
		}
		e.Checkpoint = dir
	}
	return e
}

// epochAt is the fractional epoch after `step` optimizer steps (the
// Trainer's epoch + micro-batches done / micro-batches per epoch).
func (tr *trainer) epochAt(step int) float64 {
	spe := tr.prep.plan.StepsPerEpoch
	e, k := step/spe, step%spe
	mb := tr.prep.plan.MicroBatches
	done := min(k*tr.cfg.Training.GradientAccumulationSteps, mb)
	return float64(e) + float64(done)/float64(mb)
}

// metrics builds the step's metrics from the window.
func (tr *trainer) metrics(norm float64, logged bool) StepMetrics {
	w := &tr.win
	sm := StepMetrics{Step: tr.step, Epoch: tr.epochAt(tr.step), GradNorm: norm, Tokens: tr.tokens, Logged: logged}
	if w.Steps > 0 {
		sm.Loss = w.LossSum / float64(w.Steps)
	}
	if w.AccCount > 0 {
		sm.MeanTokenAccuracy = w.AccSum / float64(w.AccCount)
	}
	// The rate of the next step, as the Trainer logs after scheduler.step().
	sm.LearningRate = tr.lr(tr.step)
	if el := w.elapsed + time.Since(w.start); el > 0 {
		sm.TokensPerSecond = float64(w.Tokens) / el.Seconds()
	}
	return sm
}

// lr is the learning rate of 0-based step s.
func (tr *trainer) lr(s int) float64 {
	return tr.sched.LR(s, tr.plan.TotalSteps, tr.plan.WarmupSteps, tr.cfg.Training.LearningRate)
}

// epochBatches returns epoch e's logical micro-batches (sequence indexes).
func (tr *trainer) epochBatches(e int) [][]int {
	if tr.epochCache.epoch != e {
		tr.epochCache.epoch = e
		tr.epochCache.batches = data.EpochBatches(len(tr.prep.train), tr.cfg.Training.PerDeviceTrainBatchSize, true, tr.seed, e)
	}
	return tr.epochCache.batches
}

// stepBatches returns the physical micro-batches of 0-based step g: the
// step's logical micro-batches (gradient_accumulation_steps of them, fewer
// at an epoch's end), each cut into pieces of microBS sequences.
func (tr *trainer) stepBatches(g int) [][]int {
	spe := tr.prep.plan.StepsPerEpoch
	batches := tr.epochBatches(g / spe)
	ga := tr.cfg.Training.GradientAccumulationSteps
	k := g % spe
	lo, hi := min(k*ga, len(batches)), min((k+1)*ga, len(batches))
	var out [][]int
	for _, lb := range batches[lo:hi] {
		for s := 0; s < len(lb); s += tr.microBS {
			out = append(out, lb[s:min(s+tr.microBS, len(lb))])
		}
	}
	return out
}

func (tr *trainer) collate(idx []int, from []data.Sequence) *Batch {
	seqs := make([]data.Sequence, len(idx))
	for i, k := range idx {
		seqs[i] = from[k]
	}
	b := tr.prep.collator.Collate(seqs)
	return &Batch{B: b.B, S: b.S, InputIDs: b.InputIDs, PositionIDs: b.PositionIDs, Labels: b.Labels, NextLabels: b.NextLabels}
}

// countTargets is the number of scored targets of a batch after the shift.
func countTargets(b *Batch) int {
	n := 0
	for _, t := range b.Targets() {
		if t != IgnoreIndex {
			n++
		}
	}
	return n
}

func countTokens(idx []int, from []data.Sequence) int64 {
	var n int64
	for _, k := range idx {
		n += int64(len(from[k].InputIDs))
	}
	return n
}

type accuracy struct {
	sum float64
	n   int
}

// trainStep runs optimizer step tr.step (0-based): forward and backward
// over its micro-batches, clipping, the optimizer update. It retries with
// smaller micro-batches on out-of-memory when auto_find_batch_size is on.
func (tr *trainer) trainStep(ctx context.Context) (loss float64, acc accuracy, norm float64, tokens int64, err error) {
	for {
		loss, acc, norm, tokens, err = tr.tryStep(ctx)
		if err == nil || !errors.Is(err, ErrOutOfMemory) {
			return
		}
		if tr.keepingDeq {
			// The kept weights are a speed-up, not a need: they go first.
			tr.b.(DequantKeeper).KeepDequantized(0)
			tr.keepingDeq = false
			tr.emit(LogEvent{Level: "warn", Message: fmt.Sprintf("out of memory with quantization.keep_dequantized_gb %g: retrying step %d without kept dequantized weights (%v)",
				tr.cfg.Quantization.KeepDequantizedGB, tr.step+1, err)})
			continue
		}
		if tr.m.CheckpointKeepBytes > 0 {
			// So are the kept activations (the next forward frees them).
			tr.m.CheckpointKeepBytes = 0
			tr.emit(LogEvent{Level: "warn", Message: fmt.Sprintf("out of memory with training.gradient_checkpointing_keep_gb %g: retrying step %d recomputing every layer (%v)",
				tr.cfg.Training.GradientCheckpointingKeepGB, tr.step+1, err)})
			continue
		}
		if err := tr.shrink(err); err != nil {
			return 0, acc, 0, 0, err
		}
	}
}

// shrink halves the micro-batch after an out-of-memory error, or says why
// it cannot.
func (tr *trainer) shrink(cause error) error {
	t := tr.cfg.Training
	if !t.AutoFindBatchSize {
		return fmt.Errorf("step %d with micro-batches of %d sequences: %w; lower training.per_device_train_batch_size (raising gradient_accumulation_steps keeps the effective batch) or max_seq_length, or set auto_find_batch_size: true", tr.step+1, tr.microBS, cause)
	}
	if tr.microBS <= 1 {
		return fmt.Errorf("step %d: %w even with micro-batches of one sequence; lower max_seq_length or use a device with more memory", tr.step+1, cause)
	}
	old := tr.microBS
	tr.microBS = (tr.microBS + 1) / 2
	// The buffers of the failed size go: a smaller batch would view them
	// (Viewer) and keep their memory.
	tr.m.ReleaseBuffers()
	pieces := (t.PerDeviceTrainBatchSize + tr.microBS - 1) / tr.microBS
	tr.emit(LogEvent{Level: "warn", Message: fmt.Sprintf("out of memory with micro-batches of %d sequences (auto_find_batch_size): retrying step %d with %d sequences and %d accumulation steps, the same %d sequences per optimizer step",
		old, tr.step+1, tr.microBS, pieces*t.GradientAccumulationSteps, t.PerDeviceTrainBatchSize*t.GradientAccumulationSteps)})
	return nil
}

// guard runs f, turning a panic that carries an ErrOutOfMemory error into
// that error; other panics go on.
func guard(b Backend, f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if e, ok := r.(error); ok && errors.Is(e, ErrOutOfMemory) {
				err = e
				return
			}
			panic(r)
		}
	}()
	if err := f(); err != nil {
		return err
	}
	return b.Sync()
}

func (tr *trainer) tryStep(ctx context.Context) (loss float64, acc accuracy, norm float64, tokens int64, err error) {
	g := tr.step
	var st stepTimes
	t0 := time.Now()
	if !tr.hostTimes.stepEnd.IsZero() {
		st.other = t0.Sub(tr.hostTimes.stepEnd)
	}
	mark := func(d *time.Duration) { t := time.Now(); *d += t.Sub(t0); t0 = t }
	micro := tr.stepBatches(g)
	batches := make([]*Batch, len(micro))
	numItems := 0
	for i, idx := range micro {
		batches[i] = tr.collate(idx, tr.prep.train)
		numItems += countTargets(batches[i])
		tokens += countTokens(idx, tr.prep.train)
	}
	mark(&st.batches)
	m := tr.m
	var lossSum float64
	err = guard(tr.b, func() error {
		m.NumItemsInBatch = numItems
		m.ZeroGrads()
		for i, b := range batches {
			if err := ctx.Err(); err != nil {
				return err
			}
			l, n, correct, err := m.Forward(b, true, DeriveSeed(tr.seed, uint64(g), uint64(i)))
			if err != nil {
				return fmt.Errorf("step %d: %w", g+1, err)
			}
			mark(&st.forward)
			if err := m.Backward(); err != nil {
				return fmt.Errorf("step %d: %w", g+1, err)
			}
			mark(&st.backward)
			lossSum += l * float64(n)
			if n > 0 {
				acc.sum += float64(correct) / float64(n)
				acc.n++
			}
		}
		return nil
	})
	m.NumItemsInBatch = 0
	if err != nil {
		return 0, accuracy{}, 0, 0, err
	}
	if numItems > 0 {
		loss = lossSum / float64(numItems)
	}
	if norm, err = tr.clipGradients(); err != nil {
		return 0, accuracy{}, 0, 0, fmt.Errorf("step %d: clipping the gradients: %w", g+1, err)
	}
	mark(&st.norm)
	if math.IsNaN(loss) || math.IsInf(loss, 0) || math.IsNaN(norm) || math.IsInf(norm, 0) {
		return 0, accuracy{}, 0, 0, fmt.Errorf("step %d: the loss (%g) or the gradient norm (%g) is not finite%s; lower training.learning_rate or check the data (OLLAMA_TUNE_CHECK_FINITE=1 names the first non-finite activation)", g+1, loss, norm, tr.nonFiniteGrads())
	}
	t := tr.cfg.Training
	hp := AdamParams{
		LR: float32(tr.lr(g)), Beta1: float32(t.AdamBeta1), Beta2: float32(t.AdamBeta2),
		Eps: float32(t.AdamEpsilon), WeightDecay: float32(t.WeightDecay), Step: g + 1,
	}
	if err := guard(tr.b, func() error { tr.opt.update(hp); return nil }); err != nil {
		return 0, accuracy{}, 0, 0, err
	}
	mark(&st.optim)
	if h := &tr.hostTimes; !h.stepEnd.IsZero() { // (the first step is apart)
		h.n++
		h.batches, h.forward, h.backward = h.batches+st.batches, h.forward+st.forward, h.backward+st.backward
		h.norm, h.optim, h.other = h.norm+st.norm, h.optim+st.optim, h.other+st.other
	}
	tr.hostTimes.stepEnd = t0
	return loss, acc, norm, tokens, nil
}

// clipGradients is clip_grad_norm_ over all LoRA gradients: it returns
// their total norm and scales them to training.max_grad_norm when it is
// above. A GradClipper does it on the device; otherwise SumSquares per
// gradient, optim.ClipScale and Scale (the reference).
func (tr *trainer) clipGradients() (norm float64, err error) {
	maxNorm := tr.cfg.Training.MaxGradNorm
	if c, ok := tr.b.(GradClipper); ok {
		grads := make([]Tensor, len(tr.opt.params))
		for i, p := range tr.opt.params {
			grads[i] = p.Grad
		}
		if err := guard(tr.b, func() error { c.ClipGradNorm(grads, maxNorm); return nil }); err != nil {
			return 0, err
		}
		return c.GradNorm()
	}
	var ss float64
	for _, p := range tr.opt.params {
		ss += tr.b.SumSquares(p.Grad)
	}
	norm, scale := optim.ClipScale(ss, maxNorm)
	if scale < 1 && !math.IsNaN(norm) && !math.IsInf(norm, 0) {
		for _, p := range tr.opt.params {
			tr.b.Scale(p.Grad, scale)
		}
	}
	return norm, nil
}

// evaluate computes the loss and accuracy on the held-out split and logs them.
func (tr *trainer) evaluate(ctx context.Context) error {
	for {
		loss, accSum, err := tr.tryEval(ctx)
		if err == nil {
			e := LogEntry{Step: tr.step, Epoch: tr.epochAt(tr.step), EvalLoss: ptr(loss), EvalMeanTokenAccuracy: ptr(accSum)}
			tr.history = append(tr.history, e)
			tr.emit(EvalEvent{Step: tr.step, Epoch: e.Epoch, Loss: loss, MeanTokenAccuracy: accSum})
			return nil
		}
		if !errors.Is(err, ErrOutOfMemory) {
			return err
		}
		if err := tr.shrink(err); err != nil {
			return err
		}
	}
}

func (tr *trainer) tryEval(ctx context.Context) (loss, acc float64, err error) {
	var sum float64
	var n, correct int
	err = guard(tr.b, func() error {
		for _, idx := range data.EpochBatches(len(tr.prep.eval), tr.microBS, false, 0, 0) {
			if err := ctx.Err(); err != nil {
				return err
			}
			b := tr.collate(idx, tr.prep.eval)
			l, k, c, err := tr.m.Forward(b, false, 0)
			if err != nil {
				return fmt.Errorf("evaluation: %w", err)
			}
			sum += l * float64(k)
			n += k
			correct += c
		}
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	if n == 0 {
		return 0, 0, nil
	}
	return sum / float64(n), float64(correct) / float64(n), nil
}

// checkWritable reports an output folder that cannot be written, without
// creating anything: the folder itself when it exists, else its nearest
// existing parent.
func checkWritable(dir string) error {
	d := dir
	for {
		st, err := os.Stat(d)
		if err == nil {
			if !st.IsDir() {
				return fmt.Errorf("%s is a file, not a folder", d)
			}
			break
		}
		parent := filepath.Dir(d)
		if parent == d {
			return fmt.Errorf("%s: %w", dir, err)
		}
		d = parent
	}
	f, err := os.CreateTemp(d, ".ollama-tune-probe-*")
	if err != nil {
		return fmt.Errorf("%s cannot be written: %w", dir, err)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

func ptr(f float64) *float64 { return &f }

// nonFiniteGrads names the LoRA gradients holding a non-finite value (", in
// NAME, ..." or ""), for the error of a non-finite gradient norm.
func (tr *trainer) nonFiniteGrads() string {
	var names []string
	n := 0
	_ = guard(tr.b, func() error {
		for _, p := range tr.opt.params {
			for _, x := range tr.b.Download(p.Grad) {
				if nonFinite(x) {
					if len(names) < 4 {
						names = append(names, p.Name)
					}
					n++
					break
				}
			}
		}
		return nil
	})
	if n == 0 {
		return ""
	}
	more := ""
	if n > len(names) {
		more = fmt.Sprintf(" and %d more", n-len(names))
	}
	return fmt.Sprintf(" (in the gradients of %s%s)", strings.Join(names, ", "), more)
}
