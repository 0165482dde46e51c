package finetune

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/gguf"
	"github.com/ollama-tune/ollama-tune/finetune/ollamastore"
	"github.com/ollama-tune/ollama-tune/finetune/ollamastore/storetest"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// The TEMPLATE `ollama-tune create` gives Phi-3 fine-tunes
// (convert.Phi3Template; convert imports finetune, so it is copied): no
// whitespace after the special tokens.
const testPhi3Template = `{{ if .System }}<|system|>{{ .System }}<|end|>{{ end }}{{ if .Prompt }}<|user|>{{ .Prompt }}<|end|>{{ end }}<|assistant|>{{ .Response }}<|end|>`

// A Phi-3 TEMPLATE with the chat template's newlines after the special
// tokens, as the Ollama library's phi3 has it.
const testPhi3NewlineTemplate = "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}<|assistant|>\n{{ .Response }}<|end|>\n"

// ollamaTinyConfig is a tiny Phi-3 with Phi-3's vocabulary whose linears
// have rows of whole Q4_0/Q8_0 blocks.
func ollamaTinyConfig() *Config {
	return &Config{Architecture: "Phi3ForCausalLM", ModelType: "phi3", HiddenSize: 64, IntermediateSize: 96,
		NumLayers: 2, NumHeads: 4, NumKVHeads: 4, VocabSize: 32064, RMSNormEps: 1e-5, RopeTheta: 10000,
		PartialRotaryFactor: 1, MaxPositionEmbeddings: 4096, SlidingWindow: 2047, HiddenAct: "silu",
		BOSTokenID: 1, EOSTokenIDs: []int{32000, 32007}, PadTokenID: 32000}
}

