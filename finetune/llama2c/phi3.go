package llama2c

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
	"github.com/ollama-tune/ollama-tune/internal/atomicfile"
)

// Token ids of llama2.c's tokenizers (Llama 2's SentencePiece convention).
const (
	unkID = 0
	bosID = 1
	eosID = 2
)

// phi3Config is config.json in the Hub's Phi-3 dialect (rope_theta at the
// top level, rope_scaling and sliding_window null, torch_dtype), the one
// both finetune.LoadConfig and every transformers version read. Float
// fields are json.Number so they are written as the Hub writes them
// (10000.0, 1e-05): a config class that checks types sees floats.
// llama2.c trains with RoPE theta 10000 and RMSNorm eps 1e-5 (run.c
// hard-codes both).
type phi3Config struct {
	Architectures                 []string    `json:"architectures"`
	ModelType                     string      `json:"model_type"`
	HiddenSize                    int         `json:"hidden_size"`
	IntermediateSize              int         `json:"intermediate_size"`
	NumHiddenLayers               int         `json:"num_hidden_layers"`
	NumAttentionHeads             int         `json:"num_attention_heads"`
	NumKeyValueHeads              int         `json:"num_key_value_heads"`
	VocabSize                     int         `json:"vocab_size"`
	MaxPositionEmbeddings         int         `json:"max_position_embeddings"`
	OriginalMaxPositionEmbeddings int         `json:"original_max_position_embeddings"`
	RMSNormEps                    json.Number `json:"rms_norm_eps"`
	RopeTheta                     json.Number `json:"rope_theta"`
	RopeScaling                   *struct{}   `json:"rope_scaling"`
	SlidingWindow                 *int        `json:"sliding_window"`
	TieWordEmbeddings             bool        `json:"tie_word_embeddings"`
	HiddenAct                     string      `json:"hidden_act"`
	AttentionBias                 bool        `json:"attention_bias"`
	AttentionDropout              json.Number `json:"attention_dropout"`
	EmbdPdrop                     json.Number `json:"embd_pdrop"`
	ResidPdrop                    json.Number `json:"resid_pdrop"`
	InitializerRange              json.Number `json:"initializer_range"`
	BOSTokenID                    int         `json:"bos_token_id"`
	EOSTokenID                    int         `json:"eos_token_id"`
	PadTokenID                    int         `json:"pad_token_id"`
	UseCache                      bool        `json:"use_cache"`
	TorchDType                    string      `json:"torch_dtype"`
}

