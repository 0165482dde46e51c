package convert

import (
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Arch is one model architecture's naming: how Hugging Face tensor names
// map to the GGUF names llama.cpp looks up, and the shapes of the linear
// layers a LoRA adapter may adapt. The tables are data, so adding an
// architecture is adding an entry to Archs.
type Arch struct {
	// Name is GGUF's general.architecture (llama.cpp's LLM_ARCH name).
	Name string
	// HFArchitectures are config.json "architectures" values of this arch.
	HFArchitectures []string
	// Linears maps a decoder linear, relative to model.layers.N, to its
	// GGUF name relative to blk.N. These are the modules an adapter may
	// adapt.
	Linears map[string]string
	// Norms maps the per-layer norm weights the same way (merged model).
	Norms map[string]string
	// Globals maps whole-model tensors, without ".weight".
	Globals map[string]string
	// PermuteRows names GGUF linears whose output rows llama.cpp's
	// converter permutes (Llama's q/k for its rotary layout), with the
	// head count to permute by; a LoRA B (and a merged weight) must be
	// permuted the same way.
	PermuteRows map[string]func(c *HFConfig) int
	// Shape is the [out, in] of a linear under c (module as in Linears).
	Shape func(c *HFConfig, module string) (out, in int)
}

// HFConfig is the part of a Hugging Face config.json the tables need.
type HFConfig struct {
	Architectures    []string `json:"architectures"`
	ModelType        string   `json:"model_type"`
	HiddenSize       int      `json:"hidden_size"`
	IntermediateSize int      `json:"intermediate_size"`
	NumLayers        int      `json:"num_hidden_layers"`
	NumHeads         int      `json:"num_attention_heads"`
	NumKVHeads       int      `json:"num_key_value_heads"`
	HeadDim          int      `json:"head_dim"`
	VocabSize        int      `json:"vocab_size"`
}

// ParseHFConfig reads the fields of config.json that the name tables use.
func ParseHFConfig(b []byte) (*HFConfig, error) {
	var c HFConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("parse config.json: %w", err)
	}
	if c.NumKVHeads == 0 {
		c.NumKVHeads = c.NumHeads
	}
	if c.HeadDim == 0 && c.NumHeads > 0 {
		c.HeadDim = c.HiddenSize / c.NumHeads
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"hidden_size", c.HiddenSize}, {"intermediate_size", c.IntermediateSize}, {"num_hidden_layers", c.NumLayers}, {"num_attention_heads", c.NumHeads}} {
		if f.v <= 0 {
			return nil, fmt.Errorf("config.json: field %q is missing or not positive", f.name)
		}
	}
	return &c, nil
}

// llamaShape is the shape of Llama-family linears (separate q/k/v and
// gate/up projections).
func llamaShape(c *HFConfig, module string) (int, int) {
	q, kv := c.NumHeads*c.HeadDim, c.NumKVHeads*c.HeadDim
	switch module {
	case "self_attn.q_proj":
		return q, c.HiddenSize
	case "self_attn.k_proj", "self_attn.v_proj":
		return kv, c.HiddenSize
	case "self_attn.o_proj":
		return c.HiddenSize, q
	case "mlp.gate_proj", "mlp.up_proj":
		return c.IntermediateSize, c.HiddenSize
	case "mlp.down_proj":
		return c.HiddenSize, c.IntermediateSize
	}
	return 0, 0
}

