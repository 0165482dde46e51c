package data

import (
	"errors"
	"fmt"

	"github.com/ollama-tune/ollama-tune/finetune/chat"
)

// Tokenizer is what SFT preparation needs of a tokenizer (finetune/tokenizer
// provides Encode with these semantics: addSpecial adds what the tokenizer
// adds around a text, e.g. a BOS; Phi-3 adds nothing).
type Tokenizer interface {
	Encode(text string, addSpecial bool) []int32
	EOS() int32
	Pad() int32
}

// IgnoreIndex is the label of a token that is not scored (PyTorch's
// cross-entropy ignore_index, finetune.IgnoreIndex).
const IgnoreIndex = -100

// Packing strategies (TRL's packing_strategy).
const (
	PackBFD     = "bfd"
	PackWrapped = "wrapped"
)

// SFTOptions are the SFTConfig fields that shape the data, with TRL 0.23.1's
// meanings.
type SFTOptions struct {
	// Template renders conversations. Prompt/completion examples given as
	// strings are wrapped into [{user: prompt}] and [{assistant:
	// completion}] and rendered with it, as the seed's conversion to
	// messages does; nil trains on the plain strings (TRL's standard
	// format), which appends EOS to the completion or text.
	Template *chat.Template
	// MaxLength is TRL's max_length (the seed's older name:
	// max_seq_length): examples are truncated to it (keeping the start)
	// and packed sequences hold at most this many tokens. 0 means no limit
	// (max_length=None), which packing does not allow.
	MaxLength int
	// Packing packs examples into sequences of MaxLength tokens.
	Packing bool
	// PackingStrategy is "bfd" (the default; best-fit decreasing, examples
	// kept whole) or "wrapped" (concatenate and cut).
	PackingStrategy string
	// PaddingFree flattens each micro-batch into one row with position ids
	// that restart at every example. TRL turns it on for bfd packing
	// whatever this says.
	PaddingFree bool
	// CompletionOnlyLoss: nil is TRL's default, true for prompt/completion
	// data (loss on the completion's tokens only); false trains on every
	// token.
	CompletionOnlyLoss *bool
	// PadToMultipleOf rounds every padded length up to a multiple (0: off).
	PadToMultipleOf int
	// GenerationPromptMask renders the prompt with add_generation_prompt
	// when finding where the completion starts, as TRL 0.24 does (PR
	// #4201). TRL 0.23.1 renders it without; for Phi-3 both give the same
	// mask, since "<|assistant|>\n" and the "<|endoftext|>" it replaces are
	// one token each.
	GenerationPromptMask bool
}

// Strategy returns the packing strategy in force ("" when not packing).
func (o *SFTOptions) Strategy() string {
	if !o.Packing {
		return ""
	}
	if o.PackingStrategy == "" {
		return PackBFD
	}
	return o.PackingStrategy
}

// paddingFree is TRL 0.23's SFTTrainer.__init__:
// args.padding_free or (args.packing and args.packing_strategy == "bfd").
func (o *SFTOptions) paddingFree() bool {
	return o.PaddingFree || o.Strategy() == PackBFD
}

func (o *SFTOptions) validate() error {
	switch o.Strategy() {
	case "", PackBFD, PackWrapped:
	default:
		return fmt.Errorf("packing_strategy %q: use bfd or wrapped", o.PackingStrategy)
	}
	if o.MaxLength < 0 {
		return fmt.Errorf("max_length %d: must be positive (or 0 for no limit)", o.MaxLength)
	}
	if o.Packing && o.MaxLength == 0 {
		return errors.New("packing needs max_length (max_seq_length): the length of a packed sequence")
	}
	if o.PadToMultipleOf < 0 {
		return fmt.Errorf("pad_to_multiple_of %d: must be positive (or 0 for off)", o.PadToMultipleOf)
	}
	return nil
}

// Tokenized is one example as token ids.
type Tokenized struct {
	InputIDs []int32
	// CompletionMask is 1 on the completion's tokens and 0 on the prompt's;
	// nil for data without a prompt/completion split.
	CompletionMask []uint8
	Pos            Pos
}

// TokenizeStats counts what tokenizing saw.
type TokenizeStats struct {
	Examples int
	Tokens   int // sum of the examples' lengths, before truncation or packing
	// PromptMismatches counts examples whose prompt, tokenized alone, is
	// not a prefix of prompt+completion tokenized together (TRL warns
	// "Mismatch between tokenized prompt and the start of tokenized
	// prompt+completion" and masks len(prompt) tokens anyway). With TRL
	// 0.23.1's prompt rendering (no generation prompt) every Phi-3 example
	// mismatches in its last prompt token, harmlessly.
	PromptMismatches int
}

