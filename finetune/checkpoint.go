package finetune

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
	"github.com/ollama-tune/ollama-tune/internal/pyjson"
)

// LinearModules are the four linear modules of a Phi-3 decoder layer, named
// relative to the layer, in the order used everywhere (seeds, adapters).
var LinearModules = []string{"self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"}

// LayerName is the Hugging Face name of a module of layer i:
// LayerName(3, "self_attn.qkv_proj") = "model.layers.3.self_attn.qkv_proj".
func LayerName(i int, module string) string {
	return "model.layers." + strconv.Itoa(i) + "." + module
}

// LinearShape is a linear module's weight shape [out, in] under cfg, for
// the names in LinearModules (with or without the ".weight" suffix, with or
// without a layer prefix); 0, 0 for anything else.
func LinearShape(cfg *Config, module string) (out, in int) {
	module = strings.TrimSuffix(module, ".weight")
	if i := strings.Index(module, "self_attn."); i >= 0 {
		module = module[i:]
	} else if i := strings.Index(module, "mlp."); i >= 0 {
		module = module[i:]
	}
	C, I := cfg.HiddenSize, cfg.IntermediateSize
	switch module {
	case "self_attn.qkv_proj":
		return cfg.QKVOut(), C
	case "self_attn.o_proj":
		return C, cfg.NumHeads * cfg.HeadDim()
	case "mlp.gate_up_proj":
		return 2 * I, C
	case "mlp.down_proj":
		return C, I
	}
	return 0, 0
}

// TensorSpec is one weight a Phi3ForCausalLM needs: its name and shape.
type TensorSpec struct {
	Name  string
	Shape []int
}

// Phi3Tensors lists the weights of a Phi3ForCausalLM with cfg, in state-dict
// order; lm_head.weight is left out when the embeddings are tied.
func Phi3Tensors(cfg *Config) []TensorSpec {
	C, V := cfg.HiddenSize, cfg.VocabSize
	specs := []TensorSpec{{"model.embed_tokens.weight", []int{V, C}}}
	for i := 0; i < cfg.NumLayers; i++ {
		specs = append(specs, TensorSpec{LayerName(i, "input_layernorm.weight"), []int{C}})
		for _, m := range LinearModules {
			out, in := LinearShape(cfg, m)
			specs = append(specs, TensorSpec{LayerName(i, m+".weight"), []int{out, in}})
		}
		specs = append(specs, TensorSpec{LayerName(i, "post_attention_layernorm.weight"), []int{C}})
	}
	specs = append(specs, TensorSpec{"model.norm.weight", []int{C}})
	if !cfg.TieWordEmbeddings {
		specs = append(specs, TensorSpec{"lm_head.weight", []int{V, C}})
	}
	return specs
}

// unfusedParts is how some Phi-3 exports store a fused weight: qkv_proj as
// separate q_proj, k_proj, v_proj and gate_up_proj as gate_proj, up_proj.
// Concatenating the parts' rows in this order gives the fused weight
// (Phi3Attention splits qkv as [q | k | v], Phi3MLP chunks gate_up as
// [gate | up]). nil for a weight that is never split.
func unfusedParts(cfg *Config, name string) []TensorSpec {
	C, I, D := cfg.HiddenSize, cfg.IntermediateSize, cfg.HeadDim()
	if p, ok := strings.CutSuffix(name, "self_attn.qkv_proj.weight"); ok {
		return []TensorSpec{
			{p + "self_attn.q_proj.weight", []int{cfg.NumHeads * D, C}},
			{p + "self_attn.k_proj.weight", []int{cfg.NumKVHeads * D, C}},
			{p + "self_attn.v_proj.weight", []int{cfg.NumKVHeads * D, C}},
		}
	}
	if p, ok := strings.CutSuffix(name, "mlp.gate_up_proj.weight"); ok {
		return []TensorSpec{
			{p + "mlp.gate_proj.weight", []int{I, C}},
			{p + "mlp.up_proj.weight", []int{I, C}},
		}
	}
	return nil
}

