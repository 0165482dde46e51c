package data

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/chat"
)

// toyTokenizer makes every expected id derivable by hand. The chat markers
// are single tokens that, like Phi-3's added tokens <|user|>, <|assistant|>
// and <|end|> (rstrip=true), swallow the whitespace after them:
//
//	<unk> 0 (pad)   <|endoftext|> 1 (EOS)   <|user|> 2   <|assistant|> 3
//	<|end|> 4       <s> 5 (BOS, added when addSpecial and bos is set)
//
// every other character c is the token 1000+c ('a' = 1097, 'b' = 1098,
// 'c' = 1099, 'h' = 1104, 'i' = 1105).
type toyTokenizer struct{ bos bool }

var toySpecials = []struct {
	text   string
	id     int32
	rstrip bool
}{{"<|endoftext|>", 1, false}, {"<|user|>", 2, true}, {"<|assistant|>", 3, true}, {"<|end|>", 4, true}, {"<s>", 5, false}, {"<unk>", 0, false}}

func (k toyTokenizer) Encode(text string, addSpecial bool) []int32 {
	var ids []int32
	if addSpecial && k.bos {
		ids = append(ids, 5)
	}
outer:
	for len(text) > 0 {
		for _, s := range toySpecials {
			if strings.HasPrefix(text, s.text) {
				ids = append(ids, s.id)
				text = text[len(s.text):]
				if s.rstrip {
					text = strings.TrimLeft(text, " \n")
				}
				continue outer
			}
		}
		r := []rune(text)[0]
		ids = append(ids, 1000+r)
		text = text[len(string(r)):]
	}
	return ids
}

func (toyTokenizer) EOS() int32 { return 1 }
func (toyTokenizer) Pad() int32 { return 0 }

// phi3Template is the text of Phi-3-mini's chat_template.jinja, inlined so
// these tests do not need the shared folder.
const phi3Template = "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"

func toyTemplate(t *testing.T) *chat.Template {
	t.Helper()
	tpl, err := chat.New(phi3Template, map[string]string{"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<unk>", "unk_token": "<unk>"})
	if err != nil {
		t.Fatal(err)
	}
	return tpl
}

func pcDataset(pairs ...string) *Dataset {
	ds := &Dataset{Type: TypePromptCompletion}
	for i := 0; i+1 < len(pairs); i += 2 {
		ds.Examples = append(ds.Examples, Example{Prompt: pairs[i], Completion: pairs[i+1], Pos: Pos{Path: "toy", Row: i/2 + 1}})
	}
	return ds
}

func i32(xs ...int) []int32 {
	out := make([]int32, len(xs))
	for i, x := range xs {
		out[i] = int32(x)
	}
	return out
}

func u8(xs ...int) []uint8 {
	out := make([]uint8, len(xs))
	for i, x := range xs {
		out[i] = uint8(x)
	}
	return out
}

func boolp(b bool) *bool { return &b }

