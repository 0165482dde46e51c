package convert

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ollama/ollama/fs/ggml"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/ollamastore"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
)

// Base is what an export checks an adapter against: the base model's
// architecture table and shape, and where they came from (for errors).
type Base struct {
	Arch   *Arch
	Config *HFConfig
	Source string
	// ConfigJSON is the base's config.json when it came from one.
	ConfigJSON []byte
}

// LoadBase reads a base model description from a folder holding
// config.json, a config.json file, or a GGUF model file (its
// general.architecture and dimensions).
func LoadBase(path string) (*Base, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("base model: %w", err)
	}
	if !st.IsDir() && strings.HasSuffix(strings.ToLower(path), ".gguf") {
		return baseFromGGUF(path)
	}
	cfgPath := path
	if st.IsDir() {
		cfgPath = filepath.Join(path, "config.json")
	}
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		return nil, fmt.Errorf("base model: %w (give the base model's folder, its config.json or a GGUF file)", err)
	}
	c, err := ParseHFConfig(b)
	if err != nil {
		return nil, fmt.Errorf("base model %s: %w", cfgPath, err)
	}
	if len(c.Architectures) == 0 {
		return nil, fmt.Errorf("base model %s: field \"architectures\" is missing", cfgPath)
	}
	a, err := ArchFor(c.Architectures[0])
	if err != nil {
		return nil, fmt.Errorf("base model %s: %w", cfgPath, err)
	}
	return &Base{Arch: a, Config: c, Source: cfgPath, ConfigJSON: b}, nil
}

func baseFromGGUF(path string) (*Base, error) {
	g, err := ReadGGUF(path)
	if err != nil {
		return nil, fmt.Errorf("base model: %w", err)
	}
	kv := g.KV()
	if kv.Kind() == "adapter" {
		return nil, fmt.Errorf("base model %s is a LoRA adapter (general.type = adapter), not a model", path)
	}
	a, err := ArchFor(kv.Architecture())
	if err != nil {
		return nil, fmt.Errorf("base model %s: %w", path, err)
	}
	c := &HFConfig{
		Architectures:    []string{a.HFArchitectures[0]},
		HiddenSize:       int(kv.Uint("embedding_length")),
		IntermediateSize: int(kv.Uint("feed_forward_length")),
		NumLayers:        int(kv.Uint("block_count")),
		NumHeads:         int(kv.Uint("attention.head_count")),
		NumKVHeads:       int(kv.Uint("attention.head_count_kv")),
	}
	if c.NumKVHeads == 0 {
		c.NumKVHeads = c.NumHeads
	}
	if c.HiddenSize == 0 || c.NumHeads == 0 || c.NumLayers == 0 {
		return nil, fmt.Errorf("base model %s: %s.embedding_length, block_count or attention.head_count is missing", path, a.Name)
	}
	c.HeadDim = c.HiddenSize / c.NumHeads
	if k := int(kv.Uint("attention.key_length")); k > 0 {
		c.HeadDim = k
	}
	return &Base{Arch: a, Config: c, Source: path}, nil
}

// Phi-3 checkpoints whose shape is known without their config.json, so an
// adapter naming one can be checked offline.
var knownBases = map[string]*finetune.Config{
	"microsoft/phi-3-mini-4k-instruct": finetune.Phi3Mini4k(),
}

// FindBase picks the base model an adapter is checked against: base when
// given (folder, config.json or GGUF), else the adapter's
// base_model_name_or_path when it is a local folder or a known checkpoint.
func FindBase(adapterDir, base string) (*Base, error) {
	if base != "" {
		return LoadBase(base)
	}
	cfg, err := peft.ReadConfig(filepath.Join(adapterDir, peft.ConfigName))
	if err != nil {
		return nil, fmt.Errorf("adapter %s: %w", adapterDir, err)
	}
	name := cfg.BaseModelNameOrPath
	if name != "" {
		if st, err := os.Stat(filepath.Join(name, "config.json")); err == nil && !st.IsDir() {
			return LoadBase(name)
		}
		if c, ok := knownBases[strings.ToLower(name)]; ok {
			return &Base{Arch: Phi3, Config: hfConfigOf(c), Source: name + " (built-in shape)"}, nil
		}
		if strings.HasPrefix(name, ollamastore.Scheme) {
			// Trained on the GGUF of an Ollama model: its blob, from the
			// store or the server (OLLAMA_MODELS, OLLAMA_HOST).
			m, err := ollamastore.Resolve(context.Background(), name)
			if err != nil {
				return nil, fmt.Errorf("adapter %s: base %s: %w", adapterDir, name, err)
			}
			b, err := baseFromGGUF(m.GGUF)
			if err != nil {
				return nil, err
			}
			b.Source = name + " (" + m.GGUF + ")"
			return b, nil
		}
	}
	return nil, fmt.Errorf("adapter %s: cannot find its base model to check the shapes against (adapter_config.json's base_model_name_or_path is %q, not a local folder); pass --base with the base model's folder, config.json or GGUF file", adapterDir, name)
}

