package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

// SpecialTokens are the named special tokens of tokenizer_config.json and
// special_tokens_map.json (the latter wins, as in transformers). An absent
// token has an empty string and id -1.
type SpecialTokens struct {
	BOS, EOS, UNK, PAD         string
	BOSID, EOSID, UNKID, PADID int32
	// AddBOS and AddEOS are tokenizer_config.json's add_bos_token and
	// add_eos_token: what transformers' post-processor adds when asked for
	// special tokens. For tokenizer.json the file's post_processor decides.
	AddBOS, AddEOS bool
}

// hfConfig is what this package reads from tokenizer_config.json.
type hfConfig struct {
	AddBOSToken        *bool                      `json:"add_bos_token"`
	AddEOSToken        *bool                      `json:"add_eos_token"`
	AddPrefixSpace     *bool                      `json:"add_prefix_space"`
	BOSToken           tokenName                  `json:"bos_token"`
	EOSToken           tokenName                  `json:"eos_token"`
	UNKToken           tokenName                  `json:"unk_token"`
	PADToken           tokenName                  `json:"pad_token"`
	AddedTokensDecoder map[string]addedTokenEntry `json:"added_tokens_decoder"`
	TokenizerClass     string                     `json:"tokenizer_class"`
}

// tokenName is a special token written as a string or as an AddedToken
// object ({"content": ..., "__type": "AddedToken", ...}).
type tokenName struct {
	set     bool
	content string
}

func (t *tokenName) UnmarshalJSON(b []byte) error {
	if isNull(b) {
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*t = tokenName{set: true, content: s}
		return nil
	}
	var o struct {
		Content *string `json:"content"`
	}
	if err := json.Unmarshal(b, &o); err != nil || o.Content == nil {
		return fmt.Errorf("want a string or an object with \"content\", got %s", b)
	}
	*t = tokenName{set: true, content: *o.Content}
	return nil
}

type addedTokenEntry struct {
	Content    string `json:"content"`
	Special    bool   `json:"special"`
	LStrip     bool   `json:"lstrip"`
	RStrip     bool   `json:"rstrip"`
	Normalized *bool  `json:"normalized"`
	SingleWord bool   `json:"single_word"`
}

// readJSONIfExists decodes path into v; a missing file is not an error and
// reports false.
func readJSONIfExists(path string, v any) (bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("%s: malformed JSON: %w", path, err)
	}
	return true, nil
}

// readConfig reads tokenizer_config.json and special_tokens_map.json from
// dir (both optional).
func readConfig(dir string) (cfg hfConfig, haveCfg bool, err error) {
	cfgPath := filepath.Join(dir, "tokenizer_config.json")
	haveCfg, err = readJSONIfExists(cfgPath, &cfg)
	if err != nil {
		return cfg, false, err
	}
	var sm struct {
		BOSToken tokenName `json:"bos_token"`
		EOSToken tokenName `json:"eos_token"`
		UNKToken tokenName `json:"unk_token"`
		PADToken tokenName `json:"pad_token"`
	}
	if _, err := readJSONIfExists(filepath.Join(dir, "special_tokens_map.json"), &sm); err != nil {
		return cfg, haveCfg, err
	}
	for _, p := range []struct{ dst, src *tokenName }{
		{&cfg.BOSToken, &sm.BOSToken}, {&cfg.EOSToken, &sm.EOSToken},
		{&cfg.UNKToken, &sm.UNKToken}, {&cfg.PADToken, &sm.PADToken},
	} {
		if p.src.set {
			*p.dst = *p.src
		}
	}
	return cfg, haveCfg, nil
}

// addedTokensFromConfig lists added_tokens_decoder by id.
func addedTokensFromConfig(cfg hfConfig, path string) ([]AddedToken, error) {
	var out []AddedToken
	for key, e := range cfg.AddedTokensDecoder {
		id, err := strconv.ParseInt(key, 10, 32)
		if err != nil || id < 0 {
			return nil, fmt.Errorf("%s: added_tokens_decoder key %q is not a token id", path, key)
		}
		normalized := !e.Special // the AddedToken default
		if e.Normalized != nil {
			normalized = *e.Normalized
		}
		out = append(out, AddedToken{ID: int32(id), Content: e.Content, Special: e.Special,
			LStrip: e.LStrip, RStrip: e.RStrip, Normalized: normalized, SingleWord: e.SingleWord})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