// Checkpoint is a Phi-3 model directory: config.json and its safetensors
// weights (one file or shards), memory-mapped. Weights are converted to
// float32 one tensor at a time on request, so an 8 GB bf16 checkpoint is
// never held as 15 GB of float32.
type Checkpoint struct {
	Dir    string
	Config *Config

	st      *safetensors.Dir
	fused   map[string][]string // fused name -> its unfused parts, for split exports
	ignored []string
}

// LoadCheckpoint opens a model directory, reads config.json (Phi-3 only)
// and the weights, and validates that every weight a Phi3ForCausalLM needs
// is there with the shape the config implies.
func LoadCheckpoint(dir string) (*Checkpoint, error) {
	cfg, err := LoadConfig(dir)
	if err != nil {
		return nil, err
	}
	st, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	c := &Checkpoint{Dir: dir, Config: cfg, st: st}
	if err := c.Validate(); err != nil {
		st.Close()
		return nil, err
	}
	return c, nil
}

// source names where the weights live, for errors about absent tensors.
func (c *Checkpoint) source() string {
	if ix := c.st.IndexPath(); ix != "" {
		return ix
	}
	if f := c.st.Files(); len(f) == 1 {
		return f[0]
	}
	return c.Dir
}

func (c *Checkpoint) configSummary() string {
	cfg := c.Config
	return fmt.Sprintf("hidden_size %d, intermediate_size %d, num_hidden_layers %d, num_attention_heads %d, num_key_value_heads %d, vocab_size %d, tie_word_embeddings %v",
		cfg.HiddenSize, cfg.IntermediateSize, cfg.NumLayers, cfg.NumHeads, cfg.NumKVHeads, cfg.VocabSize, cfg.TieWordEmbeddings)
}

// Validate checks the weights against the config: every tensor of a
// Phi3ForCausalLM present (fused, or as unfused q/k/v and gate/up parts)
// with a floating dtype (F32, F16, BF16) and the right shape; lm_head may
// be absent only when tie_word_embeddings is set. Tensors it does not know
// are ignored (Ignored lists them: buffers such as rotary inv_freq), except
// those of a layer index the config does not have, which mean the config
// and the weights disagree.
func (c *Checkpoint) Validate() error {
	cfg := c.Config
	c.fused = map[string][]string{}
	c.ignored = nil
	var problems []string
	known := map[string]bool{}
	check := func(name string, want []int) bool {
		known[name] = true
		dt, shape, ok := c.st.Info(name)
		if !ok {
			return false
		}
		switch {
		case dt != safetensors.F32 && dt != safetensors.F16 && dt != safetensors.BF16:
			problems = append(problems, fmt.Sprintf("%s: tensor %q has dtype %s; weights must be F32, F16 or BF16", c.st.FileOf(name), name, dt))
		case !slices.Equal(shape, want):
			problems = append(problems, fmt.Sprintf("%s: tensor %q has shape %v, but config.json needs %v", c.st.FileOf(name), name, shape, want))
		}
		return true
	}
	for _, spec := range Phi3Tensors(cfg) {
		if check(spec.Name, spec.Shape) {
			continue
		}
		if parts := unfusedParts(cfg, spec.Name); parts != nil {
			var have, missing []string
			for _, p := range parts {
				if check(p.Name, p.Shape) {
					have = append(have, p.Name)
				} else {
					missing = append(missing, p.Name)
				}
			}
			if len(missing) == 0 {
				c.fused[spec.Name] = have
				continue
			}
			if len(have) > 0 {
				problems = append(problems, fmt.Sprintf("%s: tensor %q is missing and so are some of its unfused parts: have %s, missing %s",
					c.source(), spec.Name, strings.Join(have, ", "), strings.Join(missing, ", ")))
				continue
			}
		}
		problems = append(problems, fmt.Sprintf("%s: tensor %q is missing; config.json needs it with shape %v", c.source(), spec.Name, spec.Shape))
	}
	if cfg.TieWordEmbeddings {
		// Tied: transformers uses embed_tokens whatever lm_head holds; a
		// stored copy must still have the right shape.
		check("lm_head.weight", []int{cfg.VocabSize, cfg.HiddenSize})
	}
	for _, name := range c.st.Names() {
		if known[name] {
			continue
		}
		if rest, ok := strings.CutPrefix(name, "model.layers."); ok {
			idx, _, _ := strings.Cut(rest, ".")
			if i, err := strconv.Atoi(idx); err == nil && i >= cfg.NumLayers {
				problems = append(problems, fmt.Sprintf("%s: tensor %q belongs to layer %d, but config.json has num_hidden_layers %d; the config and the weights disagree",
					c.st.FileOf(name), name, i, cfg.NumLayers))
				continue
			}
		}
		c.ignored = append(c.ignored, name)
	}
	if len(problems) == 0 {
		return nil
	}
	const show = 10
	more := ""
	if len(problems) > show {
		more = fmt.Sprintf("\n  ... and %d more", len(problems)-show)
		problems = problems[:show]
	}
	return fmt.Errorf("checkpoint %s does not match the Phi3ForCausalLM its config.json describes (%s):\n  %s%s",
		c.Dir, c.configSummary(), strings.Join(problems, "\n  "), more)
}

