package convert

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
)

// Vocab is a tokenizer as GGUF stores it (the tokenizer.* keys) for a
// SentencePiece ("llama") tokenizer such as Phi-3's.
type Vocab struct {
	Model  string // tokenizer.ggml.model: "llama" (SentencePiece)
	Pre    string // tokenizer.ggml.pre: "default"
	Tokens []string
	Scores []float32
	Types  []int32
	// Special maps a special-token kind (bos, eos, unk, sep, pad, cls,
	// mask) to its id.
	Special map[string]int32
	// Add maps a kind to tokenizer_config.json's add_<kind>_token: whether
	// llama.cpp adds it when asked for special tokens.
	Add          map[string]bool
	ChatTemplate string
}

// specialKinds are gguf-py SpecialVocab's special token types, in order.
var specialKinds = []string{"bos", "eos", "unk", "sep", "pad", "cls", "mask"}

// ggufSpecialKey is the GGUF key of a special-token kind's id (gguf-py's
// constants, including its historical spelling of "seperator").
func ggufSpecialKey(kind string) string {
	switch kind {
	case "unk":
		return "tokenizer.ggml.unknown_token_id"
	case "sep":
		return "tokenizer.ggml.seperator_token_id"
	case "pad":
		return "tokenizer.ggml.padding_token_id"
	}
	return "tokenizer.ggml." + kind + "_token_id"
}

// KV adds the vocabulary's tokenizer.* keys to kv.
func (v *Vocab) KV(kv map[string]any) {
	kv["tokenizer.ggml.model"] = v.Model
	kv["tokenizer.ggml.pre"] = v.Pre
	kv["tokenizer.ggml.tokens"] = v.Tokens
	kv["tokenizer.ggml.scores"] = v.Scores
	kv["tokenizer.ggml.token_type"] = v.Types
	for k, id := range v.Special {
		kv[ggufSpecialKey(k)] = uint32(id)
	}
	for k, add := range v.Add {
		kv["tokenizer.ggml.add_"+k+"_token"] = add
	}
	if v.ChatTemplate != "" {
		kv["tokenizer.chat_template"] = v.ChatTemplate
	}
}

// ID returns the id of a token string, -1 if absent.
func (v *Vocab) ID(tok string) int32 {
	for i, t := range v.Tokens {
		if t == tok {
			return int32(i)
		}
	}
	return -1
}

// hfAddedToken is an entry of tokenizer.json's added_tokens or
// tokenizer_config.json's added_tokens_decoder.
type hfAddedToken struct {
	ID      *int   `json:"id"`
	Content string `json:"content"`
	Special bool   `json:"special"`
}