// TRL 0.23.1, conversational prompt/completion, derived by hand:
//
//	prompt+completion renders "<|user|>\nab<|end|>\n<|assistant|>\nc<|end|>\n<|endoftext|>"
//	  -> <|user|> a b <|end|> <|assistant|> c <|end|> <|endoftext|>
//	  =  [2, 1097, 1098, 4, 3, 1099, 4, 1]
//	prompt alone (apply_chat_template without a generation prompt) renders
//	  "<|user|>\nab<|end|>\n<|endoftext|>" -> [2, 1097, 1098, 4, 1], 5 tokens
//	completion_mask = [0]*5 + [1]*3; the prompt is not a prefix (1 != 3): a
//	mismatch TRL only warns about.
//	labels (completion only) = [-100 x5, 1099, 4, 1]: the assistant marker is
//	  not trained on, the answer, <|end|> and <|endoftext|> are.
func TestTokenizeConversational(t *testing.T) {
	tok := toyTokenizer{bos: true} // a BOS would show if the rendered text were tokenized with special tokens
	opt := SFTOptions{Template: toyTemplate(t)}
	got, st, err := Tokenize(pcDataset("ab", "c"), tok, opt)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got[0].InputIDs, i32(2, 1097, 1098, 4, 3, 1099, 4, 1)) || !slices.Equal(got[0].CompletionMask, u8(0, 0, 0, 0, 0, 1, 1, 1)) {
		t.Errorf("ids %v mask %v", got[0].InputIDs, got[0].CompletionMask)
	}
	if st.Examples != 1 || st.Tokens != 8 || st.PromptMismatches != 1 {
		t.Errorf("stats %+v", st)
	}
	// TRL 0.24's add_generation_prompt=True: prompt "<|user|>\nab<|end|>\n<|assistant|>\n"
	// = [2, 1097, 1098, 4, 3], a true prefix, the same 5-token mask.
	opt.GenerationPromptMask = true
	got2, st2, err := Tokenize(pcDataset("ab", "c"), tok, opt)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got2[0].CompletionMask, got[0].CompletionMask) || st2.PromptMismatches != 0 {
		t.Errorf("generation-prompt mask %v, mismatches %d", got2[0].CompletionMask, st2.PromptMismatches)
	}
	b := NewCollator(opt, TypePromptCompletion, tok.Pad()).Collate([]Sequence{{InputIDs: got[0].InputIDs, CompletionMask: got[0].CompletionMask}})
	if !slices.Equal(b.Labels, i32(-100, -100, -100, -100, -100, 1099, 4, 1)) {
		t.Errorf("labels %v", b.Labels)
	}
	// completion_only_loss=False trains on every token.
	opt.CompletionOnlyLoss = boolp(false)
	b = NewCollator(opt, TypePromptCompletion, tok.Pad()).Collate([]Sequence{{InputIDs: got[0].InputIDs, CompletionMask: got[0].CompletionMask}})
	if !slices.Equal(b.Labels, got[0].InputIDs) {
		t.Errorf("labels without completion-only loss %v", b.Labels)
	}
}

// Conversational data given as message lists takes the same path; a
// system turn belongs to the prompt.
func TestTokenizeConversationalLists(t *testing.T) {
	ds := &Dataset{Type: TypePromptCompletion, Examples: []Example{{
		Messages:    []chat.Message{{Role: "system", Content: "s"}, {Role: "user", Content: "a"}, {Role: "assistant", Content: "c"}},
		PromptTurns: 2,
	}}}
	// "<|system|>\ns<|end|>\n..." : <|system|> is not a toy special, so it is
	// 13 characters, then '\n' (1010), 's', <|end|>, <|user|>, 'a', <|end|>,
	// then <|endoftext|> (prompt) or <|assistant|> 'c' <|end|> <|endoftext|>.
	got, _, err := Tokenize(ds, toyTokenizer{}, SFTOptions{Template: toyTemplate(t)})
	if err != nil {
		t.Fatal(err)
	}
	sys := toyTokenizer{}.Encode("<|system|>\n", false)
	want := append(slices.Clone(sys), i32(1115, 4, 2, 1097, 4, 3, 1099, 4, 1)...)
	if !slices.Equal(got[0].InputIDs, want) {
		t.Fatalf("ids %v, want %v", got[0].InputIDs, want)
	}
	nPrompt := len(sys) + 5 + 1 // ... <|end|> and the <|endoftext|> that the prompt render ends with
	for i, m := range got[0].CompletionMask {
		if (m == 1) != (i >= nPrompt) {
			t.Fatalf("mask %v, want 1 from index %d", got[0].CompletionMask, nPrompt)
		}
	}
	if _, _, err := Tokenize(ds, toyTokenizer{}, SFTOptions{}); err == nil || !strings.Contains(err.Error(), "chat template") {
		t.Errorf("conversational data without a template: %v", err)
	}
}

