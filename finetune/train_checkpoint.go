package finetune

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ollama-tune/ollama-tune/finetune/peft"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
	"github.com/ollama-tune/ollama-tune/internal/atomicfile"
)

// Training checkpoints: output_dir/checkpoint-N/ after N optimizer steps,
// laid out like the Trainer's so the adapter in it loads with PEFT:
//
//	adapter_model.safetensors, adapter_config.json   the adapter (PEFT format)
//	optimizer.safetensors   per LoRA matrix <name>.exp_avg / .exp_avg_sq
//	                        (F32), or 8-bit state <name>.state1 / .state2
//	                        (U8 codes) and .absmax1 / .absmax2 (F32)
//	scheduler.json          the schedule and its position (last_epoch = N)
//	trainer_state.json      global_step, epoch, log_history as the Trainer
//	                        writes them, and under "ollama_tune" what
//	                        resuming needs: the data fingerprint, the
//	                        micro-batch size in force, the logging window,
//	                        the RNG (counter-based: the seed is the state;
//	                        dropout seeds are DeriveSeed(seed, step, micro-batch))
//	training_config.json    the job's configuration
//
// A checkpoint is written into a temporary folder beside it and renamed
// into place once complete, so checkpoint-N either is whole or is not
// there. Resuming restores the adapter, the optimizer state and the step;
// the data position follows from the step (see train.go), so a resumed run
// computes exactly what the uninterrupted one would have.

const (
	optimizerFile   = "optimizer.safetensors"
	schedulerFile   = "scheduler.json"
	trainerFile     = "trainer_state.json"
	trainConfigFile = "training_config.json"
	checkpointFmt   = 1
)

// LogEntry is one entry of the log history (trainer_state.json's
// log_history, metrics.jsonl): a training log, an evaluation, or the final
// summary.
type LogEntry struct {
	Step                  int      `json:"step"`
	Epoch                 float64  `json:"epoch"`
	Loss                  *float64 `json:"loss,omitempty"`
	GradNorm              *float64 `json:"grad_norm,omitempty"`
	LearningRate          *float64 `json:"learning_rate,omitempty"`
	MeanTokenAccuracy     *float64 `json:"mean_token_accuracy,omitempty"`
	TokensPerSecond       *float64 `json:"tokens_per_second,omitempty"`
	NumTokens             *int64   `json:"num_tokens,omitempty"`
	EvalLoss              *float64 `json:"eval_loss,omitempty"`
	EvalMeanTokenAccuracy *float64 `json:"eval_mean_token_accuracy,omitempty"`
	TrainLoss             *float64 `json:"train_loss,omitempty"`
	TrainRuntime          *float64 `json:"train_runtime,omitempty"`
}

func (sm StepMetrics) entry() LogEntry {
	tok := sm.Tokens
	return LogEntry{Step: sm.Step, Epoch: sm.Epoch, Loss: ptr(sm.Loss), GradNorm: ptr(sm.GradNorm), LearningRate: ptr(sm.LearningRate),
		MeanTokenAccuracy: ptr(sm.MeanTokenAccuracy), TokensPerSecond: ptr(sm.TokensPerSecond), NumTokens: &tok}
}

// trainerState is trainer_state.json.
type trainerState struct {
	GlobalStep     int        `json:"global_step"`
	Epoch          float64    `json:"epoch"`
	MaxSteps       int        `json:"max_steps"`
	NumTrainEpochs float64    `json:"num_train_epochs"`
	LoggingSteps   int        `json:"logging_steps"`
	EvalSteps      int        `json:"eval_steps"`
	SaveSteps      int        `json:"save_steps"`
	TrainBatchSize int        `json:"train_batch_size"`
	LogHistory     []LogEntry `json:"log_history"`
	OllamaTune     resumeInfo `json:"ollama_tune"`
}

// resumeInfo is what resuming needs beyond the Trainer's fields.
type resumeInfo struct {
	Format          int       `json:"format"`
	Seed            int64     `json:"seed"`
	DataFingerprint string    `json:"data_fingerprint"`
	MicroBatchSize  int       `json:"micro_batch_size"`
	GradAccum       int       `json:"gradient_accumulation_steps"`
	Optimizer       string    `json:"optimizer"`
	LoRARank        int       `json:"lora_r"`
	LoRATargets     []string  `json:"lora_target_modules"`
	TotalSteps      int       `json:"total_steps"`
	Tokens          int64     `json:"tokens"`
	Window          logWindow `json:"log_window"`
	RNG             string    `json:"rng"`
}

