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