// TRL 0.23.1, standard data (no chat template):
//
//	completion "c" + EOS text; prompt_ids = tokenizer("ab") = [5, 1097, 1098]
//	(BOS added: special tokens are on for plain text),
//	input_ids = tokenizer("ab" + "c<|endoftext|>") = [5, 1097, 1098, 1099, 1]
//	completion_mask = [0, 0, 0, 1, 1]
//	a completion already ending in the EOS text gets no second one;
//	text "hi" -> [5, 1104, 1105, 1].
func TestTokenizeStandard(t *testing.T) {
	tok := toyTokenizer{bos: true}
	got, st, err := Tokenize(pcDataset("ab", "c", "ab", "c<|endoftext|>"), tok, SFTOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if !slices.Equal(got[i].InputIDs, i32(5, 1097, 1098, 1099, 1)) || !slices.Equal(got[i].CompletionMask, u8(0, 0, 0, 1, 1)) {
			t.Errorf("example %d: ids %v mask %v", i, got[i].InputIDs, got[i].CompletionMask)
		}
	}
	if st.PromptMismatches != 0 || st.Tokens != 10 {
		t.Errorf("stats %+v", st)
	}
	text := &Dataset{Type: TypeText, Examples: []Example{{Text: "hi"}}}
	got, _, err = Tokenize(text, tok, SFTOptions{})
	if err != nil || !slices.Equal(got[0].InputIDs, i32(5, 1104, 1105, 1)) || got[0].CompletionMask != nil {
		t.Errorf("text: %v %v", got, err)
	}
	// messages: the whole rendered conversation, no mask, labels = ids.
	msgs := &Dataset{Type: TypeMessages, Examples: []Example{{Messages: []chat.Message{{Role: "user", Content: "ab"}, {Role: "assistant", Content: "c"}}}}}
	opt := SFTOptions{Template: toyTemplate(t)}
	got, _, err = Tokenize(msgs, tok, opt)
	if err != nil || !slices.Equal(got[0].InputIDs, i32(2, 1097, 1098, 4, 3, 1099, 4, 1)) || got[0].CompletionMask != nil {
		t.Fatalf("messages: %v %v", got, err)
	}
	b := NewCollator(opt, TypeMessages, 0).Collate([]Sequence{{InputIDs: got[0].InputIDs}})
	if !slices.Equal(b.Labels, got[0].InputIDs) {
		t.Errorf("messages labels %v", b.Labels)
	}
}

// truncate_dataset keeps the first max_length tokens of ids and mask.
func TestTruncation(t *testing.T) {
	ex, st, err := Tokenize(pcDataset("ab", "c", "a", "b"), toyTokenizer{}, SFTOptions{Template: toyTemplate(t)})
	if err != nil {
		t.Fatal(err)
	}
	// example 2: [2, 1097, 4, 3, 1098, 4, 1] (7 tokens)
	seqs, truncated, err := Prepare(ex, SFTOptions{MaxLength: 7})
	if err != nil {
		t.Fatal(err)
	}
	if truncated != 1 || st.Tokens != 15 {
		t.Errorf("truncated %d, tokens %d", truncated, st.Tokens)
	}
	if !slices.Equal(seqs[0].InputIDs, i32(2, 1097, 1098, 4, 3, 1099, 4)) || !slices.Equal(seqs[0].CompletionMask, u8(0, 0, 0, 0, 0, 1, 1)) {
		t.Errorf("truncated example %v %v", seqs[0].InputIDs, seqs[0].CompletionMask)
	}
	if len(seqs[1].InputIDs) != 7 || seqs[1].SeqLengths != nil {
		t.Errorf("untouched example %v", seqs[1])
	}
	// TRL's truncate_dataset docstring: [[1,2,3],[4,5,6,7],[8]] at 2 -> [[1,2],[4,5],[8]].
	seqs, truncated, _ = Prepare([]Tokenized{{InputIDs: i32(1, 2, 3)}, {InputIDs: i32(4, 5, 6, 7)}, {InputIDs: i32(8)}}, SFTOptions{MaxLength: 2})
	if fmt.Sprint(seqIDs(seqs)) != "[[1 2] [4 5] [8]]" || truncated != 2 {
		t.Errorf("docstring truncation %v (%d truncated)", seqIDs(seqs), truncated)
	}
}