type schedulerState struct {
	Type        string  `json:"lr_scheduler_type"`
	BaseLR      float64 `json:"base_lr"`
	LastEpoch   int     `json:"last_epoch"` // torch LambdaLR: steps taken
	TotalSteps  int     `json:"total_steps"`
	WarmupSteps int     `json:"warmup_steps"`
	LastLR      float64 `json:"last_lr"`
}

func checkpointDir(out string, step int) string {
	return filepath.Join(out, "checkpoint-"+strconv.Itoa(step))
}

type ckptInfo struct {
	dir  string
	step int
}

// listCheckpoints lists the complete checkpoints in out, oldest first.
func listCheckpoints(out string) []ckptInfo {
	entries, err := os.ReadDir(out)
	if err != nil {
		return nil
	}
	var cks []ckptInfo
	for _, e := range entries {
		n, ok := strings.CutPrefix(e.Name(), "checkpoint-")
		if !ok || !e.IsDir() {
			continue
		}
		step, err := strconv.Atoi(n)
		if err != nil || step < 0 {
			continue
		}
		dir := filepath.Join(out, e.Name())
		if _, err := os.Stat(filepath.Join(dir, trainerFile)); err != nil {
			continue
		}
		cks = append(cks, ckptInfo{dir: dir, step: step})
	}
	sort.Slice(cks, func(i, j int) bool { return cks[i].step < cks[j].step })
	return cks
}

// LatestCheckpoint is the newest complete checkpoint-N folder in outDir
// ("" when there is none): what Resume = ResumeLatest continues from.
func LatestCheckpoint(outDir string) string {
	cks := listCheckpoints(outDir)
	if len(cks) == 0 {
		return ""
	}
	return cks[len(cks)-1].dir
}

// findResume resolves Job.Resume to a checkpoint folder ("" for none).
func findResume(out, resume string) (string, error) {
	switch resume {
	case "":
		return "", nil
	case ResumeLatest:
		dir := LatestCheckpoint(out)
		if dir == "" {
			return "", fmt.Errorf("resume: %s holds no checkpoint-N folder to continue from; start without --resume", out)
		}
		return dir, nil
	}
	isDir := func(p string) bool { st, err := os.Stat(p); return err == nil && st.IsDir() }
	dir := resume
	if !isDir(dir) {
		// A bare name such as checkpoint-30 is looked up in the output folder.
		dir = filepath.Join(out, resume)
		if !isDir(dir) {
			return "", fmt.Errorf("resume: checkpoint %s: no such folder (checkpoints are output_dir/checkpoint-N)", resume)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, trainerFile)); err != nil {
		return "", fmt.Errorf("resume: %s is not a complete checkpoint (no %s)", dir, trainerFile)
	}
	return dir, nil
}

// stageFile wraps a file's writer with the job's test hook.
// The time each write took is added to tr.fileTimes (a debug log line of
// the checkpoint).
func (tr *trainer) stageFile(name string, write func(io.Writer) error) peft.File {
	return peft.NewFile(name, func(w io.Writer) error {
		if tr.job.wrapWriter != nil {
			w = tr.job.wrapWriter(name, w)
		}
		t0 := time.Now()
		err := write(w)
		tr.fileTimes = append(tr.fileTimes, fileTime{name, time.Since(t0)})
		return err
	})
}

// fileTime is what writing one file of a checkpoint took.
type fileTime struct {
	name string
	took time.Duration
}

// fileTimesLine says, for the checkpoint in dir, each file's size and
// what its encoding and write took.
func (tr *trainer) fileTimesLine(dir string) string {
	var parts []string
	for _, f := range tr.fileTimes {
		size := "?"
		if fi, err := os.Stat(filepath.Join(dir, f.name)); err == nil {
			size = fmt.Sprintf("%.1f MB", float64(fi.Size())/1e6)
		}
		parts = append(parts, fmt.Sprintf("%s %s %.2f s", f.name, size, f.took.Seconds()))
	}
	return strings.Join(parts, ", ")
}

