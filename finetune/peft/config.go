// Package peft reads and writes LoRA adapters in the format of Hugging
// Face's PEFT library (peft 0.21): a folder holding
//
//	adapter_config.json        LoraConfig.save_pretrained: every field,
//	                           json.dumps(indent=2, sort_keys=True)
//	adapter_model.safetensors  F32 tensors named
//	                           base_model.model.<module>.lora_A.weight [r, in]
//	                           base_model.model.<module>.lora_B.weight [out, r]
//	                           with metadata {"format": "pt"}
//
// so that peft.PeftModel.from_pretrained loads what we write and we load
// what PEFT writes. It knows nothing of the model itself: callers describe
// the base model's adaptable linears as a Base (module name -> shape).
package peft

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
)

// File names inside an adapter folder.
const (
	ConfigName  = "adapter_config.json"
	WeightsName = "adapter_model.safetensors"
)

// Version is the PEFT release whose format this package writes
// (adapter_config.json's peft_version).
const Version = "0.21.0"

// Config is the part of PEFT's LoraConfig that a LoRA adapter on plain
// linear layers uses. Fields this package does not implement are checked
// to hold their defaults when reading and written with their defaults.
type Config struct {
	PeftType            string // "LORA"
	TaskType            string // "CAUSAL_LM"; "" is null
	BaseModelNameOrPath string
	Revision            string // "" is null
	R                   int
	LoRAAlpha           float64 // written as an int when it is whole (PEFT's type is int)
	LoRADropout         float64
	Bias                string // "none"
	// TargetModules is the list form of target_modules: a module is
	// adapted when its name equals an entry or ends with "." + entry.
	// Written sorted (PEFT keeps a set, whose order is arbitrary).
	TargetModules []string
	// TargetRegex is the string form of target_modules (a regular
	// expression the whole module name must match, or "all-linear");
	// "" when the list form is used.
	TargetRegex   string
	InferenceMode bool
	InitLoRA      bool // init_lora_weights (only true/false; the string forms read as true)
}

// NewConfig is the configuration PEFT saves for a LoRA adapter trained on
// base with rank r, lora_alpha, lora_dropout and target modules (leaf
// names such as qkv_proj), for a causal LM, in inference mode.
func NewConfig(base string, r int, alpha, dropout float64, targets []string) *Config {
	t := slices.Clone(targets)
	slices.Sort(t)
	t = slices.Compact(t)
	return &Config{
		PeftType: "LORA", TaskType: "CAUSAL_LM", BaseModelNameOrPath: base,
		R: r, LoRAAlpha: alpha, LoRADropout: dropout, Bias: "none",
		TargetModules: t, InferenceMode: true, InitLoRA: true,
	}
}

// Scale is lora_alpha / r, the factor of the adapter's output.
func (c *Config) Scale() float64 { return c.LoRAAlpha / float64(c.R) }

// Targets reports whether target_modules selects the module called name
// (a full module name such as model.layers.0.self_attn.qkv_proj), as
// PEFT's check_target_module_exists does: the string form must match the
// whole name ("all-linear" matches every linear the caller offers); each
// entry of the list form must equal the name or be a suffix after a dot.
func (c *Config) Targets(name string) bool {
	if c.TargetRegex != "" {
		if strings.EqualFold(c.TargetRegex, "all-linear") {
			return true
		}
		re, err := regexp.Compile(`^(?:` + c.TargetRegex + `)$`)
		return err == nil && re.MatchString(name)
	}
	for _, t := range c.TargetModules {
		if name == t || strings.HasSuffix(name, "."+t) {
			return true
		}
	}
	return false
}