func seqIDs(seqs []Sequence) [][]int32 {
	var out [][]int32
	for _, s := range seqs {
		out = append(out, s.InputIDs)
	}
	return out
}

func seqLengths(seqs []Sequence) [][]int {
	var out [][]int
	for _, s := range seqs {
		out = append(out, s.SeqLengths)
	}
	return out
}

// Bins worked out from _pack_bfd step by step:
//
//	[5,3,8,2,7] into 10: visit 8(#2) 7(#4) 5(#0) 3(#1) 2(#3).
//	8 -> new bin A (2 free); 7 -> new B (3 free); 5 -> new C (5 free);
//	3 -> least space >= 3 is B's 3 -> B full; 2 -> A's 2 -> A full.
//	Bins in opening order: A [2 3], B [4 1], C [0].
func TestBFDBins(t *testing.T) {
	cases := []struct {
		lengths []int
		seq     int
		want    string
	}{
		{[]int{5, 3, 8, 2, 7}, 10, "[[2 3] [4 1] [0]]"},
		// TRL's docs: lengths 5, 2, 3, 1 with seq_length 4 give seq_lengths
		// [[4], [3, 1], [2]] (the 5 is cut to 4).
		{[]int{5, 2, 3, 1}, 4, "[[0] [2 3] [1]]"},
		// Equal free space: the bin that got there first is used (FIFO):
		// 4 -> A (1 free), 4 -> B (1 free), 1 -> A, 1 -> B.
		{[]int{4, 4, 1, 1}, 5, "[[0 2] [1 3]]"},
		// Ties in length keep their original order.
		{[]int{3, 3, 3, 3}, 6, "[[0 1] [2 3]]"},
		// Best fit, not first fit: 6 -> A (4 free), 7 -> B (3 free), 3 goes
		// to B (3 free) although A (4 free) was opened first.
		{[]int{6, 7, 3}, 10, "[[1 2] [0]]"},
		{[]int{1}, 1, "[[0]]"},
	}
	for _, c := range cases {
		if got := fmt.Sprint(BFDBins(c.lengths, c.seq)); got != c.want {
			t.Errorf("BFDBins(%v, %d) = %s, want %s", c.lengths, c.seq, got, c.want)
		}
	}
}

// pack_dataset's docstring example:
// input_ids [[1,2,3],[4,5],[6,7,8],[9]] at seq_length 4:
// bfd -> [[1,2,3,9],[6,7,8],[4,5]], seq_lengths [[3,1],[3],[2]];
// wrapped -> [[1,2,3,4],[5,6,7,8],[9]].
func TestPackDocstring(t *testing.T) {
	ex := []Tokenized{{InputIDs: i32(1, 2, 3)}, {InputIDs: i32(4, 5)}, {InputIDs: i32(6, 7, 8)}, {InputIDs: i32(9)}}
	seqs, _, err := Prepare(ex, SFTOptions{Packing: true, MaxLength: 4})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seqIDs(seqs)) != "[[1 2 3 9] [6 7 8] [4 5]]" || fmt.Sprint(seqLengths(seqs)) != "[[3 1] [3] [2]]" {
		t.Errorf("bfd %v %v", seqIDs(seqs), seqLengths(seqs))
	}
	seqs, truncated, err := Prepare(ex, SFTOptions{Packing: true, PackingStrategy: PackWrapped, MaxLength: 4})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seqIDs(seqs)) != "[[1 2 3 4] [5 6 7 8] [9]]" || seqs[0].SeqLengths != nil || truncated != 0 {
		t.Errorf("wrapped %v %v", seqIDs(seqs), seqLengths(seqs))
	}
}

