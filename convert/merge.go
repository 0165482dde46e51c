package convert

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ollama/ollama/fs/ggml"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
)

// ModelOptions describe a full GGUF model to write from a safetensors
// Phi-3 checkpoint.
type ModelOptions struct {
	// BaseDir holds config.json and the safetensors weights.
	BaseDir string
	// TokenizerDir holds tokenizer.model (+ tokenizer.json,
	// tokenizer_config.json, chat template); "" means BaseDir.
	TokenizerDir string
	// Adapter, when set, is merged into the weights: W + alpha/r * B A.
	Adapter *peft.Adapter
	// Type of the 2-D weights: F16 (default), F32, Q8_0 or Q4_0. Norms
	// stay F32; a weight whose rows are not a multiple of 32 long falls
	// back to F16 when a quantized type is asked for.
	Type DType
	// Name is general.name. llama.cpp gives Phi-3's special tokens the
	// rstrip attribute (as transformers does) only when the name contains
	// "phi3", so "phi3-" is prepended when it does not.
	Name string
}

// ModelResult describes a written model.
type ModelResult struct {
	Path    string
	Type    DType
	Merged  int // linears with the adapter merged in
	Tensors int
	Name    string
}

// ModelName is the general.name WriteModel writes for name.
func ModelName(name string) string {
	if name == "" {
		name = "ollama-tune"
	}
	l := strings.ToLower(name)
	if !strings.Contains(l, "phi3") && !strings.Contains(l, "phi-3") {
		name = "phi3-" + name
	}
	return name
}

// WriteModel writes a phi3 GGUF model (weights, hyperparameters,
// tokenizer, chat template) to out, optionally with a LoRA adapter merged
// into the weights in float32: W' = W + (alpha/r) * (B A), the product
// summed over r in order and scaled as PEFT's merge does, then rounded
// once to the output type. Tensors are made one at a time as the writer
// asks for them.
func WriteModel(out string, opts ModelOptions) (*ModelResult, error) {
	ck, err := finetune.LoadCheckpoint(opts.BaseDir)
	if err != nil {
		return nil, err
	}
	defer ck.Close()
	cfg := ck.Config
	hc := hfConfigOf(cfg)
	base := &Base{Arch: Phi3, Config: hc, Source: opts.BaseDir}
	typ := opts.Type
	if typ == "" {
		typ = F16
	}

	tokDir := opts.TokenizerDir
	if tokDir == "" {
		tokDir = opts.BaseDir
	}
	cfgJSON, _ := os.ReadFile(filepath.Join(opts.BaseDir, "config.json"))
	vocab, err := LoadVocab(tokDir, cfg.VocabSize, cfgJSON)
	if err != nil {
		return nil, err
	}

	// The adapter, checked against this base, by GGUF tensor name.
	type pair struct{ a, b LoRATensor }
	lora := map[string]*pair{}
	var scale float32
	if opts.Adapter != nil {
		_, ts, err := BuildLoRA(opts.Adapter, base)
		if err != nil {
			return nil, fmt.Errorf("merge adapter: %w", err)
		}
		scale = float32(opts.Adapter.Config.Scale())
		for _, t := range ts {
			name, half, _ := strings.Cut(t.Name, ".weight.lora_")
			p := lora[name+".weight"]
			if p == nil {
				p = &pair{}
				lora[name+".weight"] = p
			}
			if half == "a" {
				p.a = t
			} else {
				p.b = t
			}
		}
	}

	name := ModelName(opts.Name)
	kv := ggml.KV{
		"general.architecture":                      "phi3",
		"general.name":                              name,
		"general.file_type":                         typ.fileType(),
		"general.quantization_version":              uint32(2),
		"phi3.context_length":                       uint32(cfg.MaxPositionEmbeddings),
		"phi3.rope.scaling.original_context_length": uint32(cfg.MaxPositionEmbeddings),
		"phi3.embedding_length":                     uint32(cfg.HiddenSize),
		"phi3.feed_forward_length":                  uint32(cfg.IntermediateSize),
		"phi3.block_count":                          uint32(cfg.NumLayers),
		"phi3.attention.head_count":                 uint32(cfg.NumHeads),
		"phi3.attention.head_count_kv":              uint32(cfg.NumKVHeads),
		"phi3.attention.layer_norm_rms_epsilon":     cfg.RMSNormEps,
		"phi3.rope.dimension_count":                 uint32(cfg.RotaryDim()),
		"phi3.rope.freq_base":                       cfg.RopeTheta,
		"phi3.attention.sliding_window":             uint32(max(cfg.SlidingWindow, 0)),
	}
	if cfg.MaxPositionEmbeddings == 0 {
		kv["phi3.context_length"] = uint32(4096)
		kv["phi3.rope.scaling.original_context_length"] = uint32(4096)
	}
	vocab.KV(kv)

	var tensors []*ggml.Tensor
	merged := 0
	for _, spec := range finetune.Phi3Tensors(cfg) {
		hfName := spec.Name
		gName, err := Phi3.TensorName(hfName)
		if err != nil {
			return nil, err
		}
		shape := spec.Shape
		t := typ
		if len(shape) == 1 {
			t = F32
		} else if shape[len(shape)-1]%t.blockSize() != 0 {
			t = F16
		}
		p := lora[gName]
		if p != nil {
			merged++
		}
		tensors = append(tensors, &ggml.Tensor{
			Name:  gName,
			Kind:  t.ggmlType(),
			Shape: ggufShape(shape...),
			WriterTo: lazyTensor(func() ([]byte, error) {
				w, _, err := ck.Float32(hfName)
				if err != nil {
					return nil, fmt.Errorf("tensor %q: %w", hfName, err)
				}
				if p != nil {
					mergeLoRA(w, p.b.Data, p.a.Data, shape[0], shape[1], p.a.Shape[0], scale)
				}
				return t.encode(w)
			}),
		})
	}
	// Phi3Tensors leaves lm_head out when tied; llama.cpp can use
	// token_embd for it, but an explicit output.weight serves every version.
	if cfg.TieWordEmbeddings {
		shape := []int{cfg.VocabSize, cfg.HiddenSize}
		t := typ
		if shape[1]%t.blockSize() != 0 {
			t = F16
		}
		tensors = append(tensors, &ggml.Tensor{
			Name: "output.weight", Kind: t.ggmlType(), Shape: ggufShape(shape...),
			WriterTo: lazyTensor(func() ([]byte, error) {
				w, _, err := ck.Float32("lm_head.weight")
				if err != nil {
					return nil, err
				}
				return t.encode(w)
			}),
		})
	}
	if merged != len(lora) {
		return nil, fmt.Errorf("merge adapter: %d of its %d modules have no weight in %s", len(lora)-merged, len(lora), opts.BaseDir)
	}
	if err := writeGGUFFile(out, kv, tensors); err != nil {
		return nil, err
	}
	return &ModelResult{Path: out, Type: typ, Merged: merged, Tensors: len(tensors), Name: name}, nil
}

// mergeLoRA adds scale * (B A) to the row-major [out, in] weight w, with B
// [out, r] and A [r, in]: each product summed over r in float32 in order,
// then scaled, then added (PEFT's (B @ A) * scaling, added to W).
func mergeLoRA(w, b, a []float32, out, in, r int, scale float32) {
	for o := range out {
		row := w[o*in : (o+1)*in]
		brow := b[o*r : (o+1)*r]
		for i := range in {
			var acc float32
			for k := range r {
				acc = float32(acc + float32(brow[k]*a[k*in+i]))
			}
			row[i] = float32(row[i] + float32(acc*scale))
		}
	}
}
