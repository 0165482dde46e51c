// Package demo is the offline default of `ollama-tune yoda --demo`: a few
// dozen English/Yoda sentence pairs written for this project, a tokenizer
// the project generates (byte fallback, the characters, the words of the
// pairs, and Phi-3's special tokens), and a tiny random Phi-3 to train on,
// so the whole pipeline runs in about a minute with nothing downloaded.
package demo

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unicode"

	"github.com/ollama-tune/ollama-tune/convert"
	"github.com/ollama-tune/ollama-tune/finetune"
)

// Pairs are English sentences and their Yoda forms, written for the demo.
var Pairs = [][2]string{
	{"The soup is hot.", "Hot, the soup is."},
	{"You must learn patience.", "Patience, you must learn."},
	{"The ship is ready to fly.", "Ready to fly, the ship is."},
	{"We will win this battle.", "Win this battle, we will."},
	{"My friend is very tired.", "Very tired, my friend is."},
	{"The garden looks beautiful today.", "Beautiful today, the garden looks."},
	{"She reads many old books.", "Many old books, she reads."},
	{"You have much to learn.", "Much to learn, you have."},
	{"The river runs to the sea.", "To the sea, the river runs."},
	{"I feel a great disturbance.", "A great disturbance, I feel."},
	{"The door is locked.", "Locked, the door is."},
	{"He will return before dawn.", "Before dawn, he will return."},
	{"This path leads to the mountain.", "To the mountain, this path leads."},
	{"Your training is not complete.", "Complete, your training is not."},
	{"The stars are bright tonight.", "Bright tonight, the stars are."},
	{"We should rest now.", "Rest now, we should."},
	{"The child plays in the snow.", "In the snow, the child plays."},
	{"Fear leads to anger.", "To anger, fear leads."},
	{"The bread smells wonderful.", "Wonderful, the bread smells."},
	{"You are strong with the Force.", "Strong with the Force, you are."},
	{"The old man tells a story.", "A story, the old man tells."},
	{"I cannot find my keys.", "Find my keys, I cannot."},
	{"The wind is cold this morning.", "Cold this morning, the wind is."},
	{"They built a small house.", "A small house, they built."},
	{"The lesson was hard.", "Hard, the lesson was."},
	{"You will find the answer.", "Find the answer, you will."},
	{"The cat sleeps on the chair.", "On the chair, the cat sleeps."},
	{"Luck has nothing to do with it.", "Nothing to do with it, luck has."},
	{"The music is too loud.", "Too loud, the music is."},
	{"Always trust your feelings.", "Trust your feelings, always you must."},
}

// Phi-3's added tokens, in the order of their Phi-3 ids 32000..32010;
// in the demo vocabulary they follow the pieces. rstrip and special as in
// Phi-3's tokenizer.json.
var specials = []struct {
	content string
	rstrip  bool
}{
	{"<|endoftext|>", false}, {"<|assistant|>", true}, {"<|placeholder1|>", true}, {"<|placeholder2|>", true},
	{"<|placeholder3|>", true}, {"<|placeholder4|>", true}, {"<|system|>", true}, {"<|end|>", true},
	{"<|placeholder5|>", true}, {"<|placeholder6|>", true}, {"<|user|>", true},
}

// phi3ChatTemplate is Phi-3-mini-4k-instruct's chat template.
const phi3ChatTemplate = "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"