// Ignored lists the tensors Validate did not recognise and that Float32
// never needs (buffers, or unfused parts when the fused weight is also
// stored).
func (c *Checkpoint) Ignored() []string { return slices.Clone(c.ignored) }

// Tensors is the raw safetensors view (bf16 bytes for a backend that
// uploads them directly). Its tensors' Data are valid until Close.
func (c *Checkpoint) Tensors() *safetensors.Dir { return c.st }

// resolve maps lm_head.weight to the embeddings when they are tied.
func (c *Checkpoint) resolve(name string) string {
	if name == "lm_head.weight" && c.Config.TieWordEmbeddings {
		return "model.embed_tokens.weight"
	}
	return name
}

// Has reports whether Float32 can produce name.
func (c *Checkpoint) Has(name string) bool {
	name = c.resolve(name)
	_, fused := c.fused[name]
	return fused || c.st.Has(name)
}

// Shape is name's shape, as Float32 would return it.
func (c *Checkpoint) Shape(name string) ([]int, error) {
	name = c.resolve(name)
	if parts, ok := c.fused[name]; ok {
		rows, cols := 0, 0
		for _, p := range parts {
			_, sh, _ := c.st.Info(p)
			rows, cols = rows+sh[0], sh[1]
		}
		return []int{rows, cols}, nil
	}
	_, sh, ok := c.st.Info(name)
	if !ok {
		_, err := c.st.Tensor(name)
		return nil, err
	}
	return sh, nil
}

// Float32 converts one weight to float32 (F32, F16 and BF16 storage) and
// returns it with its shape. Two names are synthesised: a fused
// self_attn.qkv_proj.weight or mlp.gate_up_proj.weight of a checkpoint
// that stores q/k/v_proj or gate/up_proj separately is returned as the
// row-wise concatenation [q; k; v] or [gate; up], exactly the fused weight
// transformers' Phi-3 would hold; and lm_head.weight of a tied model is the
// embedding matrix. Each call allocates a fresh slice.
func (c *Checkpoint) Float32(name string) ([]float32, []int, error) {
	name = c.resolve(name)
	if parts, ok := c.fused[name]; ok {
		shape, _ := c.Shape(name)
		out := make([]float32, shape[0]*shape[1])
		off := 0
		for _, p := range parts {
			ti, err := c.st.Tensor(p)
			if err != nil {
				return nil, nil, err
			}
			n := ti.Numel()
			if err := safetensors.ToFloat32Into(out[off:off+n], ti); err != nil {
				return nil, nil, fmt.Errorf("%s: %w", c.st.FileOf(p), err)
			}
			off += n
		}
		return out, shape, nil
	}
	ti, err := c.st.Tensor(name)
	if err != nil {
		return nil, nil, err
	}
	v, err := safetensors.ToFloat32(ti)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", c.st.FileOf(name), err)
	}
	return v, ti.Shape, nil
}

