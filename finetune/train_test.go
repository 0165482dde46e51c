package finetune

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/peft"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// smallJob is a quick job on a tiny Phi-3 (hidden 32, intermediate 512 so
// that the larger LoRA matrices have >= 4096 values and take the 8-bit
// optimizer state) and the first rows of the Yoda sentences: packed with
// bfd into sequences of 48 tokens, micro-batches of 2 sequences, gradient
// accumulation 2, LoRA dropout on, 8-bit AdamW, gradient checkpointing.
func smallJob(t testing.TB, model, out string, rows int) TrainConfig {
	t.Helper()
	csvPath := testutil.YodaCSV(t, rows)
	c := tinyJobConfig(model, csvPath, out)
	c.LoRA.R, c.LoRA.LoRAAlpha = 8, 16
	c.Training.PerDeviceTrainBatchSize = 2
	c.Training.GradientAccumulationSteps = 2
	c.Training.MaxSeqLength = 48
	c.Training.NumTrainEpochs = 0
	c.Training.MaxSteps = 6
	c.Training.LearningRate = 5e-3
	c.Training.WarmupRatio = 0.2
	c.Training.LoggingSteps = 2
	c.Training.SaveSteps = 3
	c.Training.AutoFindBatchSize = false
	return c
}

var smallModel = struct {
	cfg *Config
}{tinyPhi3(32, 512, 2, 4)}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTrainResumeBitwise: 6 steps in one go, and 3 steps, a cancel, and a
// resume of 3 more, give byte-identical adapters (and optimizer states);
// so does resuming a copy of the checkpoint the uninterrupted run saved at
// step 3, by name, in another folder.
func TestTrainResumeBitwise(t *testing.T) {
	model := tinyModelDir(t, smallModel.cfg, 11)
	root := t.TempDir()

	full := smallJob(t, model, filepath.Join(root, "full"), 14)
	res, err := Train(context.Background(), newTestJob(t, full, ""), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Steps != 6 {
		t.Fatalf("ran %d steps", res.Steps)
	}
	want := readFile(t, filepath.Join(full.Training.OutputDir, peft.WeightsName))
	wantOpt := readFile(t, filepath.Join(full.Training.OutputDir, "checkpoint-6", optimizerFile))
	// The run ended on a save step: the output's adapter files are
	// checkpoint-6's bytes (finalAdapterFiles copies them), in files of
	// their own.
	for _, name := range []string{peft.WeightsName, peft.ConfigName} {
		a, b := filepath.Join(full.Training.OutputDir, name), filepath.Join(full.Training.OutputDir, "checkpoint-6", name)
		if !bytes.Equal(readFile(t, a), readFile(t, b)) {
			t.Errorf("%s differs from checkpoint-6's", name)
		}
		if fa, err := os.Stat(a); err != nil {
			t.Error(err)
		} else if fb, err := os.Stat(b); err != nil || os.SameFile(fa, fb) {
			t.Errorf("%s is checkpoint-6's very file (%v)", name, err)
		}
	}

	// Cancel after step 3 (the emit callback runs on the training goroutine,
	// so the cancel lands before step 4 starts).
	split := full
	split.Training.OutputDir = filepath.Join(root, "split")
	split.Training.SaveSteps = 0 // the checkpoint comes from the cancel
	ctx, cancel := context.WithCancel(context.Background())
	_, err = Train(ctx, newTestJob(t, split, ""), func(e TrainEvent) {
		if s, ok := e.(StepEvent); ok && s.Step == 3 {
			cancel()
		}
	})
	var ce *CancelledError
	if !errors.As(err, &ce) || !errors.Is(err, context.Canceled) || ce.Step != 3 || ce.Checkpoint != filepath.Join(split.Training.OutputDir, "checkpoint-3") {
		t.Fatalf("cancelled run: %v (%+v)", err, ce)
	}
	if _, err := os.Stat(filepath.Join(split.Training.OutputDir, peft.WeightsName)); err == nil {
		t.Error("a cancelled run wrote the final adapter")
	}
	// A fresh run into a folder with checkpoints is refused.
	if _, err := Train(context.Background(), newTestJob(t, split, ""), nil); err == nil || !strings.Contains(err.Error(), "--resume") {
		t.Errorf("fresh run over checkpoints: %v", err)
	}
	var started StartedEvent
	split.Training.SaveSteps = 3 // so that checkpoint-6 holds the optimizer state to compare
	res2, err := Train(context.Background(), newTestJob(t, split, ResumeLatest), func(e TrainEvent) {
		if s, ok := e.(StartedEvent); ok {
			started = s
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if started.StartStep != 3 || res2.Steps != 6 {
		t.Errorf("resumed at %d, ended at %d", started.StartStep, res2.Steps)
	}
	if got := readFile(t, filepath.Join(split.Training.OutputDir, peft.WeightsName)); !bytes.Equal(got, want) {
		t.Error("3 steps + resume + 3 steps: the adapter differs from 6 uninterrupted steps")
	}
	if got := readFile(t, filepath.Join(split.Training.OutputDir, "checkpoint-6", optimizerFile)); !bytes.Equal(got, wantOpt) {
		t.Error("3 steps + resume + 3 steps: the optimizer state differs from 6 uninterrupted steps")
	}
	// The logged losses agree too (the logging window crosses the resume).
	if a, b := lossesOf(res.History), lossesOf(res2.History); a != b {
		t.Errorf("logged losses differ:\n%s\n%s", a, b)
	}

	// A named checkpoint copied elsewhere.
	named := full
	named.Training.OutputDir = filepath.Join(root, "named")
	if err := os.MkdirAll(named.Training.OutputDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(filepath.Join(named.Training.OutputDir, "checkpoint-3"), os.DirFS(filepath.Join(full.Training.OutputDir, "checkpoint-3"))); err != nil {
		t.Fatal(err)
	}
	if _, err := Train(context.Background(), newTestJob(t, named, "checkpoint-3"), nil); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(named.Training.OutputDir, peft.WeightsName)); !bytes.Equal(got, want) {
		t.Error("resume from a named checkpoint: the adapter differs")
	}

	// Resuming with other data is refused.
	other := named
	other.Training.OutputDir = filepath.Join(root, "other")
	os.MkdirAll(other.Training.OutputDir, 0o755)
	os.CopyFS(filepath.Join(other.Training.OutputDir, "checkpoint-3"), os.DirFS(filepath.Join(full.Training.OutputDir, "checkpoint-3")))
	other.Dataset.Path = testutil.YodaCSV(t, 15)
	if _, err := Train(context.Background(), newTestJob(t, other, ResumeLatest), nil); err == nil || !strings.Contains(err.Error(), "training data differ") {
		t.Errorf("resume with other data: %v", err)
	}
}

func lossesOf(h []LogEntry) string {
	var b strings.Builder
	for _, e := range h {
		if e.Loss != nil {
			fmt.Fprintf(&b, "%d:%v ", e.Step, *e.Loss)
		}
	}
	return b.String()
}

// TestTrainOutputs checks the files of a finished run and the events.
func TestTrainOutputs(t *testing.T) {
	model := tinyModelDir(t, smallModel.cfg, 12)
	c := smallJob(t, model, filepath.Join(t.TempDir(), "out"), 14)
	c.Dataset.EvalSplit = 4
	c.Training.EvalSteps = 3
	c.Training.SaveSteps = 1
	c.Training.SaveTotalLimit = 2
	c.Training.Optim = "adamw_torch"
	emit, evs := collectEvents()
	res, err := Train(context.Background(), newTestJob(t, c, ""), emit)
	if err != nil {
		t.Fatal(err)
	}
	out := c.Training.OutputDir

	// Events: Started first, a StepEvent per step, logs at 2, 4, 6, evals at 3 and 6, checkpoints 1..6.
	var steps, logged, evals, ckpts []int
	for i, e := range *evs {
		switch e := e.(type) {
		case StartedEvent:
			if i > 2 || e.Plan.TotalSteps != 6 || e.Plan.EvalExamples != 4 || e.Plan.Data.Examples != 10 {
				t.Errorf("started event %d: %+v", i, e)
			}
		case StepEvent:
			steps = append(steps, e.Step)
			if e.Logged {
				logged = append(logged, e.Step)
			}
			if !(e.Loss > 0) || !(e.GradNorm > 0) || e.TokensPerSecond <= 0 {
				t.Errorf("step %d metrics: %+v", e.Step, e.StepMetrics)
			}
		case EvalEvent:
			evals = append(evals, e.Step)
		case CheckpointEvent:
			ckpts = append(ckpts, e.Step)
			// each checkpoint's debug line, just before it, says what its files took
			if d, ok := (*evs)[i-1].(LogEvent); !ok || d.Level != "debug" || !strings.Contains(d.Message, e.Path+" written in") ||
				!strings.Contains(d.Message, "optimizer.safetensors") || !strings.Contains(d.Message, " MB ") {
				t.Errorf("before checkpoint %d: %+v, want its debug timing line", e.Step, (*evs)[i-1])
			}
		}
	}
	if fmt.Sprint(steps, logged, evals, ckpts) != "[1 2 3 4 5 6] [2 4 6] [3 6] [1 2 3 4 5 6]" {
		t.Errorf("steps %v, logged %v, evals %v, checkpoints %v", steps, logged, evals, ckpts)
	}
	// The debug line of the steps' host times, over the 5 steps after the first.
	hostLine := 0
	for _, e := range *evs {
		if d, ok := e.(LogEvent); ok && d.Level == "debug" && strings.HasPrefix(d.Message, "the host's time a step (mean of 5 after the first): batches ") {
			hostLine++
		}
	}
	if hostLine != 1 {
		t.Errorf("%d debug lines of the steps' host times, want 1", hostLine)
	}
	// save_total_limit 2 keeps the newest two.
	entries, _ := os.ReadDir(out)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	wantFiles := []string{"README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja", "checkpoint-5", "checkpoint-6",
		"loss.png", "metrics.jsonl", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json", "training_config.json"}
	if fmt.Sprint(names) != fmt.Sprint(wantFiles) {
		t.Errorf("output folder holds %v,\nwant %v", names, wantFiles)
	}
	// The adapter reads back against the base, and loads into a model whose
	// logits equal those of the trained one's checkpoint adapter.
	a, err := peft.Read(out, PEFTBase(smallModel.cfg))
	if err != nil {
		t.Fatal(err)
	}
	if a.Config.R != 8 || a.Config.LoRAAlpha != 16 || a.Config.LoRADropout != 0.05 || a.Config.BaseModelNameOrPath != model || fmt.Sprint(a.Config.TargetModules) != "[down_proj gate_up_proj o_proj qkv_proj]" {
		t.Errorf("adapter config %+v", a.Config)
	}
	if !bytes.Equal(readFile(t, filepath.Join(out, peft.WeightsName)), readFile(t, filepath.Join(out, "checkpoint-6", peft.WeightsName))) {
		t.Error("the final adapter differs from checkpoint-6's")
	}
	nonzero := false
	for _, ts := range a.Tensors {
		if strings.HasSuffix(ts.Name, "lora_B.weight") {
			for _, v := range ts.Data {
				nonzero = nonzero || v != 0
			}
		}
	}
	if !nonzero {
		t.Error("every lora_B is still zero after training")
	}
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} {
		if !bytes.Equal(readFile(t, filepath.Join(out, f)), readFile(t, filepath.Join(model, f))) {
			t.Errorf("%s was not copied as is", f)
		}
	}
	// metrics.jsonl: the logs at 2, 4, 6, the evals at 3, 6, the summary.
	var lines []LogEntry
	for _, l := range strings.Split(strings.TrimSpace(string(readFile(t, filepath.Join(out, "metrics.jsonl")))), "\n") {
		var e LogEntry
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("metrics.jsonl line %q: %v", l, err)
		}
		lines = append(lines, e)
	}
	var kinds []string
	for _, e := range lines {
		switch {
		case e.Loss != nil:
			kinds = append(kinds, fmt.Sprintf("log%d", e.Step))
			if e.GradNorm == nil || e.LearningRate == nil || e.MeanTokenAccuracy == nil || *e.MeanTokenAccuracy < 0 || *e.MeanTokenAccuracy > 1 {
				t.Errorf("log entry %+v", e)
			}
		case e.EvalLoss != nil:
			kinds = append(kinds, fmt.Sprintf("eval%d", e.Step))
		case e.TrainLoss != nil:
			kinds = append(kinds, fmt.Sprintf("summary%d", e.Step))
		}
	}
	if fmt.Sprint(kinds) != "[log2 eval3 log4 log6 eval6 summary6]" {
		t.Errorf("metrics.jsonl entries %v", kinds)
	}
	if res.FinalLoss != *lines[3].Loss || res.FinalEvalLoss != *lines[4].EvalLoss {
		t.Errorf("result losses %v, %v", res.FinalLoss, res.FinalEvalLoss)
	}
	// The learning rate logged at step s is the one of (0-based) step s:
	// warm-up ceil(6*0.2) = 2 steps, then linear to 0 at 6.
	for i, want := range map[int]float64{0: 5e-3 * 4 / 4, 2: 5e-3 * 2 / 4, 3: 0} {
		if got := *lines[i].LearningRate; math.Abs(got-want) > 1e-12 {
			t.Errorf("learning rate at step %d: %v, want %v", lines[i].Step, got, want)
		}
	}
	png := readFile(t, filepath.Join(out, "loss.png"))
	if !bytes.HasPrefix(png, []byte("\x89PNG\r\n\x1a\n")) || len(png) < 2000 {
		t.Errorf("loss.png is not a PNG (%d bytes)", len(png))
	}
	card := string(readFile(t, filepath.Join(out, "README.md")))
	for _, want := range []string{"base_model: " + yamlString(model), "library_name: peft", fmt.Sprintf("final training loss: %.4f (step 6)", res.FinalLoss),
		fmt.Sprintf("final evaluation loss: %.4f", res.FinalEvalLoss), "10 training examples, 4 held out", "r 8, alpha 16, dropout 0.05"} {
		if !strings.Contains(card, want) {
			t.Errorf("README.md lacks %q:\n%s", want, card)
		}
	}
	// trainer_state.json of the last checkpoint has the Trainer's fields.
	var st trainerState
	if err := json.Unmarshal(readFile(t, filepath.Join(out, "checkpoint-6", trainerFile)), &st); err != nil {
		t.Fatal(err)
	}
	if st.GlobalStep != 6 || st.MaxSteps != 6 || len(st.LogHistory) != 5 || st.OllamaTune.MicroBatchSize != 2 {
		t.Errorf("trainer_state.json: %+v", st)
	}
}

// TestTrainAccumulationEquivalence: micro-batches of 1 with gradient
// accumulation 2 train on the same sequences per step as micro-batches of
// 2 and, thanks to num_items_in_batch, follow the same loss to float
// rounding (a mean per micro-batch would not).
func TestTrainAccumulationEquivalence(t *testing.T) {
	model := tinyModelDir(t, smallModel.cfg, 13)
	run := func(bs, ga int) *Result {
		c := smallJob(t, model, filepath.Join(t.TempDir(), "out"), 14)
		c.Training.PerDeviceTrainBatchSize, c.Training.GradientAccumulationSteps = bs, ga
		c.Training.MaxSteps, c.Training.LoggingSteps, c.Training.SaveSteps = 4, 1, 0
		c.LoRA.LoRADropout = 0 // dropout masks are per micro-batch
		c.Training.Optim = "adamw_torch"
		res, err := Train(context.Background(), newTestJob(t, c, ""), nil)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	a, b := run(2, 1), run(1, 2)
	for i := range a.History {
		if a.History[i].Loss == nil {
			continue
		}
		la, lb := *a.History[i].Loss, *b.History[i].Loss
		if math.Abs(la-lb) > 1e-5*la {
			t.Errorf("step %d: loss %v with 2x1, %v with 1x2", a.History[i].Step, la, lb)
		}
	}
}

// oomBackend fails every allocation of more than limit values, as a GPU
// would with too little memory.
type oomBackend struct {
	*CPUBackend
	limit, fails int
}

func (b *oomBackend) Alloc(shape ...int) Tensor {
	if n := numel(shape); n > b.limit {
		b.fails++
		panic(fmt.Errorf("fake backend: allocating %v: %w", shape, ErrOutOfMemory))
	}
	return b.CPUBackend.Alloc(shape...)
}

// TestAutoFindBatchSize: with auto_find_batch_size, out of memory halves
// the micro-batch and doubles the accumulation, so a run of micro-batches
// of 4 on a device that only fits 2 equals, bit for bit, a run configured
// with 2 x 2; without it the run fails with ErrOutOfMemory.
func TestAutoFindBatchSize(t *testing.T) {
	model := tinyModelDir(t, smallModel.cfg, 14)
	// The largest buffer is gate_up [T, 2*512]: a micro-batch of 4
	// sequences of up to 48 tokens has T up to 192; of 2, up to 96.
	limit := 96 * 1024
	run := func(bs, ga int, auto bool, b Backend) (*Result, []string, error) {
		c := smallJob(t, model, filepath.Join(t.TempDir(), "out"), 14)
		c.Training.PerDeviceTrainBatchSize, c.Training.GradientAccumulationSteps = bs, ga
		c.Training.AutoFindBatchSize = auto
		c.Training.MaxSteps, c.Training.SaveSteps = 3, 0
		return trainWarnings(t, c, b)
	}
	ref, _, err := run(2, 2, false, NewCPUBackend(CPUOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	fake := &oomBackend{CPUBackend: NewCPUBackend(CPUOptions{}), limit: limit}
	got, msgs, err := run(4, 1, true, fake)
	if err != nil {
		t.Fatal(err)
	}
	if fake.fails == 0 || len(msgs) != 1 || !strings.Contains(msgs[0], "retrying step 1 with 2 sequences and 2 accumulation steps, the same 4 sequences per optimizer step") {
		t.Errorf("%d failed allocations, messages %q", fake.fails, msgs)
	}
	if !bytes.Equal(readFile(t, filepath.Join(got.OutputDir, peft.WeightsName)), readFile(t, filepath.Join(ref.OutputDir, peft.WeightsName))) {
		t.Error("auto_find_batch_size 4 -> 2 differs from a 2 x 2 run")
	}
	_, _, err = run(4, 1, false, &oomBackend{CPUBackend: NewCPUBackend(CPUOptions{}), limit: limit})
	if !errors.Is(err, ErrOutOfMemory) || !strings.Contains(err.Error(), "auto_find_batch_size") {
		t.Errorf("without auto_find_batch_size: %v", err)
	}
	// The model (largest allocation: lora_B of gate_up, 1024 x 8) fits,
	// not even one sequence does.
	_, _, err = run(4, 1, true, &oomBackend{CPUBackend: NewCPUBackend(CPUOptions{}), limit: 10000})
	if !errors.Is(err, ErrOutOfMemory) || !strings.Contains(err.Error(), "even with micro-batches of one sequence") {
		t.Errorf("out of memory at micro-batch 1: %v", err)
	}
	_, _, err = run(4, 1, true, &oomBackend{CPUBackend: NewCPUBackend(CPUOptions{}), limit: 10})
	if !errors.Is(err, ErrOutOfMemory) || !strings.Contains(err.Error(), "the model does not fit") {
		t.Errorf("out of memory while loading: %v", err)
	}
}

// trainWarnings trains c on backend b and returns the result, the
// warnings the run logged and its error.
func trainWarnings(t *testing.T, c TrainConfig, b Backend) (*Result, []string, error) {
	return trainLogs(t, c, b, "warn")
}

// trainLogs trains c on backend b and returns the result, the messages
// the run logged at level and its error.
func trainLogs(t *testing.T, c TrainConfig, b Backend, level string) (*Result, []string, error) {
	t.Helper()
	j := newTestJob(t, c, "")
	j.NewBackend = func(DType) (Backend, error) { return b, nil }
	var msgs []string
	res, err := Train(context.Background(), j, func(e TrainEvent) {
		if l, ok := e.(LogEvent); ok && l.Level == level {
			msgs = append(msgs, l.Message)
		}
	})
	return res, msgs, err
}

// twoStepRun trains two steps (no checkpoints) of the small model drawn
// from seed n, on n rows, on backend b, with edit's changes to the config
// (nil: none), and returns the result and the warnings the run logged.
func twoStepRun(t *testing.T, n int, b Backend, edit func(*TrainConfig)) (*Result, []string) {
	t.Helper()
	c := smallJob(t, tinyModelDir(t, smallModel.cfg, uint64(n)), filepath.Join(t.TempDir(), "out"), n)
	c.Training.MaxSteps, c.Training.SaveSteps = 2, 0
	if edit != nil {
		edit(&c)
	}
	res, msgs, err := trainWarnings(t, c, b)
	if err != nil {
		t.Fatal(err)
	}
	return res, msgs
}

// sameAdapter checks that run got wrote ref's adapter weights, byte for
// byte.
func sameAdapter(t *testing.T, got, ref *Result, what string) {
	t.Helper()
	if !bytes.Equal(readFile(t, filepath.Join(got.OutputDir, peft.WeightsName)), readFile(t, filepath.Join(ref.OutputDir, peft.WeightsName))) {
		t.Errorf("%s differs from a run without them", what)
	}
}

// keepOOMBackend runs out of memory for the batch's buffers while it keeps
// dequantized weights (KeepDequantized > 0), as a GPU whose spare memory
// the kept weights took would.
type keepOOMBackend struct {
	*CPUBackend
	keep  []int64
	fails int
}

func (b *keepOOMBackend) KeepDequantized(n int64) { b.keep = append(b.keep, n) }

func (b *keepOOMBackend) KeptDequantized() int64 { return 0 }

func (b *keepOOMBackend) AllocInt32(n int) Tensor {
	if len(b.keep) > 0 && b.keep[len(b.keep)-1] > 0 {
		b.fails++
		panic(fmt.Errorf("fake backend: allocating %d ids: %w", n, ErrOutOfMemory))
	}
	return b.CPUBackend.AllocInt32(n)
}

// TestKeepDequantizedDroppedOnOOM: quantization.keep_dequantized_gb is a
// speed-up, not a need: a step that runs out of memory while the backend
// keeps dequantized weights is retried, at the same micro-batch size and
// without auto_find_batch_size, after the trainer told the backend to
// drop them; the adapter is the one a run without the option makes.
func TestKeepDequantizedDroppedOnOOM(t *testing.T) {
	ref, _ := twoStepRun(t, 14, NewCPUBackend(CPUOptions{}), nil)
	fake := &keepOOMBackend{CPUBackend: NewCPUBackend(CPUOptions{})}
	got, msgs := twoStepRun(t, 14, fake, func(c *TrainConfig) { c.Quantization.KeepDequantizedGB = 2.5 })
	if fmt.Sprint(fake.keep) != "[2500000000 0]" || fake.fails != 1 {
		t.Errorf("KeepDequantized calls %v, %d failed allocations; want 2.5 GB, then 0 after one failure", fake.keep, fake.fails)
	}
	if len(msgs) != 1 || !strings.Contains(msgs[0], "keep_dequantized_gb 2.5: retrying step 1 without kept dequantized weights") {
		t.Errorf("warnings %q", msgs)
	}
	sameAdapter(t, got, ref, "the run that dropped its kept weights")
}

// stashOOMBackend runs out of memory in its first Stash, as a GPU whose
// memory the kept activations took would later in the step.
type stashOOMBackend struct {
	*CPUBackend
	stashes, fails int
	hosted         []Weight // MoveToHost calls
}

func (b *stashOOMBackend) MoveToHost(w Weight) error { b.hosted = append(b.hosted, w); return nil }

func (b *stashOOMBackend) Stash(key int, t Tensor) bool {
	b.stashes++
	if b.fails == 0 {
		b.fails++
		panic(fmt.Errorf("fake backend: stashing: %w", ErrOutOfMemory))
	}
	return b.CPUBackend.Stash(key, t)
}

// TestCheckpointKeepDroppedOnOOM: training.gradient_checkpointing_keep_gb
// is a speed-up too: a step that runs out of memory while activations are
// kept is retried recomputing every layer (no more Stash calls), with a
// warning; the adapter is the one a run without the option makes.
func TestCheckpointKeepDroppedOnOOM(t *testing.T) {
	ckpt := func(c *TrainConfig) { c.Training.GradientCheckpointing = true }
	ref, _ := twoStepRun(t, 15, NewCPUBackend(CPUOptions{}), ckpt)
	fake := &stashOOMBackend{CPUBackend: NewCPUBackend(CPUOptions{})}
	got, msgs := twoStepRun(t, 15, fake, func(c *TrainConfig) { ckpt(c); c.Training.GradientCheckpointingKeepGB = 1.5 })
	if fake.stashes != 1 || fake.fails != 1 {
		t.Errorf("%d Stash calls, %d failed; want the one that failed", fake.stashes, fake.fails)
	}
	if len(fake.hosted) != 1 || fake.hosted[0].Out() != smallModel.cfg.VocabSize {
		t.Errorf("MoveToHost calls %v, want one, for the token embeddings", fake.hosted)
	}
	if len(msgs) != 1 || !strings.Contains(msgs[0], "gradient_checkpointing_keep_gb 1.5: retrying step 1 recomputing every layer") {
		t.Errorf("warnings %q", msgs)
	}
	sameAdapter(t, got, ref, "the run that dropped its kept activations")
}

// snapshot lists the files of a folder with their contents.
func snapshot(t testing.TB, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			fmt.Fprintf(&b, "%s/\n", rel)
			return nil
		}
		fmt.Fprintf(&b, "%s %x\n", rel, readFile(t, p))
		return nil
	})
	return b.String()
}

// TestTrainBadInput: clear errors, no partial outputs, the previous
// output folder untouched.
func TestTrainBadInput(t *testing.T) {
	model := tinyModelDir(t, smallModel.cfg, 15)
	out := filepath.Join(t.TempDir(), "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(out, peft.WeightsName), []byte("previous adapter"), 0o644)
	os.WriteFile(filepath.Join(out, "README.md"), []byte("previous card"), 0o644)
	before := snapshot(t, out)
	base := smallJob(t, model, out, 8)
	base.Training.MaxSteps, base.Training.SaveSteps = 2, 0

	emptyCSV := filepath.Join(t.TempDir(), "empty.csv")
	os.WriteFile(emptyCSV, []byte("sentence,translation,translation_extra\n,,\n\"\",,\n"), 0o644)
	notDir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDir, []byte("x"), 0o644)

	cases := []struct {
		name string
		edit func(c *TrainConfig)
		job  func(j *Job)
		want []string
	}{
		{"optimizer typo", func(c *TrainConfig) { c.Training.Optim = "adamw_8bits" }, nil, []string{`"training.optim"`, `"adamw_8bits" is not allowed`, "paged_adamw_8bit"}},
		{"missing data", func(c *TrainConfig) { c.Dataset.Path = filepath.Join(out, "nope.csv") }, nil, []string{"dataset", "nope.csv", "no such file"}},
		{"no usable rows", func(c *TrainConfig) { c.Dataset.Path = emptyCSV }, nil, []string{"empty.csv", "no examples", "every row is empty"}},
		{"unwritable output", func(c *TrainConfig) { c.Training.OutputDir = filepath.Join(notDir, "out") }, nil, []string{`"training.output_dir"`, "is a file, not a folder"}},
		{"eval split too big", func(c *TrainConfig) { c.Dataset.EvalSplit = 8 }, nil, []string{`"dataset.eval_split"`, "leaves no training examples"}},
		{"full disk", nil, func(j *Job) {
			j.wrapWriter = func(name string, w io.Writer) io.Writer {
				if name == "loss.png" {
					return testutil.FullDisk(w, 100)
				}
				return w
			}
		}, []string{"write outputs to", "nothing was changed there", "no space left on device"}},
		{"full disk in a checkpoint", func(c *TrainConfig) { c.Training.SaveSteps = 1 }, func(j *Job) {
			j.wrapWriter = func(name string, w io.Writer) io.Writer {
				if name == optimizerFile {
					return testutil.FullDisk(w, 10)
				}
				return w
			}
		}, []string{"checkpoint", "checkpoint-1", "no space left on device"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			if tc.edit != nil {
				tc.edit(&c)
			}
			j, err := NewJob(context.Background(), c, JobOptions{})
			if err == nil {
				if tc.job != nil {
					tc.job(j)
				}
				_, err = Train(context.Background(), j, nil)
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if got := snapshot(t, out); got != before {
				t.Errorf("the output folder changed:\n%s\nwas\n%s", got, before)
			}
		})
	}
	// A model folder that does not exist, and one without a tokenizer.
	c := base
	c.Model = filepath.Join(out, "no-model")
	if _, err := NewJob(context.Background(), c, JobOptions{}); err == nil || !strings.Contains(err.Error(), "no such folder") {
		t.Errorf("missing model: %v", err)
	}
	bare := t.TempDir()
	WriteRandomCheckpoint(bare, smallModel.cfg, 1, F32)
	c.Model = bare
	if _, err := NewJob(context.Background(), c, JobOptions{}); err == nil || !strings.Contains(err.Error(), "tokenizer") {
		t.Errorf("model without tokenizer: %v", err)
	}
}

// TestPlanSeed: the dry-run plan of the seed's job (examples/yoda.yaml's
// settings) on the 720 Yoda sentences reproduces the tutorial's numbers:
// 21,801 tokens in chat format, 12,582,912 trainable parameters,
// get_memory_footprint's 2,651,074,752 bytes after LoRA, and, with
// wrapped packing, 220 optimizer steps for 10 epochs: the tutorial ran TRL
// 0.12, whose packing (ConstantLengthDataset) cut the concatenated tokens
// every 64 (ceil(21801/64) = 341 sequences, 22 batches of 16 an epoch).
// TRL 0.23's default bfd packing keeps examples whole and needs more
// sequences. Only config.json and the tokenizer are needed.
func TestPlanSeed(t *testing.T) {
	dir := t.TempDir()
	js, err := MarshalConfig(Phi3Mini4k())
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "config.json"), js, 0o644)
	tokDir := testutil.SharedData(t, "phi3-tokenizer")
	for _, f := range []string{"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"} {
		testutil.CopyFile(t, filepath.Join(tokDir, f), filepath.Join(dir, f))
	}
	c := tinyJobConfig(dir, testutil.SharedData(t, "yoda_sentences.csv"), filepath.Join(t.TempDir(), "out"))
	c.Training.PackingStrategy = "wrapped"
	p, err := Plan(context.Background(), newTestJob(t, c, ""))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("plan:\n%s", p)
	if p.Data.Examples != 720 || p.Data.Tokens != 21801 || p.Data.Sequences != 341 || p.TotalSteps != 220 || p.Data.StepsPerEpoch != 22 ||
		p.TrainableParams != 12_582_912 || p.ModelBytes != 2_651_074_752 || p.TotalParams != 3_821_079_552+12_582_912 {
		t.Errorf("plan: %+v", p)
	}
	if !strings.Contains(p.String(), "220 in total") {
		t.Errorf("plan text:\n%s", p)
	}
	// The estimate is the CUDA backend's (TestDeviceMemoryEstimate checks
	// it against measured peaks); here under bfloat16, the tutorial's.
	plan := func() TrainPlan {
		t.Helper()
		p, err := Plan(context.Background(), newTestJob(t, c, ""))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	c.Quantization.Bnb4bitComputeDType = "bfloat16"
	base := plan()
	est := base.EstimatedBytes
	// keep_dequantized_gb: at most every decoder linear in bfloat16 at the
	// backend's row strides (an adapted weight's rows leave room for the
	// folded LoRA columns, rounded to 64: 7,377,780,736 bytes, not
	// 2 x 3,623,878,656); all of them kept, the dequantization cache's
	// 288,358,400 bytes of slots go (one weight of each shape and a spare
	// qkv_proj).
	const slots = 288_358_400
	for gb, want := range map[float64][2]int64{8: {7_377_780_736, est + 7_377_780_736 - slots}, 1: {1_000_000_000, est + 1_000_000_000}} {
		c.Quantization.KeepDequantizedGB = gb
		p = plan()
		if p.KeptBytes != want[0] || p.EstimatedBytes != want[1] || !strings.Contains(p.String(), "keep_dequantized_gb") {
			t.Errorf("keep_dequantized_gb %g: kept %d bytes, want %d; estimate %d, want %d", gb, p.KeptBytes, want[0], p.EstimatedBytes, want[1])
		}
	}
	c.Quantization.KeepDequantizedGB = 0
	// gradient_checkpointing_keep_gb: at most qkv_proj's and gate_up_proj's
	// bf16 outputs of 16 x 64 tokens of 31 layers (31 x 1024 x 25600 x 2),
	// all on the device; the token embeddings (197,001,216 bytes in
	// bfloat16) go to host memory.
	const embed = 197_001_216
	for gb, want := range map[float64]int64{8: 1_625_292_800, 0.08: 80_000_000} {
		c.Training.GradientCheckpointingKeepGB = gb
		p = plan()
		if p.KeptActivationBytes != want || p.EstimatedBytes != est+want-embed || !strings.Contains(p.String(), "gradient_checkpointing_keep_gb") {
			t.Errorf("gradient_checkpointing_keep_gb %g: kept %d bytes, want %d; estimate %d, want %d", gb, p.KeptActivationBytes, want,
				p.EstimatedBytes, est+want-embed)
		}
	}
	c.Training.GradientCheckpointingKeepGB = 0
	// Without checkpointing under bf16, also every layer's 16-bit LoRA
	// inputs (kept through the forward by the CUDA backend): 32 layers x
	// 1,024 tokens x (3 x 3,072 + 8,192) inputs x 2 bytes.
	ckpt := c.Training.GradientCheckpointing
	c.Training.GradientCheckpointing = false
	pb := plan()
	c.Quantization.Bnb4bitComputeDType = "float32"
	pf := plan()
	if d := pb.ActivationBytes - pf.ActivationBytes; d != 1_140_850_688 {
		t.Errorf("without checkpointing, bf16's activation estimate exceeds float32's by %d bytes, want 1,140,850,688 (the kept LoRA inputs)", d)
	}
	c.Training.GradientCheckpointing, c.Quantization.Bnb4bitComputeDType = ckpt, "bfloat16"
	c.Training.PackingStrategy = "bfd"
	p = plan()
	if p.Data.Tokens != 21801 || p.Data.SequenceTokens != 21801 || p.Data.Sequences < 341 || p.TotalSteps != 10*p.Data.StepsPerEpoch {
		t.Errorf("bfd plan: %+v", p)
	}
	t.Logf("bfd: %d sequences, %d steps", p.Data.Sequences, p.TotalSteps)
}

// rehearsingBackend is the CPU backend with a StepRehearser that records
// when it is called, when its wait is, and the model's weights and the
// first step's token ids between them.
type rehearsingBackend struct {
	*CPUBackend
	events    []string
	rows, seq int
	need      int64
	cfgLayers int
}

func (b *rehearsingBackend) RehearseStep(cfg *Config, opts ModelOptions, rows, seq int, need int64) func() string {
	b.events = append(b.events, "rehearse")
	b.rows, b.seq, b.need, b.cfgLayers = rows, seq, need, cfg.NumLayers
	return func() string { b.events = append(b.events, "wait"); return "rehearsed (fake)" }
}

func (b *rehearsingBackend) DenseWeight(data []float32, out, in int) (Weight, error) {
	if n := len(b.events); n == 0 || b.events[n-1] != "weight" {
		b.events = append(b.events, "weight")
	}
	return b.CPUBackend.DenseWeight(data, out, in)
}

func (b *rehearsingBackend) AllocInt32(n int) Tensor {
	if n := len(b.events); n == 0 || b.events[n-1] != "ids" {
		b.events = append(b.events, "ids")
	}
	return b.CPUBackend.AllocInt32(n)
}

// TestStepRehearsal: the trainer asks a StepRehearser for one rehearsal
// of its micro-batch's shape before the model's weights are made, waits
// for it after them and before the first step, and logs what it said; the
// run's results are a plain backend's.
func TestStepRehearsal(t *testing.T) {
	model := tinyModelDir(t, smallModel.cfg, 14)
	c := smallJob(t, model, filepath.Join(t.TempDir(), "out"), 14)
	c.Training.MaxSteps, c.Training.SaveSteps = 1, 0
	c.Quantization.LoadIn4bit = false
	ref, _, err := trainWarnings(t, c, NewCPUBackend(CPUOptions{}))
	if err != nil {
		t.Fatal(err)
	}
	c.Training.OutputDir = filepath.Join(t.TempDir(), "out2")
	b := &rehearsingBackend{CPUBackend: NewCPUBackend(CPUOptions{})}
	got, debug, err := trainLogs(t, c, b, "debug")
	if err != nil {
		t.Fatal(err)
	}
	if s := strings.Join(b.events, " "); !strings.HasPrefix(s, "rehearse weight wait ids") {
		t.Errorf("calls %q, want the rehearsal, the weights, its wait, then the step", s)
	}
	if b.rows != c.Training.PerDeviceTrainBatchSize || b.seq != c.Training.MaxSeqLength || b.need <= 0 || b.cfgLayers != smallModel.cfg.NumLayers {
		t.Errorf("rehearsal of %d x %d tokens, need %d, %d layers", b.rows, b.seq, b.need, b.cfgLayers)
	}
	if !strings.Contains(strings.Join(debug, "\n"), "; rehearsed (fake)") {
		t.Errorf("debug lines %q", debug)
	}
	if !bytes.Equal(readFile(t, filepath.Join(got.OutputDir, peft.WeightsName)), readFile(t, filepath.Join(ref.OutputDir, peft.WeightsName))) {
		t.Error("the rehearsed run's adapter differs from a plain run's")
	}
}
