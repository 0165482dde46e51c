package finetune

import (
	"context"
	"fmt"
	"strings"

	"github.com/ollama-tune/ollama-tune/finetune/chat"
	"github.com/ollama-tune/ollama-tune/finetune/data"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

// TrainData is a configuration's data set as training sees it: read,
// shuffled, split, tokenized and packed. Plan and Train build it, and so
// does `ollama-tune data`, so that what the command shows is what trains.
type TrainData struct {
	Dataset *data.Dataset // as read: every usable row in file order

	// Train and Eval are the examples after dataset.shuffle and
	// dataset.eval_split; TrainTokens is Train tokenized, one per example.
	Train, Eval []data.Example
	TrainTokens []data.Tokenized

	// TrainSeqs and EvalSeqs are the rows after truncation or packing.
	TrainSeqs, EvalSeqs []data.Sequence

	Plan     data.Plan       // counts of the training split
	Options  data.SFTOptions // how the examples were tokenized and packed
	Collator data.Collator   // how micro-batches of sequences are collated
}

// LoadDataset reads the data set c names (dataset.path, split, format,
// rename, remove, type), fetching Hub data sets through r (nil: local files
// only). A data set without a usable row is an error.
func LoadDataset(ctx context.Context, c *TrainConfig, r data.Resolver) (*data.Dataset, error) {
	d := c.Dataset
	src := data.Source{
		Path: d.Path, Split: d.Split, Format: data.Format(d.Format),
		Columns: d.Rename, Remove: d.Remove, Type: data.Type(d.Type),
	}
	ds, err := data.Load(ctx, src, r)
	if err != nil {
		return nil, err // the data package names the data set, file and row
	}
	if len(ds.Examples) == 0 {
		where := d.Path
		if len(ds.Files) > 0 {
			where = strings.Join(ds.Files, ", ")
		}
		return nil, fmt.Errorf("dataset %s has no usable rows (%d empty rows skipped); check the file and the column mapping (rename %v)", where, len(ds.Skipped), d.Rename)
	}
	return ds, nil
}

// PrepareData shuffles (dataset.shuffle, with training.seed), splits
// (dataset.eval_split), tokenizes with tok and tmpl (nil: plain text) and
// truncates or packs (training.max_seq_length, packing, packing_strategy,
// completion_only_loss) the examples of ds, and plans the training
// split's micro-batches and steps.
func PrepareData(ds *data.Dataset, c *TrainConfig, tok *tokenizer.Tokenizer, tmpl *chat.Template) (*TrainData, error) {
	d, t := c.Dataset, c.Training
	seed := uint64(t.Seed)
	td := &TrainData{Dataset: ds, Train: ds.Examples}
	if d.Shuffle {
		td.Train = data.Shuffle(td.Train, seed)
	}
	if d.EvalSplit > 0 {
		var err error
		if td.Train, td.Eval, err = data.TrainTestSplit(td.Train, d.EvalSplit, seed); err != nil {
			return nil, &ConfigError{Key: "dataset.eval_split", Problem: err.Error()}
		}
	}
	dt := dataTokenizer{tok}
	td.Options = data.SFTOptions{
		Template: tmpl, MaxLength: t.MaxSeqLength, Packing: t.Packing,
		PackingStrategy: t.PackingStrategy, CompletionOnlyLoss: t.CompletionOnlyLoss,
	}
	build := func(ex []data.Example) ([]data.Tokenized, []data.Sequence, data.TokenizeStats, int, error) {
		part := *ds
		part.Examples = ex
		toks, st, err := data.Tokenize(&part, dt, td.Options)
		if err != nil {
			return nil, nil, st, 0, fmt.Errorf("dataset: %w", err)
		}
		seqs, truncated, err := data.Prepare(toks, td.Options)
		if err != nil {
			return nil, nil, st, 0, fmt.Errorf("dataset: %w", err)
		}
		return toks, seqs, st, truncated, nil
	}
	var (
		st        data.TokenizeStats
		truncated int
		err       error
	)
	if td.TrainTokens, td.TrainSeqs, st, truncated, err = build(td.Train); err != nil {
		return nil, err
	}
	if len(td.Eval) > 0 {
		if _, td.EvalSeqs, _, _, err = build(td.Eval); err != nil {
			return nil, err
		}
	}
	if td.Plan, err = data.NewPlan(st, td.TrainSeqs, truncated, t.PerDeviceTrainBatchSize, t.GradientAccumulationSteps); err != nil {
		return nil, err
	}
	td.Collator = data.NewCollator(td.Options, ds.Type, dt.Pad())
	return td, nil
}

// dataTokenizer adapts the tokenizer to data.Tokenizer: the pad id is the
// tokenizer's pad token, else its EOS (what TRL falls back to).
type dataTokenizer struct{ *tokenizer.Tokenizer }

func (t dataTokenizer) Pad() int32 {
	if sp := t.SpecialTokens(); sp.PAD != "" && sp.PADID >= 0 {
		return sp.PADID
	}
	return t.EOS()
}
