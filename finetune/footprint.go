package finetune

import (
	"fmt"
	"strings"
)

// LoRAShape is what the memory estimates need of a LoRA setup: the rank and
// the adapted modules ("qkv_proj", "self_attn.qkv_proj", ... or
// "all-linear").
type LoRAShape struct {
	Rank    int
	Modules []string
}

// resolveModule maps a target-module name to its entry in LinearModules.
func resolveModule(name string) (string, bool) {
	for _, m := range LinearModules {
		if name == m || name == m[strings.LastIndexByte(m, '.')+1:] {
			return m, true
		}
	}
	return "", false
}

// expandModules resolves the names, expanding "all-linear" and dropping
// duplicates (PEFT adapts a module once however often it is listed).
func expandModules(modules []string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	add := func(m string) {
		if !seen[m] {
			seen[m] = true
			out = append(out, m)
		}
	}
	for _, name := range modules {
		if strings.EqualFold(name, "all-linear") {
			for _, m := range LinearModules {
				add(m)
			}
			continue
		}
		m, ok := resolveModule(name)
		if !ok {
			return nil, fmt.Errorf("LoRA target module %q is not a Phi-3 decoder linear; use some of qkv_proj, o_proj, gate_up_proj, down_proj, or all-linear", name)
		}
		add(m)
	}
	return out, nil
}

// Validate says whether the shape names real modules and a positive rank.
func (s *LoRAShape) Validate() error {
	if s.Rank <= 0 {
		return fmt.Errorf("LoRA rank r is %d; it must be a positive integer", s.Rank)
	}
	_, err := expandModules(s.Modules)
	return err
}

// TrainableParams is the number of LoRA parameters PEFT creates for rank r
// on the named modules of every layer: r * (in + out) per module (A is
// [r, in], B is [out, r]). Names that are not Phi-3 decoder linears count
// nothing; LoRAShape.Validate reports them. Phi-3-mini with r = 8 on
// qkv_proj, o_proj, gate_up_proj, down_proj has 12,582,912.
func TrainableParams(cfg *Config, r int, modules []string) int64 {
	var perLayer int64
	seen := map[string]bool{}
	for _, name := range modules {
		var ms []string
		if strings.EqualFold(name, "all-linear") {
			ms = LinearModules
		} else if m, ok := resolveModule(name); ok {
			ms = []string{m}
		}
		for _, m := range ms {
			if seen[m] {
				continue
			}
			seen[m] = true
			out, in := LinearShape(cfg, m)
			perLayer += int64(r) * int64(in+out)
		}
	}
	return perLayer * int64(cfg.NumLayers)
}

// MemoryFootprint is what transformers' model.get_memory_footprint()
// reports for a Phi-3 model: the bytes of all parameters and buffers, not
// counting the 4-bit quantization state.
//
//   - quantized: the decoder linears are bitsandbytes 4-bit, packed two
//     values a byte (numel/2 bytes); otherwise they count at computeBytes.
//   - computeBytes: bytes per value of the parameters that are not
//     quantized (embed_tokens, lm_head unless tied, the 2L+1 RMSNorm
//     weights): 2 after a 4-bit load without torch_dtype (float16) or a
//     bf16 load, 4 after prepare_model_for_kbit_training upcasts them.
//   - the rotary inv_freq buffer: rotary_dim/2 float32 values.
//   - lora (may be nil): the adapters' float32 parameters.
//
// Phi-3-mini: 2,206,341,312 bytes after the tutorial's 4-bit load
// (computeBytes 2, no LoRA); 2,651,074,752 after the upcast and LoRA r=8 on
// the four modules (computeBytes 4).
func MemoryFootprint(cfg *Config, quantized bool, computeBytes int, lora *LoRAShape) int64 {
	var linear int64
	for _, m := range LinearModules {
		out, in := LinearShape(cfg, m)
		n := int64(out) * int64(in)
		if quantized {
			linear += (n + 1) / 2 // packed codes: ceil(n/2) bytes
		} else {
			linear += n * int64(computeBytes)
		}
	}
	total := linear * int64(cfg.NumLayers)
	embed := int64(cfg.VocabSize) * int64(cfg.HiddenSize)
	if !cfg.TieWordEmbeddings {
		embed *= 2 // lm_head
	}
	norms := int64(2*cfg.NumLayers+1) * int64(cfg.HiddenSize)
	total += (embed + norms) * int64(computeBytes)
	total += int64(cfg.RotaryDim()/2) * 4
	if lora != nil {
		total += 4 * TrainableParams(cfg, lora.Rank, lora.Modules)
	}
	return total
}