// Phi3ConfigJSON is the config.json WritePhi3 writes.
func (m *Model) Phi3ConfigJSON() ([]byte, error) {
	c := m.Config
	pc := phi3Config{
		Architectures:                 []string{"Phi3ForCausalLM"},
		ModelType:                     "phi3",
		HiddenSize:                    c.Dim,
		IntermediateSize:              c.HiddenDim,
		NumHiddenLayers:               c.NumLayers,
		NumAttentionHeads:             c.NumHeads,
		NumKeyValueHeads:              c.NumKVHeads,
		VocabSize:                     c.VocabSize,
		MaxPositionEmbeddings:         c.SeqLen,
		OriginalMaxPositionEmbeddings: c.SeqLen,
		RMSNormEps:                    "1e-05",
		RopeTheta:                     "10000.0",
		AttentionDropout:              "0.0",
		EmbdPdrop:                     "0.0",
		ResidPdrop:                    "0.0",
		TieWordEmbeddings:             false, // lm_head is written out, a copy when llama2.c shares it
		HiddenAct:                     "silu",
		InitializerRange:              "0.02",
		BOSTokenID:                    bosID,
		EOSTokenID:                    eosID,
		// llama2.c has no pad token. Phi3Config's default (32000) would be
		// outside a small vocabulary, so name <unk>, as the Phi-3 tutorial does.
		PadTokenID: unkID,
		UseCache:   true,
		TorchDType: "float32",
	}
	b, err := json.MarshalIndent(pc, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Phi3Tensors returns the model as Phi3ForCausalLM tensors (fp32, Hugging
// Face names), with q/k rows permuted to rotate_half order and the
// projections fused.
func (m *Model) Phi3Tensors() ([]safetensors.TensorInfo, error) {
	c := m.Config
	C, I, H, K, D, V := c.Dim, c.HiddenDim, c.NumHeads, c.NumKVHeads, c.HeadDim(), c.VocabSize
	var out []safetensors.TensorInfo
	add := func(name string, shape []int, v []float32) error {
		t, err := safetensors.FromFloat32(name, safetensors.F32, shape, v)
		if err != nil {
			return err
		}
		out = append(out, t)
		return nil
	}
	if err := add("model.embed_tokens.weight", []int{V, C}, m.TokenEmbedding); err != nil {
		return nil, err
	}
	for i, l := range m.Layers {
		p := fmt.Sprintf("model.layers.%d.", i)
		qkv := make([]float32, 0, (H+2*K)*D*C)
		qkv = append(qkv, PermuteRoPERows(l.WQ, H, D, C)...)
		qkv = append(qkv, PermuteRoPERows(l.WK, K, D, C)...)
		qkv = append(qkv, l.WV...)
		gateUp := make([]float32, 0, 2*I*C)
		gateUp = append(gateUp, l.W1...) // gate first, then up: Phi3MLP chunks in that order
		gateUp = append(gateUp, l.W3...)
		for _, t := range []struct {
			name  string
			shape []int
			v     []float32
		}{
			{"input_layernorm.weight", []int{C}, l.RMSAtt},
			{"self_attn.qkv_proj.weight", []int{(H + 2*K) * D, C}, qkv},
			{"self_attn.o_proj.weight", []int{C, H * D}, l.WO},
			{"post_attention_layernorm.weight", []int{C}, l.RMSFFN},
			{"mlp.gate_up_proj.weight", []int{2 * I, C}, gateUp},
			{"mlp.down_proj.weight", []int{C, I}, l.W2},
		} {
			if err := add(p+t.name, t.shape, t.v); err != nil {
				return nil, err
			}
		}
	}
	if err := add("model.norm.weight", []int{C}, m.RMSFinal); err != nil {
		return nil, err
	}
	if err := add("lm_head.weight", []int{V, C}, m.Classifier); err != nil {
		return nil, err
	}
	return out, nil
}

// PermuteRoPERows reorders the rows of a q or k projection [nHeads*headDim,
// in] from llama2.c's interleaved RoPE pairs to Hugging Face's rotate_half
// halves: within each head, row 2i goes to i and row 2i+1 to i + headDim/2.
// (This is the permute of transformers' convert_llama_weights_to_hf.py.)
func PermuteRoPERows(w []float32, nHeads, headDim, in int) []float32 {
	out := make([]float32, len(w))
	half := headDim / 2
	for h := 0; h < nHeads; h++ {
		base := h * headDim
		for i := 0; i < half; i++ {
			copy(out[(base+i)*in:(base+i+1)*in], w[(base+2*i)*in:(base+2*i+1)*in])
			copy(out[(base+half+i)*in:(base+half+i+1)*in], w[(base+2*i+1)*in:(base+2*i+2)*in])
		}
	}
	return out
}

// WritePhi3 writes dir/config.json and dir/model.safetensors, a
// Phi3ForCausalLM checkpoint computing the same function as the llama2.c
// model. dir is created if needed; both files are written to temporary
// files and renamed into place.
func (m *Model) WritePhi3(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write Phi-3 checkpoint: %w", err)
	}
	cfg, err := m.Phi3ConfigJSON()
	if err != nil {
		return fmt.Errorf("write Phi-3 checkpoint %s: config.json: %w", dir, err)
	}
	tensors, err := m.Phi3Tensors()
	if err != nil {
		return fmt.Errorf("write Phi-3 checkpoint %s: %w", dir, err)
	}
	meta := map[string]string{"format": "pt", "source": "llama2.c checkpoint converted by ollama-tune finetune/llama2c"}
	if err := safetensors.Write(filepath.Join(dir, "model.safetensors"), tensors, meta); err != nil {
		return fmt.Errorf("write Phi-3 checkpoint %s: %w", dir, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, "config.json"), cfg); err != nil {
		return fmt.Errorf("write Phi-3 checkpoint %s: %w", dir, err)
	}
	return nil
}