// Tokenize turns examples into token ids and completion masks as TRL 0.23.1's
// SFTTrainer._prepare_dataset does (trl/trainer/sft_trainer.py):
//
//   - standard (non-conversational) data gets the EOS token appended to the
//     completion (or text) unless it already ends with it ("add_eos"); here
//     the EOS id is appended after tokenizing, the same tokens for any
//     tokenizer that does not add EOS on its own;
//   - standard prompt/completion: prompt_ids = tokenizer(prompt),
//     input_ids = tokenizer(prompt + completion), both with special tokens;
//   - conversational prompt/completion: prompt_ids =
//     apply_chat_template(prompt) (no generation prompt in 0.23.1),
//     input_ids = apply_chat_template(prompt + completion); the template
//     supplies the end tokens, no EOS is added; tokenizing a rendered
//     template adds no special tokens;
//   - completion_mask = [0]*len(prompt_ids) + [1]*(len(input_ids) -
//     len(prompt_ids)): the whole conversation is tokenized once and the
//     mask is cut at the prompt's length, not two tokenizations
//     concatenated;
//   - messages: input_ids = apply_chat_template(messages), no mask;
//   - text: input_ids = tokenizer(text) + EOS.
func Tokenize(ds *Dataset, tok Tokenizer, opt SFTOptions) ([]Tokenized, TokenizeStats, error) {
	var st TokenizeStats
	if err := opt.validate(); err != nil {
		return nil, st, err
	}
	eos := tok.EOS()
	out := make([]Tokenized, 0, len(ds.Examples))
	for i := range ds.Examples {
		ex := &ds.Examples[i]
		t, mismatch, err := tokenizeOne(ex, ds.Type, tok, eos, &opt)
		if err != nil {
			return nil, st, &RowError{Pos: ex.Pos, Err: err}
		}
		if len(t.InputIDs) == 0 {
			return nil, st, &RowError{Pos: ex.Pos, Err: errors.New("tokenizes to no tokens")}
		}
		if mismatch {
			st.PromptMismatches++
		}
		st.Examples++
		st.Tokens += len(t.InputIDs)
		out = append(out, t)
	}
	return out, st, nil
}

func tokenizeOne(ex *Example, typ Type, tok Tokenizer, eos int32, opt *SFTOptions) (t Tokenized, mismatch bool, err error) {
	t.Pos = ex.Pos
	render := func(msgs []chat.Message, gen bool) ([]int32, error) {
		if opt.Template == nil {
			return nil, errors.New("conversational example but no chat template; give the tokenizer's chat template")
		}
		s, err := opt.Template.Render(msgs, gen)
		if err != nil {
			return nil, err
		}
		return tok.Encode(s, false), nil
	}
	withEOS := func(ids []int32) []int32 {
		if len(ids) == 0 || ids[len(ids)-1] != eos {
			ids = append(ids, eos)
		}
		return ids
	}
	switch typ {
	case TypePromptCompletion:
		var promptIDs []int32
		switch {
		case ex.Conversational() || opt.Template != nil:
			msgs, nPrompt := ex.Messages, ex.PromptTurns
			if !ex.Conversational() {
				msgs = []chat.Message{{Role: "user", Content: ex.Prompt}, {Role: "assistant", Content: ex.Completion}}
				nPrompt = 1
			}
			if promptIDs, err = render(msgs[:nPrompt], opt.GenerationPromptMask); err != nil {
				return t, false, err
			}
			if t.InputIDs, err = render(msgs, false); err != nil {
				return t, false, err
			}
		default:
			promptIDs = tok.Encode(ex.Prompt, true)
			t.InputIDs = withEOS(tok.Encode(ex.Prompt+ex.Completion, true))
		}
		mismatch = !hasPrefix(t.InputIDs, promptIDs)
		t.CompletionMask = make([]uint8, len(t.InputIDs))
		for j := min(len(promptIDs), len(t.InputIDs)); j < len(t.InputIDs); j++ {
			t.CompletionMask[j] = 1
		}
	case TypeMessages:
		if t.InputIDs, err = render(ex.Messages, false); err != nil {
			return t, false, err
		}
	case TypeText:
		t.InputIDs = withEOS(tok.Encode(ex.Text, true))
	default:
		return t, false, fmt.Errorf("unknown data set type %q", typ)
	}
	return t, mismatch, nil
}

func hasPrefix(s, prefix []int32) bool {
	if len(prefix) > len(s) {
		return false
	}
	for i, v := range prefix {
		if s[i] != v {
			return false
		}
	}
	return true
}
