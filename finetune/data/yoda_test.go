package data

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/chat"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

// phi3Tokenizer adapts finetune/tokenizer to this package's Tokenizer.
type phi3Tokenizer struct{ *tokenizer.Tokenizer }

func (p phi3Tokenizer) Pad() int32 { return p.SpecialTokens().PADID }

// The seed's job end to end on the real data, template and tokenizer:
// 720 Yoda rows as user/assistant prompt/completion, Phi-3's template,
// max_seq_length 64, bfd packing, batch 16.
func TestYodaPipeline(t *testing.T) {
	dir := testutil.SharedData(t, "phi3-tokenizer")
	tk, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	tok := phi3Tokenizer{tk}
	tpl, err := chat.FromTokenizerDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := Load(context.Background(), seedSource(testutil.SharedData(t, "yoda_sentences.csv")), nil)
	if err != nil {
		t.Fatal(err)
	}
	opt := SFTOptions{Template: tpl, MaxLength: 64, Packing: true, PackingStrategy: PackBFD}
	ex, st, err := Tokenize(ds, tok, opt)
	if err != nil {
		t.Fatal(err)
	}
	// The reference count (shared/README.md): the 720 rows in chat format,
	// tokenized as tokenizer.json is written, total 21,801 tokens.
	if st.Examples != 720 || st.Tokens != 21801 {
		t.Errorf("%d examples, %d tokens; want 720, 21801", st.Examples, st.Tokens)
	}
	// The first row's tokens as the reference lists them: <|user|> "The
	// birch canoe slid on the smooth planks." <|end|> <|assistant|> ...
	head := []int32{32010, 450, 29773, 305, 508, 7297, 2243, 333, 373, 278, 10597, 715, 1331, 29889, 32007, 32001}
	if !slices.Equal(ex[0].InputIDs[:len(head)], head) {
		t.Errorf("first example starts %v, want %v", ex[0].InputIDs[:len(head)], head)
	}
	// The completion starts right after <|assistant|> and runs to the end:
	// the answer, <|end|> (32007) and <|endoftext|> (32000).
	n := len(ex[0].InputIDs)
	if ex[0].CompletionMask[len(head)-1] != 0 || ex[0].CompletionMask[len(head)] != 1 ||
		ex[0].InputIDs[n-2] != 32007 || ex[0].InputIDs[n-1] != 32000 {
		t.Errorf("first example %v mask %v", ex[0].InputIDs, ex[0].CompletionMask)
	}
	// TRL 0.23.1 renders the prompt without a generation prompt: its last
	// token is <|endoftext|> where the conversation has <|assistant|>, so
	// every row "mismatches"; with 0.24's generation prompt none does and
	// the masks are the same.
	if st.PromptMismatches != 720 {
		t.Errorf("%d prompt mismatches, want 720", st.PromptMismatches)
	}
	opt24 := opt
	opt24.GenerationPromptMask = true
	ex24, st24, err := Tokenize(ds, tok, opt24)
	if err != nil {
		t.Fatal(err)
	}
	if st24.PromptMismatches != 0 {
		t.Errorf("%d mismatches with the generation prompt", st24.PromptMismatches)
	}
	for i := range ex {
		if !slices.Equal(ex[i].CompletionMask, ex24[i].CompletionMask) {
			t.Fatalf("row %d: masks differ between TRL 0.23.1 and 0.24 rendering", i+1)
		}
	}

	seqs, truncated, err := Prepare(ex, opt)
	if err != nil {
		t.Fatal(err)
	}
	total, packed := 0, 0
	for _, s := range seqs {
		if len(s.InputIDs) > 64 || len(s.SeqLengths) == 0 {
			t.Fatalf("sequence of %d tokens, %v", len(s.InputIDs), s.SeqLengths)
		}
		sum := 0
		for _, l := range s.SeqLengths {
			sum += l
		}
		if sum != len(s.InputIDs) || len(s.CompletionMask) != sum {
			t.Fatalf("seq_lengths %v do not add up to %d", s.SeqLengths, len(s.InputIDs))
		}
		total += len(s.InputIDs)
		packed += len(s.SeqLengths)
	}
	if packed != 720 || total != 21801-truncatedTokens(ex, 64) {
		t.Errorf("packed %d examples, %d tokens", packed, total)
	}
	plan, err := NewPlan(st, seqs, truncated, 16, 1)
	if err != nil {
		t.Fatal(err)
	}
	// Lower bound: no packing beats ceil(21801/64) = 341 full sequences.
	if plan.Sequences < 341 || plan.StepsPerEpoch != (plan.Sequences+15)/16 {
		t.Errorf("plan %+v", plan)
	}
	t.Logf("plan: %+v", plan)

	// One micro-batch: one padding-free row, positions restarting at each
	// example, labels only on completions.
	c := NewCollator(opt, ds.Type, tok.Pad())
	b := c.Collate(seqs[:16])
	starts := 0
	for i, p := range b.PositionIDs {
		if p == 0 {
			starts++
			if b.Labels[i] != IgnoreIndex || b.InputIDs[i] != 32010 {
				t.Errorf("token %d starts an example but is %d with label %d", i, b.InputIDs[i], b.Labels[i])
			}
		}
	}
	want := 0
	for _, s := range seqs[:16] {
		want += len(s.SeqLengths)
	}
	if b.B != 1 || starts != want {
		t.Errorf("batch B=%d S=%d with %d example starts, want %d", b.B, b.S, starts, want)
	}
}

