package finetune

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
)

// LoRAConfig is PEFT's LoraConfig, the part ollama-tune implements.
type LoRAConfig struct {
	R       int     // rank r
	Alpha   float32 // lora_alpha; the adapter is scaled by Alpha / R
	Dropout float32 // lora_dropout, applied to the adapter's input only
	// TargetModules are matched like PEFT matches a list, a module is
	// adapted when its name ends with "." + entry, restricted to what
	// applies to every layer: "qkv_proj" or "self_attn.qkv_proj" (and the
	// other three). "all-linear" adapts all four decoder linears (PEFT
	// leaves lm_head out).
	TargetModules []string
	Bias          string // "none" (only "none" is implemented)
	Seed          uint64 // draws lora_A; see initLoRA
}

// The decoder linears of a Phi-3 layer, in this order everywhere (module
// indices for seeds and names).
const (
	modQKV = iota
	modO
	modGateUp
	modDown
	numModules
)

// (LinearModules, in checkpoint.go, names them in this order.)

// moduleLeaf is a module's last name component (qkv_proj, ...).
func moduleLeaf(m int) string {
	return LinearModules[m][strings.LastIndexByte(LinearModules[m], '.')+1:]
}

// moduleName is the Hugging Face name of layer i's module m
// ("model.layers.3.self_attn.qkv_proj").
func moduleName(layer, m int) string { return LayerName(layer, LinearModules[m]) }

// PEFTName is the adapter-file name of one LoRA matrix of a module, as
// PEFT's save_pretrained writes it (which is "A" or "B").
func PEFTName(layer, m int, which string) string {
	return fmt.Sprintf("base_model.model.%s.lora_%s.weight", moduleName(layer, m), which)
}

// Validate checks the configuration and returns which of the four modules
// it targets.
func (c *LoRAConfig) Validate() (targets [numModules]bool, err error) {
	if c.R <= 0 {
		return targets, fmt.Errorf("lora: r is %d; it must be a positive integer (e.g. 8, 16, 32)", c.R)
	}
	if c.Alpha <= 0 || math.IsNaN(float64(c.Alpha)) || math.IsInf(float64(c.Alpha), 0) {
		return targets, fmt.Errorf("lora: lora_alpha is %g; it must be a positive number (often 2*r)", c.Alpha)
	}
	if !(c.Dropout >= 0 && c.Dropout < 1) {
		return targets, fmt.Errorf("lora: lora_dropout is %g; it must be in [0, 1)", c.Dropout)
	}
	switch c.Bias {
	case "", "none":
	case "all", "lora_only":
		return targets, fmt.Errorf("lora: bias %q is not implemented (Phi-3's linears have no bias); use bias: none", c.Bias)
	default:
		return targets, fmt.Errorf("lora: bias %q is not a PEFT option; use bias: none", c.Bias)
	}
	if len(c.TargetModules) == 0 {
		return targets, errors.New("lora: target_modules is empty; list some of qkv_proj, o_proj, gate_up_proj, down_proj, or use all-linear")
	}
	var valid []string
	for m := range numModules {
		valid = append(valid, moduleLeaf(m))
	}
	for _, t := range c.TargetModules {
		if strings.EqualFold(t, "all-linear") {
			for m := range targets {
				targets[m] = true
			}
			continue
		}
		found := false
		for m := range numModules {
			full := LinearModules[m]
			if t == full || t == moduleLeaf(m) {
				targets[m] = true
				found = true
			}
		}
		if !found {
			return targets, fmt.Errorf("lora: target module %q is not a linear layer of Phi-3 that ollama-tune can adapt; valid names: %s, or all-linear", t, strings.Join(valid, ", "))
		}
	}
	return targets, nil
}

// NamedLoRA is one trainable LoRA matrix with its PEFT name.
type NamedLoRA struct {
	Name        string // base_model.model.model.layers.N.<module>.lora_A.weight
	Layer       int
	Module      string // e.g. self_attn.qkv_proj
	Param, Grad Tensor
	Shape       []int // [r, in] for A, [out, r] for B
}

// Numel is the matrix's number of elements.
func (n NamedLoRA) Numel() int { return numel(n.Shape) }

// initLoRA adds an adapter to l (a module of layer, index m) with PEFT's
// initialisation: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)),
// drawn as element k = (2u-1)/sqrt(in) with u = Uniform(DeriveSeed(seed,
// layer, m), k); B = 0 (so the adapter starts as the identity function).
func initLoRA(b Backend, l *Linear, layer, m int, c *LoRAConfig) {
	r, in, out := c.R, l.W.In(), l.W.Out()
	a := make([]float32, r*in)
	bound := float32(1 / math.Sqrt(float64(in)))
	s := DeriveSeed(c.Seed, uint64(layer), uint64(m))
	for k := range a {
		a[k] = (2*Uniform(s, uint64(k)) - 1) * bound
	}
	lo := &LoRA{
		A: b.Alloc(r, in), B: b.Alloc(out, r),
		GradA: b.Alloc(r, in), GradB: b.Alloc(out, r),
		Scale:   c.Alpha / float32(c.R),
		Dropout: c.Dropout,
	}
	b.Upload(lo.A, a)
	l.LoRA = lo
}

// LoRAParams lists the trainable matrices in layer and module order, A
// before B, with their PEFT names (the adapter writer's and the
// optimizer's view of the model).
func (m *Model) LoRAParams() []NamedLoRA { return slices.Clone(m.loraParams) }

// TrainableParams is the number of trainable parameters (PEFT's
// print_trainable_parameters count).
func (m *Model) TrainableParams() int64 {
	var n int64
	for _, p := range m.loraParams {
		n += int64(p.Numel())
	}
	return n
}

func (m *Model) findLoRA(name string) (*NamedLoRA, error) {
	for k := range m.loraParams {
		if m.loraParams[k].Name == name {
			return &m.loraParams[k], nil
		}
	}
	if len(m.loraParams) == 0 {
		return nil, fmt.Errorf("lora tensor %q: the model has no LoRA adapter", name)
	}
	return nil, fmt.Errorf("lora tensor %q: no such adapter matrix (names look like %q)", name, m.loraParams[0].Name)
}

// SetLoRA overwrites one LoRA matrix (e.g. from an adapter file).
func (m *Model) SetLoRA(name string, data []float32) error {
	p, err := m.findLoRA(name)
	if err != nil {
		return err
	}
	if len(data) != p.Numel() {
		return fmt.Errorf("lora tensor %q: has %d values, the model's is %v (%d values)", name, len(data), p.Shape, p.Numel())
	}
	m.B.Upload(p.Param, data)
	return nil
}

// GetLoRA returns a copy of one LoRA matrix.
func (m *Model) GetLoRA(name string) ([]float32, error) {
	p, err := m.findLoRA(name)
	if err != nil {
		return nil, err
	}
	return m.B.Download(p.Param), nil
}

// GetLoRAGrad returns a copy of one LoRA matrix's accumulated gradient.
func (m *Model) GetLoRAGrad(name string) ([]float32, error) {
	p, err := m.findLoRA(name)
	if err != nil {
		return nil, err
	}
	return m.B.Download(p.Grad), nil
}

// ZeroGrads zeroes every LoRA gradient (backward accumulates into them).
func (m *Model) ZeroGrads() {
	for _, p := range m.loraParams {
		m.B.Zero(p.Grad)
	}
}
