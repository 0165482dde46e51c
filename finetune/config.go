package finetune

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Config is a Phi-3 model's shape and numerics, read from a Hugging Face
// config.json. Both dialects are accepted: the Hub's (older transformers:
// rope_theta, rope_scaling, torch_dtype) and transformers 5.x's
// (rope_parameters, dtype, sliding_window: null).
type Config struct {
	Architecture          string  // "Phi3ForCausalLM"
	ModelType             string  // "phi3"
	HiddenSize            int     // C
	IntermediateSize      int     // I
	NumLayers             int     // L
	NumHeads              int     // H
	NumKVHeads            int     // K (grouped-query attention when K < H)
	VocabSize             int     // V
	RMSNormEps            float32 // 1e-5 for Phi-3
	RopeTheta             float32 // 10000 for Phi-3-mini
	PartialRotaryFactor   float32 // fraction of head_dim that RoPE rotates (1 for Phi-3)
	MaxPositionEmbeddings int
	SlidingWindow         int  // 0 = none
	TieWordEmbeddings     bool // lm_head shares embed_tokens
	HiddenAct             string
	TorchDType            string // "bfloat16", "float16", "float32" or ""
	BOSTokenID            int
	EOSTokenIDs           []int
	PadTokenID            int // -1 when unset
}

// HeadDim is the per-head width, hidden_size / num_attention_heads.
func (c *Config) HeadDim() int { return c.HiddenSize / c.NumHeads }

// RotaryDim is how many features of each head RoPE rotates.
func (c *Config) RotaryDim() int {
	f := c.PartialRotaryFactor
	if f == 0 {
		f = 1
	}
	return int(float32(c.HeadDim()) * f)
}

// QKVOut is the output width of the fused qkv_proj: (H + 2K) * head_dim.
func (c *Config) QKVOut() int { return (c.NumHeads + 2*c.NumKVHeads) * c.HeadDim() }

// rawConfig mirrors config.json; pointer fields tell "absent" from zero.
type rawConfig struct {
	Architectures         []string        `json:"architectures"`
	ModelType             string          `json:"model_type"`
	HiddenSize            *int            `json:"hidden_size"`
	IntermediateSize      *int            `json:"intermediate_size"`
	NumHiddenLayers       *int            `json:"num_hidden_layers"`
	NumAttentionHeads     *int            `json:"num_attention_heads"`
	NumKeyValueHeads      *int            `json:"num_key_value_heads"`
	VocabSize             *int            `json:"vocab_size"`
	RMSNormEps            *float64        `json:"rms_norm_eps"`
	RopeTheta             *float64        `json:"rope_theta"`
	RopeScaling           json.RawMessage `json:"rope_scaling"`
	RopeParameters        *ropeParameters `json:"rope_parameters"`
	PartialRotaryFactor   *float64        `json:"partial_rotary_factor"`
	MaxPositionEmbeddings int             `json:"max_position_embeddings"`
	SlidingWindow         *int            `json:"sliding_window"`
	TieWordEmbeddings     bool            `json:"tie_word_embeddings"`
	HiddenAct             string          `json:"hidden_act"`
	TorchDType            string          `json:"torch_dtype"`
	DType                 string          `json:"dtype"`
	BOSTokenID            *int            `json:"bos_token_id"`
	EOSTokenID            json.RawMessage `json:"eos_token_id"`
	PadTokenID            *int            `json:"pad_token_id"`
}

type ropeParameters struct {
	RopeTheta           *float64 `json:"rope_theta"`
	RopeType            string   `json:"rope_type"`
	PartialRotaryFactor *float64 `json:"partial_rotary_factor"`
}