func truncatedTokens(ex []Tokenized, max int) int {
	n := 0
	for _, e := range ex {
		if len(e.InputIDs) > max {
			n += len(e.InputIDs) - max
		}
	}
	return n
}

// Against the GPU machine's reference (finetune/tokenizer/testdata/
// reference.json: transformers' apply_chat_template(tokenize=False) per Yoda
// row, tokenized by tokenizers' Tokenizer.from_file): every row's input ids
// are the reference's "a" ids, and the completion starts after
// len("prompt_a") tokens, the prompt rendered with the generation prompt.
func TestYodaAgainstReference(t *testing.T) {
	path := filepath.Join(testutil.RepoRoot(t), "finetune", "tokenizer", "testdata", "reference.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("no reference fixture (%v)", err)
	}
	var ref struct {
		Rows []struct {
			I       int     `json:"i"`
			A       []int32 `json:"a"`
			PromptA []int32 `json:"prompt_a"`
		} `json:"rows"`
	}
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatal(err)
	}
	dir := testutil.SharedData(t, "phi3-tokenizer")
	tk, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	tpl, err := chat.FromTokenizerDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := Load(context.Background(), seedSource(testutil.SharedData(t, "yoda_sentences.csv")), nil)
	if err != nil {
		t.Fatal(err)
	}
	ex, _, err := Tokenize(ds, phi3Tokenizer{tk}, SFTOptions{Template: tpl})
	if err != nil {
		t.Fatal(err)
	}
	if len(ref.Rows) != len(ex) {
		t.Fatalf("%d reference rows, %d examples", len(ref.Rows), len(ex))
	}
	for _, r := range ref.Rows {
		e := ex[r.I]
		if !slices.Equal(e.InputIDs, r.A) {
			t.Fatalf("row %d: ids %v, reference %v", r.I, e.InputIDs, r.A)
		}
		if !hasPrefix(r.A, r.PromptA) {
			t.Fatalf("row %d: the reference prompt is not a prefix", r.I)
		}
		for j, m := range e.CompletionMask {
			if (m == 1) != (j >= len(r.PromptA)) {
				t.Fatalf("row %d: mask %v, completion should start at %d", r.I, e.CompletionMask, len(r.PromptA))
			}
		}
	}
}
