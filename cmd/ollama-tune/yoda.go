package main

// yoda is the seed's whole flow in one command: train, export, create,
// check, and the line to try. --demo runs the same flow offline on an
// embedded tiny model, tokenizer and data set in about a minute.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ollama-tune/ollama-tune/convert"
	"github.com/ollama-tune/ollama-tune/convert/demo"
	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/chat"
	"github.com/ollama-tune/ollama-tune/finetune/data"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

type yodaFlags struct {
	demo          bool
	name, base    string
	model, data   string
	out           string
	route         string
	noCreate      bool
	skipTraining  bool
	checkPrompts  int
	maxNewTokens  int
	trainingSteps int
	sets          []string // --set key=value over the seed's defaults (the real run)
}

func newYodaCmd() *cobra.Command {
	f := &yodaFlags{}
	cmd := &cobra.Command{
		Use:   "yoda [--demo]",
		Short: "Train the Yoda adapter, create it in Ollama and check it, in one command",
		Long: `Run the seed's whole flow with its defaults: fetch the base model
(microsoft/Phi-3-mini-4k-instruct from the Hugging Face Hub, or the Hub
cache, or --model DIR) and the data set (dvgodoy/yoda_sentences, or --data
FILE), train the LoRA adapter with a trainer plugin, export it, create the
Ollama model "yoda" (the route follows the server's version), run the
served-output check, and print the ollama run line to try.

--base NAME (an Ollama model such as phi3:mini) without --model trains on
that model as Ollama has it, its GGUF blob (the same as --model
ollama://NAME): no download, and the adapter is served on the very weights
it was trained on. With --model as well, the adapter trained on --model is
served on --base.

--demo runs the same pipeline offline in about a minute on a CPU: a tiny
Phi-3 the project makes (seeded), a tokenizer it generates (byte fallback,
characters, the words of the pairs, Phi-3's special tokens) and a few dozen
English/Yoda pairs written for it. It trains in this process, then, when an
Ollama server is reachable (OLLAMA_HOST), creates "yoda-demo" and runs the
served-output check; otherwise it writes the Modelfile and says how to
finish.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if f.demo {
				if len(f.sets) > 0 {
					return errors.New("yoda --demo: --set is for the real run (the demo's tiny model and data have settings of their own); drop --set, or drop --demo")
				}
				return runYodaDemo(cmd, f)
			}
			return runYoda(cmd, f)
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&f.demo, "demo", false, "run offline on the embedded tiny model and data (about a minute on a CPU)")
	fl.StringVar(&f.name, "name", "", `Ollama model name (default "yoda", "yoda-demo" with --demo)`)
	fl.StringVar(&f.base, "base", "", "an Ollama model name (phi3:mini): without --model, train on its GGUF and serve on it; or a GGUF file to serve on; default: the trained model's own weights as an F16 GGUF, which the served-output check can match exactly")
	fl.StringVar(&f.model, "model", "", "base model folder, Hugging Face repo id or ollama://NAME (default: the seed's microsoft/Phi-3-mini-4k-instruct)")
	fl.StringVar(&f.data, "data", "", "data set file or Hugging Face data set id (default: the seed's dvgodoy/yoda_sentences)")
	fl.StringVar(&f.out, "out", "", `output folder (default "./phi3-mini-yoda-adapter", "./yoda-demo" with --demo)`)
	fl.StringVar(&f.route, "route", "auto", "auto (from the server version), adapter, or merged")
	fl.BoolVar(&f.noCreate, "no-create", false, "stop after writing the GGUF files and the Modelfile")
	fl.BoolVar(&f.skipTraining, "skip-training", false, "reuse the adapter already in the output folder")
	fl.IntVar(&f.checkPrompts, "check-prompts", 3, "training prompts to run through the served-output check")
	fl.IntVar(&f.maxNewTokens, "max-tokens", 32, "tokens per answer in the served-output check")
	fl.StringArrayVar(&f.sets, "set", nil, "set a config key over the seed's defaults, as train's --set: e.g. --set quantization.bnb_4bit_compute_dtype=bfloat16 or --set training.tf32=true (repeatable; --model, --data and --out win)")
	return cmd
}

func init() { rootCmd.AddCommand(newYodaCmd()) }

// runYoda is the real flow on Phi-3-mini.
func runYoda(cmd *cobra.Command, f *yodaFlags) error {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	w, errw := cmd.OutOrStdout(), cmd.ErrOrStderr()
	tc := finetune.DefaultTrainConfig()
	if len(f.sets) > 0 {
		// The seed's defaults with the --set keys over them (no config
		// file, no OLLAMA_TUNE_* variables: this command is the seed's).
		var err error
		if tc, err = loadTrainConfig(configSources{Sets: f.sets}); err != nil {
			return fmt.Errorf("yoda --set: %w", err)
		}
	}
	if f.model != "" {
		tc.Model = f.model
	}
	if f.data != "" {
		tc.Dataset.Path = f.data
	}
	if f.out != "" {
		tc.Training.OutputDir = f.out
	}
	name := f.name
	if name == "" {
		name = "yoda"
	}
	if f.model == "" && f.base != "" && !isLocal(f.base) {
		tc.Model = finetune.OllamaScheme + strings.TrimPrefix(f.base, finetune.OllamaScheme) // train on what Ollama has
	}
	modelDir := ""
	if finetune.IsOllamaModel(tc.Model) {
		fmt.Fprintf(w, "1/4 base model %s: the GGUF Ollama has, with its tokenizer and chat template\n", tc.Model)
	} else {
		fmt.Fprintf(w, "1/4 base model %s\n", tc.Model)
		dir, err := resolveDir(ctx, "model", tc.Model, append(slices.Clone(weightFiles), tokenizerFiles...), errw)
		if err != nil {
			return err
		}
		tc.Model, modelDir = dir, dir
	}
	adapterDir := tc.Training.OutputDir
	if f.skipTraining {
		fmt.Fprintf(w, "2/4 training skipped: using the adapter in %s\n", adapterDir)
	} else {
		fmt.Fprintf(w, "2/4 training on %s -> %s\n", tc.Dataset.Path, adapterDir)
		if err := runTrain(ctx, w, "", tc, ""); err != nil {
			return err
		}
	}
	prompts, err := datasetPrompts(ctx, tc, f.checkPrompts)
	if err != nil {
		fmt.Fprintf(errw, "note: no training prompts for the check (%v); using generic ones\n", err)
	}
	return createAndCheck(ctx, w, errw, name, adapterDir, modelDir, f, prompts, nil)
}

// datasetPrompts are the first n prompts of the training data: the column
// the config renames to "prompt" (the seed: sentence), from the local file
// or the Hub data set's files.
func datasetPrompts(ctx context.Context, tc finetune.TrainConfig, n int) ([]string, error) {
	if n <= 0 {
		return nil, nil
	}
	col := "prompt"
	for from, to := range tc.Dataset.Rename {
		if to == "prompt" {
			col = from
		}
	}
	files := []string{tc.Dataset.Path}
	if _, err := os.Stat(tc.Dataset.Path); err != nil {
		job, err := finetune.NewJob(ctx, tc, finetune.JobOptions{})
		if err != nil {
			return nil, err
		}
		if files, err = job.DatasetFiles(ctx, tc.Dataset.Path, tc.Dataset.Split); err != nil {
			return nil, err
		}
	}
	var out []string
	for _, f := range files {
		t, err := data.ReadFile(f, data.Format(tc.Dataset.Format))
		if err != nil {
			return nil, err
		}
		for _, r := range t.Rows {
			if s, ok := r.Values[col].(string); ok && s != "" {
				out = append(out, s)
				if len(out) == n {
					return out, nil
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %q column in %v", col, files)
	}
	return out, nil
}

// createAndCheck exports, creates and checks, or writes the Modelfile when
// no server is reachable (or --no-create).
func createAndCheck(ctx context.Context, w, errw io.Writer, name, adapterDir, modelDir string, f *yodaFlags, prompts []string, params [][2]string) error {
	c := convert.NewClient(nil, nil)
	o := convert.CreateOptions{Name: name, AdapterDir: adapterDir, Base: f.base, BaseWeights: modelDir, TokenizerDir: modelDir,
		Prompts: prompts, MaxTokens: f.maxNewTokens, Log: errw, OutDir: filepath.Join(adapterDir, "ollama"), Params: params}
	if o.Base == "" {
		o.Base = modelDir
	}
	switch f.route {
	case "adapter":
		o.Route = convert.RouteAdapter
	case "merged":
		o.Route = convert.RouteMerged
	}
	reachable := false
	if !f.noCreate {
		if v, err := ollamaReachable(ctx, c); err == nil {
			reachable = true
			fmt.Fprintf(w, "3/4 Ollama %s at %s: exporting and creating %s\n", v, c.Base, name)
		} else {
			fmt.Fprintf(w, "3/4 no Ollama server answers at %s (%v): writing the Modelfile instead\n", c.Base, err)
		}
	}
	o.ModelfileOnly = !reachable
	var res *convert.CreateResult
	var err error
	if ref, revision := ollamaBaseOf(adapterDir); ref != "" {
		res, err = createOnOllamaBase(ctx, c, o, ref, revision)
	} else {
		res, err = convert.Create(ctx, c, o)
	}
	if err != nil {
		return err
	}
	example := "The Force is strong in you!"
	if len(prompts) > 0 {
		example = prompts[0]
	}
	if !reachable {
		fmt.Fprintf(w, "4/4 to finish: start Ollama (ollama serve), then\n  ollama create %s -f %s\n  ollama run %s %q\n", name, res.Modelfile, name, example)
		return nil
	}
	fmt.Fprintf(w, "4/4 created %s (%s route); served-output check:\n", name, res.Route)
	if res.Check != nil {
		res.Check.Print(w)
		if !res.Check.OK() {
			return fmt.Errorf("the served-output check failed: %s does not answer as the trainer does", name)
		}
	}
	fmt.Fprintf(w, "try it:\n  ollama run %s %q\n", name, example)
	return nil
}

// runYodaDemo is the offline flow on the embedded tiny model.
func runYodaDemo(cmd *cobra.Command, f *yodaFlags) error {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	w, errw := cmd.OutOrStdout(), cmd.ErrOrStderr()
	start := time.Now()
	out := f.out
	if out == "" {
		out = "yoda-demo"
	}
	name := f.name
	if name == "" {
		name = "yoda-demo"
	}
	modelDir := filepath.Join(out, "base")
	data := filepath.Join(out, "yoda-demo.csv")
	adapterDir := filepath.Join(out, "adapter")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	fmt.Fprintf(w, "1/4 tiny Phi-3 (%d layers, hidden %d, vocabulary %d, seed %d) and %d English/Yoda pairs -> %s\n",
		demo.Config().NumLayers, demo.Config().HiddenSize, demo.Config().VocabSize, demo.Seed, len(demo.Pairs), out)
	if err := demo.WriteBaseModel(modelDir); err != nil {
		return err
	}
	if err := demo.WriteDataset(data); err != nil {
		return err
	}
	if f.skipTraining {
		fmt.Fprintf(w, "2/4 training skipped: using the adapter in %s\n", adapterDir)
	} else {
		tc := demo.TrainConfig(modelDir, data, adapterDir)
		// A second run of the demo continues the first (the trainer keeps
		// a folder's checkpoints): a finished one trains no more steps.
		var resume string
		if finetune.LatestCheckpoint(adapterDir) != "" {
			resume = finetune.ResumeLatest
			fmt.Fprintf(w, "2/4 continuing the demo's earlier training in %s (delete it to train from the start)\n", adapterDir)
		} else {
			fmt.Fprintf(w, "2/4 training LoRA r=%d on the CPU, %g epochs\n", tc.LoRA.R, tc.Training.NumTrainEpochs)
		}
		job, err := finetune.NewJob(ctx, tc, finetune.JobOptions{Resume: resume})
		if err != nil {
			return err
		}
		res, err := finetune.Train(ctx, job, func(e finetune.TrainEvent) {
			if s, ok := e.(finetune.StepEvent); ok && s.Logged {
				fmt.Fprintf(w, "    step %4d  epoch %5.1f  loss %.4f  accuracy %.3f\n", s.Step, s.Epoch, s.Loss, s.MeanTokenAccuracy)
			}
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "    %d steps in %s; adapter in %s\n", res.Steps, res.Runtime.Round(time.Second), res.OutputDir)
	}
	// The trainer's own answers, so the demo shows something even offline.
	var prompts []string
	for _, p := range demo.Pairs[:min(3, len(demo.Pairs))] {
		prompts = append(prompts, p[0])
	}
	if err := showAnswers(ctx, w, modelDir, adapterDir, prompts); err != nil {
		return err
	}
	// A LoRA on a random tiny base moves the argmax but leaves the
	// distribution flat, so Ollama's default sampling (temperature 0.8,
	// repeat penalty 1.1) would babble: the demo model decodes greedily.
	err := createAndCheck(ctx, w, errw, name, adapterDir, modelDir, f, prompts, [][2]string{{"temperature", "0"}, {"repeat_penalty", "1"}})
	fmt.Fprintf(w, "demo done in %s\n", time.Since(start).Round(time.Second))
	return err
}

// showAnswers prints the trainer's greedy answers with the adapter.
func showAnswers(ctx context.Context, w io.Writer, modelDir, adapterDir string, prompts []string) error {
	tok, err := tokenizer.Load(modelDir)
	if err != nil {
		return err
	}
	tmpl, err := chat.FromTokenizerDir(modelDir)
	if err != nil {
		return err
	}
	ref := convert.NewCPUReference(modelDir, adapterDir)
	defer ref.Close()
	var stop []int32
	for _, s := range convert.Phi3Stops {
		if id, ok := tok.TokenToID(s); ok {
			stop = append(stop, id)
		}
	}
	fmt.Fprintln(w, "    the trainer's answers with the adapter:")
	for _, p := range prompts {
		text, err := tmpl.Render([]chat.Message{{Role: "user", Content: p}}, true)
		if err != nil {
			return err
		}
		ids, err := ref.Greedy(ctx, tok.Encode(text, false), 32, stop)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "      %-36q -> %q\n", p, strings.TrimSpace(tok.Decode(ids, true)))
	}
	return nil
}
