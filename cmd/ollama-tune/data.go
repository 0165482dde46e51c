package main

// data shows what the trainer will see of a configuration's data set, the
// way the seed inspects its SFT data set and data loader: counts, one
// example as rendered by the chat template, and (--show-batch) the first
// collated micro-batch.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"

	"github.com/spf13/cobra"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/chat"
	"github.com/ollama-tune/ollama-tune/finetune/data"
	"github.com/ollama-tune/ollama-tune/finetune/hub"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

func newDataCmd() *cobra.Command {
	var (
		tokDir    string
		showBatch bool
		example   int
	)
	cmd := &cobra.Command{
		Use:   "data --config FILE [--show-batch]",
		Short: "Show the data set as the trainer sees it: counts, a rendered example, a batch",
		Long: `Read, map, split, tokenize and pack the configuration's data set exactly as
training does, and print one JSON object:

  examples         training examples (after the eval split)
  tokens           their tokens after the chat template, before truncation and packing
  sequences        training rows after truncation or packing
  steps_per_epoch  optimizer steps per epoch (micro-batches / gradient accumulation)
  example          one example: the text the chat template renders, its ids and completion mask

With --show-batch it adds the first micro-batch of the first epoch, collated
(input_ids, labels and position_ids, one list per row), as the seed looks at
its data loader. The tokenizer is the model's (config key model, only its
tokenizer files are fetched from the Hub) unless --tokenizer names one.`,
		Args: cobra.NoArgs,
	}
	cf := addConfigFlags(cmd)
	fl := cmd.Flags()
	fl.StringVar(&tokDir, "tokenizer", "", "tokenizer directory or Hub repo id (default: the model's)")
	fl.BoolVar(&showBatch, "show-batch", false, "also print the first collated micro-batch")
	fl.IntVar(&example, "example", 0, "which training example to show (0-based, in training order before shuffling)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		tc, err := cf.load()
		if err != nil {
			return err
		}
		if tokDir == "" {
			tokDir = tc.Model
		}
		rep, err := inspectData(cmd.Context(), tc, tokDir, example, showBatch, cmd.ErrOrStderr())
		if err != nil {
			return err
		}
		return writeDataReport(cmd.OutOrStdout(), rep)
	}
	return cmd
}

func init() { rootCmd.AddCommand(newDataCmd()) }

// dataReport is what `ollama-tune data` prints.
type dataReport struct {
	Examples         int            `json:"examples"`
	Tokens           int            `json:"tokens"`
	Sequences        int            `json:"sequences"`
	StepsPerEpoch    int            `json:"steps_per_epoch"`
	TotalSteps       int            `json:"total_steps"`
	SequenceTokens   int            `json:"sequence_tokens"`
	Truncated        int            `json:"truncated"`
	EvalExamples     int            `json:"eval_examples"`
	EvalSequences    int            `json:"eval_sequences"`
	SkippedRows      int            `json:"skipped_rows"`
	PromptMismatches int            `json:"prompt_mismatches"`
	Type             string         `json:"type"`
	Files            []string       `json:"files"`
	Example          *exampleReport `json:"example"`
	Batch            *batchReport   `json:"batch,omitempty"`
}

type exampleReport struct {
	Index          int     `json:"index"`
	Source         string  `json:"source"`
	Text           string  `json:"text"`
	InputIDs       []int32 `json:"input_ids"`
	CompletionMask []int   `json:"completion_mask,omitempty"` // 1 on completion tokens
}

type batchReport struct {
	Sequences   []int     `json:"sequences"` // indexes of the packed rows collated
	InputIDs    [][]int32 `json:"input_ids"`
	Labels      [][]int32 `json:"labels"`
	PositionIDs [][]int32 `json:"position_ids"`
}

