package finetune

import (
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
	"github.com/ollama-tune/ollama-tune/internal/atomicfile"
	"github.com/ollama-tune/ollama-tune/internal/parallel"
)

// Random Phi-3 checkpoints for tests, demos and benchmarks: deterministic
// weights from the counter-based RNG (rng.go), so the same (config, seed)
// gives the same model on every machine, in memory or on disk.

// weightSeed gives each tensor its own stream, keyed by name so adding a
// tensor does not shift the others.
func weightSeed(seed uint64, name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return DeriveSeed(seed, h.Sum64())
}

// isNormWeight reports whether name is an RMSNorm weight (initialised near 1).
func isNormWeight(name string) bool {
	return strings.HasSuffix(name, "layernorm.weight") || name == "model.norm.weight"
}

// fillRandom writes elements [off, off+len(dst)) of tensor name: N(0, 0.02)
// for matrices (transformers' initializer_range), 1 + 0.1*N(0,1) for norm
// weights so that they matter.
func fillRandom(dst []float32, seed uint64, name string, off int) {
	s := weightSeed(seed, name)
	if isNormWeight(name) {
		for i := range dst {
			dst[i] = 1 + 0.1*Normal(s, uint64(off+i))
		}
		return
	}
	for i := range dst {
		dst[i] = 0.02 * Normal(s, uint64(off+i))
	}
}

// RandomWeights returns a weight getter for NewModel: the float32 values
// WriteRandomCheckpoint would store (before rounding to its dtype).
func RandomWeights(cfg *Config, seed uint64) func(name string) ([]float32, []int, error) {
	shapes := map[string][]int{}
	for _, s := range Phi3Tensors(cfg) {
		shapes[s.Name] = s.Shape
	}
	return func(name string) ([]float32, []int, error) {
		if name == "lm_head.weight" && cfg.TieWordEmbeddings {
			name = "model.embed_tokens.weight"
		}
		shape, ok := shapes[name]
		if !ok {
			return nil, nil, fmt.Errorf("random weights: a Phi3ForCausalLM has no tensor %q", name)
		}
		n := 1
		for _, d := range shape {
			n *= d
		}
		v := make([]float32, n)
		parallel.For(n, randomGrain, func(lo, hi int) { fillRandom(v[lo:hi], seed, name, lo) })
		return v, append([]int(nil), shape...), nil
	}
}

// randomGrain is the smallest piece of a random tensor worth a goroutine.
const randomGrain = 1 << 16

// storageDType maps a DType to safetensors' name and config.json's
// torch_dtype.
func storageDType(d DType) (safetensors.DType, string, error) {
	switch d {
	case F32:
		return safetensors.F32, "float32", nil
	case F16:
		return safetensors.F16, "float16", nil
	case BF16:
		return safetensors.BF16, "bfloat16", nil
	}
	return "", "", fmt.Errorf("random checkpoint: dtype %s is not a weight storage type; use F32, F16 or BF16", d)
}

// WriteRandomCheckpoint writes a Phi-3 checkpoint with deterministic random
// weights into dir (created if needed): config.json in the Hub's dialect
// (torch_dtype set to dtype) and model.safetensors with every tensor of
// Phi3Tensors(cfg) stored as dtype (F32, F16 or BF16). Weights are
// generated and written one chunk at a time, so even a full-size
// Phi-3-mini (7.6 GB in bf16) needs little memory.
func WriteRandomCheckpoint(dir string, cfg *Config, seed uint64, dtype DType) error {
	sdt, torchName, err := storageDType(dtype)
	if err != nil {
		return err
	}
	c := *cfg
	c.TorchDType = torchName
	js, err := MarshalConfig(&c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("random checkpoint: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, "config.json"), js); err != nil {
		return err
	}
	specs := Phi3Tensors(&c)
	headers := make([]safetensors.TensorInfo, len(specs))
	for i, s := range specs {
		headers[i] = safetensors.TensorInfo{Name: s.Name, DType: sdt, Shape: s.Shape}
	}
	const chunk = 1 << 20
	buf := make([]float32, chunk)
	return safetensors.WriteFunc(filepath.Join(dir, safetensors.SingleFileName), headers, map[string]string{"format": "pt"},
		func(i int, w io.Writer) error {
			n := headers[i].Numel()
			for off := 0; off < n; off += chunk {
				part := buf[:min(chunk, n-off)]
				parallel.For(len(part), randomGrain, func(lo, hi int) { fillRandom(part[lo:hi], seed, specs[i].Name, off+lo) })
				b, err := safetensors.EncodeFloat32(sdt, part)
				if err != nil {
					return err
				}
				if _, err := w.Write(b); err != nil {
					return err
				}
			}
			return nil
		})
}