// BFD packing truncates each example to the sequence length and moves the
// completion mask with the ids.
func TestPackBFDMasksAndTruncation(t *testing.T) {
	ex := []Tokenized{
		{InputIDs: i32(11, 12, 13, 14, 15, 16), CompletionMask: u8(0, 0, 1, 1, 1, 1)}, // 6 > 5: cut to 5
		{InputIDs: i32(21, 22), CompletionMask: u8(0, 1)},
		{InputIDs: i32(31, 32, 33), CompletionMask: u8(0, 1, 1)},
	}
	seqs, truncated, err := Prepare(ex, SFTOptions{Packing: true, PackingStrategy: PackBFD, MaxLength: 5})
	if err != nil {
		t.Fatal(err)
	}
	// visit 5(#0) 3(#2) 2(#1): #0 fills A; #2 -> B (2 free); #1 -> B.
	if truncated != 1 || fmt.Sprint(seqIDs(seqs)) != "[[11 12 13 14 15] [31 32 33 21 22]]" {
		t.Fatalf("ids %v, truncated %d", seqIDs(seqs), truncated)
	}
	if fmt.Sprint(seqs[1].CompletionMask) != "[0 1 1 0 1]" || fmt.Sprint(seqLengths(seqs)) != "[[5] [3 2]]" {
		t.Errorf("mask %v, lengths %v", seqs[1].CompletionMask, seqLengths(seqs))
	}
}

// datasets' map(batched=True) hands _pack_bfd 1,000 rows at a time: 1,000
// examples of 9 tokens and one of 1 token in sequences of 10 give 1,001
// sequences, where packing all at once would give 1,000.
func TestPackBlocksOfAThousand(t *testing.T) {
	var ex []Tokenized
	for i := 0; i < 1000; i++ {
		ex = append(ex, Tokenized{InputIDs: make([]int32, 9)})
	}
	ex = append(ex, Tokenized{InputIDs: []int32{7}})
	seqs, _, err := Prepare(ex, SFTOptions{Packing: true, MaxLength: 10})
	if err != nil {
		t.Fatal(err)
	}
	if len(seqs) != 1001 || !slices.Equal(seqs[1000].InputIDs, []int32{7}) {
		t.Errorf("%d sequences, last %v", len(seqs), seqs[len(seqs)-1].InputIDs)
	}
	// Wrapped packing also restarts per block: 1,000 x 9 = 9,000 tokens make
	// 900 full sequences, then the 1,001st example alone.
	seqs, _, _ = Prepare(ex, SFTOptions{Packing: true, PackingStrategy: PackWrapped, MaxLength: 10})
	if len(seqs) != 901 || len(seqs[900].InputIDs) != 1 {
		t.Errorf("wrapped: %d sequences", len(seqs))
	}
}

