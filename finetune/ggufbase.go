package finetune

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/ollama-tune/ollama-tune/finetune/chat"
	"github.com/ollama-tune/ollama-tune/finetune/gguf"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

// GGUFBase is a base model read from a GGUF file (an Ollama model blob, a
// llama.cpp conversion): its Phi-3 configuration, its weights under Hugging
// Face names (dequantized to float32 on request), its tokenizer and chat
// template.
//
// Two architectures map onto the trainer's Phi-3 decoder:
//
//   - phi3: the tensors map one to one (llama.cpp stores the fused
//     gate_up_proj as ffn_up and qkv_proj as attn_qkv; separate
//     attn_q/k/v are concatenated). No row permutation.
//   - llama: the same math with separate projections: q, k, v are
//     concatenated into qkv_proj and gate, up into gate_up_proj, after
//     undoing the row permutation llama.cpp's (and Ollama's) converters
//     apply to q and k. The model is trained as a Phi-3 with Llama's
//     shape; exporting an adapter for the unfused Hugging Face Llama
//     layout is not done here.
//
// The tokenizer is rebuilt from tokenizer.ggml.* (SentencePiece "llama"
// vocabularies only). For a model named Phi-3 (general.name, as llama.cpp
// decides) or of architecture phi3, the special tokens strip the whitespace
// on their right exactly as Phi-3's tokenizer.json says and llama.cpp does
// (llama-vocab.cpp), so the ids equal the Hugging Face tokenizer's.
// Special-token additions follow the file: tokenizer.ggml.add_bos_token
// (llama.cpp's default, true, when absent) decides whether Encode(text,
// true) prepends BOS.
//
// Chat templates. A GGUF carries the Jinja template of the checkpoint it
// was converted from (tokenizer.chat_template); Ollama serves with its own
// Go template from the model's template layer (ollamastore.Model.Template).
// When training on a GGUF base, the GGUF's Jinja template is the one to
// render the training data with (ChatTemplateRenderer): it belongs to the
// weights being tuned, and it may differ from the tokenizer_config.json of
// whatever Hugging Face folder is at hand (older Phi-3 templates start with
// {{ bos_token }}). Serving keeps the base's Ollama template, which for
// Phi-3 renders a user turn with the generation prompt as the same ids;
// NewJob refuses a job whose two templates give a conversation different
// ids (CheckServingTemplate, job_ollama.go).
type GGUFBase struct {
	Path     string
	Arch     string // general.architecture: "phi3" or "llama"
	Name     string // general.name, "" if absent
	FileType string // general.file_type as a name ("Q4_0", "Q4_K_M"), "" if absent
	Config   *Config
	// Tokenizer is built from the file's vocabulary.
	Tokenizer *tokenizer.Tokenizer
	// ChatTemplate is tokenizer.chat_template (Jinja), "" when absent.
	ChatTemplate string

	file    *gguf.File
	sources map[string]ggufSource
}

// ggufSource is how one Hugging Face weight is made from GGUF tensors:
// the parts' rows concatenated in order, each part's rows first put back
// in Hugging Face order when heads > 0 (llama's q/k permutation).
type ggufSource struct {
	parts []ggufPart
}

type ggufPart struct {
	name  string
	heads int // > 0: undo llama.cpp's q/k row permutation with this many heads
}