func jsonFile(v any) func(io.Writer) error {
	return func(w io.Writer) error {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = w.Write(append(b, '\n'))
		return err
	}
}

// adapterFiles are the adapter's two files.
func (tr *trainer) adapterFiles() ([]peft.File, error) {
	a, err := tr.m.Adapter(tr.cfg.Model, tr.lora)
	if err != nil {
		return nil, err
	}
	if tr.job.GGUF != "" {
		// The base's blob, which `ollama-tune create` builds the served
		// model FROM and checks against (job_ollama.go).
		a.Config.Revision = BlobDigest(tr.job.GGUF)
	}
	cfgJSON, err := a.Config.Marshal()
	if err != nil {
		return nil, err
	}
	return []peft.File{
		tr.stageFile(peft.WeightsName, a.EncodeWeights),
		tr.stageFile(peft.ConfigName, func(w io.Writer) error { _, err := w.Write(cfgJSON); return err }),
	}, nil
}

// finalAdapterFiles are the adapter's files for output_dir. Where this
// process saved a checkpoint at the step training ended on (the tutorial's
// save_steps do), their bytes are that checkpoint's, copied from its files
// (from the page cache: ~10 ms for Phi-3-mini's 50 MB) rather than fetched
// from the backend and encoded a second time (0.05-0.10 s). Copies, not
// hard links: a tool that rewrites the output's adapter in place (a
// safetensors save into the folder) must not change the checkpoint's.
// Where the checkpoint's files are not there, they are encoded as
// adapterFiles' are.
func (tr *trainer) finalAdapterFiles() ([]peft.File, error) {
	if tr.savedDir == "" || tr.lastSave != tr.step {
		return tr.adapterFiles()
	}
	var files []peft.File
	for _, name := range []string{peft.WeightsName, peft.ConfigName} {
		src := filepath.Join(tr.savedDir, name)
		if _, err := os.Stat(src); err != nil {
			return tr.adapterFiles()
		}
		files = append(files, tr.stageFile(name, copyFrom(src)))
	}
	return files, nil
}

// saveCheckpoint writes checkpoint-<step> and removes the oldest beyond
// save_total_limit.
func (tr *trainer) saveCheckpoint() (string, error) {
	out := tr.job.outputDir()
	dir := checkpointDir(out, tr.step)
	t0 := time.Now()
	tr.fileTimes = nil
	files, err := tr.adapterFiles()
	if err != nil {
		return "", fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	t := tr.cfg.Training
	st := trainerState{
		GlobalStep: tr.step, Epoch: tr.epochAt(tr.step), MaxSteps: tr.plan.TotalSteps, NumTrainEpochs: tr.plan.Epochs,
		LoggingSteps: t.LoggingSteps, EvalSteps: t.EvalSteps, SaveSteps: t.SaveSteps, TrainBatchSize: t.PerDeviceTrainBatchSize,
		LogHistory: tr.history,
		OllamaTune: resumeInfo{
			Format: checkpointFmt, Seed: t.Seed, DataFingerprint: tr.prep.fingerprint, MicroBatchSize: tr.microBS,
			GradAccum: t.GradientAccumulationSteps, Optimizer: t.Optim, LoRARank: tr.lora.R, LoRATargets: tr.cfg.LoRA.TargetModulesResolved(),
			TotalSteps: tr.plan.TotalSteps, Tokens: tr.tokens, Window: tr.win,
			RNG: fmt.Sprintf("counter-based (SplitMix64); LoRA init DeriveSeed(%d, layer, module); dropout DeriveSeed(%d, step, micro-batch); epoch order data.EpochSeed(%d, epoch)", t.Seed, t.Seed, t.Seed),
		},
	}
	if st.LogHistory == nil {
		st.LogHistory = []LogEntry{}
	}
	sched := schedulerState{Type: t.LRSchedulerType, BaseLR: t.LearningRate, LastEpoch: tr.step, TotalSteps: tr.plan.TotalSteps, WarmupSteps: tr.plan.WarmupSteps, LastLR: tr.lr(tr.step)}
	files = append(files,
		tr.stageFile(optimizerFile, tr.encodeOptimizer),
		tr.stageFile(schedulerFile, jsonFile(sched)),
		tr.stageFile(trainConfigFile, jsonFile(tr.cfg)),
		tr.stageFile(trainerFile, jsonFile(st)), // last: its presence marks a complete checkpoint
	)
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", fmt.Errorf("checkpoint: %w", err)
	}
	// Write into a fresh folder, then move it into place (replacing a
	// checkpoint of the same step left by an earlier, cancelled attempt).
	tmp := filepath.Join(out, fmt.Sprintf(".checkpoint-%d.tmp-%d", tr.step, os.Getpid()))
	os.RemoveAll(tmp)
	if err := peft.WriteFiles(tmp, files); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	if _, err := os.Stat(dir); err == nil {
		old := dir + ".old"
		os.RemoveAll(old)
		if err := os.Rename(dir, old); err != nil {
			os.RemoveAll(tmp)
			return "", fmt.Errorf("checkpoint %s: %w", dir, err)
		}
		defer os.RemoveAll(old)
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		return "", fmt.Errorf("checkpoint %s: %w", dir, err)
	}
	atomicfile.SyncDir(out)
	tr.lastSave, tr.savedDir = tr.step, dir
	tr.emit(LogEvent{Level: "debug", Message: fmt.Sprintf("%s written in %.2f s (each file's encoding and write, before its sync: %s)",
		dir, time.Since(t0).Seconds(), tr.fileTimesLine(dir))})
	tr.emit(CheckpointEvent{Step: tr.step, Path: dir})
	if limit := t.SaveTotalLimit; limit > 0 {
		cks := listCheckpoints(out)
		for len(cks) > limit {
			if err := os.RemoveAll(cks[0].dir); err != nil {
				tr.emit(LogEvent{Level: "warn", Message: fmt.Sprintf("save_total_limit: could not remove %s: %v", cks[0].dir, err)})
			} else {
				tr.emit(LogEvent{Level: "debug", Message: fmt.Sprintf("removed %s (save_total_limit %d)", cks[0].dir, limit)})
			}
			cks = cks[1:]
		}
	}
	return dir, nil
}