// Close unmaps the weights.
func (c *Checkpoint) Close() error {
	if c == nil || c.st == nil {
		return nil
	}
	return c.st.Close()
}

// pyFloat marshals like Python's repr of a float (10000.0, 1e-05), so a
// config.json we write reads as floats to transformers' strict dataclasses.
type pyFloat float64

func (f pyFloat) MarshalJSON() ([]byte, error) { return []byte(pyjson.Float(float64(f))), nil }

// f32 to the shortest float64 that prints as the float32 does (1e-5, not
// 9.999999747378752e-06).
func shortF32(f float32) pyFloat {
	v, _ := strconv.ParseFloat(strconv.FormatFloat(float64(f), 'g', -1, 32), 64)
	return pyFloat(v)
}

// MarshalConfig writes cfg as a config.json in the Hub's Phi-3 dialect
// (rope_theta and rope_scaling at the top level, torch_dtype), which
// transformers 4.x and 5.x both read; ParseConfig reads it back to cfg.
// Keys are sorted and indented as save_pretrained writes them.
func MarshalConfig(cfg *Config) ([]byte, error) {
	if cfg.HiddenSize <= 0 || cfg.NumHeads <= 0 || cfg.NumLayers <= 0 || cfg.VocabSize <= 0 || cfg.IntermediateSize <= 0 {
		return nil, fmt.Errorf("marshal config: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads and vocab_size must be positive (got %d, %d, %d, %d, %d)",
			cfg.HiddenSize, cfg.IntermediateSize, cfg.NumLayers, cfg.NumHeads, cfg.VocabSize)
	}
	arch := cfg.Architecture
	if arch == "" {
		arch = "Phi3ForCausalLM"
	}
	act := cfg.HiddenAct
	if act == "" {
		act = "silu"
	}
	kv := cfg.NumKVHeads
	if kv == 0 {
		kv = cfg.NumHeads
	}
	m := map[string]any{
		"architectures":                    []string{arch},
		"model_type":                       "phi3",
		"hidden_size":                      cfg.HiddenSize,
		"intermediate_size":                cfg.IntermediateSize,
		"num_hidden_layers":                cfg.NumLayers,
		"num_attention_heads":              cfg.NumHeads,
		"num_key_value_heads":              kv,
		"vocab_size":                       cfg.VocabSize,
		"rms_norm_eps":                     shortF32(cfg.RMSNormEps),
		"rope_theta":                       shortF32(cfg.RopeTheta),
		"rope_scaling":                     nil,
		"max_position_embeddings":          cfg.MaxPositionEmbeddings,
		"original_max_position_embeddings": cfg.MaxPositionEmbeddings,
		"sliding_window":                   nil,
		"tie_word_embeddings":              cfg.TieWordEmbeddings,
		"hidden_act":                       act,
		"bos_token_id":                     cfg.BOSTokenID,
		"pad_token_id":                     nil,
		"attention_bias":                   false,
		"attention_dropout":                pyFloat(0),
		"embd_pdrop":                       pyFloat(0),
		"resid_pdrop":                      pyFloat(0),
		"initializer_range":                pyFloat(0.02),
		"use_cache":                        true,
	}
	if cfg.SlidingWindow > 0 {
		m["sliding_window"] = cfg.SlidingWindow
	}
	if cfg.PadTokenID >= 0 {
		m["pad_token_id"] = cfg.PadTokenID
	}
	if cfg.TorchDType != "" {
		m["torch_dtype"] = cfg.TorchDType
	}
	switch len(cfg.EOSTokenIDs) {
	case 0:
	case 1:
		m["eos_token_id"] = cfg.EOSTokenIDs[0]
	default:
		m["eos_token_id"] = cfg.EOSTokenIDs
	}
	if f := cfg.PartialRotaryFactor; f != 0 && f != 1 {
		m["partial_rotary_factor"] = shortF32(f)
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("marshal config: %w", err)
	}
	return append(b, '\n'), nil
}