var llamaLinears = map[string]string{
	"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
	"self_attn.o_proj": "attn_output",
	"mlp.gate_proj":    "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}

var llamaGlobals = map[string]string{"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}

// Phi3 is Phi-3's table (llama.cpp LLM_ARCH_PHI3; the names of Ollama's
// convert_phi3.go): fused qkv_proj and gate_up_proj.
var Phi3 = &Arch{
	Name:            "phi3",
	HFArchitectures: []string{"Phi3ForCausalLM"},
	Linears: map[string]string{
		"self_attn.qkv_proj": "attn_qkv",
		"self_attn.o_proj":   "attn_output",
		"mlp.gate_up_proj":   "ffn_up", // gate rows first, as llama.cpp's fused SwiGLU expects
		"mlp.down_proj":      "ffn_down",
	},
	Norms:   map[string]string{"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"},
	Globals: llamaGlobals,
	Shape: func(c *HFConfig, module string) (int, int) {
		q, kv := c.NumHeads*c.HeadDim, c.NumKVHeads*c.HeadDim
		switch module {
		case "self_attn.qkv_proj":
			return q + 2*kv, c.HiddenSize
		case "self_attn.o_proj":
			return c.HiddenSize, q
		case "mlp.gate_up_proj":
			return 2 * c.IntermediateSize, c.HiddenSize
		case "mlp.down_proj":
			return c.HiddenSize, c.IntermediateSize
		}
		return 0, 0
	},
}

// Llama covers Llama and Mistral (llama.cpp runs both as LLM_ARCH_LLAMA);
// its converter permutes q and k rows for the rotary layout.
var Llama = &Arch{
	Name:            "llama",
	HFArchitectures: []string{"LlamaForCausalLM", "MistralForCausalLM"},
	Linears:         llamaLinears,
	Norms:           map[string]string{"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"},
	Globals:         llamaGlobals,
	PermuteRows: map[string]func(c *HFConfig) int{
		"attn_q": func(c *HFConfig) int { return c.NumHeads },
		"attn_k": func(c *HFConfig) int { return c.NumKVHeads },
	},
	Shape: llamaShape,
}

// Gemma and Gemma2 use Llama's linear names without the permutation.
var Gemma = &Arch{
	Name: "gemma", HFArchitectures: []string{"GemmaForCausalLM"},
	Linears: llamaLinears, Globals: llamaGlobals, Shape: llamaShape,
}

var Gemma2 = &Arch{
	Name: "gemma2", HFArchitectures: []string{"Gemma2ForCausalLM"},
	Linears: llamaLinears, Globals: llamaGlobals, Shape: llamaShape,
}

// Archs lists the known architectures; phi3 is the one the merged writer
// and the trainer support, the others are for adapter export.
var Archs = []*Arch{Phi3, Llama, Gemma, Gemma2}

// ArchFor finds the table of a config.json's architectures (or of a GGUF
// general.architecture name).
func ArchFor(name string) (*Arch, error) {
	for _, a := range Archs {
		if a.Name == name || slices.Contains(a.HFArchitectures, name) {
			return a, nil
		}
	}
	var known []string
	for _, a := range Archs {
		known = append(known, a.HFArchitectures...)
	}
	return nil, fmt.Errorf("architecture %q has no GGUF name table (known: %s)", name, strings.Join(known, ", "))
}

var layerRE = regexp.MustCompile(`^model\.layers\.(\d+)\.(.+)$`)

// SplitLayer splits "model.layers.3.self_attn.qkv_proj" into 3 and the
// module; ok is false for names outside a layer.
func SplitLayer(name string) (layer int, module string, ok bool) {
	m := layerRE.FindStringSubmatch(name)
	if m == nil {
		return 0, "", false
	}
	n, err := strconv.Atoi(m[1])
	if err != nil {
		return 0, "", false
	}
	return n, m[2], true
}

// LinearName is the GGUF name of a decoder linear given as a Hugging Face
// module name ("model.layers.3.self_attn.qkv_proj" -> "blk.3.attn_qkv").
func (a *Arch) LinearName(module string) (string, error) {
	l, m, ok := SplitLayer(module)
	if !ok {
		return "", fmt.Errorf("module %q is not a decoder layer's linear (model.layers.N.<module>); %s adapters may adapt %s", module, a.Name, a.linearList())
	}
	g, ok := a.Linears[m]
	if !ok {
		return "", fmt.Errorf("module %q: %s has no linear %q in its GGUF table; %s adapters may adapt %s", module, a.Name, m, a.Name, a.linearList())
	}
	return "blk." + strconv.Itoa(l) + "." + g, nil
}

// TensorName is the GGUF name of any weight the merged writer handles
// ("model.norm.weight" -> "output_norm.weight").
func (a *Arch) TensorName(hf string) (string, error) {
	base, suffix, ok := strings.Cut(hf, ".weight")
	if !ok {
		return "", fmt.Errorf("tensor %q is not a weight", hf)
	}
	if g, ok := a.Globals[base]; ok {
		return g + ".weight" + suffix, nil
	}
	if l, m, ok := SplitLayer(base); ok {
		if g, ok := a.Norms[m]; ok {
			return "blk." + strconv.Itoa(l) + "." + g + ".weight" + suffix, nil
		}
		if g, ok := a.Linears[m]; ok {
			return "blk." + strconv.Itoa(l) + "." + g + ".weight" + suffix, nil
		}
	}
	return "", fmt.Errorf("tensor %q has no %s GGUF name", hf, a.Name)
}

func (a *Arch) linearList() string {
	var names []string
	for m := range a.Linears {
		names = append(names, m)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

// permuteRows applies llama.cpp's LlamaModel.permute to a row-major
// [rows, cols] matrix: rows are grouped by head and the two rotary halves
// of each head interleaved
// (w.reshape(heads, 2, rows/heads/2, cols).swapaxes(1, 2)).
func permuteRows(w []float32, rows, cols, heads int) []float32 {
	out := make([]float32, len(w))
	per := rows / heads
	half := per / 2
	for h := range heads {
		for i := range half {
			for j := range 2 {
				src := h*per + j*half + i
				dst := h*per + i*2 + j
				copy(out[dst*cols:(dst+1)*cols], w[src*cols:(src+1)*cols])
			}
		}
	}
	return out
}