// inspectData runs the data pipeline of a training job (finetune's
// LoadDataset and PrepareData: load, shuffle, split, tokenize, pack, plan).
func inspectData(ctx context.Context, tc finetune.TrainConfig, tokName string, exampleIdx int, showBatch bool, progress io.Writer) (*dataReport, error) {
	tk, dir, err := loadTokenizer(ctx, tokName, progress)
	if err != nil {
		return nil, err
	}
	tmpl, err := chat.FromTokenizerDir(dir)
	switch {
	case errors.Is(err, chat.ErrNoTemplate):
		tmpl = nil // plain-text examples
	case err != nil:
		return nil, fmt.Errorf("tokenizer %s: chat template: %w", dir, err)
	}

	var resolver data.Resolver
	if c, done, err := newHubClient(progress); err == nil {
		defer done()
		resolver = hubResolver{c}
	}
	ds, err := finetune.LoadDataset(ctx, &tc, resolver)
	if err != nil {
		return nil, err
	}
	td, err := finetune.PrepareData(ds, &tc, tk, tmpl)
	if err != nil {
		return nil, err
	}
	examples, toks, seqs, plan := td.Train, td.TrainTokens, td.TrainSeqs, td.Plan
	if exampleIdx < 0 || exampleIdx >= len(examples) {
		return nil, fmt.Errorf("--example %d: the training split has examples 0 to %d", exampleIdx, len(examples)-1)
	}
	total := plan.Steps(tc.Training.NumTrainEpochs)
	if tc.Training.MaxSteps > 0 {
		total = tc.Training.MaxSteps
	}
	rep := &dataReport{
		Examples: plan.Examples, Tokens: plan.Tokens, Sequences: plan.Sequences, StepsPerEpoch: plan.StepsPerEpoch,
		TotalSteps: total, SequenceTokens: plan.SequenceTokens, Truncated: plan.Truncated,
		EvalExamples: len(td.Eval), EvalSequences: len(td.EvalSeqs), SkippedRows: len(ds.Skipped),
		PromptMismatches: plan.PromptMismatches, Type: string(ds.Type), Files: ds.Files,
	}
	ex := &examples[exampleIdx]
	text, err := renderExample(ex, ds.Type, tmpl, tk)
	if err != nil {
		return nil, fmt.Errorf("dataset: %s: %w", ex.Pos, err)
	}
	rep.Example = &exampleReport{Index: exampleIdx, Source: ex.Pos.String(), Text: text,
		InputIDs: toks[exampleIdx].InputIDs}
	for _, m := range toks[exampleIdx].CompletionMask {
		rep.Example.CompletionMask = append(rep.Example.CompletionMask, int(m))
	}

	if showBatch {
		// The trainer's first micro-batch: epoch 0's seeded order, the first
		// per_device_train_batch_size sequences.
		idx := data.EpochBatches(len(seqs), tc.Training.PerDeviceTrainBatchSize, true, uint64(tc.Training.Seed), 0)[0]
		picked := make([]data.Sequence, len(idx))
		for i, k := range idx {
			picked[i] = seqs[k]
		}
		b := td.Collator.Collate(picked)
		rep.Batch = &batchReport{Sequences: idx}
		for r := 0; r < b.B; r++ {
			row := func(x []int32) []int32 { return x[r*b.S : (r+1)*b.S] }
			rep.Batch.InputIDs = append(rep.Batch.InputIDs, row(b.InputIDs))
			rep.Batch.Labels = append(rep.Batch.Labels, row(b.Labels))
			rep.Batch.PositionIDs = append(rep.Batch.PositionIDs, row(b.PositionIDs))
		}
	}
	return rep, nil
}

// hubResolver gives data.Load the Hub client's data set files.
type hubResolver struct{ c *hub.Client }

func (h hubResolver) DatasetFiles(ctx context.Context, repoID, split string) ([]string, error) {
	return h.c.DatasetFiles(ctx, repoID, split)
}

// renderExample is the text an example becomes before tokenizing (what
// data.Tokenize encodes): the chat template's rendering of the
// conversation, or the plain strings with the EOS token appended.
func renderExample(ex *data.Example, typ data.Type, tmpl *chat.Template, tk *tokenizer.Tokenizer) (string, error) {
	eos := tk.SpecialTokens().EOS
	switch typ {
	case data.TypePromptCompletion:
		if ex.Conversational() || tmpl != nil {
			msgs := ex.Messages
			if !ex.Conversational() {
				msgs = []chat.Message{{Role: "user", Content: ex.Prompt}, {Role: "assistant", Content: ex.Completion}}
			}
			if tmpl == nil {
				return "", fmt.Errorf("conversational example but the tokenizer has no chat template")
			}
			return tmpl.Render(msgs, false)
		}
		return ex.Prompt + ex.Completion + eos, nil
	case data.TypeMessages:
		if tmpl == nil {
			return "", fmt.Errorf("messages example but the tokenizer has no chat template")
		}
		return tmpl.Render(ex.Messages, false)
	}
	return ex.Text + eos, nil
}

// numberList matches a JSON array of integers spread over lines by
// MarshalIndent.
var numberList = regexp.MustCompile(`\[\s*(-?\d+(?:,\s*-?\d+)*)\s*\]`)
var listSep = regexp.MustCompile(`,\s+`)

// writeDataReport prints the report as indented JSON with each list of ids
// on one line.
func writeDataReport(w io.Writer, rep *dataReport) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // templates are full of <|user|>
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return err
	}
	b := buf.Bytes()
	b = numberList.ReplaceAllFunc(b, func(m []byte) []byte {
		inner := numberList.FindSubmatch(m)[1]
		return append(append([]byte("["), listSep.ReplaceAll(inner, []byte(", "))...), ']')
	})
	_, err := w.Write(b)
	return err
}