// writeOllamaGGUF writes a phi3 GGUF the way llama.cpp converts Phi-3
// (its vocabulary layout and chat template) with the weights of get, each
// stored as typeOf says (F32 when it says nothing), named general.name.
func writeOllamaGGUF(t *testing.T, path string, cfg *Config, get func(string) ([]float32, []int, error), typeOf func(hf string) gguf.Type, name string, extraKV ...gkv) {
	t.Helper()
	tmpl, err := os.ReadFile(filepath.Join(testutil.SharedData(t, "phi3-tokenizer"), "chat_template.jinja"))
	if err != nil {
		t.Fatal(err)
	}
	tokens, scores, types := phi3GGUFVocab(t, true)
	rep := strings.NewReplacer("model.layers.", "blk.", "input_layernorm", "attn_norm", "self_attn.qkv_proj", "attn_qkv",
		"self_attn.o_proj", "attn_output", "post_attention_layernorm", "ffn_norm", "mlp.gate_up_proj", "ffn_up", "mlp.down_proj", "ffn_down")
	var ts []gtensor
	for _, s := range Phi3Tensors(cfg) {
		g := map[string]string{"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
			"lm_head.weight": "output.weight"}[s.Name]
		if g == "" {
			g = rep.Replace(s.Name)
		}
		v, shape, err := get(s.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(shape, s.Shape) {
			t.Fatalf("%s: shape %v, want %v", s.Name, shape, s.Shape)
		}
		typ := gguf.F32
		if typeOf != nil && len(s.Shape) == 2 {
			typ = typeOf(s.Name)
		}
		ts = append(ts, gtensor{g, typ, s.Shape, ggufEncode(t, typ, v)})
	}
	kvs := append(ggufArchKVs("phi3", cfg), gkv{"general.name", name}, gkv{"tokenizer.ggml.model", "llama"}, gkv{"tokenizer.ggml.pre", "default"},
		gkv{"tokenizer.ggml.tokens", tokens}, gkv{"tokenizer.ggml.scores", scores}, gkv{"tokenizer.ggml.token_type", types},
		gkv{"tokenizer.ggml.bos_token_id", uint32(1)}, gkv{"tokenizer.ggml.eos_token_id", uint32(32000)},
		gkv{"tokenizer.ggml.unknown_token_id", uint32(0)}, gkv{"tokenizer.ggml.padding_token_id", uint32(32000)},
		gkv{"tokenizer.ggml.eot_token_id", uint32(32007)},
		gkv{"tokenizer.ggml.add_bos_token", false}, gkv{"tokenizer.ggml.add_eos_token", false},
		gkv{"tokenizer.chat_template", string(tmpl)})
	writeTestGGUF(t, path, append(kvs, extraKV...), ts)
}

// ollamaTrainConfig trains a few steps with dropout and gradient
// checkpointing, dense float32 unless the caller changes it.
func ollamaTrainConfig(model, data, out string) TrainConfig {
	cfg := DefaultTrainConfig()
	cfg.Model = model
	cfg.Quantization = QuantizationConfig{Bnb4bitComputeDType: "float32", Bnb4bitQuantType: "nf4"}
	cfg.LoRA.R, cfg.LoRA.LoRAAlpha, cfg.LoRA.LoRADropout = 4, 8, 0.05
	cfg.Dataset.Path, cfg.Dataset.Format = data, "csv"
	t := &cfg.Training
	t.PerDeviceTrainBatchSize, t.GradientAccumulationSteps, t.AutoFindBatchSize = 4, 1, false
	t.Packing, t.MaxSeqLength, t.MaxSteps = false, 64, 4
	t.LearningRate, t.LRSchedulerType, t.Optim = 1e-2, "constant", "adamw_torch"
	t.LoggingSteps, t.SaveSteps, t.OutputDir = 1, 0, out
	cfg.Device = "cpu"
	return cfg
}

func copyDir(t *testing.T, dst, src string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
}

func trainLosses(t *testing.T, job *Job) ([]float64, *Result) {
	t.Helper()
	res, err := Train(context.Background(), job, nil)
	if err != nil {
		t.Fatal(err)
	}
	var losses []float64
	for _, e := range res.History {
		if e.Loss != nil {
			losses = append(losses, *e.Loss)
		}
	}
	return losses, res
}

// TestOllamaJobTrainsLikeTheFolder: a model in the Ollama store (an F32
// GGUF, resolved through the manifest) trains bit for bit as the same
// weights do from a Hugging Face folder with Phi-3's tokenizer files: the
// GGUF's tokenizer and chat template give the same ids, and the model is
// the same. The adapter names the ollama:// base and the blob's digest.
func TestOllamaJobTrainsLikeTheFolder(t *testing.T) {
	if testing.Short() {
		t.Skip("trains twice")
	}
	cfg := ollamaTinyConfig()
	const seed = 5
	dir := t.TempDir()
	folder := filepath.Join(dir, "hf")
	if err := WriteRandomCheckpoint(folder, cfg, seed, F32); err != nil {
		t.Fatal(err)
	}
	copyDir(t, folder, testutil.SharedData(t, "phi3-tokenizer"))
	ggufPath := filepath.Join(dir, "tiny.gguf")
	writeOllamaGGUF(t, ggufPath, cfg, RandomWeights(cfg, seed), nil, "Phi3")
	models := filepath.Join(dir, "models")
	blob := storetest.Put(t, models, "tiny-phi3", ggufPath, testPhi3Template)
	data := testutil.YodaCSV(t, 8)
	ctx := context.Background()

	var logs []string
	oc := ollamaTrainConfig("ollama://tiny-phi3", data, filepath.Join(dir, "out-ollama"))
	oj, err := NewJob(ctx, oc, JobOptions{Ollama: &ollamastore.Resolver{ModelsDir: models, NoAPI: true}, Log: func(s string) { logs = append(logs, s) }})
	if err != nil {
		t.Fatal(err)
	}
	if oj.GGUF != blob || oj.Ollama == nil || oj.Ollama.Template != testPhi3Template || oj.ModelDir != "" {
		t.Errorf("job GGUF %q (want %q), ModelDir %q", oj.GGUF, blob, oj.ModelDir)
	}
	if len(logs) == 0 || !strings.Contains(logs[0], blob) {
		t.Errorf("log %q does not name the blob", logs)
	}
	plan, err := Plan(ctx, oj)
	if err != nil {
		t.Fatal(err)
	}
	fc := ollamaTrainConfig(folder, data, filepath.Join(dir, "out-folder"))
	fj, err := NewJob(ctx, fc, JobOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fplan, err := Plan(ctx, fj)
	if err != nil {
		t.Fatal(err)
	}
	if plan.ModelDir != blob || plan.Data != fplan.Data || plan.TotalSteps != 4 || plan.TrainableParams != fplan.TrainableParams ||
		plan.ModelBytes != fplan.ModelBytes || !ggufConfigsEqual(plan.Config, fplan.Config) {
		t.Errorf("plan of the Ollama job differs from the folder's:\n%s\n%s", plan, fplan)
	}

	ol, ores := trainLosses(t, oj)
	fl, _ := trainLosses(t, fj)
	if len(ol) != 4 || !slices.Equal(ol, fl) {
		t.Fatalf("losses: ollama:// %v, folder %v", ol, fl)
	}
	if ol[3] >= ol[0] {
		t.Errorf("loss did not fall: %v", ol)
	}
	ow, _ := os.ReadFile(filepath.Join(ores.OutputDir, peft.WeightsName))
	fw, _ := os.ReadFile(filepath.Join(fc.Training.OutputDir, peft.WeightsName))
	if len(ow) == 0 || !slices.Equal(ow, fw) {
		t.Error("the adapters differ")
	}
	ac, err := peft.ReadConfig(filepath.Join(ores.OutputDir, peft.ConfigName))
	if err != nil {
		t.Fatal(err)
	}
	if ac.BaseModelNameOrPath != "ollama://tiny-phi3" || ac.Revision != BlobDigest(blob) || !strings.HasPrefix(ac.Revision, "sha256:") {
		t.Errorf("adapter base %q revision %q, want ollama://tiny-phi3 and %s", ac.BaseModelNameOrPath, ac.Revision, BlobDigest(blob))
	}
	for _, f := range TokenizerFiles {
		if _, err := os.Stat(filepath.Join(ores.OutputDir, f)); err == nil {
			t.Errorf("%s written for a GGUF base", f)
		}
	}

	// The adapter on the GGUF base, dense or kept as blocks, generates
	// what it generates on the folder.
	gb, err := LoadGGUFBase(blob)
	if err != nil {
		t.Fatal(err)
	}
	defer gb.Close()
	ck, err := LoadCheckpoint(folder)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	be := NewCPUBackend(CPUOptions{})
	prompt := oj.Tokenizer.Encode("<|user|>Hello there.<|end|><|assistant|>", false)
	gen := func(m *Model, err error) []int32 {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer m.Free()
		ids, err := m.Generate(prompt, GenerateOptions{MaxNewTokens: 8, StopIDs: []int32{}})
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}
	want := gen(LoadModelWithAdapter(be, ck, ModelOptions{}, ores.OutputDir))
	for _, keep := range []bool{false, true} {
		if got := gen(LoadGGUFModelWithAdapter(be, gb, ModelOptions{}, keep, ores.OutputDir)); len(want) != 8 || !slices.Equal(got, want) {
			t.Errorf("keep_gguf %v: generated %v, the folder model %v", keep, got, want)
		}
	}
	if _, err := LoadGGUFModelWithAdapter(be, gb, ModelOptions{}, false, t.TempDir()); err == nil {
		t.Error("an empty adapter folder loaded")
	}
}

// quantTypes stores the linears in four GGUF types.
func quantTypes(hf string) gguf.Type {
	switch {
	case strings.Contains(hf, "qkv_proj"):
		return gguf.Q4_0
	case strings.Contains(hf, "o_proj"):
		return gguf.F16
	case strings.Contains(hf, "gate_up_proj"):
		return gguf.BF16
	}
	return gguf.Q8_0 // down_proj, embeddings, lm_head
}

// TestKeepGGUFTrainsLikeDense: with keep_gguf the linears stay GGUF blocks
// (Q4_0, F16, BF16, Q8_0) and training computes what the dense model of
// the dequantized weights computes, bit for bit; the plan counts the
// blocks. NF4 re-quantization trains too.
func TestKeepGGUFTrainsLikeDense(t *testing.T) {
	if testing.Short() {
		t.Skip("trains three times")
	}
	cfg := ollamaTinyConfig()
	dir := t.TempDir()
	ggufPath := filepath.Join(dir, "q.gguf")
	writeOllamaGGUF(t, ggufPath, cfg, RandomWeights(cfg, 9), quantTypes, "Phi3")
	models := filepath.Join(dir, "models")
	storetest.Put(t, models, "tiny-q:v1", ggufPath, testPhi3Template)
	data := testutil.YodaCSV(t, 8)
	ctx := context.Background()
	run := func(name string, q QuantizationConfig) ([]float64, TrainPlan) {
		c := ollamaTrainConfig("ollama://tiny-q:v1", data, filepath.Join(dir, name))
		c.Quantization = q
		j, err := NewJob(ctx, c, JobOptions{Ollama: &ollamastore.Resolver{ModelsDir: models, NoAPI: true}})
		if err != nil {
			t.Fatal(err)
		}
		l, res := trainLosses(t, j)
		return l, res.Plan
	}
	dense, dplan := run("dense", QuantizationConfig{Bnb4bitComputeDType: "float32"})
	kept, kplan := run("keep", QuantizationConfig{Bnb4bitComputeDType: "float32", KeepGGUF: true})
	if len(dense) != 4 || !slices.Equal(dense, kept) {
		t.Errorf("losses: dense %v, keep_gguf %v", dense, kept)
	}
	b, err := LoadGGUFBase(ggufPath)
	if err != nil {
		t.Fatal(err)
	}
	var blocks, f32 int64
	for l := 0; l < cfg.NumLayers; l++ {
		for _, m := range LinearModules {
			src, _ := b.Sources(LayerName(l, m) + ".weight")
			blocks += src[0].Size
			out, in := LinearShape(cfg, m)
			f32 += 4 * int64(out*in)
		}
	}
	b.Close()
	if b.LinearBytes() != blocks || kplan.ModelBytes != dplan.ModelBytes-f32+blocks {
		t.Errorf("keep_gguf plan: model %d bytes, dense %d; the linears take %d bytes as blocks, %d as float32", kplan.ModelBytes, dplan.ModelBytes, blocks, f32)
	}
	nf4, _ := run("nf4", QuantizationConfig{LoadIn4bit: true, Bnb4bitQuantType: "nf4", Bnb4bitUseDoubleQuant: true, Bnb4bitComputeDType: "float32"})
	if len(nf4) != 4 || slices.Equal(nf4, dense) || nf4[3] >= nf4[0] {
		t.Errorf("NF4 losses %v (dense %v): want them to fall and to differ from the dense run's", nf4, dense)
	}
}

// TestGGUFMatrixRows: each row of a kept weight dequantizes to the row of
// the whole tensor's dequantization, for phi3's fused tensors in every
// supported type (random blocks: every bit pattern is an encoding).
func TestGGUFMatrixRows(t *testing.T) {
	cfg := ggufTinyConfig()
	cfg.HiddenSize, cfg.IntermediateSize, cfg.VocabSize = 256, 256, 264
	r := rand.New(rand.NewPCG(3, 4))
	rep := strings.NewReplacer("model.layers.", "blk.", "input_layernorm", "attn_norm", "self_attn.qkv_proj", "attn_qkv",
		"self_attn.o_proj", "attn_output", "post_attention_layernorm", "ffn_norm", "mlp.gate_up_proj", "ffn_up", "mlp.down_proj", "ffn_down",
		"model.embed_tokens", "token_embd", "model.norm", "output_norm", "lm_head", "output")
	tokens, scores, types := ggufTinyVocab()
	for _, typ := range gguf.DequantizableTypes() {
		path := filepath.Join(t.TempDir(), "m.gguf")
		var ts []gtensor
		for _, s := range Phi3Tensors(cfg) {
			if len(s.Shape) == 1 {
				ts = append(ts, gtensor{rep.Replace(s.Name), gguf.F32, s.Shape, ggufEncode(t, gguf.F32, ggufRandom(r, s.Shape[0], 1))})
				continue
			}
			b := make([]byte, typ.RowBytes(int64(s.Shape[1]))*int64(s.Shape[0]))
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			ts = append(ts, gtensor{rep.Replace(s.Name), typ, s.Shape, b})
		}
		writeTestGGUF(t, path, append(ggufArchKVs("phi3", cfg), ggufTokenizerKVs(tokens, scores, types)...), ts)
		checkMatrixRows(t, path, typ.String())
	}
}

func checkMatrixRows(t *testing.T, path, what string) {
	t.Helper()
	b, err := LoadGGUFBase(path)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	defer b.Close()
	for l := 0; l < b.Config.NumLayers; l++ {
		for _, mod := range LinearModules {
			name := LayerName(l, mod) + ".weight"
			want, shape, err := b.Float32(name)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			m, err := b.Matrix(name)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if m.Out() != shape[0] || m.In() != shape[1] {
				t.Fatalf("%s: %s is [%d, %d], want %v", what, name, m.Out(), m.In(), shape)
			}
			// Tiles of 3 rows from odd offsets cross the q/k/v boundaries.
			got := make([]float32, len(want))
			for r0 := 0; r0 < m.Out(); r0 += 3 {
				n := min(3, m.Out()-r0)
				m.DequantizeRows(got[r0*m.In():], r0, n)
			}
			if !ggufBitsEqual(got, want) {
				t.Errorf("%s: %s: rows differ from Float32", what, name)
			}
		}
	}
}

// TestGGUFMatrixLlama: llama's q and k come back in Hugging Face row order
// from the kept blocks too.
func TestGGUFMatrixLlama(t *testing.T) {
	cfg := ggufTinyConfig()
	cfg.NumKVHeads = 2
	C, D := cfg.HiddenSize, cfg.HeadDim()
	r := rand.New(rand.NewPCG(7, 8))
	var ts []gtensor
	f32 := func(name string, shape []int, v []float32) {
		ts = append(ts, gtensor{name, gguf.F32, shape, ggufEncode(t, gguf.F32, v)})
	}
	q8 := func(name string, shape []int, v []float32) {
		ts = append(ts, gtensor{name, gguf.Q8_0, shape, ggufEncode(t, gguf.Q8_0, v)})
	}
	f32("token_embd.weight", []int{cfg.VocabSize, C}, ggufRandom(r, cfg.VocabSize*C, 0.1))
	f32("output_norm.weight", []int{C}, ggufRandom(r, C, 1))
	for i := 0; i < cfg.NumLayers; i++ {
		blk := fmt.Sprintf("blk.%d.", i)
		q8(blk+"attn_q.weight", []int{cfg.NumHeads * D, C}, ggufRandom(r, cfg.NumHeads*D*C, 0.1))
		q8(blk+"attn_k.weight", []int{cfg.NumKVHeads * D, C}, ggufRandom(r, cfg.NumKVHeads*D*C, 0.1))
		f32(blk+"attn_v.weight", []int{cfg.NumKVHeads * D, C}, ggufRandom(r, cfg.NumKVHeads*D*C, 0.1))
		q8(blk+"ffn_gate.weight", []int{cfg.IntermediateSize, C}, ggufRandom(r, cfg.IntermediateSize*C, 0.1))
		q8(blk+"ffn_up.weight", []int{cfg.IntermediateSize, C}, ggufRandom(r, cfg.IntermediateSize*C, 0.1))
		f32(blk+"attn_norm.weight", []int{C}, ggufRandom(r, C, 1))
		q8(blk+"attn_output.weight", []int{C, C}, ggufRandom(r, C*C, 0.1))
		f32(blk+"ffn_norm.weight", []int{C}, ggufRandom(r, C, 1))
		f32(blk+"ffn_down.weight", []int{C, cfg.IntermediateSize}, ggufRandom(r, C*cfg.IntermediateSize, 0.1))
	}
	tokens, scores, types := ggufTinyVocab()
	path := filepath.Join(t.TempDir(), "llama.gguf")
	writeTestGGUF(t, path, append(ggufArchKVs("llama", cfg), ggufTokenizerKVs(tokens, scores, types)...), ts)
	checkMatrixRows(t, path, "llama")

	// The model with kept blocks gives the dense model's logits and LoRA
	// gradients.
	b, err := LoadGGUFBase(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	be := NewCPUBackend(CPUOptions{})
	lc := &LoRAConfig{R: 2, Alpha: 4, TargetModules: []string{"all-linear"}, Seed: 1}
	dense, err := LoadGGUFModel(be, b, ModelOptions{LoRA: lc}, false)
	if err != nil {
		t.Fatal(err)
	}
	kept, err := LoadGGUFModel(be, b, ModelOptions{LoRA: lc}, true)
	if err != nil {
		t.Fatal(err)
	}
	src, _ := b.Sources(LayerName(0, "self_attn.qkv_proj") + ".weight")
	if want := src[0].Size + src[1].Size + src[2].Size; kept.Layers[0].QKV.W.Bytes() != want || want >= dense.Layers[0].QKV.W.Bytes() {
		t.Errorf("kept qkv_proj takes %d bytes, want its blocks' %d (dense: %d)", kept.Layers[0].QKV.W.Bytes(), want, dense.Layers[0].QKV.W.Bytes())
	}
	batch := &Batch{B: 1, S: 6, InputIDs: []int32{1, 260, 262, 263, 5, 2}, PositionIDs: []int32{0, 1, 2, 3, 4, 5}, Labels: []int32{-100, 260, 262, 263, 5, 2}}
	for _, m := range []*Model{dense, kept} {
		// B is zero at init: give it values so dx flows through A.
		for _, p := range m.LoRAParams() {
			v := make([]float32, numel(p.Shape))
			for i := range v {
				v[i] = 0.01 * float32(i%7)
			}
			be.Upload(p.Param, v)
		}
		if _, _, _, err := m.Forward(batch, true, 1); err != nil {
			t.Fatal(err)
		}
		if err := m.Backward(); err != nil {
			t.Fatal(err)
		}
	}
	for i, p := range dense.LoRAParams() {
		if !ggufBitsEqual(be.Download(p.Grad), be.Download(kept.LoRAParams()[i].Grad)) {
			t.Errorf("%s: gradients differ between dense and kept blocks", p.Name)
		}
	}
}

// TestServingTemplateCheck: the GGUF's chat template and the Ollama
// TEMPLATE must give the same ids for a conversation.
func TestServingTemplateCheck(t *testing.T) {
	cfg := ollamaTinyConfig()
	cfg.NumLayers = 1
	dir := t.TempDir()
	open := func(name string) *GGUFBase {
		p := filepath.Join(dir, name+".gguf")
		writeOllamaGGUF(t, p, cfg, RandomWeights(cfg, 1), nil, name)
		b, err := LoadGGUFBase(p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	phi3, plain := open("Phi3"), open("tiny")
	for _, c := range []struct {
		base     *GGUFBase
		template string
		want     string // "" for no error
	}{
		{phi3, testPhi3Template, ""},
		{plain, testPhi3Template, ""},
		// llama.cpp strips the newlines after Phi-3's special tokens only
		// for a model named Phi-3; training always does.
		{phi3, testPhi3NewlineTemplate, ""},
		{plain, testPhi3NewlineTemplate, `general.name "tiny" does not say Phi-3`},
		// A template of another chat format.
		{phi3, "{{ range .Messages }}### {{ .Role }}: {{ .Content }}\n{{ end }}### assistant:", "first difference at token 0"},
		// A BOS in the template doubles the one llama.cpp adds... here
		// add_bos_token is false, so the template's <s> is one too many.
		{phi3, "<s>" + testPhi3Template, "first difference at token 0"},
		{phi3, "", "has no TEMPLATE"},
		{phi3, "{{ .Prompt ", "TEMPLATE"},
	} {
		tmpl, err := c.base.ChatTemplateRenderer()
		if err != nil {
			t.Fatal(err)
		}
		err = CheckServingTemplate(c.base, tmpl, c.template)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s with %q: %v", c.base.Name, c.template, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s with %q: error %v, want it to say %q", c.base.Name, c.template, err, c.want)
		}
		var me *ServingMismatchError
		if errors.As(err, &me) && (me.TrainText == me.ServedText && slices.Equal(me.TrainIDs, me.ServedIDs) || !strings.Contains(err.Error(), "fix:")) {
			t.Errorf("mismatch error without the difference or the fix: %v", err)
		}
	}
}

// TestOllamaJobErrors: what a user gets wrong, and what the machine lacks.
func TestOllamaJobErrors(t *testing.T) {
	cfg := ollamaTinyConfig()
	cfg.NumLayers = 1
	dir := t.TempDir()
	models := filepath.Join(dir, "models")
	good := filepath.Join(dir, "good.gguf")
	writeOllamaGGUF(t, good, cfg, RandomWeights(cfg, 1), nil, "Phi3")
	storetest.Put(t, models, "good", good, testPhi3Template)
	unnamed := filepath.Join(dir, "unnamed.gguf")
	writeOllamaGGUF(t, unnamed, cfg, RandomWeights(cfg, 1), nil, "tiny")
	storetest.Put(t, models, "newlines", unnamed, testPhi3NewlineTemplate)
	storetest.Put(t, models, "notemplate", good, "")
	iq := filepath.Join(dir, "iq.gguf")
	iqCfg := *cfg
	iqCfg.IntermediateSize = 256 // rows of whole IQ2_XXS blocks
	writeOllamaGGUF(t, iq, &iqCfg, RandomWeights(&iqCfg, 1), func(hf string) gguf.Type {
		if strings.Contains(hf, "down_proj") {
			return gguf.Q8_0
		}
		return gguf.F32
	}, "Phi3")
	// Turn the Q8_0 down_proj into an IQ2_XXS tensor of the same size class.
	ggufToIQ2XXS(t, iq, "blk.0.ffn_down.weight")
	storetest.Put(t, models, "iq", iq, testPhi3Template)
	gemma := filepath.Join(dir, "gemma.gguf")
	writeTestGGUF(t, gemma, []gkv{{"general.architecture", "gemma"}}, nil)
	storetest.Put(t, models, "gemma", gemma, testPhi3Template)
	other := filepath.Join(dir, "other.gguf")
	writeOllamaGGUF(t, other, cfg, RandomWeights(cfg, 2), nil, "Phi3")
	if err := os.Remove(storetest.Put(t, models, "gone", other, testPhi3Template)); err != nil {
		t.Fatal(err)
	}

	// A closed port: nothing listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := &url.URL{Scheme: "http", Host: l.Addr().String()}
	l.Close()

	data := testutil.YodaCSV(t, 2)
	try := func(model string, r *ollamastore.Resolver, mod func(*TrainConfig), want ...string) {
		t.Helper()
		c := ollamaTrainConfig(model, data, filepath.Join(dir, "out"))
		if mod != nil {
			mod(&c)
		}
		if r == nil {
			r = &ollamastore.Resolver{ModelsDir: models, NoAPI: true}
		}
		_, err := NewJob(context.Background(), c, JobOptions{Ollama: r})
		if err == nil {
			t.Errorf("%s: no error, want one saying %q", model, want)
			return
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q\nwant it to say %q", model, err, w)
			}
		}
	}
	try("ollama://gone", nil, nil, "ollama://gone", "is missing", "ollama pull gone:latest")
	try("ollama://gemma", nil, nil, `general.architecture is "gemma"`, "Phi-3")
	try("ollama://iq", nil, nil, `"blk.0.ffn_down.weight"`, "IQ2_XXS", "cannot dequantize")
	try("ollama://notemplate", nil, nil, "has no TEMPLATE")
	try("ollama://newlines", nil, nil, "first difference at token", `general.name "tiny"`, "fix:")
	try("ollama://nosuch", nil, nil, "nosuch:latest", "no such model in the store")
	try("ollama://nosuch", &ollamastore.Resolver{ModelsDir: filepath.Join(dir, "empty"), Host: closed}, nil,
		"not in the store", "OLLAMA_MODELS", "could not be asked", closed.Host)
	try("ollama://good", nil, func(c *TrainConfig) {
		c.Quantization = QuantizationConfig{LoadIn4bit: true, KeepGGUF: true, Bnb4bitQuantType: "nf4", Bnb4bitComputeDType: "float32"}
	}, "quantization.keep_gguf", "choose one")
	try(filepath.Join(dir, "hf"), nil, func(c *TrainConfig) { c.Quantization.KeepGGUF = true }, "keep_gguf needs model: ollama://NAME")

	// keep_gguf on a backend that cannot keep blocks.
	c := ollamaTrainConfig("ollama://good", data, filepath.Join(dir, "out-keep"))
	c.Quantization.KeepGGUF = true
	j, err := NewJob(context.Background(), c, JobOptions{Ollama: &ollamastore.Resolver{ModelsDir: models, NoAPI: true},
		NewBackend: func(d DType) (Backend, error) { return struct{ Backend }{NewCPUBackend(CPUOptions{})}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Train(context.Background(), j, nil); err == nil || !strings.Contains(err.Error(), "cannot keep GGUF weights") {
		t.Errorf("keep_gguf without GGUFWeighter: %v", err)
	}
}

// TestOllamaJobThroughTheServer: a model the local store lacks is found
// through the server's /api/show, whose Modelfile names the blob in the
// server's own store.
func TestOllamaJobThroughTheServer(t *testing.T) {
	cfg := ollamaTinyConfig()
	cfg.NumLayers = 1
	dir := t.TempDir()
	serverStore := filepath.Join(dir, "server-models")
	p := filepath.Join(dir, "m.gguf")
	writeOllamaGGUF(t, p, cfg, RandomWeights(cfg, 1), nil, "Phi3")
	blob := storetest.Put(t, serverStore, "me/tiny:v2", p, testPhi3Template)
	var asked string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var req struct {
			Model string `json:"model"`
		}
		json.Unmarshal(b, &req)
		asked = r.URL.Path + " " + req.Model
		json.NewEncoder(w).Encode(map[string]any{"modelfile": "FROM " + blob + "\n", "template": testPhi3Template,
			"model_info": map[string]any{"general.architecture": "phi3"}})
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	c := ollamaTrainConfig("ollama://me/tiny:v2", testutil.YodaCSV(t, 2), filepath.Join(dir, "out"))
	j, err := NewJob(context.Background(), c, JobOptions{Ollama: &ollamastore.Resolver{ModelsDir: filepath.Join(dir, "local"), Host: u}})
	if err != nil {
		t.Fatal(err)
	}
	if asked != "/api/show me/tiny:v2" || j.GGUF != blob || j.Ollama.Via != "api" {
		t.Errorf("asked %q; blob %q via %q", asked, j.GGUF, j.Ollama.Via)
	}
	if _, err := Plan(context.Background(), j); err != nil {
		t.Fatal(err)
	}
}

func TestBlobDigest(t *testing.T) {
	h := strings.Repeat("ab", 32)
	for in, want := range map[string]string{
		"/m/blobs/sha256-" + h:                        "sha256:" + h,
		"/m/blobs/sha256-" + strings.ToUpper(h):       "sha256:" + h,
		"/m/blobs/sha256-" + h[:63]:                   "",
		"/x/model.gguf":                               "",
		"/m/blobs/sha256-" + strings.Repeat("zz", 32): "",
	} {
		if got := BlobDigest(in); got != want {
			t.Errorf("BlobDigest(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestServingCheckOnData: the first prompts of the data are checked too.
// A prompt starting with a space is tokenized after <|user|> with that
// space stripped in training (the token's rstrip) but kept by llama.cpp for
// a GGUF whose name does not say Phi-3.
func TestServingCheckOnData(t *testing.T) {
	cfg := ollamaTinyConfig()
	cfg.NumLayers = 1
	dir := t.TempDir()
	models := filepath.Join(dir, "models")
	p := filepath.Join(dir, "tiny.gguf")
	writeOllamaGGUF(t, p, cfg, RandomWeights(cfg, 1), nil, "tiny")
	storetest.Put(t, models, "tiny", p, testPhi3Template)
	plan := func(data string) error {
		c := ollamaTrainConfig("ollama://tiny", data, filepath.Join(dir, "out"))
		j, err := NewJob(context.Background(), c, JobOptions{Ollama: &ollamastore.Resolver{ModelsDir: models, NoAPI: true}})
		if err != nil {
			return err
		}
		_, err = Plan(context.Background(), j)
		return err
	}
	if err := plan(testutil.YodaCSV(t, 4)); err != nil {
		t.Fatalf("Yoda rows: %v", err)
	}
	spaced := filepath.Join(dir, "spaced.csv")
	os.WriteFile(spaced, []byte("sentence,translation,translation_extra\nHello there.,There hello.,There hello.\n\" Fear leads to anger.\",\"To anger, fear leads.\",\"To anger, fear leads.\"\n"), 0o644)
	err := plan(spaced)
	if err == nil || !strings.Contains(err.Error(), spaced) || !strings.Contains(err.Error(), "row 2") || !strings.Contains(err.Error(), "first difference at token 1") {
		t.Errorf("a prompt with a leading space: %v", err)
	}
}