// LoadGGUFBase opens a GGUF model file and maps it onto the trainer's
// Phi-3 model. Close releases the file; Float32 reads weights until then.
func LoadGGUFBase(path string) (*GGUFBase, error) {
	f, err := gguf.Open(path)
	if err != nil {
		return nil, err
	}
	b, err := newGGUFBase(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return b, nil
}

// Close releases the memory-mapped file.
func (b *GGUFBase) Close() error { return b.file.Close() }

// File is the underlying GGUF file (for readers of quantized blocks).
func (b *GGUFBase) File() *gguf.File { return b.file }

func newGGUFBase(f *gguf.File) (*GGUFBase, error) {
	b := &GGUFBase{Path: f.Path, file: f}
	var err error
	if b.Arch, err = f.String("general.architecture"); err != nil {
		return nil, fmt.Errorf("%w: the file does not say which model it is", err)
	}
	if b.Arch != "phi3" && b.Arch != "llama" {
		return nil, fmt.Errorf("GGUF file %s: general.architecture is %q; ollama-tune trains Phi-3 models (architecture phi3) and Llama-style ones (llama)", f.Path, b.Arch)
	}
	if f.Has("general.name") {
		if b.Name, err = f.String("general.name"); err != nil {
			return nil, err
		}
	}
	if f.Has("general.file_type") {
		ft, err := f.Int("general.file_type")
		if err != nil {
			return nil, err
		}
		b.FileType = gguf.FileType(uint32(ft))
	}
	if b.Config, err = ggufConfig(f, b.Arch); err != nil {
		return nil, err
	}
	if b.sources, err = ggufSources(f, b.Arch, b.Config); err != nil {
		return nil, err
	}
	if b.Tokenizer, b.ChatTemplate, err = ggufTokenizer(f, b.Arch, b.Name); err != nil {
		return nil, err
	}
	cfg, tk := b.Config, b.Tokenizer
	if tk.VocabSize() > cfg.VocabSize {
		return nil, fmt.Errorf("GGUF file %s: the vocabulary has %d tokens but token_embd has only %d rows", f.Path, tk.VocabSize(), cfg.VocabSize)
	}
	cfg.BOSTokenID = int(max(tk.BOS(), 0))
	if tk.EOS() >= 0 {
		cfg.EOSTokenIDs = []int{int(tk.EOS())}
	}
	// End of turn (Phi-3's <|end|>) and end of message stop generation too,
	// as they do in llama.cpp.
	for _, k := range []string{"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"} {
		if !f.Has(k) {
			continue
		}
		id, err := f.Int(k)
		if err != nil {
			return nil, err
		}
		if id >= 0 && id < int64(tk.VocabSize()) && !slices.Contains(cfg.EOSTokenIDs, int(id)) {
			cfg.EOSTokenIDs = append(cfg.EOSTokenIDs, int(id))
		}
	}
	cfg.PadTokenID = int(tk.SpecialTokens().PADID)
	return b, nil
}

// ggufConfig reads the model's shape from ARCH.* metadata.
func ggufConfig(f *gguf.File, arch string) (*Config, error) {
	key := func(k string) string { return arch + "." + k }
	req := func(k string) (int, error) {
		v, err := f.Int(key(k))
		if err != nil {
			return 0, err
		}
		if v <= 0 || v > math.MaxInt32 {
			return 0, &gguf.FormatError{Path: f.Path, Key: key(k), Msg: fmt.Sprintf("is %d; it must be a positive integer", v)}
		}
		return int(v), nil
	}
	opt := func(k string, def int) (int, error) {
		if !f.Has(key(k)) {
			return def, nil
		}
		return req(k)
	}
	optFloat := func(k string, def float64) (float64, error) {
		if !f.Has(key(k)) {
			return def, nil
		}
		return f.Float(key(k))
	}
	c := &Config{ModelType: arch, HiddenAct: "silu", PartialRotaryFactor: 1, PadTokenID: -1}
	c.Architecture = map[string]string{"phi3": "Phi3ForCausalLM", "llama": "LlamaForCausalLM"}[arch]
	var err error
	if c.HiddenSize, err = req("embedding_length"); err != nil {
		return nil, err
	}
	if c.IntermediateSize, err = req("feed_forward_length"); err != nil {
		return nil, err
	}
	if c.NumLayers, err = req("block_count"); err != nil {
		return nil, err
	}
	if c.NumHeads, err = req("attention.head_count"); err != nil {
		return nil, err
	}
	if c.NumKVHeads, err = opt("attention.head_count_kv", c.NumHeads); err != nil {
		return nil, err
	}
	if c.HiddenSize%c.NumHeads != 0 || c.NumHeads%c.NumKVHeads != 0 {
		return nil, fmt.Errorf("GGUF file %s: embedding_length %d, head_count %d, head_count_kv %d: the hidden size must be a multiple of the heads and the heads of the KV heads",
			f.Path, c.HiddenSize, c.NumHeads, c.NumKVHeads)
	}
	if c.MaxPositionEmbeddings, err = opt("context_length", 0); err != nil {
		return nil, err
	}
	eps, err := optFloat("attention.layer_norm_rms_epsilon", 1e-5)
	if err != nil {
		return nil, err
	}
	theta, err := optFloat("rope.freq_base", 10000)
	if err != nil {
		return nil, err
	}
	c.RMSNormEps, c.RopeTheta = float32(eps), float32(theta)
	rotary, err := opt("rope.dimension_count", c.HeadDim())
	if err != nil {
		return nil, err
	}
	if rotary > c.HeadDim() || rotary%2 != 0 {
		return nil, fmt.Errorf("GGUF file %s: %s is %d; it must be even and at most the head size %d", f.Path, key("rope.dimension_count"), rotary, c.HeadDim())
	}
	c.PartialRotaryFactor = float32(rotary) / float32(c.HeadDim())
	if f.Has(key("attention.sliding_window")) {
		// Ollama's converter writes 0 for "none".
		w, err := f.Int(key("attention.sliding_window"))
		if err != nil {
			return nil, err
		}
		if w < 0 || w > math.MaxInt32 {
			return nil, &gguf.FormatError{Path: f.Path, Key: key("attention.sliding_window"), Msg: fmt.Sprintf("is %d", w)}
		}
		c.SlidingWindow = int(w)
	}

	// RoPE scaling (Phi-3's LongRoPE, Llama 3.1's rope_freqs, linear/YaRN)
	// is not implemented: refuse rather than train with the wrong positions.
	for _, name := range []string{"rope_factors_long.weight", "rope_factors_short.weight", "rope_freqs.weight"} {
		if t, ok := f.Tensor(name); ok && t.Elements() > 0 {
			return nil, fmt.Errorf("GGUF file %s: tensor %q: the model uses scaled RoPE (LongRoPE or Llama 3.1 frequencies), which is not implemented; use a model without it, e.g. Phi-3-mini-4k (phi3:mini)", f.Path, name)
		}
	}
	if f.Has(key("rope.scaling.type")) {
		s, err := f.String(key("rope.scaling.type"))
		if err != nil {
			return nil, err
		}
		if s != "" && s != "none" {
			return nil, fmt.Errorf("GGUF file %s: %s is %q; RoPE scaling is not implemented", f.Path, key("rope.scaling.type"), s)
		}
	}
	if f.Has(key("expert_count")) {
		if n, _ := f.Int(key("expert_count")); n > 0 {
			return nil, fmt.Errorf("GGUF file %s: %s is %d: mixture-of-experts models are not supported", f.Path, key("expert_count"), n)
		}
	}

	emb, ok := f.Tensor("token_embd.weight")
	if !ok {
		return nil, fmt.Errorf("GGUF file %s: no tensor \"token_embd.weight\" (the token embeddings)", f.Path)
	}
	if len(emb.Dims) != 2 || emb.Dims[0] != int64(c.HiddenSize) {
		return nil, fmt.Errorf("GGUF file %s: tensor \"token_embd.weight\" has ne %v; want [%d, vocab]", f.Path, emb.Dims, c.HiddenSize)
	}
	c.VocabSize = int(emb.Dims[1])
	_, hasOutput := f.Tensor("output.weight")
	c.TieWordEmbeddings = !hasOutput
	switch {
	case emb.Type == gguf.BF16:
		c.TorchDType = "bfloat16"
	case emb.Type == gguf.F16:
		c.TorchDType = "float16"
	case emb.Type == gguf.F32:
		c.TorchDType = "float32"
	}
	return c, nil
}

// ggufSources maps every weight the Phi-3 model needs to GGUF tensors and
// checks that no tensor of the file is left unused (a bias or an extra
// norm this model does not have would otherwise be dropped silently).
func ggufSources(f *gguf.File, arch string, c *Config) (map[string]ggufSource, error) {
	src := map[string]ggufSource{}
	used := map[string]bool{}
	has := func(n string) bool { _, ok := f.Tensor(n); return ok }
	one := func(hf, g string) error {
		if !has(g) {
			return fmt.Errorf("GGUF file %s: no tensor %q (for %s)", f.Path, g, hf)
		}
		src[hf] = ggufSource{parts: []ggufPart{{name: g}}}
		used[g] = true
		return nil
	}
	cat := func(hf string, parts ...ggufPart) error {
		for _, p := range parts {
			if !has(p.name) {
				return fmt.Errorf("GGUF file %s: no tensor %q (for %s)", f.Path, p.name, hf)
			}
			used[p.name] = true
		}
		src[hf] = ggufSource{parts: parts}
		return nil
	}
	if err := one("model.embed_tokens.weight", "token_embd.weight"); err != nil {
		return nil, err
	}
	if err := one("model.norm.weight", "output_norm.weight"); err != nil {
		return nil, err
	}
	if !c.TieWordEmbeddings {
		if err := one("lm_head.weight", "output.weight"); err != nil {
			return nil, err
		}
	}
	for i := 0; i < c.NumLayers; i++ {
		blk := "blk." + strconv.Itoa(i) + "."
		hf := func(m string) string { return LayerName(i, m) + ".weight" }
		steps := []struct{ hf, g string }{
			{hf("input_layernorm"), blk + "attn_norm.weight"},
			{hf("self_attn.o_proj"), blk + "attn_output.weight"},
			{hf("post_attention_layernorm"), blk + "ffn_norm.weight"},
			{hf("mlp.down_proj"), blk + "ffn_down.weight"},
		}
		for _, s := range steps {
			if err := one(s.hf, s.g); err != nil {
				return nil, err
			}
		}
		var err error
		qHeads, kHeads := 0, 0
		if arch == "llama" {
			qHeads, kHeads = c.NumHeads, c.NumKVHeads
		}
		if arch == "phi3" && has(blk+"attn_qkv.weight") {
			err = one(hf("self_attn.qkv_proj"), blk+"attn_qkv.weight")
		} else {
			err = cat(hf("self_attn.qkv_proj"), ggufPart{blk + "attn_q.weight", qHeads},
				ggufPart{blk + "attn_k.weight", kHeads}, ggufPart{name: blk + "attn_v.weight"})
		}
		if err != nil {
			return nil, err
		}
		if arch == "phi3" && !has(blk+"ffn_gate.weight") {
			err = one(hf("mlp.gate_up_proj"), blk+"ffn_up.weight")
		} else {
			err = cat(hf("mlp.gate_up_proj"), ggufPart{name: blk + "ffn_gate.weight"}, ggufPart{name: blk + "ffn_up.weight"})
		}
		if err != nil {
			return nil, err
		}
	}
	for _, t := range f.Tensors {
		if used[t.Name] {
			continue
		}
		if t.Elements() == 0 && strings.HasPrefix(t.Name, "rope_factors_") {
			continue // Ollama's phi3 converter writes empty LongRoPE factors for 4k models
		}
		return nil, fmt.Errorf("GGUF file %s: tensor %q is not part of a %s model with %d layers as ollama-tune builds it; refusing to drop it silently", f.Path, t.Name, arch, c.NumLayers)
	}
	// Shapes: each part 2-D with the same columns (the fused weights), or
	// the 1-D norms.
	for hf, s := range src {
		cols := int64(-1)
		for _, p := range s.parts {
			t, _ := f.Tensor(p.name)
			if len(s.parts) > 1 || p.heads > 0 {
				if len(t.Dims) != 2 || (cols >= 0 && t.Dims[0] != cols) {
					return nil, fmt.Errorf("GGUF file %s: tensor %q has ne %v, which does not fit %s", f.Path, p.name, t.Dims, hf)
				}
				cols = t.Dims[0]
			}
			if p.heads > 0 && (len(t.Dims) != 2 || t.Dims[1]%int64(2*p.heads) != 0) {
				return nil, fmt.Errorf("GGUF file %s: tensor %q has %v rows, not a multiple of 2 x %d heads", f.Path, p.name, t.Dims, p.heads)
			}
		}
	}
	return src, nil
}

// Names lists the Hugging Face names of the weights, in state-dict order.
func (b *GGUFBase) Names() []string {
	var out []string
	for _, s := range Phi3Tensors(b.Config) {
		out = append(out, s.Name)
	}
	return out
}

// Sources lists the GGUF tensors a Hugging Face weight is made of.
func (b *GGUFBase) Sources(name string) ([]gguf.TensorInfo, error) {
	s, ok := b.sources[name]
	if !ok {
		return nil, fmt.Errorf("GGUF file %s: no weight %q in a %s model", b.Path, name, b.Arch)
	}
	var out []gguf.TensorInfo
	for _, p := range s.parts {
		t, _ := b.file.Tensor(p.name)
		out = append(out, *t)
	}
	return out, nil
}

// Float32 returns a weight by its Hugging Face name, dequantized, with its
// shape [out, in] (or [C] for a norm): the getter NewModel takes.
func (b *GGUFBase) Float32(name string) ([]float32, []int, error) {
	s, ok := b.sources[name]
	if !ok {
		return nil, nil, fmt.Errorf("GGUF file %s: no weight %q in a %s model", b.Path, name, b.Arch)
	}
	if len(s.parts) == 1 && s.parts[0].heads == 0 {
		return b.file.Float32(s.parts[0].name)
	}
	var out []float32
	rows, cols := 0, 0
	for _, p := range s.parts {
		v, shape, err := b.file.Float32(p.name)
		if err != nil {
			return nil, nil, err
		}
		if p.heads > 0 {
			v = unpermuteRows(v, shape[0], shape[1], p.heads)
		}
		if out == nil {
			n := 0
			for _, q := range s.parts {
				t, _ := b.file.Tensor(q.name)
				n += int(t.Elements())
			}
			out = make([]float32, 0, n)
		}
		out = append(out, v...)
		rows, cols = rows+shape[0], shape[1]
	}
	return out, []int{rows, cols}, nil
}

// unpermuteRows undoes llama.cpp's convert_hf_to_gguf.py permute (and
// Ollama's llama repack) of a q or k weight [rows, cols] with heads heads:
// the converter reshapes the rows as [heads, 2, D/2] and swaps the last two
// axes, so GGUF row h*D + 2j + half holds Hugging Face row
// h*D + half*D/2 + j.
func unpermuteRows(w []float32, rows, cols, heads int) []float32 {
	d := rows / heads
	out := make([]float32, len(w))
	for h := 0; h < heads; h++ {
		for j := 0; j < d/2; j++ {
			for half := 0; half < 2; half++ {
				src := (h*d + 2*j + half) * cols
				dst := (h*d + half*d/2 + j) * cols
				copy(out[dst:dst+cols], w[src:src+cols])
			}
		}
	}
	return out
}

// ggufTokenizer rebuilds the tokenizer from tokenizer.ggml.* metadata.
func ggufTokenizer(f *gguf.File, arch, name string) (*tokenizer.Tokenizer, string, error) {
	model, err := f.String("tokenizer.ggml.model")
	if err != nil {
		return nil, "", fmt.Errorf("%w: the file has no tokenizer", err)
	}
	if model != "llama" {
		return nil, "", fmt.Errorf("GGUF file %s: tokenizer.ggml.model is %q; only SentencePiece vocabularies (\"llama\", as Phi-3 and Llama 2 use) are supported", f.Path, model)
	}
	v := tokenizer.SentencePieceVocab{Source: f.Path}
	if v.Pieces, err = f.Strings("tokenizer.ggml.tokens"); err != nil {
		return nil, "", err
	}
	if v.Scores, err = f.Float32s("tokenizer.ggml.scores"); err != nil {
		return nil, "", fmt.Errorf("%w: the SentencePiece merges need the scores", err)
	}
	if v.Types, err = f.Int32s("tokenizer.ggml.token_type"); err != nil {
		return nil, "", fmt.Errorf("%w: the SentencePiece vocabulary needs the token types", err)
	}
	if len(v.Scores) != len(v.Pieces) || len(v.Types) != len(v.Pieces) {
		return nil, "", fmt.Errorf("GGUF file %s: %d tokens, %d scores and %d token types: the lists must have the same length", f.Path, len(v.Pieces), len(v.Scores), len(v.Types))
	}
	// llama.cpp's defaults for a SentencePiece vocabulary (llama-vocab.cpp).
	id := func(k string, def int32) (int32, error) {
		if !f.Has(k) {
			return def, nil
		}
		x, err := f.Int(k)
		if err != nil {
			return 0, err
		}
		if x < 0 || x >= int64(len(v.Pieces)) {
			if x == math.MaxUint32 || x == -1 {
				return -1, nil // "none", as some writers spell it
			}
			return 0, &gguf.FormatError{Path: f.Path, Key: k, Msg: fmt.Sprintf("is %d, outside the vocabulary of %d tokens", x, len(v.Pieces))}
		}
		return int32(x), nil
	}
	flag := func(k string, def bool) (bool, error) {
		if !f.Has(k) {
			return def, nil
		}
		return f.Bool(k)
	}
	if v.BOS, err = id("tokenizer.ggml.bos_token_id", 1); err != nil {
		return nil, "", err
	}
	if v.EOS, err = id("tokenizer.ggml.eos_token_id", 2); err != nil {
		return nil, "", err
	}
	if v.UNK, err = id("tokenizer.ggml.unknown_token_id", 0); err != nil {
		return nil, "", err
	}
	if v.PAD, err = id("tokenizer.ggml.padding_token_id", -1); err != nil {
		return nil, "", err
	}
	if v.AddBOS, err = flag("tokenizer.ggml.add_bos_token", true); err != nil {
		return nil, "", err
	}
	if v.AddEOS, err = flag("tokenizer.ggml.add_eos_token", false); err != nil {
		return nil, "", err
	}
	if v.AddDummyPrefix, err = flag("tokenizer.ggml.add_space_prefix", true); err != nil {
		return nil, "", err
	}
	if v.RemoveExtraWhitespaces, err = flag("tokenizer.ggml.remove_extra_whitespaces", false); err != nil {
		return nil, "", err
	}
	// llama.cpp's Phi-3 converter marks every added token of
	// tokenizer_config.json CONTROL or USER_DEFINED, <unk> included, and
	// finds the unknown token by tokenizer.ggml.unknown_token_id; the
	// SentencePiece model needs it typed UNKNOWN.
	if v.UNK >= 0 && !slices.Contains(v.Types, tokenizer.PieceUnknown) {
		v.Types = slices.Clone(v.Types)
		v.Types[v.UNK] = tokenizer.PieceUnknown
	}
	var tmpl string
	if f.Has("tokenizer.chat_template") {
		if tmpl, err = f.String("tokenizer.chat_template"); err != nil {
			return nil, "", err
		}
	}

	// The added tokens are llama.cpp's "special" ones: control, unknown and
	// user-defined pieces. Phi-3's tokenizer.json gives them rstrip (all but
	// <unk>, <s> and <|endoftext|>; </s> is a control piece); GGUF has no
	// field for it, and llama.cpp keys it on general.name containing "phi3"
	// or "phi-3". The architecture counts here too: a phi3 file written
	// without a name still gets the Hugging Face tokenization.
	lname := strings.ToLower(name)
	phi3 := arch == "phi3" || strings.Contains(lname, "phi3") || strings.Contains(lname, "phi-3")
	for i, t := range v.Types {
		if t != tokenizer.PieceControl && t != tokenizer.PieceUnknown && t != tokenizer.PieceUserDefined {
			continue
		}
		p := v.Pieces[i]
		rstrip := phi3 && p != "<unk>" && p != "<s>" && p != "<|endoftext|>"
		v.Added = append(v.Added, tokenizer.AddedToken{ID: int32(i), Content: p, Special: true, RStrip: rstrip})
	}
	tk, err := tokenizer.NewSentencePiece(v)
	if err != nil {
		return nil, "", err
	}
	return tk, tmpl, nil
}

// ChatTemplateRenderer compiles the file's chat template with its special
// tokens (bos_token, eos_token, unk_token, pad_token), ready to render
// conversations as transformers would with this template.
func (b *GGUFBase) ChatTemplateRenderer() (*chat.Template, error) {
	if b.ChatTemplate == "" {
		return nil, fmt.Errorf("GGUF file %s: no tokenizer.chat_template; use the Hugging Face tokenizer's template (tokenizer: in the job) or train on plain text", b.Path)
	}
	sp := b.Tokenizer.SpecialTokens()
	special := map[string]string{}
	for k, v := range map[string]string{"bos_token": sp.BOS, "eos_token": sp.EOS, "unk_token": sp.UNK, "pad_token": sp.PAD} {
		if v != "" {
			special[k] = v
		}
	}
	return chat.NewNamed(b.Path+" tokenizer.chat_template", b.ChatTemplate, special)
}
