package data

// Batch is one micro-batch of B rows of S tokens; each field is [B*S],
// row-major. Its fields are finetune.Batch's, in the same order, so one
// converts to the other with finetune.Batch(b). Labels are not shifted: the
// model scores the logits at s against Labels[s+1], as transformers'
// ForCausalLMLoss does. Position ids restart at 0 where a packed example
// starts; attention must not cross such a boundary (TRL relies on
// FlashAttention's varlen path deriving sequence boundaries from
// position_ids).
type Batch struct {
	B, S        int
	InputIDs    []int32
	PositionIDs []int32
	Labels      []int32
	// NextLabels, when not nil, is each row's following label [B]: the
	// target of the row's last position (Collator.RowPerSequence).
	NextLabels []int32
}

// Collator builds micro-batches as TRL 0.23.1's
// DataCollatorForLanguageModeling.torch_call does (trl/trainer/
// sft_trainer.py), with return_position_ids on (the FlashAttention setting;
// without it TRL's padding-free batches would attend across examples):
//
//   - labels start as a copy of input_ids;
//   - padding-free: the batch's sequences are concatenated into one row;
//     position ids restart at 0 at each packed example (from seq_lengths,
//     get_position_ids_from_packed_seq_lengths) or at each sequence when
//     there are no seq_lengths; no padding but to PadToMultipleOf;
//   - otherwise each row is right-padded to the longest row (rounded up to
//     PadToMultipleOf) with the pad id, labels -100, position ids 0;
//   - with completion-only loss, labels where completion_mask is 0 (the
//     prompt, and padding) become -100.
//
// What TRL 0.23.1 does not do, this does not do either: the first token of
// a packed example keeps its label (no labels[position_ids == 0] = -100;
// that came with TRL PR #4170, after 0.23). The previous example's last
// token is scored on it unless the completion mask hides it, which it
// does for prompt/completion data, whose examples start with the prompt.
type Collator struct {
	Pad                int32
	CompletionOnlyLoss bool
	PaddingFree        bool
	PadToMultipleOf    int
	// RowPerSequence lays a padding-free batch out as one row per
	// sequence instead of TRL's single flattened row, with the same
	// tokens, position ids, attention (it never crosses an example: the
	// position ids restart) and scored targets: each row is right-padded
	// to the longest, and where the flattened row scores a sequence's last
	// token on the next sequence's first label (not hidden by
	// completion-only loss), the row's first pad slot carries that label,
	// or Batch.NextLabels does when the row is full. The loss and gradients are the
	// flattened row's up to the order of float sums (and the dropout
	// masks, drawn by position in the batch); rows of at most
	// max_seq_length tokens take the CUDA backend's short-row attention
	// kernels, where one row of ~1,000 tokens falls back to the per-query
	// ones. The trainer uses it; `ollama-tune data --show-batch` shows
	// TRL's layout.
	RowPerSequence bool
}

// NewCollator is the collator TRL 0.23.1's SFTTrainer builds for these
// options and data: padding-free when asked or when packing with bfd, and
// completion-only loss by default for prompt/completion data.
func NewCollator(opt SFTOptions, typ Type, pad int32) Collator {
	c := Collator{Pad: pad, PaddingFree: opt.paddingFree(), PadToMultipleOf: opt.PadToMultipleOf}
	if opt.CompletionOnlyLoss != nil {
		c.CompletionOnlyLoss = *opt.CompletionOnlyLoss
	} else {
		c.CompletionOnlyLoss = typ == TypePromptCompletion
	}
	return c
}

func (c Collator) roundUp(n int) int {
	if m := c.PadToMultipleOf; m > 0 && n%m != 0 {
		return n + m - n%m
	}
	return n
}

// Collate builds one micro-batch from sequences.
func (c Collator) Collate(seqs []Sequence) Batch {
	if c.PaddingFree && c.RowPerSequence {
		return c.collateRows(seqs)
	}
	if c.PaddingFree {
		total := 0
		for _, s := range seqs {
			total += len(s.InputIDs)
		}
		S := c.roundUp(total)
		b := newBatch(1, S, c.Pad)
		t := 0
		for _, s := range seqs {
			lengths := s.SeqLengths
			if lengths == nil {
				lengths = []int{len(s.InputIDs)}
			}
			for _, n := range lengths {
				for p := 0; p < n; p++ {
					b.PositionIDs[t+p] = int32(p)
				}
				t += n
			}
		}
		t = 0
		for _, s := range seqs {
			c.fill(&b, t, s)
			t += len(s.InputIDs)
		}
		return b
	}
	longest := 0
	for _, s := range seqs {
		longest = max(longest, len(s.InputIDs))
	}
	S := c.roundUp(longest)
	b := newBatch(len(seqs), S, c.Pad)
	for r, s := range seqs {
		for p := range s.InputIDs {
			b.PositionIDs[r*S+p] = int32(p)
		}
		c.fill(&b, r*S, s)
	}
	return b
}

// collateRows is the padding-free batch as one row per sequence
// (Collator.RowPerSequence).
func (c Collator) collateRows(seqs []Sequence) Batch {
	// carry[r] is the target the flattened row scores sequence r's last
	// token on.
	carry := make([]int32, len(seqs))
	longest := 0
	for r, s := range seqs {
		carry[r] = IgnoreIndex
		if r+1 < len(seqs) && len(seqs[r+1].InputIDs) > 0 {
			carry[r] = c.label(seqs[r+1], 0)
		}
		longest = max(longest, len(s.InputIDs))
	}
	S := c.roundUp(longest)
	b := newBatch(len(seqs), S, c.Pad)
	for r, s := range seqs {
		off := r * S
		lengths := s.SeqLengths
		if lengths == nil {
			lengths = []int{len(s.InputIDs)}
		}
		t := off
		for _, n := range lengths {
			for p := 0; p < n; p++ {
				b.PositionIDs[t+p] = int32(p)
			}
			t += n
		}
		c.fill(&b, off, s)
		switch {
		case carry[r] == IgnoreIndex:
		case len(s.InputIDs) < S:
			b.Labels[off+len(s.InputIDs)] = carry[r]
		default:
			if b.NextLabels == nil {
				b.NextLabels = make([]int32, len(seqs))
				for k := range b.NextLabels {
					b.NextLabels[k] = IgnoreIndex
				}
			}
			b.NextLabels[r] = carry[r]
		}
	}
	return b
}

// label is the label of token i of s (IgnoreIndex where completion-only
// loss hides it).
func (c Collator) label(s Sequence, i int) int32 {
	if c.CompletionOnlyLoss && s.CompletionMask != nil && s.CompletionMask[i] == 0 {
		return IgnoreIndex
	}
	return s.InputIDs[i]
}

// fill writes one sequence's ids and labels at offset off.
func (c Collator) fill(b *Batch, off int, s Sequence) {
	copy(b.InputIDs[off:], s.InputIDs)
	for i := range s.InputIDs {
		b.Labels[off+i] = c.label(s, i)
	}
}

func newBatch(B, S int, pad int32) Batch {
	b := Batch{B: B, S: S, InputIDs: make([]int32, B*S), PositionIDs: make([]int32, B*S), Labels: make([]int32, B*S)}
	for i := range b.InputIDs {
		b.InputIDs[i] = pad
		b.Labels[i] = IgnoreIndex
	}
	return b
}