// DataCollatorForLanguageModeling's docstring examples (pad_token_id 0).
func TestCollateDocstring(t *testing.T) {
	plain := []Sequence{{InputIDs: i32(1, 2, 3)}, {InputIDs: i32(4, 5)}}
	c := Collator{Pad: 0, CompletionOnlyLoss: true}
	b := c.Collate(plain)
	if b.B != 2 || b.S != 3 ||
		!slices.Equal(b.InputIDs, i32(1, 2, 3, 4, 5, 0)) ||
		!slices.Equal(b.Labels, i32(1, 2, 3, 4, 5, -100)) ||
		!slices.Equal(b.PositionIDs, i32(0, 1, 2, 0, 1, 0)) {
		t.Errorf("padded batch %+v", b)
	}
	masked := []Sequence{{InputIDs: i32(1, 2, 3), CompletionMask: u8(0, 1, 1)}, {InputIDs: i32(4, 5), CompletionMask: u8(0, 1)}}
	b = c.Collate(masked)
	if !slices.Equal(b.Labels, i32(-100, 2, 3, -100, 5, -100)) {
		t.Errorf("completion-masked labels %v", b.Labels)
	}
	c.PaddingFree = true
	b = c.Collate(plain)
	if b.B != 1 || b.S != 5 ||
		!slices.Equal(b.InputIDs, i32(1, 2, 3, 4, 5)) ||
		!slices.Equal(b.PositionIDs, i32(0, 1, 2, 0, 1)) ||
		!slices.Equal(b.Labels, i32(1, 2, 3, 4, 5)) {
		t.Errorf("padding-free batch %+v", b)
	}
	b = c.Collate(masked)
	if !slices.Equal(b.Labels, i32(-100, 2, 3, -100, 5)) {
		t.Errorf("padding-free masked labels %v", b.Labels)
	}
	// pad_to_multiple_of rounds both layouts up.
	c.PadToMultipleOf = 4
	b = c.Collate(plain)
	if b.S != 8 || !slices.Equal(b.InputIDs[5:], i32(0, 0, 0)) || !slices.Equal(b.Labels[5:], i32(-100, -100, -100)) || !slices.Equal(b.PositionIDs[5:], i32(0, 0, 0)) {
		t.Errorf("padding-free, multiple of 4: %+v", b)
	}
	c.PaddingFree = false
	if b = c.Collate(plain); b.S != 4 || b.InputIDs[7] != 0 || b.Labels[3] != -100 {
		t.Errorf("padded, multiple of 4: %+v", b)
	}
}

// A micro-batch of bfd-packed sequences is one row (padding-free is forced
// on by bfd): position ids restart at every packed example
// (get_position_ids_from_packed_seq_lengths), and, as in TRL 0.23.1, the
// first token of a packed example keeps its label when completion-only loss
// is off (no labels[position_ids == 0] = -100 yet).
func TestCollatePacked(t *testing.T) {
	seqs := []Sequence{
		{InputIDs: i32(1, 2, 3, 9), CompletionMask: u8(0, 1, 0, 1), SeqLengths: []int{3, 1}},
		{InputIDs: i32(6, 7, 8), CompletionMask: u8(0, 1, 1), SeqLengths: []int{3}},
	}
	opt := SFTOptions{Packing: true, MaxLength: 4}
	c := NewCollator(opt, TypePromptCompletion, 0)
	if !c.PaddingFree || !c.CompletionOnlyLoss {
		t.Fatalf("collator %+v: bfd packing must be padding-free, prompt/completion completion-only", c)
	}
	b := c.Collate(seqs)
	if b.B != 1 || b.S != 7 ||
		!slices.Equal(b.InputIDs, i32(1, 2, 3, 9, 6, 7, 8)) ||
		!slices.Equal(b.PositionIDs, i32(0, 1, 2, 0, 0, 1, 2)) ||
		!slices.Equal(b.Labels, i32(-100, 2, -100, 9, -100, 7, 8)) {
		t.Errorf("packed batch %+v", b)
	}
	opt.CompletionOnlyLoss = boolp(false)
	b = NewCollator(opt, TypePromptCompletion, 0).Collate(seqs)
	if !slices.Equal(b.Labels, i32(1, 2, 3, 9, 6, 7, 8)) {
		t.Errorf("labels without completion-only loss %v", b.Labels)
	}
	// Wrapped packing is not padding-free unless asked: rows padded to the
	// longest, positions counted per row.
	c = NewCollator(SFTOptions{Packing: true, PackingStrategy: PackWrapped, MaxLength: 4}, TypeText, 0)
	if c.PaddingFree || c.CompletionOnlyLoss {
		t.Errorf("wrapped collator %+v", c)
	}
}