// hfConfigOf converts the trainer's Phi-3 config to the table's view.
func hfConfigOf(c *finetune.Config) *HFConfig {
	return &HFConfig{
		Architectures: []string{"Phi3ForCausalLM"}, ModelType: "phi3",
		HiddenSize: c.HiddenSize, IntermediateSize: c.IntermediateSize, NumLayers: c.NumLayers,
		NumHeads: c.NumHeads, NumKVHeads: c.NumKVHeads, HeadDim: c.HeadDim(), VocabSize: c.VocabSize,
	}
}

// LoRAOptions tune ExportLoRA.
type LoRAOptions struct {
	// DType is F32 or F16; "" keeps the adapter file's own type (F32 or
	// F16, whose bytes are then copied unchanged; anything else is F32).
	DType DType
	// Name is general.name ("" for the adapter folder's name).
	Name string
}

// LoRAResult describes a written adapter.
type LoRAResult struct {
	Path    string
	Arch    string
	DType   DType
	Rank    int
	Alpha   float64
	Modules int
}

// LoRATensor is one GGUF adapter tensor before it is written.
type LoRATensor struct {
	Name  string // blk.N.attn_qkv.weight.lora_a
	Shape []int  // PyTorch order: [r, in] for lora_a, [out, r] for lora_b
	Data  []float32
}

// BuildLoRA checks an adapter against the base and returns the GGUF
// adapter's metadata (without general.file_type) and tensors, sorted by
// name. It fails on tensors that are not LoRA matrices, a module the
// architecture does not have (or one of another architecture), a missing
// half of a pair, a rank that differs from adapter_config.json, a shape
// that does not fit the base, and PEFT options llama.cpp cannot apply.
func BuildLoRA(a *peft.Adapter, base *Base) (map[string]any, []LoRATensor, error) {
	cfg := a.Config
	if err := a.Validate(nil); err != nil {
		return nil, nil, err
	}
	mods, err := a.Modules()
	if err != nil {
		return nil, nil, err
	}
	var out []LoRATensor
	for _, m := range mods {
		g, err := base.Arch.LinearName(m.Name)
		if err != nil {
			if other := otherArch(m.Name, base.Arch); other != nil {
				return nil, nil, fmt.Errorf("adapter module %s is a %s module, but the base model (%s) is %s: the adapter was trained for a different architecture", m.Name, other.Name, base.Source, base.Arch.Name)
			}
			return nil, nil, err
		}
		l, leaf, _ := SplitLayer(m.Name)
		if l >= base.Config.NumLayers {
			return nil, nil, fmt.Errorf("adapter module %s: the base model (%s) has %d layers; the adapter was trained on another base model", m.Name, base.Source, base.Config.NumLayers)
		}
		outDim, inDim := base.Arch.Shape(base.Config, leaf)
		if m.A.Shape[1] != inDim {
			return nil, nil, fmt.Errorf("tensor %q: shape %v, but %s of the base model (%s) takes %d inputs, so lora_A must be [%d, %d]; the adapter was trained on another base model", m.A.Name, m.A.Shape, m.Name, base.Source, inDim, cfg.R, inDim)
		}
		if m.B.Shape[0] != outDim {
			return nil, nil, fmt.Errorf("tensor %q: shape %v, but %s of the base model (%s) has %d outputs, so lora_B must be [%d, %d]; the adapter was trained on another base model", m.B.Name, m.B.Shape, m.Name, base.Source, outDim, outDim, cfg.R)
		}
		bdata := m.B.Data
		leafG := g[strings.LastIndex(g, ".")+1:]
		if p, ok := base.Arch.PermuteRows[leafG]; ok {
			bdata = permuteRows(bdata, outDim, cfg.R, p(base.Config))
		}
		out = append(out,
			LoRATensor{Name: g + ".weight.lora_a", Shape: slices.Clone(m.A.Shape), Data: m.A.Data},
			LoRATensor{Name: g + ".weight.lora_b", Shape: slices.Clone(m.B.Shape), Data: bdata})
	}
	slices.SortFunc(out, func(x, y LoRATensor) int { return cmp.Compare(x.Name, y.Name) })
	kv := map[string]any{
		"general.architecture": base.Arch.Name,
		"general.type":         "adapter",
		"adapter.type":         "lora",
		"adapter.lora.alpha":   float32(cfg.LoRAAlpha),
	}
	return kv, out, nil
}

