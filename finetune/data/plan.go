package data

import (
	"fmt"
	"math"
)

// Plan is what a prepared data set amounts to for training.
type Plan struct {
	Examples         int // examples tokenized
	Tokens           int // their tokens after templating, before truncation and packing
	Truncated        int // examples cut to max_length
	PromptMismatches int // see TokenizeStats
	Sequences        int // rows after truncation or packing
	SequenceTokens   int // tokens in those rows (what is trained on, padding aside)
	BatchSize        int // per_device_train_batch_size
	GradAccum        int // gradient_accumulation_steps
	MicroBatches     int // per epoch: ceil(Sequences / BatchSize) (dataloader_drop_last=False)
	// StepsPerEpoch is transformers' Trainer.set_initial_training_values:
	// max(ceil(MicroBatches / GradAccum), 1).
	StepsPerEpoch int
}

// NewPlan counts a prepared data set.
func NewPlan(st TokenizeStats, seqs []Sequence, truncated, batchSize, gradAccum int) (Plan, error) {
	if batchSize <= 0 || gradAccum <= 0 {
		return Plan{}, fmt.Errorf("plan: batch size %d and gradient accumulation %d must be positive", batchSize, gradAccum)
	}
	p := Plan{
		Examples: st.Examples, Tokens: st.Tokens, Truncated: truncated, PromptMismatches: st.PromptMismatches,
		Sequences: len(seqs), BatchSize: batchSize, GradAccum: gradAccum,
	}
	for _, s := range seqs {
		p.SequenceTokens += len(s.InputIDs)
	}
	p.MicroBatches = (p.Sequences + batchSize - 1) / batchSize
	p.StepsPerEpoch = max((p.MicroBatches+gradAccum-1)/gradAccum, 1)
	return p, nil
}

// Steps is the optimizer steps of a run of epochs (which may be
// fractional): ceil(epochs * StepsPerEpoch), the Trainer's max_steps.
func (p Plan) Steps(epochs float64) int {
	return int(math.Ceil(epochs * float64(p.StepsPerEpoch)))
}

// EpochBatches splits the sequences of one epoch into micro-batches of
// batchSize (the last may be smaller): in a seeded random order when
// shuffle (the Trainer's RandomSampler for training), else in order (its
// SequentialSampler for evaluation). Each batch lists sequence indexes.
func EpochBatches(n, batchSize int, shuffle bool, seed uint64, epoch int) [][]int {
	if n <= 0 || batchSize <= 0 {
		return nil
	}
	var order []int
	if shuffle {
		order = Permutation(n, EpochSeed(seed, epoch))
	} else {
		order = make([]int, n)
		for i := range order {
			order[i] = i
		}
	}
	var batches [][]int
	for start := 0; start < n; start += batchSize {
		batches = append(batches, order[start:min(start+batchSize, n):min(start+batchSize, n)])
	}
	return batches
}

// SFTData is a data set ready for the training loop: its sequences, the
// collator that batches them and the plan.
type SFTData struct {
	Sequences []Sequence
	Collator  Collator
	Plan      Plan
}

// BuildSFT tokenizes, truncates or packs, and plans a data set in one call:
// Tokenize, Prepare, NewCollator and NewPlan with the same options.
func BuildSFT(ds *Dataset, tok Tokenizer, opt SFTOptions, batchSize, gradAccum int) (*SFTData, error) {
	ex, st, err := Tokenize(ds, tok, opt)
	if err != nil {
		return nil, err
	}
	seqs, truncated, err := Prepare(ex, opt)
	if err != nil {
		return nil, err
	}
	plan, err := NewPlan(st, seqs, truncated, batchSize, gradAccum)
	if err != nil {
		return nil, err
	}
	return &SFTData{Sequences: seqs, Collator: NewCollator(opt, ds.Type, tok.Pad()), Plan: plan}, nil
}

// Epoch returns the micro-batches of one epoch, collated: shuffled with the
// seed and epoch for training, in order for evaluation.
func (d *SFTData) Epoch(seed uint64, epoch int, shuffle bool) []Batch {
	var out []Batch
	for _, idx := range EpochBatches(len(d.Sequences), d.Plan.BatchSize, shuffle, seed, epoch) {
		seqs := make([]Sequence, len(idx))
		for i, j := range idx {
			seqs[i] = d.Sequences[j]
		}
		out = append(out, d.Collator.Collate(seqs))
	}
	return out
}