// LoadVocab builds the GGUF vocabulary of a Hugging Face tokenizer folder
// the way llama.cpp's convert_hf_to_gguf.py does for Phi-3
// (Phi3MiniModel.set_vocab + gguf.SpecialVocab), which is how the Ollama
// library's phi3 was made:
//
//   - every id up to vocabSize starts as "[PAD<i>]", score -10000, UNUSED
//     (Phi-3's embedding has 32,064 rows for 32,011 tokens);
//   - tokenizer.model's pieces keep their score and type;
//   - added_tokens.json, tokenizer_config.json's added_tokens_decoder and
//     tokenizer.json's added_tokens are written over them with score -1000,
//     CONTROL when marked special, else USER_DEFINED;
//   - bos/eos/unk/... ids from tokenizer_config.json's *_token looked up in
//     tokenizer.json's added_tokens, else config.json's *_token_id;
//     add_bos_token/add_eos_token from tokenizer_config.json;
//   - the chat template from tokenizer_config.json, else
//     chat_template.jinja.
//
// Ollama's own converter differs for this folder: without added_tokens.json
// it leaves ids 32000+ as "[PAD<i>]" user-defined tokens, so "<|user|>"
// would be tokenized as text. configJSON is the model's config.json (nil
// when absent); vocabSize 0 means the tokenizer's own size.
func LoadVocab(dir string, vocabSize int, configJSON []byte) (*Vocab, error) {
	spmPath := filepath.Join(dir, "tokenizer.model")
	b, err := os.ReadFile(spmPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("tokenizer %s: no tokenizer.model; a SentencePiece tokenizer.model is needed to write the GGUF vocabulary (Phi-3 and Llama 2 ship one)", dir)
	} else if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	pieces, err := ParseSentencePiece(b)
	if err != nil {
		return nil, fmt.Errorf("tokenizer %s: %w", spmPath, err)
	}
	if vocabSize == 0 {
		vocabSize = len(pieces)
	}
	if len(pieces) > vocabSize {
		return nil, fmt.Errorf("tokenizer %s has %d pieces, more than the model's vocab_size %d", spmPath, len(pieces), vocabSize)
	}
	v := &Vocab{Model: "llama", Pre: "default", Special: map[string]int32{}, Add: map[string]bool{}}
	v.Tokens = make([]string, vocabSize)
	v.Scores = make([]float32, vocabSize)
	v.Types = make([]int32, vocabSize)
	for i := range vocabSize {
		v.Tokens[i] = "[PAD" + strconv.Itoa(i) + "]"
		v.Scores[i] = -10000
		v.Types[i] = TokenUnused
	}
	for i, p := range pieces {
		v.Tokens[i], v.Scores[i], v.Types[i] = p.Piece, p.Score, p.Type
	}
	set := func(src string, id int, content string, special bool) error {
		if id < 0 || id >= vocabSize {
			return fmt.Errorf("tokenizer %s: added token %q has id %d, outside the model's vocab_size %d", src, content, id, vocabSize)
		}
		v.Tokens[id], v.Scores[id], v.Types[id] = content, -1000, TokenUserDefined
		if special {
			v.Types[id] = TokenControl
		}
		return nil
	}

	// added_tokens.json: {"content": id}.
	if b, err := readOptional(filepath.Join(dir, "added_tokens.json")); err != nil {
		return nil, err
	} else if b != nil {
		var m map[string]int
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("tokenizer %s: added_tokens.json: %w", dir, err)
		}
		for content, id := range m {
			if id >= vocabSize {
				continue // convert_hf_to_gguf ignores these too
			}
			if err := set("added_tokens.json", id, content, false); err != nil {
				return nil, err
			}
		}
	}

	var tcfg map[string]json.RawMessage
	if b, err := readOptional(filepath.Join(dir, "tokenizer_config.json")); err != nil {
		return nil, err
	} else if b != nil {
		if err := json.Unmarshal(b, &tcfg); err != nil {
			return nil, fmt.Errorf("tokenizer %s: tokenizer_config.json: %w", dir, err)
		}
		var dec map[string]hfAddedToken
		if raw, ok := tcfg["added_tokens_decoder"]; ok {
			if err := json.Unmarshal(raw, &dec); err != nil {
				return nil, fmt.Errorf("tokenizer %s: tokenizer_config.json: added_tokens_decoder: %w", dir, err)
			}
		}
		for _, k := range sortedIntKeys(dec) {
			id, _ := strconv.Atoi(k)
			if err := set("tokenizer_config.json", id, dec[k].Content, dec[k].Special); err != nil {
				return nil, err
			}
		}
	}

	var added []hfAddedToken
	if b, err := readOptional(filepath.Join(dir, "tokenizer.json")); err != nil {
		return nil, err
	} else if b != nil {
		var tj struct {
			AddedTokens   []hfAddedToken  `json:"added_tokens"`
			PostProcessor json.RawMessage `json:"post_processor"`
		}
		if err := json.Unmarshal(b, &tj); err != nil {
			return nil, fmt.Errorf("tokenizer %s: tokenizer.json: %w", dir, err)
		}
		added = tj.AddedTokens
		for _, t := range added {
			if t.ID == nil {
				return nil, fmt.Errorf("tokenizer %s: tokenizer.json: added token %q has no id", dir, t.Content)
			}
			if err := set("tokenizer.json", *t.ID, t.Content, t.Special); err != nil {
				return nil, err
			}
		}
	}

	// Special tokens: tokenizer_config.json's <kind>_token (a string or an
	// AddedToken object) found among tokenizer.json's added tokens.
	for _, kind := range specialKinds {
		if raw, ok := tcfg["add_"+kind+"_token"]; ok {
			var add bool
			if json.Unmarshal(raw, &add) == nil {
				v.Add[kind] = add
			}
		}
		raw, ok := tcfg[kind+"_token"]
		if !ok {
			continue
		}
		var content string
		if json.Unmarshal(raw, &content) != nil {
			var obj struct {
				Content *string `json:"content"`
			}
			if json.Unmarshal(raw, &obj) != nil || obj.Content == nil {
				continue
			}
			content = *obj.Content
		}
		for _, t := range added {
			if t.Content == content && t.ID != nil && *t.ID < vocabSize {
				v.Special[kind] = int32(*t.ID)
				break
			}
		}
	}
	// Then config.json's <kind>_token_id for the kinds still unset.
	if configJSON != nil {
		var cfg map[string]json.RawMessage
		if err := json.Unmarshal(configJSON, &cfg); err != nil {
			return nil, fmt.Errorf("config.json: %w", err)
		}
		for _, kind := range specialKinds {
			if _, ok := v.Special[kind]; ok {
				continue
			}
			var id int
			if raw, ok := cfg[kind+"_token_id"]; ok && json.Unmarshal(raw, &id) == nil && id >= 0 && id < vocabSize {
				v.Special[kind] = int32(id)
			}
		}
	}

	if raw, ok := tcfg["chat_template"]; ok {
		if json.Unmarshal(raw, &v.ChatTemplate) != nil {
			v.ChatTemplate = ""
		}
	}
	if v.ChatTemplate == "" {
		b, err := readOptional(filepath.Join(dir, "chat_template.jinja"))
		if err != nil {
			return nil, err
		}
		v.ChatTemplate = string(b)
	}
	return v, nil
}

func readOptional(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	return b, nil
}

// sortedIntKeys orders added_tokens_decoder's keys numerically, as
// Python's dict keeps them (the file lists them in id order).
func sortedIntKeys[T any](m map[string]T) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	less := func(a, b string) bool {
		x, errx := strconv.Atoi(a)
		y, erry := strconv.Atoi(b)
		if errx != nil || erry != nil {
			return a < b
		}
		return x < y
	}
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && less(keys[j], keys[j-1]); j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
	return keys
}