// encodeOptimizer writes optimizer.safetensors.
func (tr *trainer) encodeOptimizer(w io.Writer) error {
	o := tr.opt
	var ts []safetensors.TensorInfo
	addF := func(name string, t Tensor) error {
		ti, err := safetensors.FromFloat32(name, safetensors.F32, t.Shape(), o.b.Download(t))
		if err != nil {
			return err
		}
		ts = append(ts, ti)
		return nil
	}
	for i, p := range o.params {
		if st := o.st8[i]; st != nil {
			for _, s := range []struct {
				suffix string
				t      Tensor
			}{{".state1", st.M}, {".state2", st.V}} {
				bs := o.b.DownloadBytes(s.t)
				ts = append(ts, safetensors.TensorInfo{Name: p.Name + s.suffix, DType: safetensors.U8, Shape: []int{len(bs)}, Data: bs})
			}
			if err := addF(p.Name+".absmax1", st.AbsmaxM); err != nil {
				return err
			}
			if err := addF(p.Name+".absmax2", st.AbsmaxV); err != nil {
				return err
			}
			continue
		}
		if err := addF(p.Name+".exp_avg", o.m[i]); err != nil {
			return err
		}
		if err := addF(p.Name+".exp_avg_sq", o.v[i]); err != nil {
			return err
		}
	}
	return safetensors.Encode(w, ts, map[string]string{"optimizer": o.kind.String(), "step": strconv.Itoa(tr.step)})
}

