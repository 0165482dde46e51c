package finetune

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ollama-tune/ollama-tune/finetune/peft"
)

// The bridge between a Model's LoRA matrices and PEFT adapter folders
// (finetune/peft knows the format, not the model).

// PEFTBase describes cfg's adaptable linears for peft.Read: every decoder
// linear of every layer, by Hugging Face module name, with its [out, in].
func PEFTBase(cfg *Config) peft.Base {
	b := peft.Base{}
	for l := range cfg.NumLayers {
		for _, m := range LinearModules {
			out, in := LinearShape(cfg, m)
			b[LayerName(l, m)] = peft.Shape{Out: out, In: in}
		}
	}
	return b
}

// Adapter returns the model's LoRA matrices as a PEFT adapter whose config
// says base (base_model_name_or_path) and the model's LoRA settings.
func (m *Model) Adapter(base string, lc *LoRAConfig) (*peft.Adapter, error) {
	if len(m.loraParams) == 0 {
		return nil, fmt.Errorf("adapter: the model has no LoRA matrices")
	}
	targets, err := lc.Validate()
	if err != nil {
		return nil, err
	}
	var leaves []string
	for mod, on := range targets {
		if on {
			leaves = append(leaves, moduleLeaf(mod))
		}
	}
	a := &peft.Adapter{Config: peft.NewConfig(base, lc.R, shortFloat(lc.Alpha), shortFloat(lc.Dropout), leaves)}
	for _, p := range m.loraParams {
		a.Tensors = append(a.Tensors, peft.Tensor{Name: p.Name, Shape: slices.Clone(p.Shape), Data: m.B.Download(p.Param)})
	}
	return a, nil
}

// shortFloat widens a float32 setting through its shortest decimal form,
// so lora_dropout 0.05 is written as 0.05, not 0.05000000074505806.
func shortFloat(f float32) float64 { return float64(shortF32(f)) }

// LoRAConfigOf is the LoRAConfig that builds a model able to hold the
// adapter: its rank, alpha, dropout and the modules its matrices adapt.
func LoRAConfigOf(a *peft.Adapter) (*LoRAConfig, error) {
	mods, err := a.Modules()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var targets []string
	for _, mod := range mods {
		leaf := mod.Name[strings.LastIndexByte(mod.Name, '.')+1:]
		if !seen[leaf] {
			seen[leaf] = true
			targets = append(targets, leaf)
		}
	}
	lc := &LoRAConfig{
		R: a.Config.R, Alpha: float32(a.Config.LoRAAlpha), Dropout: float32(a.Config.LoRADropout),
		TargetModules: targets, Bias: a.Config.Bias,
	}
	if _, err := lc.Validate(); err != nil {
		return nil, err
	}
	return lc, nil
}

// SetAdapter copies an adapter's matrices into the model's LoRA slots; the
// model must have been built with LoRAConfigOf(a).
func (m *Model) SetAdapter(a *peft.Adapter) error {
	if len(a.Tensors) != len(m.loraParams) {
		return fmt.Errorf("adapter has %d LoRA matrices, the model %d", len(a.Tensors), len(m.loraParams))
	}
	for _, t := range a.Tensors {
		if err := m.SetLoRA(t.Name, t.Data); err != nil {
			return err
		}
	}
	return nil
}

// LoadCheckpointModel builds the model of the checkpoint folder dir on b,
// with the PEFT adapter in adapterDir applied (LoadModelWithAdapter), or
// the base alone when adapterDir is "". The checkpoint's files are closed
// when it returns.
func LoadCheckpointModel(b Backend, dir string, opts ModelOptions, adapterDir string) (*Model, error) {
	ck, err := LoadCheckpoint(dir)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	if adapterDir == "" {
		return loadModelOn(b, ck, opts)
	}
	return LoadModelWithAdapter(b, ck, opts, adapterDir)
}

// LoadModelWithAdapter builds the base model of ck with the PEFT adapter
// in adapterDir applied (validated against the base: shapes, ranks,
// modules). opts.LoRA is replaced by the adapter's settings. A backend
// with a ModelLoader builds the base its own way (the CUDA backend: on the
// GPU).
func LoadModelWithAdapter(b Backend, ck *Checkpoint, opts ModelOptions, adapterDir string) (*Model, error) {
	return loadWithAdapter(ck.Config, opts, adapterDir, func(opts ModelOptions) (*Model, error) { return loadModelOn(b, ck, opts) })
}

// loadModelOn is b's ModelLoader where it has one, else LoadModel (the
// same model either way: ModelLoader's contract).
func loadModelOn(b Backend, ck *Checkpoint, opts ModelOptions) (*Model, error) {
	if ml, ok := b.(ModelLoader); ok {
		return ml.LoadModel(ck, opts)
	}
	return LoadModel(b, ck, opts)
}

// loadWithAdapter reads the adapter in adapterDir for a base of cfg, builds
// the model with load (opts.LoRA set to the adapter's settings) and copies
// the adapter's matrices into it.
func loadWithAdapter(cfg *Config, opts ModelOptions, adapterDir string, load func(ModelOptions) (*Model, error)) (*Model, error) {
	a, err := peft.Read(adapterDir, PEFTBase(cfg))
	if err != nil {
		return nil, err
	}
	lc, err := LoRAConfigOf(a)
	if err != nil {
		return nil, fmt.Errorf("adapter %s: %w", adapterDir, err)
	}
	opts.LoRA = lc
	m, err := load(opts)
	if err != nil {
		return nil, err
	}
	if err := m.SetAdapter(a); err != nil {
		m.Free()
		return nil, fmt.Errorf("adapter %s: %w", adapterDir, err)
	}
	return m, nil
}