// RowPerSequence: one row per packed sequence with the flattened row's
// tokens, position ids and scored targets. Where the flattened row scores
// a sequence's last token on the next sequence's first label, a shorter
// row carries that label in its first pad slot and a full row in
// NextLabels; with completion-only loss the prompts hide them all.
func TestCollateRowPerSequence(t *testing.T) {
	seqs := []Sequence{
		{InputIDs: i32(1, 2, 3, 9), CompletionMask: u8(0, 1, 0, 1), SeqLengths: []int{3, 1}},
		{InputIDs: i32(6, 7, 8), CompletionMask: u8(0, 1, 1), SeqLengths: []int{3}},
		{InputIDs: i32(4, 5), CompletionMask: u8(0, 1), SeqLengths: []int{1, 1}},
		{InputIDs: i32(11), CompletionMask: u8(0), SeqLengths: []int{1}},
	}
	for _, completionOnly := range []bool{true, false} {
		c := Collator{Pad: 0, PaddingFree: true, CompletionOnlyLoss: completionOnly}
		flat := c.Collate(seqs)
		c.RowPerSequence = true
		rows := c.Collate(seqs)
		if rows.B != 4 || rows.S != 4 {
			t.Fatalf("completion-only %v: rows layout %dx%d, want 4x4", completionOnly, rows.B, rows.S)
		}
		if !slices.Equal(rows.PositionIDs[:4], i32(0, 1, 2, 0)) || !slices.Equal(rows.PositionIDs[8:10], i32(0, 0)) {
			t.Errorf("positions %v", rows.PositionIDs)
		}
		if completionOnly && rows.NextLabels != nil {
			t.Errorf("completion-only: next labels %v, want none", rows.NextLabels)
		}
		if !completionOnly && (!slices.Equal(rows.NextLabels, i32(6, -100, -100, -100)) || rows.Labels[4+3] != 4 || rows.Labels[8+2] != 11) {
			t.Errorf("carried labels: next %v, labels %v", rows.NextLabels, rows.Labels)
		}
		// scored (token, position, target) triples, in order.
		scored := func(b Batch) [][3]int32 {
			var out [][3]int32
			for r := range b.B {
				for s := 0; s < b.S; s++ {
					k := r*b.S + s
					target := int32(IgnoreIndex)
					if s+1 < b.S {
						target = b.Labels[k+1]
					} else if b.NextLabels != nil {
						target = b.NextLabels[r]
					}
					if target != IgnoreIndex {
						out = append(out, [3]int32{b.InputIDs[k], b.PositionIDs[k], target})
					}
				}
			}
			return out
		}
		f, g := scored(flat), scored(rows)
		if !slices.Equal(f, g) {
			t.Errorf("completion-only %v: scored %v in rows, %v in the flattened row", completionOnly, g, f)
		}
		if len(f) == 0 {
			t.Fatal("nothing scored")
		}
	}
	// The row's length is rounded up like the flattened row's.
	c := Collator{PaddingFree: true, RowPerSequence: true, PadToMultipleOf: 8}
	if b := c.Collate(seqs); b.S != 8 {
		t.Errorf("multiple of 8: S %d", b.S)
	}
}

func TestSFTOptionErrors(t *testing.T) {
	for _, c := range []struct {
		opt  SFTOptions
		frag string
	}{
		{SFTOptions{Packing: true}, "needs max_length"},
		{SFTOptions{Packing: true, MaxLength: 8, PackingStrategy: "ffd"}, `packing_strategy "ffd"`},
		{SFTOptions{MaxLength: -1}, "max_length"},
		{SFTOptions{PadToMultipleOf: -8}, "pad_to_multiple_of"},
	} {
		if _, _, err := Prepare(nil, c.opt); err == nil || !strings.Contains(err.Error(), c.frag) {
			t.Errorf("%+v: %v, want %q", c.opt, err, c.frag)
		}
	}
	// A row that renders to nothing is an error naming it.
	empty := &Dataset{Type: TypeMessages, Examples: []Example{{Messages: []chat.Message{{Role: "tool", Content: "x"}}, Pos: Pos{Path: "d.jsonl", Line: 4, Row: 3}}}}
	tpl, _ := chat.New("{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}{% endif %}{% endfor %}", nil)
	if _, _, err := Tokenize(empty, toyTokenizer{}, SFTOptions{Template: tpl}); err == nil || !strings.Contains(err.Error(), "d.jsonl: line 4") {
		t.Errorf("empty render: %v", err)
	}
}