// otherArch finds another table that has module's linear (for the
// "different architecture" error).
func otherArch(module string, not *Arch) *Arch {
	_, leaf, ok := SplitLayer(module)
	if !ok {
		return nil
	}
	for _, a := range Archs {
		if a == not {
			continue
		}
		if _, ok := a.Linears[leaf]; ok {
			if _, same := not.Linears[leaf]; !same {
				return a
			}
		}
	}
	return nil
}

// adapterDType is the element type of an adapter file's matrices: F32 or
// F16 when they all share it, else "".
func adapterDType(dir string) (DType, error) {
	f, err := safetensors.Open(filepath.Join(dir, peft.WeightsName))
	if err != nil {
		return "", err
	}
	defer f.Close()
	var d DType
	for i, name := range f.Names() {
		dt, _, _ := f.Info(name)
		var this DType
		switch dt {
		case safetensors.F32:
			this = F32
		case safetensors.F16:
			this = F16
		}
		if i == 0 {
			d = this
		} else if d != this {
			return "", nil
		}
	}
	return d, nil
}

// ReadAdapter reads a PEFT adapter folder, with a hint when the folder is
// not one.
func ReadAdapter(dir string) (*peft.Adapter, error) {
	if _, err := os.Stat(filepath.Join(dir, peft.ConfigName)); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("adapter %s: no %s; give the folder the trainer wrote (adapter_config.json + adapter_model.safetensors)", dir, peft.ConfigName)
	}
	a, err := peft.Read(dir, nil)
	if err != nil {
		return nil, err
	}
	return a, nil
}

// ExportLoRA converts the PEFT adapter in adapterDir into a GGUF LoRA
// adapter for llama.cpp/Ollama at out, after checking it against base.
// lora_A [r, in] and lora_B [out, r] keep their row-major bytes (GGUF lists
// the dimensions in reverse: [in, r] and [r, out]); llama.cpp scales the
// product by adapter.lora.alpha / r, as PEFT does.
func ExportLoRA(adapterDir string, base *Base, out string, opts LoRAOptions) (*LoRAResult, error) {
	a, err := ReadAdapter(adapterDir)
	if err != nil {
		return nil, err
	}
	kv, ts, err := BuildLoRA(a, base)
	if err != nil {
		return nil, fmt.Errorf("adapter %s: %w", adapterDir, err)
	}
	dt := opts.DType
	if dt == "" {
		if dt, err = adapterDType(adapterDir); err != nil {
			return nil, fmt.Errorf("adapter %s: %w", adapterDir, err)
		}
		if dt == "" {
			dt = F32
		}
	}
	if dt != F32 && dt != F16 {
		// Q8_0 blocks run along a row of 32; lora_b's rows are r long (8).
		return nil, fmt.Errorf("adapter type %s: LoRA adapters are written as f32 or f16", dt)
	}
	name := opts.Name
	if name == "" {
		name = filepath.Base(filepath.Clean(adapterDir))
	}
	kv["general.name"] = name
	kv["general.file_type"] = dt.fileType()
	kv["general.quantization_version"] = uint32(2)
	tensors := make([]*ggml.Tensor, len(ts))
	for i, t := range ts {
		data := t.Data
		tensors[i] = &ggml.Tensor{
			Name:     t.Name,
			Kind:     dt.ggmlType(),
			Shape:    ggufShape(t.Shape...),
			WriterTo: lazyTensor(func() ([]byte, error) { return dt.encode(data) }),
		}
	}
	if err := writeGGUFFile(out, ggml.KV(kv), tensors); err != nil {
		return nil, err
	}
	return &LoRAResult{Path: out, Arch: base.Arch.Name, DType: dt, Rank: a.Config.R, Alpha: a.Config.LoRAAlpha, Modules: len(ts) / 2}, nil
}