// restore loads a checkpoint into the trainer (after the model and the
// optimizer are built for the job).
func (tr *trainer) restore(dir string) error {
	raw, err := os.ReadFile(filepath.Join(dir, trainerFile))
	if err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	var st trainerState
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("resume: %s: %w", filepath.Join(dir, trainerFile), err)
	}
	ri := st.OllamaTune
	t := tr.cfg.Training
	refuse := func(what string, then, now any) error {
		return fmt.Errorf("resume from %s: %s was %v, the job now has %v; a checkpoint continues the same run only (restore the setting, or start a new run in another output_dir)", dir, what, then, now)
	}
	switch {
	case ri.Format != checkpointFmt:
		return fmt.Errorf("resume from %s: checkpoint format %d, this trainer reads %d", dir, ri.Format, checkpointFmt)
	case ri.Seed != t.Seed:
		return refuse("training.seed", ri.Seed, t.Seed)
	case ri.GradAccum != t.GradientAccumulationSteps:
		return refuse("training.gradient_accumulation_steps", ri.GradAccum, t.GradientAccumulationSteps)
	case ri.Optimizer != t.Optim:
		return refuse("training.optim", ri.Optimizer, t.Optim)
	case ri.LoRARank != tr.lora.R:
		return refuse("lora.r", ri.LoRARank, tr.lora.R)
	case fmt.Sprint(ri.LoRATargets) != fmt.Sprint(tr.cfg.LoRA.TargetModulesResolved()):
		return refuse("lora.target_modules", ri.LoRATargets, tr.cfg.LoRA.TargetModulesResolved())
	case ri.DataFingerprint != tr.prep.fingerprint:
		return fmt.Errorf("resume from %s: the training data differ from the checkpoint's (data set, its column mapping, tokenizer, max_seq_length, packing, eval_split, per_device_train_batch_size or seed changed); a checkpoint continues the same run only", dir)
	case st.GlobalStep < 0 || st.GlobalStep > tr.plan.TotalSteps:
		return fmt.Errorf("resume from %s: it is at step %d, beyond this job's %d steps; raise num_train_epochs or max_steps", dir, st.GlobalStep, tr.plan.TotalSteps)
	}
	if ri.TotalSteps != tr.plan.TotalSteps {
		tr.emit(LogEvent{Level: "warn", Message: fmt.Sprintf("the checkpoint's run had %d steps, this one has %d: the learning-rate schedule changes from here on", ri.TotalSteps, tr.plan.TotalSteps)})
	}
	a, err := peft.Read(dir, PEFTBase(tr.m.Cfg))
	if err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	if err := tr.m.SetAdapter(a); err != nil {
		return fmt.Errorf("resume from %s: %w", dir, err)
	}
	if err := tr.restoreOptimizer(filepath.Join(dir, optimizerFile)); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	tr.step = st.GlobalStep
	tr.history = st.LogHistory
	tr.tokens = ri.Tokens
	tr.win = ri.Window
	tr.win.Tokens = 0 // tokens/s restarts with this process's clock
	if ri.MicroBatchSize > 0 && ri.MicroBatchSize < tr.microBS {
		tr.microBS = ri.MicroBatchSize
	}
	tr.lastSave = tr.step
	return nil
}

func (tr *trainer) restoreOptimizer(path string) error {
	f, err := safetensors.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	o := tr.opt
	if k := f.Metadata()["optimizer"]; k != o.kind.String() {
		return fmt.Errorf("%s: optimizer %q, the job uses %s", path, k, o.kind)
	}
	getF := func(name string, dst Tensor) error {
		ti, err := f.Tensor(name)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if ti.DType != safetensors.F32 || ti.Numel() != dst.Numel() {
			return fmt.Errorf("%s: tensor %q is %s %v, want F32 with %d values", path, name, ti.DType, ti.Shape, dst.Numel())
		}
		v, err := safetensors.ToFloat32(ti)
		if err != nil {
			return fmt.Errorf("%s: tensor %q: %w", path, name, err)
		}
		o.b.Upload(dst, v)
		return nil
	}
	for i, p := range o.params {
		if st := o.st8[i]; st != nil {
			for _, s := range []struct {
				suffix string
				t      Tensor
			}{{".state1", st.M}, {".state2", st.V}} {
				ti, err := f.Tensor(p.Name + s.suffix)
				if err != nil {
					return fmt.Errorf("%s: %w", path, err)
				}
				if ti.DType != safetensors.U8 || len(ti.Data) != s.t.Numel() {
					return fmt.Errorf("%s: tensor %q is %s %v, want U8 with %d values", path, ti.Name, ti.DType, ti.Shape, s.t.Numel())
				}
				o.b.UploadBytes(s.t, bytes.Clone(ti.Data))
			}
			if err := getF(p.Name+".absmax1", st.AbsmaxM); err != nil {
				return err
			}
			if err := getF(p.Name+".absmax2", st.AbsmaxV); err != nil {
				return err
			}
			continue
		}
		if err := getF(p.Name+".exp_avg", o.m[i]); err != nil {
			return err
		}
		if err := getF(p.Name+".exp_avg_sq", o.v[i]); err != nil {
			return err
		}
	}
	return nil
}