// Steps per epoch as the Trainer computes them: ceil(ceil(seqs/batch)/accum).
func TestPlan(t *testing.T) {
	seqs := make([]Sequence, 45)
	for i := range seqs {
		seqs[i] = Sequence{InputIDs: make([]int32, 10)}
	}
	st := TokenizeStats{Examples: 90, Tokens: 470, PromptMismatches: 3}
	cases := []struct{ batch, accum, micro, steps, steps10 int }{
		{16, 1, 3, 3, 30},
		{16, 2, 3, 2, 20},
		{4, 4, 12, 3, 30},
		{5, 4, 9, 3, 30},
		{1, 45, 45, 1, 10},
		{64, 8, 1, 1, 10},
	}
	for _, c := range cases {
		p, err := NewPlan(st, seqs, 2, c.batch, c.accum)
		if err != nil {
			t.Fatal(err)
		}
		if p.MicroBatches != c.micro || p.StepsPerEpoch != c.steps || p.Steps(10) != c.steps10 {
			t.Errorf("batch %d accum %d: %+v", c.batch, c.accum, p)
		}
		if p.Examples != 90 || p.Tokens != 470 || p.Sequences != 45 || p.SequenceTokens != 450 || p.Truncated != 2 || p.PromptMismatches != 3 {
			t.Errorf("counts %+v", p)
		}
	}
	p, _ := NewPlan(st, seqs, 0, 16, 2) // 2 steps an epoch
	if p.Steps(2.5) != 5 || p.Steps(0.25) != 1 {
		t.Errorf("fractional epochs: %d, %d", p.Steps(2.5), p.Steps(0.25))
	}
	if _, err := NewPlan(st, seqs, 0, 0, 1); err == nil {
		t.Error("batch size 0 accepted")
	}
}

// BuildSFT and Epoch chain the steps: every sequence lands in exactly one
// micro-batch of an epoch, and the order follows the seed.
func TestBuildSFTEpoch(t *testing.T) {
	var pairs []string
	for i := 0; i < 10; i++ {
		pairs = append(pairs, strings.Repeat("a", i+1), "c")
	}
	d, err := BuildSFT(pcDataset(pairs...), toyTokenizer{}, SFTOptions{Template: toyTemplate(t), MaxLength: 32, Packing: true}, 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	batches := d.Epoch(42, 0, true)
	if len(batches) != d.Plan.MicroBatches || d.Plan.Examples != 10 {
		t.Fatalf("%d batches, plan %+v", len(batches), d.Plan)
	}
	tokens, starts := 0, 0
	for _, b := range batches {
		if b.B != 1 {
			t.Errorf("packed batch with B=%d", b.B)
		}
		tokens += b.S
		for _, p := range b.PositionIDs {
			if p == 0 {
				starts++
			}
		}
	}
	if tokens != d.Plan.SequenceTokens || starts != 10 {
		t.Errorf("%d tokens, %d example starts; want %d, 10", tokens, starts, d.Plan.SequenceTokens)
	}
	again := d.Epoch(42, 0, true)
	other := d.Epoch(42, 1, true)
	if fmt.Sprint(again) != fmt.Sprint(batches) || fmt.Sprint(other) == fmt.Sprint(batches) {
		t.Error("epoch order does not follow the seed and epoch")
	}
}