// vocabulary builds the demo's pieces: <unk> <s> </s>, the 256 byte
// tokens, "▁" and the printable ASCII characters, then every prefix (of
// two or more characters) of "▁"+word for the words of the pairs. Only
// prefix chains are mergeable, so llama.cpp's score-driven SentencePiece
// merge and the BPE merges of tokenizer.json both build each known word
// from its start and agree on every text.
func vocabulary() (pieces []convert.SPPiece, merges [][2]string) {
	pieces = []convert.SPPiece{{Piece: "<unk>", Type: convert.TokenUnknown}, {Piece: "<s>", Type: convert.TokenControl}, {Piece: "</s>", Type: convert.TokenControl}}
	for b := 0; b < 256; b++ {
		pieces = append(pieces, convert.SPPiece{Piece: fmt.Sprintf("<0x%02X>", b), Type: convert.TokenByte})
	}
	seen := map[string]bool{}
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			pieces = append(pieces, convert.SPPiece{Piece: p, Score: -float32(len(pieces)), Type: convert.TokenNormal})
		}
	}
	add("▁")
	for c := '!'; c <= '~'; c++ {
		add(string(c))
	}
	var words []string
	for _, p := range Pairs {
		for _, s := range p {
			for _, w := range strings.Fields(s) {
				w = strings.TrimRightFunc(w, func(r rune) bool { return !unicode.IsLetter(r) && r != '\'' })
				if w != "" && !slices.Contains(words, w) {
					words = append(words, w)
				}
			}
		}
	}
	slices.Sort(words)
	for _, w := range words {
		r := []rune("▁" + w)
		for n := 2; n <= len(r); n++ {
			p := string(r[:n])
			if !seen[p] {
				merges = append(merges, [2]string{string(r[:n-1]), string(r[n-1])})
			}
			add(p)
		}
	}
	return pieces, merges
}

// VocabSize is the demo model's vocabulary: the pieces and the special
// tokens, padded to a multiple of 64 as Phi-3's 32,064 is.
func VocabSize() int {
	p, _ := vocabulary()
	n := len(p) + len(specials)
	return (n + 63) / 64 * 64
}

// WriteTokenizer writes the demo tokenizer into dir in both forms a
// Phi-3 folder has: tokenizer.model (SentencePiece, for the GGUF
// vocabulary) and tokenizer.json (for training), with Phi-3's
// tokenizer_config.json settings and chat template.
func WriteTokenizer(dir string) error {
	pieces, merges := vocabulary()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	vocab := map[string]int{}
	for i, p := range pieces {
		vocab[p.Piece] = i
	}
	type added struct {
		ID         int    `json:"id"`
		Content    string `json:"content"`
		SingleWord bool   `json:"single_word"`
		LStrip     bool   `json:"lstrip"`
		RStrip     bool   `json:"rstrip"`
		Normalized bool   `json:"normalized"`
		Special    bool   `json:"special"`
	}
	addedTokens := []added{
		{ID: 0, Content: "<unk>", Special: true}, {ID: 1, Content: "<s>", Special: true},
		{ID: 2, Content: "</s>", RStrip: true},
	}
	for i, s := range specials {
		addedTokens = append(addedTokens, added{ID: len(pieces) + i, Content: s.content, RStrip: s.rstrip, Special: true})
	}
	mergeList := make([][]string, len(merges))
	for i, m := range merges {
		mergeList[i] = []string{m[0], m[1]}
	}
	tj := map[string]any{
		"version": "1.0", "truncation": nil, "padding": nil,
		"added_tokens": addedTokens,
		"normalizer": map[string]any{"type": "Sequence", "normalizers": []any{
			map[string]any{"type": "Prepend", "prepend": "▁"},
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": "▁"},
		}},
		"pre_tokenizer": nil,
		"post_processor": map[string]any{"type": "TemplateProcessing",
			"single":         []any{map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}},
			"pair":           []any{map[string]any{"Sequence": map[string]any{"id": "A", "type_id": 0}}, map[string]any{"Sequence": map[string]any{"id": "B", "type_id": 1}}},
			"special_tokens": map[string]any{}},
		"decoder": map[string]any{"type": "Sequence", "decoders": []any{
			map[string]any{"type": "Replace", "pattern": map[string]any{"String": "▁"}, "content": " "},
			map[string]any{"type": "ByteFallback"}, map[string]any{"type": "Fuse"},
			map[string]any{"type": "Strip", "content": " ", "start": 1, "stop": 0},
		}},
		"model": map[string]any{"type": "BPE", "dropout": nil, "unk_token": "<unk>", "continuing_subword_prefix": nil,
			"end_of_word_suffix": nil, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
			"vocab": vocab, "merges": mergeList},
	}
	dec := map[string]any{}
	for _, a := range addedTokens {
		dec[fmt.Sprint(a.ID)] = map[string]any{"content": a.Content, "lstrip": false, "normalized": false, "rstrip": a.RStrip, "single_word": false, "special": a.Special}
	}
	tc := map[string]any{
		"add_bos_token": false, "add_eos_token": false, "added_tokens_decoder": dec,
		"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<|endoftext|>",
		"clean_up_tokenization_spaces": false, "legacy": false, "model_max_length": 4096,
		"padding_side": "left", "tokenizer_class": "LlamaTokenizer", "use_default_system_prompt": false,
	}
	stm := map[string]any{"bos_token": "<s>", "eos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<|endoftext|>"}
	for name, v := range map[string]any{"tokenizer.json": tj, "tokenizer_config.json": tc, "special_tokens_map.json": stm} {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "tokenizer.model"), convert.EncodeSentencePiece(pieces), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "chat_template.jinja"), []byte(phi3ChatTemplate), 0o644)
}