// LoadConfig reads config.json from a model directory (or the file itself).
func LoadConfig(path string) (*Config, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, "config.json")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read model config: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseConfig parses and validates the bytes of a config.json.
func ParseConfig(data []byte) (*Config, error) {
	var r rawConfig
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("parse config.json: %w", err)
	}
	c := &Config{ModelType: r.ModelType, HiddenAct: r.HiddenAct, MaxPositionEmbeddings: r.MaxPositionEmbeddings,
		TieWordEmbeddings: r.TieWordEmbeddings, PadTokenID: -1, PartialRotaryFactor: 1}
	if len(r.Architectures) > 0 {
		c.Architecture = r.Architectures[0]
	}
	if c.Architecture != "Phi3ForCausalLM" && c.ModelType != "phi3" {
		arch := c.Architecture
		if arch == "" {
			arch = r.ModelType
		}
		return nil, fmt.Errorf("field \"architectures\": model is %q, but ollama-tune trains Phi-3 models (Phi3ForCausalLM, model_type \"phi3\"); use a Phi-3 checkpoint such as microsoft/Phi-3-mini-4k-instruct", arch)
	}
	req := func(name string, p *int) (int, error) {
		if p == nil {
			return 0, fmt.Errorf("field %q is missing; it must be a positive integer", name)
		}
		if *p <= 0 {
			return 0, fmt.Errorf("field %q is %d; it must be a positive integer", name, *p)
		}
		return *p, nil
	}
	var err error
	if c.HiddenSize, err = req("hidden_size", r.HiddenSize); err != nil {
		return nil, err
	}
	if c.IntermediateSize, err = req("intermediate_size", r.IntermediateSize); err != nil {
		return nil, err
	}
	if c.NumLayers, err = req("num_hidden_layers", r.NumHiddenLayers); err != nil {
		return nil, err
	}
	if c.NumHeads, err = req("num_attention_heads", r.NumAttentionHeads); err != nil {
		return nil, err
	}
	if c.VocabSize, err = req("vocab_size", r.VocabSize); err != nil {
		return nil, err
	}
	c.NumKVHeads = c.NumHeads
	if r.NumKeyValueHeads != nil {
		if c.NumKVHeads, err = req("num_key_value_heads", r.NumKeyValueHeads); err != nil {
			return nil, err
		}
	}
	if c.HiddenSize%c.NumHeads != 0 {
		return nil, fmt.Errorf("field \"hidden_size\" (%d) must be a multiple of \"num_attention_heads\" (%d)", c.HiddenSize, c.NumHeads)
	}
	if c.NumHeads%c.NumKVHeads != 0 {
		return nil, fmt.Errorf("field \"num_attention_heads\" (%d) must be a multiple of \"num_key_value_heads\" (%d)", c.NumHeads, c.NumKVHeads)
	}
	c.RMSNormEps = 1e-5
	if r.RMSNormEps != nil {
		c.RMSNormEps = float32(*r.RMSNormEps)
	}
	c.RopeTheta = 10000
	if r.RopeTheta != nil {
		c.RopeTheta = float32(*r.RopeTheta)
	}
	if r.PartialRotaryFactor != nil {
		c.PartialRotaryFactor = float32(*r.PartialRotaryFactor)
	}
	if p := r.RopeParameters; p != nil {
		if p.RopeTheta != nil {
			c.RopeTheta = float32(*p.RopeTheta)
		}
		if p.PartialRotaryFactor != nil {
			c.PartialRotaryFactor = float32(*p.PartialRotaryFactor)
		}
		if p.RopeType != "" && p.RopeType != "default" {
			return nil, fmt.Errorf("field \"rope_parameters.rope_type\" is %q; only \"default\" RoPE is supported (Phi-3-mini-4k); long-context variants (longrope, su, yarn) are not implemented", p.RopeType)
		}
	}
	if len(r.RopeScaling) > 0 && string(r.RopeScaling) != "null" {
		return nil, fmt.Errorf("field \"rope_scaling\" is set (%s); RoPE scaling is not implemented: use a model without it (Phi-3-mini-4k) or set it to null", string(r.RopeScaling))
	}
	if c.PartialRotaryFactor <= 0 || c.PartialRotaryFactor > 1 {
		return nil, fmt.Errorf("field \"partial_rotary_factor\" is %g; it must be in (0, 1]", c.PartialRotaryFactor)
	}
	if r.SlidingWindow != nil {
		c.SlidingWindow = *r.SlidingWindow
	}
	if c.HiddenAct != "" && c.HiddenAct != "silu" {
		return nil, fmt.Errorf("field \"hidden_act\" is %q; Phi-3 uses \"silu\"", c.HiddenAct)
	}
	c.TorchDType = r.TorchDType
	if c.TorchDType == "" {
		c.TorchDType = r.DType
	}
	if r.BOSTokenID != nil {
		c.BOSTokenID = *r.BOSTokenID
	}
	if len(r.EOSTokenID) > 0 && string(r.EOSTokenID) != "null" {
		var one int
		if err := json.Unmarshal(r.EOSTokenID, &one); err == nil {
			c.EOSTokenIDs = []int{one}
		} else if err := json.Unmarshal(r.EOSTokenID, &c.EOSTokenIDs); err != nil {
			return nil, errors.New("field \"eos_token_id\" must be an integer or a list of integers")
		}
	}
	if r.PadTokenID != nil {
		c.PadTokenID = *r.PadTokenID
	}
	return c, nil
}

// Phi3Mini4k is microsoft/Phi-3-mini-4k-instruct's shape, for tests and
// estimates that need no weights.
func Phi3Mini4k() *Config {
	return &Config{
		Architecture: "Phi3ForCausalLM", ModelType: "phi3",
		HiddenSize: 3072, IntermediateSize: 8192, NumLayers: 32, NumHeads: 32, NumKVHeads: 32,
		VocabSize: 32064, RMSNormEps: 1e-5, RopeTheta: 10000, PartialRotaryFactor: 1,
		MaxPositionEmbeddings: 4096, SlidingWindow: 2047, HiddenAct: "silu", TorchDType: "bfloat16",
		BOSTokenID: 1, EOSTokenIDs: []int{32000}, PadTokenID: 32000,
	}
}
