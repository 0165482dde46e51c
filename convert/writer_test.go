package convert

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/gguf"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
)

// Every file is read back twice: with Ollama's reader (fs/ggml, what the
// server runs) for the metadata, and with finetune/gguf (an independent
// reader with ggml's dequantizers) for the values.

func tinyBase(t *testing.T) *Base {
	t.Helper()
	return &Base{Arch: Phi3, Config: hfConfigOf(tinyConfig()), Source: "tiny"}
}

func TestExportLoRABytesAndMetadata(t *testing.T) {
	cfg := tinyConfig()
	ad := randomAdapter(cfg, 4, 8, 1)
	dir := writeAdapter(t, ad)
	out := filepath.Join(t.TempDir(), "a.gguf")
	res, err := ExportLoRA(dir, tinyBase(t), out, LoRAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.DType != F32 || res.Modules != 8 || res.Rank != 4 {
		t.Fatalf("result %+v", res)
	}

	g, err := ReadGGUF(out)
	if err != nil {
		t.Fatal(err)
	}
	kv := g.KV()
	// (kv.String would prefix "phi3." to adapter.* keys; read the map.)
	for k, want := range map[string]any{"general.architecture": "phi3", "general.type": "adapter", "adapter.type": "lora"} {
		if got := kv[k]; got != want {
			t.Errorf("%s = %#v, want %q", k, got, want)
		}
	}
	if a, ok := kv["adapter.lora.alpha"].(float32); !ok || a != 8 {
		t.Errorf("adapter.lora.alpha = %#v, want float32 8", kv["adapter.lora.alpha"])
	}
	if kv.Kind() != "adapter" {
		t.Errorf("Ollama sees kind %q, want adapter (it files the blob as an adapter layer by it)", kv.Kind())
	}

	// The safetensors bytes of each matrix are the GGUF tensor's bytes.
	st, err := safetensors.Open(filepath.Join(dir, peft.WeightsName))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f, err := gguf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if len(f.Tensors) != 16 {
		t.Fatalf("%d tensors, want 16", len(f.Tensors))
	}
	for l := range cfg.NumLayers {
		for _, m := range finetune.LinearModules {
			name := finetune.LayerName(l, m)
			g, _ := Phi3.LinearName(name)
			for _, h := range []struct{ peft, gguf string }{{"A", g + ".weight.lora_a"}, {"B", g + ".weight.lora_b"}} {
				src, err := st.Tensor(peft.TensorName(name, h.peft))
				if err != nil {
					t.Fatal(err)
				}
				ti, data, err := f.TensorData(h.gguf)
				if err != nil {
					t.Fatal(err)
				}
				if ti.Type != gguf.F32 {
					t.Errorf("%s type %s", h.gguf, ti.Type)
				}
				// GGUF dims are PyTorch's reversed: A [r,in] -> ne [in,r].
				if want := []int64{int64(src.Shape[1]), int64(src.Shape[0])}; !slices.Equal(ti.Dims, want) {
					t.Errorf("%s dims %v, want %v", h.gguf, ti.Dims, want)
				}
				if !bytes.Equal(data, src.Data) {
					t.Errorf("%s: bytes differ from %s", h.gguf, src.Name)
				}
			}
		}
	}
	// llama.cpp's own shape rule (llama-adapter.cpp): model ne[0] == a
	// ne[0], model ne[1] == b ne[1], a ne[1] == b ne[0].
	qkvA, _ := f.Tensor("blk.0.attn_qkv.weight.lora_a")
	qkvB, _ := f.Tensor("blk.0.attn_qkv.weight.lora_b")
	out0, in0 := finetune.LinearShape(cfg, "self_attn.qkv_proj")
	if qkvA.Dims[0] != int64(in0) || qkvB.Dims[1] != int64(out0) || qkvA.Dims[1] != qkvB.Dims[0] {
		t.Errorf("qkv lora dims a %v b %v do not fit the base [%d,%d]", qkvA.Dims, qkvB.Dims, out0, in0)
	}

	// F16 on request: values rounded to half.
	out16 := filepath.Join(t.TempDir(), "a16.gguf")
	if _, err := ExportLoRA(dir, tinyBase(t), out16, LoRAOptions{DType: F16}); err != nil {
		t.Fatal(err)
	}
	f16, err := gguf.Open(out16)
	if err != nil {
		t.Fatal(err)
	}
	defer f16.Close()
	v, _, err := f16.Float32("blk.1.ffn_down.weight.lora_b")
	if err != nil {
		t.Fatal(err)
	}
	src := ad.Tensors[slices.IndexFunc(ad.Tensors, func(x peft.Tensor) bool {
		return x.Name == peft.TensorName("model.layers.1.mlp.down_proj", "B")
	})].Data
	for i := range v {
		if v[i] != safetensors.F16ToF32(safetensors.F32ToF16(src[i])) {
			t.Fatalf("f16 value %d = %g, want %g rounded to half", i, v[i], src[i])
		}
	}
	if ti, _ := f16.Tensor("blk.1.ffn_down.weight.lora_b"); ti.Type != gguf.F16 {
		t.Errorf("type %s, want F16", ti.Type)
	}
	if _, err := ExportLoRA(dir, tinyBase(t), out16, LoRAOptions{DType: Q8_0}); err == nil {
		t.Error("q8_0 adapter accepted")
	}
}

func TestExportLoRAErrors(t *testing.T) {
	cfg := tinyConfig()
	base := tinyBase(t)
	out := filepath.Join(t.TempDir(), "x.gguf")
	mutate := func(f func(a *peft.Adapter)) string {
		a := randomAdapter(cfg, 4, 8, 2)
		f(a)
		dir := filepath.Join(t.TempDir(), "ad")
		os.MkdirAll(dir, 0o755)
		cfgJSON, err := a.Config.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, peft.ConfigName), cfgJSON, 0o644)
		var buf bytes.Buffer
		if err := a.EncodeWeights(&buf); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, peft.WeightsName), buf.Bytes(), 0o644)
		return dir
	}
	cases := []struct {
		name string
		dir  string
		base *Base
		want string
	}{
		{"missing half", mutate(func(a *peft.Adapter) { a.Tensors = a.Tensors[1:] }), base, "no matching"},
		{"rank mismatch", mutate(func(a *peft.Adapter) { a.Config.R = 8 }), base, "r = 8"},
		{"unknown module", mutate(func(a *peft.Adapter) {
			a.Tensors[0].Name = peft.TensorName("model.layers.0.self_attn.rotary", "A")
			a.Tensors[1].Name = peft.TensorName("model.layers.0.self_attn.rotary", "B")
			a.Config.TargetModules = append(a.Config.TargetModules, "rotary")
		}), base, `no linear "self_attn.rotary"`},
		{"other architecture", mutate(func(a *peft.Adapter) {
			a.Tensors[0].Name = peft.TensorName("model.layers.0.self_attn.q_proj", "A")
			a.Tensors[1].Name = peft.TensorName("model.layers.0.self_attn.q_proj", "B")
			a.Config.TargetModules = append(a.Config.TargetModules, "q_proj")
		}), base, "different architecture"},
		{"shape", mutate(func(a *peft.Adapter) {}), &Base{Arch: Phi3, Config: &HFConfig{HiddenSize: 128, IntermediateSize: 96, NumLayers: 2, NumHeads: 4, NumKVHeads: 2, HeadDim: 32}, Source: "other"}, "trained on another base model"},
		{"too few layers", mutate(func(a *peft.Adapter) {}), &Base{Arch: Phi3, Config: &HFConfig{HiddenSize: 64, IntermediateSize: 96, NumLayers: 1, NumHeads: 4, NumKVHeads: 2, HeadDim: 16}, Source: "one layer"}, "has 1 layers"},
		{"llama base", mutate(func(a *peft.Adapter) {}), &Base{Arch: Llama, Config: &HFConfig{HiddenSize: 64, IntermediateSize: 96, NumLayers: 2, NumHeads: 4, NumKVHeads: 2, HeadDim: 16}, Source: "llama"}, "different architecture"},
	}
	for _, c := range cases {
		_, err := ExportLoRA(c.dir, c.base, out, LoRAOptions{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a failed export left %s behind", out)
	}
	// A truncated weights file is an error, not a panic.
	dir := mutate(func(a *peft.Adapter) {})
	p := filepath.Join(dir, peft.WeightsName)
	b, _ := os.ReadFile(p)
	os.WriteFile(p, b[:len(b)/2], 0o644)
	if _, err := ExportLoRA(dir, base, out, LoRAOptions{}); err == nil {
		t.Error("truncated adapter accepted")
	}
}

func TestPermuteRowsMatchesLlamaConvert(t *testing.T) {
	// numpy: w.reshape(heads, 2, rows//heads//2, cols).swapaxes(1, 2).reshape(rows, cols)
	// for rows=8, heads=2, cols=1 gives rows [0 2 1 3 4 6 5 7].
	w := []float32{0, 1, 2, 3, 4, 5, 6, 7}
	got := permuteRows(w, 8, 1, 2)
	if want := []float32{0, 2, 1, 3, 4, 6, 5, 7}; !slices.Equal(got, want) {
		t.Fatalf("permute %v, want %v", got, want)
	}
}

func TestWriteModelMergedF32(t *testing.T) {
	dir := tinyModelDir(t, finetune.F32)
	cfg := tinyConfig()
	ad := randomAdapter(cfg, 4, 8, 3)
	out := filepath.Join(t.TempDir(), "m.gguf")
	res, err := WriteModel(out, ModelOptions{BaseDir: dir, Adapter: ad, Type: F32, Name: "tiny"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Merged != 8 || res.Name != "phi3-tiny" {
		t.Fatalf("result %+v", res)
	}
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	f, err := gguf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	scale := 8.0 / 4
	mod := func(name string) (A, B []float32) {
		for _, x := range ad.Tensors {
			switch x.Name {
			case peft.TensorName(name, "A"):
				A = x.Data
			case peft.TensorName(name, "B"):
				B = x.Data
			}
		}
		return
	}
	for l := range cfg.NumLayers {
		for _, m := range finetune.LinearModules {
			name := finetune.LayerName(l, m)
			g, _ := Phi3.LinearName(name)
			got, shape, err := f.Float32(g + ".weight")
			if err != nil {
				t.Fatal(err)
			}
			w, wshape, _ := ck.Float32(name + ".weight")
			if !slices.Equal(shape, wshape) {
				t.Fatalf("%s shape %v, want %v", g, shape, wshape)
			}
			A, B := mod(name)
			r := 4
			out, in := wshape[0], wshape[1]
			maxDelta := 0.0
			for o := range out {
				for i := range in {
					var d float64
					for k := range r {
						d += float64(B[o*r+k]) * float64(A[k*in+i])
					}
					want := float64(w[o*in+i]) + scale*d
					if e := math.Abs(float64(got[o*in+i]) - want); e > 1e-6*(1+math.Abs(want)) {
						t.Fatalf("%s[%d,%d] = %g, want W + alpha/r*BA = %g", g, o, i, got[o*in+i], want)
					}
					maxDelta = max(maxDelta, math.Abs(scale*d))
				}
			}
			if maxDelta < 1e-3 {
				t.Fatalf("%s: the adapter barely changes the weight (max %g); the test cannot see a missing merge", g, maxDelta)
			}
		}
	}
	// Untouched tensors are the checkpoint's values; norms stay F32.
	for _, c := range []struct{ gguf, hf string }{
		{"token_embd.weight", "model.embed_tokens.weight"}, {"output.weight", "lm_head.weight"},
		{"output_norm.weight", "model.norm.weight"}, {"blk.1.attn_norm.weight", "model.layers.1.input_layernorm.weight"},
		{"blk.1.ffn_norm.weight", "model.layers.1.post_attention_layernorm.weight"},
	} {
		got, _, err := f.Float32(c.gguf)
		if err != nil {
			t.Fatal(err)
		}
		want, _, _ := ck.Float32(c.hf)
		if !slices.Equal(got, want) {
			t.Errorf("%s differs from %s", c.gguf, c.hf)
		}
	}

	// Metadata, through Ollama's reader.
	g, err := ReadGGUF(out)
	if err != nil {
		t.Fatal(err)
	}
	kv := g.KV()
	if kv.Architecture() != "phi3" || kv.Uint("block_count") != 2 || kv.Uint("embedding_length") != 64 ||
		kv.Uint("feed_forward_length") != 96 || kv.Uint("attention.head_count") != 4 || kv.Uint("attention.head_count_kv") != 2 ||
		kv.Uint("rope.dimension_count") != 16 || kv.Float("rope.freq_base") != 10000 || kv.Float("attention.layer_norm_rms_epsilon") != 1e-5 ||
		kv.Uint("context_length") != 4096 {
		t.Errorf("hyperparameters wrong: %v", kv)
	}
	if kv.String("tokenizer.ggml.model") != "llama" || len(kv.Strings("tokenizer.ggml.tokens")) != 32064 ||
		kv.Uint("tokenizer.ggml.eos_token_id") != 32000 || kv.Uint("tokenizer.ggml.bos_token_id") != 1 ||
		kv.Bool("tokenizer.ggml.add_bos_token", true) || !strings.Contains(kv.String("tokenizer.chat_template"), "<|user|>") {
		t.Errorf("tokenizer keys wrong")
	}
	if len(kv.Ints("tokenizer.ggml.token_type")) != 32064 || len(kv.Floats("tokenizer.ggml.scores")) != 32064 {
		t.Errorf("token_type/scores lengths")
	}
	if n := len(g.Tensors().Items()); n != 3+2*6 {
		t.Errorf("%d tensors, want 15", n)
	}
}

func TestWriteModelQuantized(t *testing.T) {
	dir := tinyModelDir(t, finetune.BF16)
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	for _, c := range []struct {
		typ  DType
		gt   gguf.Type
		tol  float64 // of the block's largest magnitude
		file uint32
	}{
		// Round to nearest: half a step (amax/127 for Q8_0), plus the fp16
		// rounding of the scale; Q4_0's range is [-8, 7] steps of amax/8,
		// so the far end loses a whole step.
		{F16, gguf.F16, 1.0 / 2048, 1}, {Q8_0, gguf.Q8_0, 0.5/127 + 1.0/1024, 7}, {Q4_0, gguf.Q4_0, 1.0/8 + 1.0/256, 2},
	} {
		out := filepath.Join(t.TempDir(), string(c.typ)+".gguf")
		if _, err := WriteModel(out, ModelOptions{BaseDir: dir, Type: c.typ, Name: "phi3-tiny"}); err != nil {
			t.Fatal(err)
		}
		f, err := gguf.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		if ft, _ := f.Int("general.file_type"); ft != int64(c.file) {
			t.Errorf("%s: file_type %d, want %d", c.typ, ft, c.file)
		}
		for _, name := range []string{"blk.0.attn_qkv.weight", "blk.1.ffn_down.weight", "token_embd.weight"} {
			ti, _ := f.Tensor(name)
			if ti.Type != c.gt {
				t.Errorf("%s %s: type %s", c.typ, name, ti.Type)
			}
		}
		if ti, _ := f.Tensor("blk.0.attn_norm.weight"); ti.Type != gguf.F32 {
			t.Errorf("%s: norm type %s, want F32", c.typ, ti.Type)
		}
		got, _, err := f.Float32("blk.0.attn_qkv.weight")
		if err != nil {
			t.Fatal(err)
		}
		want, _, _ := ck.Float32("model.layers.0.self_attn.qkv_proj.weight")
		for b := 0; b < len(want)/32; b++ {
			amax := 0.0
			for _, v := range want[b*32 : b*32+32] {
				amax = max(amax, math.Abs(float64(v)))
			}
			for j := b * 32; j < b*32+32; j++ {
				if e := math.Abs(float64(got[j] - want[j])); e > c.tol*amax+1e-7 {
					t.Fatalf("%s: element %d = %g, want %g (error %g > %g of block max %g)", c.typ, j, got[j], want[j], e, c.tol, amax)
				}
			}
		}
		f.Close()
	}
}