// Config is the demo's tiny Phi-3.
func Config() *finetune.Config {
	p, _ := vocabulary()
	endOfText := len(p) // <|endoftext|>
	end := len(p) + 7   // <|end|>
	return &finetune.Config{Architecture: "Phi3ForCausalLM", ModelType: "phi3",
		HiddenSize: 128, IntermediateSize: 256, NumLayers: 2, NumHeads: 4, NumKVHeads: 4, VocabSize: VocabSize(),
		RMSNormEps: 1e-5, RopeTheta: 10000, PartialRotaryFactor: 1, MaxPositionEmbeddings: 4096,
		HiddenAct: "silu", TorchDType: "float32", BOSTokenID: 1, EOSTokenIDs: []int{endOfText, end}, PadTokenID: endOfText}
}

// Seed makes the demo's base model the same everywhere.
const Seed = 20260401

// WriteBaseModel writes the demo base model (random, seeded) with its
// tokenizer into dir.
func WriteBaseModel(dir string) error {
	if err := finetune.WriteRandomCheckpoint(dir, Config(), Seed, finetune.F32); err != nil {
		return fmt.Errorf("demo model: %w", err)
	}
	if err := WriteTokenizer(dir); err != nil {
		return fmt.Errorf("demo tokenizer: %w", err)
	}
	return nil
}

// WriteDataset writes the pairs as a CSV with the Yoda data set's header
// (sentence, translation, translation_extra), so the seed's column mapping
// applies unchanged.
func WriteDataset(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	w.Write([]string{"sentence", "translation", "translation_extra"})
	for _, p := range Pairs {
		w.Write([]string{p[0], p[1], p[1]})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// TrainConfig is the demo's job: the seed's settings where they fit a CPU
// minute (LoRA on the four fused linears, prompt/completion data with the
// seed's column mapping, completion-only loss), with a dense base, a
// larger rank and learning rate, and no packing.
func TrainConfig(modelDir, dataset, outDir string) finetune.TrainConfig {
	cfg := finetune.DefaultTrainConfig()
	cfg.Model = modelDir
	cfg.Quantization = finetune.QuantizationConfig{Bnb4bitComputeDType: "float32"}
	cfg.LoRA.R, cfg.LoRA.LoRAAlpha, cfg.LoRA.LoRADropout = 32, 64, 0
	cfg.Dataset.Path = dataset
	cfg.Dataset.Format = "csv"
	t := &cfg.Training
	t.PerDeviceTrainBatchSize = 10
	t.AutoFindBatchSize = false
	t.GradientCheckpointing = false
	t.Packing = false
	t.MaxSeqLength = 64
	t.NumTrainEpochs = 80
	t.LearningRate = 3e-3
	t.LRSchedulerType = "constant"
	t.Optim = "adamw_torch"
	t.LoggingSteps = 20
	t.SaveSteps = 1 << 30
	t.OutputDir = outDir
	cfg.Device = "cpu"
	return cfg
}
