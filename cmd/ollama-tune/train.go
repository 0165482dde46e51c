package main

// train runs a fine-tune in a trainer plugin (a separate process, so a
// crash of the trainer cannot take the host down) and draws its progress.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/ollamastore"
	"github.com/ollama-tune/ollama-tune/plugin"
)

func newTrainCmd() *cobra.Command {
	var (
		resume string
		dryRun bool
		base   string
	)
	cmd := &cobra.Command{
		Use:   "train --config FILE [--resume [CHECKPOINT]] [--dry-run]",
		Short: "Fine-tune a model (QLoRA) with a trainer plugin",
		Long: `Fine-tune the configured model on the configured data set and write a PEFT
LoRA adapter to training.output_dir.

The run happens in a trainer plugin (ollama-tune-trainer-cuda or -cpu, chosen
by the config key device: auto, cpu or cuda); its progress is drawn as a bar
on a terminal and as log lines otherwise. Ctrl-C asks the trainer to save a
checkpoint and stop; a second Ctrl-C stops it at once.

--resume continues from the newest checkpoint in output_dir (or from the
checkpoint folder given: --resume=DIR or --resume DIR). --dry-run validates
the configuration, reads and packs the data and prints the plan (examples,
tokens, sequences, steps, trainable parameters, estimated memory) without
loading weights or training.

--base NAME trains on the Ollama model NAME as Ollama has it (model:
ollama://NAME): its GGUF blob from the store (OLLAMA_MODELS) or the server
(OLLAMA_HOST), with the tokenizer and chat template inside it; nothing is
downloaded. quantization.load_in_4bit re-quantizes its weights to NF4,
quantization.keep_gguf keeps them in the file's own quantization.
ollama-tune create NAME --adapter DIR then serves the adapter on that very
blob.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 && cmd.Flags().Changed("resume") && resume == finetune.ResumeLatest {
				return nil // --resume DIR, with the space
			}
			return cobra.NoArgs(cmd, args)
		},
	}
	cf := addConfigFlags(cmd)
	fl := cmd.Flags()
	fl.StringVar(&resume, "resume", "", "continue from the newest checkpoint in output_dir, or from the checkpoint folder given")
	fl.Lookup("resume").NoOptDefVal = finetune.ResumeLatest
	fl.BoolVar(&dryRun, "dry-run", false, "validate and print the plan without training")
	fl.StringVar(&base, "base", "", "train on the Ollama model NAME (phi3:mini): the same as model: ollama://NAME")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 1 {
			resume = args[0]
		}
		if base != "" {
			// --base NAME is --model ollama://NAME, set before the config
			// is validated (keep_gguf needs an ollama:// model).
			if cmd.Flags().Changed("model") {
				return fmt.Errorf("--base %s and --model %s: give one base model", base, cmd.Flag("model").Value)
			}
			if _, err := ollamastore.ParseName(base); err != nil {
				return fmt.Errorf("--base: %w", err)
			}
			if err := cmd.Flags().Set("model", finetune.OllamaScheme+strings.TrimPrefix(base, finetune.OllamaScheme)); err != nil {
				return err
			}
		}
		tc, err := cf.load()
		if err != nil {
			return err
		}
		if dryRun {
			return printPlan(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), tc)
		}
		return runTrain(cmd.Context(), cmd.OutOrStdout(), cf.file, tc, resume)
	}
	return cmd
}

func init() { rootCmd.AddCommand(newTrainCmd()) }

// printPlan resolves the job and prints finetune.Plan. A Hub model is
// fetched without its weights: the plan needs config.json and the
// tokenizer only.
func printPlan(ctx context.Context, w, progress io.Writer, tc finetune.TrainConfig) error {
	model := tc.Model
	if _, err := os.Stat(model); err != nil && repoIDPattern.MatchString(model) {
		dir, err := resolveDir(ctx, "model", model, append(append([]string{}, configFiles...), tokenizerFiles...), progress)
		if err != nil {
			return err
		}
		tc.Model = dir
	}
	job, err := finetune.NewJob(ctx, tc, finetune.JobOptions{Log: func(s string) { fmt.Fprintln(progress, s) }})
	if err != nil {
		return err
	}
	plan, err := finetune.Plan(ctx, job)
	if err != nil {
		return err
	}
	plan.Model = model
	fmt.Fprint(w, plan.String())
	fmt.Fprintf(w, "output:            %s\n", tc.Training.OutputDir)
	_, err = fmt.Fprintln(w, "dry run: the configuration is valid; nothing was trained")
	return err
}

// trainRunner is what runTraining needs of a launched plugin
// (*plugin.Process is one; tests use a fake).
type trainRunner interface {
	plugin.Canceller
	Train(ctx context.Context, req plugin.TrainRequest, onEvent func(plugin.Event)) (plugin.Finished, error)
}

// runTrain picks and launches the trainer plugin for the config's device
// and runs the job in it, with Ctrl-C wired to graceful, then immediate,
// cancellation.
func runTrain(ctx context.Context, w io.Writer, cfgFile string, tc finetune.TrainConfig, resume string) error {
	if ctx == nil {
		ctx = context.Background()
	}
	req, err := trainRequest(tc, resume)
	if err != nil {
		return err
	}
	bins := plugin.Discover()
	proc, caps, why, err := plugin.Select(ctx, tc.Device, bins, plugin.Options{})
	if err != nil {
		return err
	}
	defer proc.Close()

	view := newProgressView(w)
	defer view.Close()
	view.Note(why)
	if hint := speedHint(caps, tc); hint != "" {
		view.Note(hint)
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt)
	defer signal.Stop(sigs)
	return runTraining(ctx, proc, req, sigs, view, resumeHint(cfgFile))
}

// speedHint says, for a job on the GPU, what faster settings there are
// (BENCHMARKS.md v25, H200): under float32 compute (the seed's
// bnb_4bit_compute_dtype) that has not chosen about TF32, the matrix
// products run on the CUDA cores, ~9.5x bfloat16's step time and ~4.4x
// TF32's; under float16 the step is ~1.5x bfloat16's, as only bfloat16
// has the fused kernels (and every GPU the CUDA plugin runs on, compute
// capability 8.0 or later, has bfloat16). "" otherwise.
func speedHint(caps plugin.Capabilities, tc finetune.TrainConfig) string {
	if caps.Backend != "cuda" {
		return ""
	}
	switch tc.Quantization.ComputeDType() {
	case finetune.F32:
		if tc.Training.TF32 != nil {
			return ""
		}
		return "note: float32 compute (quantization.bnb_4bit_compute_dtype, as the seed) runs the matrix products on the GPU's CUDA cores; " +
			"--set training.tf32=true puts them on TF32 tensor cores (about 4.5x faster steps, at TF32's precision), " +
			"--set quantization.bnb_4bit_compute_dtype=bfloat16 about 9.5x"
	case finetune.F16:
		return "note: float16 compute takes about 1.5x bfloat16's time a step here (the fused kernels are bfloat16's); " +
			"--set quantization.bnb_4bit_compute_dtype=bfloat16 for them"
	}
	return ""
}

// resumeHint is the command that continues this job.
func resumeHint(cfgFile string) string {
	if cfgFile == "" {
		return "ollama-tune train --resume"
	}
	return "ollama-tune train --config " + cfgFile + " --resume"
}

// trainRequest is the config as the plugin receives it, with local paths
// made absolute (the plugin may not share the host's working directory).
func trainRequest(tc finetune.TrainConfig, resume string) (plugin.TrainRequest, error) {
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	if _, err := os.Stat(tc.Model); err == nil {
		tc.Model = abs(tc.Model)
	}
	if _, err := os.Stat(tc.Dataset.Path); err == nil {
		tc.Dataset.Path = abs(tc.Dataset.Path)
	}
	tc.Training.OutputDir = abs(tc.Training.OutputDir)
	if resume != "" && resume != finetune.ResumeLatest {
		resume = abs(resume)
	}
	b, err := json.Marshal(tc)
	if err != nil {
		return plugin.TrainRequest{}, err
	}
	return plugin.TrainRequest{Config: b, OutputDir: tc.Training.OutputDir, Resume: resume}, nil
}

// runTraining streams one run into view, turning interrupts on sigs into
// cancels, and explains how it ended.
func runTraining(ctx context.Context, r trainRunner, req plugin.TrainRequest, sigs <-chan os.Signal, view progressView, hint string) error {
	ictx, stop := context.WithCancel(ctx)
	defer stop()
	handled := make(chan struct{})
	go func() {
		defer close(handled)
		plugin.HandleInterrupts(ictx, sigs, r, view.Note)
	}()
	_, err := r.Train(ctx, req, view.Event) // Finished is drawn as an event
	stop()
	<-handled
	view.Close()
	if err == nil {
		return nil
	}
	var te *plugin.TrainError
	var crash *plugin.CrashError
	switch {
	case errors.As(err, &crash):
		return err // the crash report: how it died, its last log lines, the surviving checkpoint
	case errors.As(err, &te) && te.Code == plugin.CodeCancelled:
		if te.LastCheckpoint != "" {
			return fmt.Errorf("training stopped: %s\ncontinue with: %s=%s", te.Message, hint, te.LastCheckpoint)
		}
		return fmt.Errorf("training stopped: %s (no checkpoint was saved)", te.Message)
	case errors.As(err, &te) && te.Code == plugin.CodeOutOfMemory:
		return fmt.Errorf("training ran out of memory: %s\nlower training.per_device_train_batch_size or training.max_seq_length, turn on training.auto_find_batch_size, or use another device", te.Message)
	case errors.As(err, &te) && te.LastCheckpoint != "":
		return fmt.Errorf("training failed: %w\ncontinue from the last checkpoint with: %s=%s", err, hint, te.LastCheckpoint)
	}
	return fmt.Errorf("training failed: %w", err)
}