// Marshal returns adapter_config.json as PEFT 0.21's save_pretrained writes
// it: all of LoraConfig's fields, sorted, indented by 2, no final newline.
func (c *Config) Marshal() ([]byte, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	var targets any = slices.Clone(c.TargetModules)
	if c.TargetRegex != "" {
		targets = c.TargetRegex
	} else {
		slices.Sort(targets.([]string))
	}
	var alpha any = pyFloat(c.LoRAAlpha)
	if c.LoRAAlpha == float64(int64(c.LoRAAlpha)) {
		alpha = pyInt(c.LoRAAlpha)
	}
	strOrNull := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	m := map[string]any{
		"alora_invocation_tokens": nil,
		"alpha_pattern":           map[string]any{},
		"arrow_config":            nil,
		"auto_mapping":            nil,
		"base_model_name_or_path": strOrNull(c.BaseModelNameOrPath),
		"bias":                    c.Bias,
		"corda_config":            nil,
		"ensure_weight_tying":     false,
		"eva_config":              nil,
		"exclude_modules":         nil,
		"fan_in_fan_out":          false,
		"inference_mode":          c.InferenceMode,
		"init_lora_weights":       c.InitLoRA,
		"kasa_config":             nil,
		"layer_replication":       nil,
		"layers_pattern":          nil,
		"layers_to_transform":     nil,
		"loftq_config":            map[string]any{},
		"lora_alpha":              alpha,
		"lora_bias":               false,
		"lora_dropout":            pyFloat(c.LoRADropout),
		"lora_ga_config":          nil,
		"megatron_config":         nil,
		"megatron_core":           "megatron.core",
		"modules_to_save":         nil,
		"monteclora_config":       nil,
		"peft_type":               c.PeftType,
		"peft_version":            Version,
		"qalora_group_size":       16,
		"r":                       c.R,
		"rank_pattern":            map[string]any{},
		"revision":                strOrNull(c.Revision),
		"target_modules":          targets,
		"target_parameters":       nil,
		"task_type":               strOrNull(c.TaskType),
		"trainable_token_indices": nil,
		"use_bdlora":              nil,
		"use_dora":                false,
		"use_qalora":              false,
		"use_rslora":              false,
		"velora_config":           nil,
	}
	var b bytes.Buffer
	if err := writePyJSON(&b, m, 0); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// validate checks the fields this package writes and reads.
func (c *Config) validate() error {
	if c.PeftType != "LORA" {
		return fmt.Errorf("peft_type %q: only LORA adapters are supported", c.PeftType)
	}
	if c.TaskType != "" && c.TaskType != "CAUSAL_LM" {
		return fmt.Errorf("task_type %q: only CAUSAL_LM adapters are supported", c.TaskType)
	}
	if c.R <= 0 {
		return fmt.Errorf("r is %d; it must be a positive integer", c.R)
	}
	if !(c.LoRAAlpha > 0) {
		return fmt.Errorf("lora_alpha is %g; it must be positive", c.LoRAAlpha)
	}
	if !(c.LoRADropout >= 0 && c.LoRADropout < 1) {
		return fmt.Errorf("lora_dropout is %g; it must be in [0, 1)", c.LoRADropout)
	}
	if c.Bias != "none" {
		return fmt.Errorf("bias %q is not implemented (Phi-3's linears have no bias); only \"none\"", c.Bias)
	}
	if len(c.TargetModules) == 0 && c.TargetRegex == "" {
		return errors.New("target_modules is empty")
	}
	if c.TargetRegex != "" && !strings.EqualFold(c.TargetRegex, "all-linear") {
		if _, err := regexp.Compile(`^(?:` + c.TargetRegex + `)$`); err != nil {
			return fmt.Errorf("target_modules %q is not a regular expression this reader understands: %v", c.TargetRegex, err)
		}
	}
	return nil
}

// ReadConfig reads and validates an adapter_config.json.
func ReadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read adapter config: %w", err)
	}
	c, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("read adapter config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig parses adapter_config.json. Keys PEFT has and this reader
// cannot honour must hold their defaults (an error names the key); keys it
// does not know are ignored, as PEFT ignores keys of newer versions.
func ParseConfig(data []byte) (*Config, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	c := &Config{InitLoRA: true}
	isNull := func(key string) bool {
		v, ok := raw[key]
		return !ok || string(bytes.TrimSpace(v)) == "null"
	}
	get := func(key string, dst any) error {
		if isNull(key) {
			return nil
		}
		if err := json.Unmarshal(raw[key], dst); err != nil {
			return fmt.Errorf("key %q: %s is not the expected type (%T)", key, raw[key], dst)
		}
		return nil
	}
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if isNull("peft_type") {
		return nil, errors.New(`key "peft_type" is missing; this is not a PEFT adapter config`)
	}
	add(get("peft_type", &c.PeftType))
	if c.PeftType != "LORA" {
		return nil, fmt.Errorf("key \"peft_type\" is %q; only LoRA adapters (\"LORA\") are supported", c.PeftType)
	}
	add(get("task_type", &c.TaskType))
	add(get("base_model_name_or_path", &c.BaseModelNameOrPath))
	add(get("revision", &c.Revision))
	if isNull("r") {
		add(errors.New(`key "r" (the LoRA rank) is missing`))
	}
	add(get("r", &c.R))
	c.LoRAAlpha = 8 // PEFT's default
	add(get("lora_alpha", &c.LoRAAlpha))
	add(get("lora_dropout", &c.LoRADropout))
	c.Bias = "none"
	add(get("bias", &c.Bias))
	add(get("inference_mode", &c.InferenceMode))
	if !isNull("init_lora_weights") {
		var b bool
		if json.Unmarshal(raw["init_lora_weights"], &b) == nil {
			c.InitLoRA = b
		}
	}
	if isNull("target_modules") {
		add(errors.New(`key "target_modules" is missing or null; the adapter must name the modules it adapts`))
	} else {
		var list []string
		var s string
		switch {
		case json.Unmarshal(raw["target_modules"], &list) == nil:
			c.TargetModules = list
		case json.Unmarshal(raw["target_modules"], &s) == nil:
			c.TargetRegex = s
		default:
			add(fmt.Errorf("key \"target_modules\": %s is neither a list of names nor a string", raw["target_modules"]))
		}
	}

	// Features this reader does not implement: each must be off.
	for _, key := range []string{"use_dora", "use_rslora", "use_qalora", "lora_bias", "fan_in_fan_out"} {
		var on bool
		if err := get(key, &on); err != nil {
			add(err)
		} else if on {
			add(fmt.Errorf("key %q is true: not implemented (ollama-tune reads plain LoRA adapters); retrain with %s=False", key, key))
		}
	}
	for _, key := range []string{"rank_pattern", "alpha_pattern"} {
		var m map[string]any
		if err := get(key, &m); err != nil {
			add(err)
		} else if len(m) > 0 {
			add(fmt.Errorf("key %q is not empty: per-module ranks and alphas are not implemented", key))
		}
	}
	for _, key := range []string{"layers_to_transform", "layer_replication", "modules_to_save", "trainable_token_indices", "target_parameters", "exclude_modules", "alora_invocation_tokens"} {
		if isNull(key) {
			continue
		}
		var list []any
		if json.Unmarshal(raw[key], &list) == nil && len(list) == 0 {
			continue
		}
		add(fmt.Errorf("key %q is %s: not implemented; ollama-tune reads adapters of every layer's linear modules only (null expected)", key, raw[key]))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}
