package finetune

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/ollama-tune/ollama-tune/finetune/chat"
	"github.com/ollama-tune/ollama-tune/finetune/gguf"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

// ---------------------------------------------------------------------------
// A minimal GGUF v3 writer for these tests only (the convert package owns
// the real one; it imports finetune, so it cannot be used here).

type gkv struct {
	k string
	v any
}

type gtensor struct {
	name  string
	typ   gguf.Type
	shape []int // PyTorch order; the file stores it reversed
	data  []byte
}

func writeTestGGUF(t *testing.T, path string, kvs []gkv, ts []gtensor) {
	t.Helper()
	var w bytes.Buffer
	put := func(v any) { binary.Write(&w, binary.LittleEndian, v) }
	str := func(s string) { put(uint64(len(s))); w.WriteString(s) }
	w.WriteString("GGUF")
	put(uint32(3))
	put(uint64(len(ts)))
	put(uint64(len(kvs)))
	for _, kv := range kvs {
		str(kv.k)
		switch v := kv.v.(type) {
		case string:
			put(uint32(gguf.TypeString))
			str(v)
		case uint32:
			put(uint32(gguf.TypeUint32))
			put(v)
		case int32:
			put(uint32(gguf.TypeInt32))
			put(v)
		case float32:
			put(uint32(gguf.TypeFloat32))
			put(v)
		case bool:
			put(uint32(gguf.TypeBool))
			if v {
				w.WriteByte(1)
			} else {
				w.WriteByte(0)
			}
		case []string:
			put(uint32(gguf.TypeArray))
			put(uint32(gguf.TypeString))
			put(uint64(len(v)))
			for _, s := range v {
				str(s)
			}
		case []float32:
			put(uint32(gguf.TypeArray))
			put(uint32(gguf.TypeFloat32))
			put(uint64(len(v)))
			put(v)
		case []int32:
			put(uint32(gguf.TypeArray))
			put(uint32(gguf.TypeInt32))
			put(uint64(len(v)))
			put(v)
		default:
			t.Fatalf("writeTestGGUF: %s: unsupported %T", kv.k, kv.v)
		}
	}
	const align = 32
	off := 0
	for _, tt := range ts {
		str(tt.name)
		put(uint32(len(tt.shape)))
		for i := len(tt.shape) - 1; i >= 0; i-- {
			put(uint64(tt.shape[i]))
		}
		put(uint32(tt.typ))
		put(uint64(off))
		off += (len(tt.data) + align - 1) / align * align
	}
	for w.Len()%align != 0 {
		w.WriteByte(0)
	}
	for _, tt := range ts {
		w.Write(tt.data)
		for w.Len()%align != 0 {
			w.WriteByte(0)
		}
	}
	if err := os.WriteFile(path, w.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func ggufEncode(t *testing.T, typ gguf.Type, v []float32) []byte {
	t.Helper()
	b, err := gguf.Quantize(typ, v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ggufRandom(r *rand.Rand, n int, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(r.NormFloat64() * scale)
	}
	return v
}

// ggufTinyVocab is a small SentencePiece vocabulary: <unk>, <s>, </s>, the
// 256 byte pieces and a few words.
func ggufTinyVocab() (tokens []string, scores []float32, types []int32) {
	tokens = []string{"<unk>", "<s>", "</s>"}
	scores = []float32{0, 0, 0}
	types = []int32{tokenizer.PieceUnknown, tokenizer.PieceControl, tokenizer.PieceControl}
	for b := 0; b < 256; b++ {
		tokens = append(tokens, fmt.Sprintf("<0x%02X>", b))
		scores = append(scores, 0)
		types = append(types, tokenizer.PieceByte)
	}
	for i, p := range []string{"▁", "h", "i", "hi", "▁hi"} {
		tokens = append(tokens, p)
		scores = append(scores, float32(-i))
		types = append(types, tokenizer.PieceNormal)
	}
	return
}

func ggufTokenizerKVs(tokens []string, scores []float32, types []int32) []gkv {
	return []gkv{
		{"tokenizer.ggml.model", "llama"}, {"tokenizer.ggml.pre", "default"},
		{"tokenizer.ggml.tokens", tokens}, {"tokenizer.ggml.scores", scores}, {"tokenizer.ggml.token_type", types},
		{"tokenizer.ggml.bos_token_id", uint32(1)}, {"tokenizer.ggml.eos_token_id", uint32(2)},
		{"tokenizer.ggml.unknown_token_id", uint32(0)}, {"tokenizer.ggml.add_bos_token", false},
	}
}

func ggufArchKVs(arch string, cfg *Config) []gkv {
	p := arch + "."
	kv := []gkv{
		{"general.architecture", arch}, {"general.file_type", uint32(7)},
		{p + "context_length", uint32(cfg.MaxPositionEmbeddings)}, {p + "embedding_length", uint32(cfg.HiddenSize)},
		{p + "feed_forward_length", uint32(cfg.IntermediateSize)}, {p + "block_count", uint32(cfg.NumLayers)},
		{p + "attention.head_count", uint32(cfg.NumHeads)}, {p + "attention.head_count_kv", uint32(cfg.NumKVHeads)},
		{p + "attention.layer_norm_rms_epsilon", cfg.RMSNormEps}, {p + "rope.freq_base", cfg.RopeTheta},
		{p + "rope.dimension_count", uint32(cfg.RotaryDim())},
	}
	if arch == "phi3" {
		kv = append(kv, gkv{p + "attention.sliding_window", uint32(cfg.SlidingWindow)})
	}
	return kv
}

func ggufTinyConfig() *Config {
	return &Config{Architecture: "Phi3ForCausalLM", ModelType: "phi3", HiddenSize: 64, IntermediateSize: 96,
		NumLayers: 2, NumHeads: 4, NumKVHeads: 4, VocabSize: 300, RMSNormEps: 1e-5, RopeTheta: 10000,
		PartialRotaryFactor: 1, MaxPositionEmbeddings: 256, SlidingWindow: 2047, HiddenAct: "silu",
		BOSTokenID: 1, EOSTokenIDs: []int{2}, PadTokenID: -1}
}

// phi3GGUF writes a tiny phi3 GGUF whose weights use several tensor types
// and returns the float32 values the getter must give for each Hugging
// Face name (the dequantized bytes) and the originals.
func phi3GGUF(t *testing.T, path string, cfg *Config, extraKV []gkv, extraT []gtensor) (want map[string][]float32) {
	t.Helper()
	r := rand.New(rand.NewPCG(11, 12))
	ggufName := map[string]string{
		"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight",
		"input_layernorm": "attn_norm", "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output",
		"post_attention_layernorm": "ffn_norm", "mlp.gate_up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
	}
	typeOf := map[string]gguf.Type{"token_embd": gguf.Q8_0, "output": gguf.Q8_0, "attn_qkv": gguf.Q4_0,
		"attn_output": gguf.F16, "ffn_up": gguf.BF16, "ffn_down": gguf.Q8_0}
	want = map[string][]float32{}
	var ts []gtensor
	for _, s := range Phi3Tensors(cfg) {
		g := ggufName[s.Name]
		if g == "" {
			parts := strings.SplitN(strings.TrimPrefix(s.Name, "model.layers."), ".", 2) // "3", "self_attn.qkv_proj.weight"
			g = "blk." + parts[0] + "." + ggufName[strings.TrimSuffix(parts[1], ".weight")] + ".weight"
		}
		n := 1
		for _, d := range s.Shape {
			n *= d
		}
		v := ggufRandom(r, n, 0.1)
		if len(s.Shape) == 1 {
			for i := range v {
				v[i] += 1
			}
		}
		typ, ok := typeOf[strings.TrimSuffix(g[strings.LastIndex(strings.TrimSuffix(g, ".weight"), ".")+1:], ".weight")]
		if !ok {
			typ = gguf.F32
		}
		data := ggufEncode(t, typ, v)
		deq := make([]float32, n)
		if err := gguf.Dequantize(typ, data, deq); err != nil {
			t.Fatal(err)
		}
		want[s.Name] = deq
		ts = append(ts, gtensor{g, typ, s.Shape, data})
	}
	tokens, scores, types := ggufTinyVocab()
	kvs := append(ggufArchKVs("phi3", cfg), ggufTokenizerKVs(tokens, scores, types)...)
	writeTestGGUF(t, path, append(kvs, extraKV...), append(ts, extraT...))
	return want
}

func TestGGUFBasePhi3(t *testing.T) {
	cfg := ggufTinyConfig()
	path := filepath.Join(t.TempDir(), "phi3.gguf")
	want := phi3GGUF(t, path, cfg, []gkv{{"general.name", "Tiny Phi3"}},
		// What Ollama's converter writes for a 4k model: empty LongRoPE factors.
		[]gtensor{{"rope_factors_long.weight", gguf.F32, []int{0}, nil}, {"rope_factors_short.weight", gguf.F32, []int{0}, nil}})
	b, err := LoadGGUFBase(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	got := *b.Config
	if got.TorchDType != "" {
		t.Errorf("TorchDType %q for a Q8_0 embedding", got.TorchDType)
	}
	if !ggufConfigsEqual(&got, cfg) {
		t.Errorf("config\n got  %+v\n want %+v", got, *cfg)
	}
	if b.Arch != "phi3" || b.Name != "Tiny Phi3" || b.FileType != "Q8_0" {
		t.Errorf("arch %q name %q file type %q", b.Arch, b.Name, b.FileType)
	}
	if !slices.Equal(b.Names(), ggufSpecNames(cfg)) {
		t.Errorf("names %v", b.Names())
	}
	for _, s := range Phi3Tensors(cfg) {
		v, shape, err := b.Float32(s.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(shape, s.Shape) || !ggufBitsEqual(v, want[s.Name]) {
			t.Errorf("%s: shape %v (want %v) or values differ", s.Name, shape, s.Shape)
		}
	}
	src, err := b.Sources("model.layers.1.self_attn.qkv_proj.weight")
	if err != nil || len(src) != 1 || src[0].Name != "blk.1.attn_qkv.weight" || src[0].Type != gguf.Q4_0 {
		t.Errorf("Sources: %v %v", src, err)
	}

	// The model built from the GGUF computes what the model built from the
	// same weights in memory computes.
	be := NewCPUBackend(CPUOptions{})
	m1, err := NewModel(be, b.Config, b.Float32, ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m2, err := NewModel(be, cfg, weightGetter(cfg, want), ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	batch := &Batch{B: 1, S: 5, InputIDs: []int32{1, 260, 262, 263, 2}, PositionIDs: []int32{0, 1, 2, 3, 4}}
	l1, err := m1.Logits(batch)
	if err != nil {
		t.Fatal(err)
	}
	l2, _ := m2.Logits(batch)
	if !ggufBitsEqual(l1, l2) {
		t.Error("logits of the GGUF model differ from the in-memory model's")
	}

	tk := b.Tokenizer
	if ids := tk.Encode("hi", true); !slices.Equal(ids, []int32{263}) {
		t.Errorf("Encode(hi) = %v, want [263] (▁hi, no BOS)", ids)
	}
	if tk.BOS() != 1 || tk.EOS() != 2 || tk.VocabSize() != 264 {
		t.Errorf("bos %d eos %d vocab %d", tk.BOS(), tk.EOS(), tk.VocabSize())
	}
	if _, err := b.ChatTemplateRenderer(); err == nil || !strings.Contains(err.Error(), "no tokenizer.chat_template") {
		t.Errorf("no template: %v", err)
	}
}

func ggufSpecNames(cfg *Config) []string {
	var out []string
	for _, s := range Phi3Tensors(cfg) {
		out = append(out, s.Name)
	}
	return out
}

func ggufConfigsEqual(a, b *Config) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func ggufBitsEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// ggufPermuteLlama is llama.cpp's convert_hf_to_gguf.py LlamaModel.permute:
// w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols).
func ggufPermuteLlama(w []float32, rows, cols, nHead int) []float32 {
	out := make([]float32, 0, len(w))
	half := rows / nHead / 2
	for h := 0; h < nHead; h++ {
		for j := 0; j < half; j++ { // the swapped axes: j outer, pair inner
			for p := 0; p < 2; p++ {
				row := (h*2+p)*half + j
				out = append(out, w[row*cols:(row+1)*cols]...)
			}
		}
	}
	return out
}

func TestGGUFBaseLlama(t *testing.T) {
	cfg := ggufTinyConfig()
	cfg.Architecture, cfg.ModelType, cfg.NumKVHeads, cfg.SlidingWindow, cfg.TieWordEmbeddings = "LlamaForCausalLM", "llama", 2, 0, true
	cfg.TorchDType = "float32" // F32 embeddings
	C, I, D := cfg.HiddenSize, cfg.IntermediateSize, cfg.HeadDim()
	r := rand.New(rand.NewPCG(13, 14))
	hf := map[string][]float32{}
	var ts []gtensor
	add := func(hfName, g string, shape []int, v []float32) {
		hf[hfName] = v
		ts = append(ts, gtensor{g, gguf.F32, shape, ggufEncode(t, gguf.F32, v)})
	}
	emb := ggufRandom(r, cfg.VocabSize*C, 0.1)
	add("model.embed_tokens.weight", "token_embd.weight", []int{cfg.VocabSize, C}, emb)
	add("model.norm.weight", "output_norm.weight", []int{C}, ggufRandom(r, C, 1))
	for i := 0; i < cfg.NumLayers; i++ {
		blk := fmt.Sprintf("blk.%d.", i)
		q := ggufRandom(r, cfg.NumHeads*D*C, 0.1)
		k := ggufRandom(r, cfg.NumKVHeads*D*C, 0.1)
		v := ggufRandom(r, cfg.NumKVHeads*D*C, 0.1)
		gate, up := ggufRandom(r, I*C, 0.1), ggufRandom(r, I*C, 0.1)
		hf[LayerName(i, "self_attn.qkv_proj.weight")] = slices.Concat(q, k, v)
		hf[LayerName(i, "mlp.gate_up_proj.weight")] = slices.Concat(gate, up)
		ts = append(ts,
			gtensor{blk + "attn_q.weight", gguf.F32, []int{cfg.NumHeads * D, C}, ggufEncode(t, gguf.F32, ggufPermuteLlama(q, cfg.NumHeads*D, C, cfg.NumHeads))},
			gtensor{blk + "attn_k.weight", gguf.F32, []int{cfg.NumKVHeads * D, C}, ggufEncode(t, gguf.F32, ggufPermuteLlama(k, cfg.NumKVHeads*D, C, cfg.NumKVHeads))},
			gtensor{blk + "attn_v.weight", gguf.F32, []int{cfg.NumKVHeads * D, C}, ggufEncode(t, gguf.F32, v)},
			gtensor{blk + "ffn_gate.weight", gguf.F32, []int{I, C}, ggufEncode(t, gguf.F32, gate)},
			gtensor{blk + "ffn_up.weight", gguf.F32, []int{I, C}, ggufEncode(t, gguf.F32, up)})
		add(LayerName(i, "input_layernorm.weight"), blk+"attn_norm.weight", []int{C}, ggufRandom(r, C, 1))
		add(LayerName(i, "self_attn.o_proj.weight"), blk+"attn_output.weight", []int{C, C}, ggufRandom(r, C*C, 0.1))
		add(LayerName(i, "post_attention_layernorm.weight"), blk+"ffn_norm.weight", []int{C}, ggufRandom(r, C, 1))
		add(LayerName(i, "mlp.down_proj.weight"), blk+"ffn_down.weight", []int{C, I}, ggufRandom(r, C*I, 0.1))
	}
	tokens, scores, types := ggufTinyVocab()
	path := filepath.Join(t.TempDir(), "llama.gguf")
	writeTestGGUF(t, path, append(ggufArchKVs("llama", cfg), ggufTokenizerKVs(tokens, scores, types)...), ts)
	b, err := LoadGGUFBase(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if !ggufConfigsEqual(b.Config, cfg) {
		t.Errorf("config\n got  %+v\n want %+v", *b.Config, *cfg)
	}
	for _, s := range Phi3Tensors(cfg) {
		v, shape, err := b.Float32(s.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(shape, s.Shape) || !ggufBitsEqual(v, hf[s.Name]) {
			t.Errorf("%s: shape %v (want %v) or values differ from the Hugging Face weight", s.Name, shape, s.Shape)
		}
	}
	if _, _, err := b.Float32("lm_head.weight"); err == nil {
		t.Error("lm_head of a tied model")
	}
}

func TestUnpermuteRowsInvertsPermute(t *testing.T) {
	w := make([]float32, 24*3)
	for i := range w {
		w[i] = float32(i)
	}
	for _, heads := range []int{1, 2, 3, 6} {
		if got := unpermuteRows(ggufPermuteLlama(w, 24, 3, heads), 24, 3, heads); !slices.Equal(got, w) {
			t.Errorf("%d heads: %v", heads, got[:12])
		}
	}
	// One head of 4 rows: GGUF rows are HF rows 0, 2, 1, 3.
	if p := ggufPermuteLlama([]float32{0, 1, 2, 3}, 4, 1, 1); !slices.Equal(p, []float32{0, 2, 1, 3}) {
		t.Errorf("permute %v", p)
	}
}

func TestGGUFBaseErrors(t *testing.T) {
	cfg := ggufTinyConfig()
	dir := t.TempDir()
	n := 0
	try := func(kv []gkv, ts []gtensor, want ...string) {
		t.Helper()
		n++
		path := filepath.Join(dir, fmt.Sprintf("bad%d.gguf", n))
		phi3GGUF(t, path, cfg, kv, ts)
		b, err := LoadGGUFBase(path)
		if err == nil {
			b.Close()
			t.Errorf("%v %v: loaded", kv, ts)
			return
		}
		for _, w := range append(want, path) {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not mention %q", err, w)
			}
		}
	}
	try(nil, []gtensor{{"blk.0.attn_qkv.bias", gguf.F32, []int{192}, make([]byte, 192*4)}}, `"blk.0.attn_qkv.bias"`, "refusing to drop it")
	try(nil, []gtensor{{"rope_factors_long.weight", gguf.F32, []int{8}, make([]byte, 32)}}, "rope_factors_long", "not implemented")
	try([]gkv{{"phi3.rope.scaling.type", "yarn"}}, nil, "RoPE scaling")

	// Files written by hand: a wrong architecture, a missing tensor or key, a
	// BPE vocabulary.
	tokens, scores, types := ggufTinyVocab()
	tok := ggufTokenizerKVs(tokens, scores, types)
	write := func(kvs []gkv, ts []gtensor) string {
		n++
		path := filepath.Join(dir, fmt.Sprintf("bad%d.gguf", n))
		writeTestGGUF(t, path, kvs, ts)
		return path
	}
	for _, c := range []struct {
		kvs  []gkv
		want string
	}{
		{append([]gkv{{"general.architecture", "gemma3"}}, tok...), `general.architecture is "gemma3"`},
		{tok, `"general.architecture"`},
		{ggufArchKVs("phi3", cfg)[:4], `"phi3.feed_forward_length"`},
		{ggufArchKVs("phi3", cfg), `no tensor "token_embd.weight"`},
	} {
		path := write(c.kvs, nil)
		if _, err := LoadGGUFBase(path); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("want %s: %v", c.want, err)
		}
	}
	// A missing layer tensor: a good file's tensors without blk.1.ffn_down.weight.
	path := filepath.Join(dir, "good.gguf")
	phi3GGUF(t, path, cfg, nil, nil)
	good, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var ts []gtensor
	var dropped gtensor
	for _, ti := range good.Tensors {
		_, data, _ := good.TensorData(ti.Name)
		g := gtensor{ti.Name, ti.Type, ti.Shape(), slices.Clone(data)}
		if ti.Name == "blk.1.ffn_down.weight" {
			dropped = g
			continue
		}
		ts = append(ts, g)
	}
	var kvs []gkv
	for _, kv := range good.KVs {
		kvs = append(kvs, gkv{kv.Key, kv.Value})
	}
	good.Close()
	if _, err := LoadGGUFBase(write(kvs, ts)); err == nil || !strings.Contains(err.Error(), `no tensor "blk.1.ffn_down.weight"`) {
		t.Errorf("missing tensor: %v", err)
	}
	// A BPE (gpt2) vocabulary.
	for i := range kvs {
		if kvs[i].k == "tokenizer.ggml.model" {
			kvs[i].v = "gpt2"
		}
	}
	if _, err := LoadGGUFBase(write(kvs, append(ts, dropped))); err == nil || !strings.Contains(err.Error(), `tokenizer.ggml.model is "gpt2"`) {
		t.Errorf("gpt2 vocabulary: %v", err)
	}
}

// ggufToIQ2XXS rewrites the GGUF file at path with the tensor name stored
// as IQ2_XXS (zero blocks: a type without a dequantizer), the rest as it
// was. The tensor's rows must be whole IQ2_XXS blocks (256 values).
func ggufToIQ2XXS(t *testing.T, path, name string) {
	t.Helper()
	f, err := gguf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var ts []gtensor
	var kvs []gkv
	for _, ti := range f.Tensors {
		_, data, _ := f.TensorData(ti.Name)
		if ti.Name == name {
			ti.Type, data = gguf.IQ2_XXS, make([]byte, gguf.IQ2_XXS.RowBytes(ti.Elements()))
		}
		ts = append(ts, gtensor{ti.Name, ti.Type, ti.Shape(), slices.Clone(data)})
	}
	for _, kv := range f.KVs {
		kvs = append(kvs, gkv{kv.Key, kv.Value})
	}
	f.Close()
	writeTestGGUF(t, path, kvs, ts)
}

// TestGGUFBaseUnsupportedQuant: a weight in a type without a dequantizer
// fails when read, naming the file, the tensor and the type.
func TestGGUFBaseUnsupportedQuant(t *testing.T) {
	cfg := ggufTinyConfig()
	cfg.HiddenSize, cfg.IntermediateSize = 256, 256
	path := filepath.Join(t.TempDir(), "iq.gguf")
	phi3GGUF(t, path, cfg, nil, nil)
	ggufToIQ2XXS(t, path, "blk.0.ffn_down.weight")
	b, err := LoadGGUFBase(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	_, err = NewModel(NewCPUBackend(CPUOptions{}), b.Config, b.Float32, ModelOptions{})
	if err == nil || !strings.Contains(err.Error(), `"model.layers.0.mlp.down_proj.weight"`) ||
		!strings.Contains(err.Error(), `tensor "blk.0.ffn_down.weight": dequantizing IQ2_XXS is not implemented`) {
		t.Errorf("IQ2_XXS weight: %v", err)
	}
}

// ---------------------------------------------------------------------------
// The Phi-3 tokenizer through a GGUF.

// ggufSPMPieces reads the pieces of a SentencePiece model (ModelProto field 1:
// SentencePiece{piece 1, score 2, type 3}) with protowire, independently
// of the tokenizer package.
func ggufSPMPieces(t *testing.T, b []byte) (pieces []string, scores []float32, types []int32) {
	t.Helper()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		b = b[n:]
		if num != 1 || typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				t.Fatal("bad tokenizer.model")
			}
			b = b[n:]
			continue
		}
		msg, n := protowire.ConsumeBytes(b)
		b = b[n:]
		piece, score, ptype := "", float32(0), int32(1)
		for len(msg) > 0 {
			f, ft, m := protowire.ConsumeTag(msg)
			msg = msg[m:]
			switch {
			case f == 1 && ft == protowire.BytesType:
				v, m := protowire.ConsumeBytes(msg)
				piece, msg = string(v), msg[m:]
			case f == 2 && ft == protowire.Fixed32Type:
				v, m := protowire.ConsumeFixed32(msg)
				score, msg = math.Float32frombits(v), msg[m:]
			case f == 3 && ft == protowire.VarintType:
				v, m := protowire.ConsumeVarint(msg)
				ptype, msg = int32(v), msg[m:]
			default:
				m := protowire.ConsumeFieldValue(f, ft, msg)
				msg = msg[m:]
			}
		}
		pieces, scores, types = append(pieces, piece), append(scores, score), append(types, ptype)
	}
	return
}

// phi3GGUFVocab is Phi-3's vocabulary as a converter writes it. llamaCpp:
// convert_hf_to_gguf.py's Phi3MiniModel.set_vocab (the Ollama library's
// phi3): every id up to the embedding's 32,064 rows starts as "[PADi]"
// UNUSED, then tokenizer.model's pieces, then each added token of
// tokenizer_config.json with score -1000, CONTROL when special, else
// USER_DEFINED (so <unk> is CONTROL and </s> USER_DEFINED). Otherwise
// Ollama's convert/tokenizer_spm.go: tokenizer.model's pieces with their
// types, then the added tokens past them as USER_DEFINED, 32,011 tokens.
func phi3GGUFVocab(t *testing.T, llamaCpp bool) (tokens []string, scores []float32, types []int32) {
	dir := testutil.SharedData(t, "phi3-tokenizer")
	b, err := os.ReadFile(filepath.Join(dir, "tokenizer.model"))
	if err != nil {
		t.Fatal(err)
	}
	pieces, pscores, ptypes := ggufSPMPieces(t, b)
	var cfg struct {
		Added map[string]struct {
			Content string `json:"content"`
			Special bool   `json:"special"`
		} `json:"added_tokens_decoder"`
	}
	cb, err := os.ReadFile(filepath.Join(dir, "tokenizer_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(cb, &cfg); err != nil {
		t.Fatal(err)
	}
	if !llamaCpp {
		tokens, scores, types = pieces, pscores, ptypes
		for id := len(pieces); ; id++ {
			a, ok := cfg.Added[strconv.Itoa(id)]
			if !ok {
				break
			}
			tokens, scores, types = append(tokens, a.Content), append(scores, -1000), append(types, tokenizer.PieceUserDefined)
		}
		return
	}
	const vocab = 32064
	for i := 0; i < vocab; i++ {
		tokens = append(tokens, "[PAD"+strconv.Itoa(i)+"]")
		scores = append(scores, -10000)
		types = append(types, tokenizer.PieceUnused)
	}
	copy(tokens, pieces)
	copy(scores, pscores)
	copy(types, ptypes)
	for key, a := range cfg.Added {
		id, _ := strconv.Atoi(key)
		tokens[id], scores[id], types[id] = a.Content, -1000, tokenizer.PieceUserDefined
		if a.Special {
			types[id] = tokenizer.PieceControl
		}
	}
	return
}

type ggufYodaRow struct{ sentence, extra string }

func ggufYodaRows(t *testing.T) []ggufYodaRow {
	var rows []ggufYodaRow
	for _, r := range testutil.YodaRows(t) {
		rows = append(rows, ggufYodaRow{r[0], r[2]})
	}
	return rows
}

// TestGGUFTokenizerMatchesHF builds GGUFs holding Phi-3's vocabulary the
// way the two converters write it, loads them back through LoadGGUFBase,
// and compares the ids of all 720 Yoda rows (conversation and generation
// prompt) with the Hugging Face reference (tokenizers applied to
// tokenizer.json, finetune/tokenizer/testdata/reference.json) and with the
// tokenizer package reading the Hugging Face files; the chat template
// stored in the GGUF renders the reference texts.
func TestGGUFTokenizerMatchesHF(t *testing.T) {
	var ref struct {
		Rows []struct {
			Text    string  `json:"text"`
			Prompt  string  `json:"prompt"`
			A       []int32 `json:"a"`
			PromptA []int32 `json:"prompt_a"`
		} `json:"rows"`
	}
	rb, err := os.ReadFile(filepath.Join("tokenizer", "testdata", "reference.json"))
	if err != nil {
		t.Skipf("tokenizer reference: %v", err)
	}
	if err := json.Unmarshal(rb, &ref); err != nil || len(ref.Rows) != 720 {
		t.Fatalf("reference.json: %v, %d rows", err, len(ref.Rows))
	}
	rows := ggufYodaRows(t)
	hfDir := testutil.SharedData(t, "phi3-tokenizer")
	hf, err := tokenizer.Load(hfDir)
	if err != nil {
		t.Fatal(err)
	}
	tmpl, err := os.ReadFile(filepath.Join(hfDir, "chat_template.jinja"))
	if err != nil {
		t.Fatal(err)
	}

	cfg := ggufTinyConfig()
	cfg.HiddenSize, cfg.IntermediateSize, cfg.NumLayers, cfg.NumHeads, cfg.NumKVHeads = 32, 32, 1, 2, 2
	cfg.VocabSize = 32064
	for _, c := range []struct {
		name     string
		llamaCpp bool
		kv       []gkv
	}{
		{"llama.cpp layout, named Phi3", true, []gkv{{"general.name", "Phi3"}, {"tokenizer.ggml.eot_token_id", uint32(32007)}}},
		{"Ollama layout, no name", false, nil},
	} {
		tokens, scores, types := phi3GGUFVocab(t, c.llamaCpp)
		r := rand.New(rand.NewPCG(1, 1))
		var ts []gtensor
		for _, s := range Phi3Tensors(cfg) {
			n := 1
			for _, d := range s.Shape {
				n *= d
			}
			g := map[string]string{"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
				"lm_head.weight": "output.weight"}[s.Name]
			if g == "" {
				g = strings.NewReplacer("model.layers.", "blk.", "input_layernorm", "attn_norm", "self_attn.qkv_proj", "attn_qkv",
					"self_attn.o_proj", "attn_output", "post_attention_layernorm", "ffn_norm", "mlp.gate_up_proj", "ffn_up",
					"mlp.down_proj", "ffn_down").Replace(s.Name)
			}
			typ := gguf.F32
			if len(s.Shape) == 2 {
				typ = gguf.Q8_0
			}
			ts = append(ts, gtensor{g, typ, s.Shape, ggufEncode(t, typ, ggufRandom(r, n, 0.02))})
		}
		kvs := append(ggufArchKVs("phi3", cfg), c.kv...)
		kvs = append(kvs, gkv{"tokenizer.ggml.model", "llama"}, gkv{"tokenizer.ggml.pre", "default"},
			gkv{"tokenizer.ggml.tokens", tokens}, gkv{"tokenizer.ggml.scores", scores}, gkv{"tokenizer.ggml.token_type", types},
			gkv{"tokenizer.ggml.bos_token_id", uint32(1)}, gkv{"tokenizer.ggml.eos_token_id", uint32(32000)},
			gkv{"tokenizer.ggml.unknown_token_id", uint32(0)}, gkv{"tokenizer.ggml.padding_token_id", uint32(0)},
			gkv{"tokenizer.ggml.add_bos_token", false}, gkv{"tokenizer.ggml.add_eos_token", false},
			gkv{"tokenizer.chat_template", string(tmpl)})
		path := filepath.Join(t.TempDir(), "phi3-vocab.gguf")
		writeTestGGUF(t, path, kvs, ts)
		b, err := LoadGGUFBase(path)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		tk := b.Tokenizer
		render, err := b.ChatTemplateRenderer()
		if err != nil {
			t.Fatal(err)
		}
		bad, total := 0, 0
		for i, row := range ref.Rows {
			msgs := []chat.Message{{Role: "user", Content: rows[i].sentence}, {Role: "assistant", Content: rows[i].extra}}
			text, err := render.Render(msgs, false)
			if err != nil {
				t.Fatal(err)
			}
			prompt, err := render.Render(msgs[:1], true)
			if err != nil {
				t.Fatal(err)
			}
			ids, pids := tk.Encode(text, false), tk.Encode(prompt, false)
			total += len(ids)
			if text != row.Text || prompt != row.Prompt || !slices.Equal(ids, row.A) || !slices.Equal(pids, row.PromptA) ||
				!slices.Equal(ids, hf.Encode(row.Text, false)) || !slices.Equal(tk.Encode(text, true), ids) {
				if bad++; bad <= 3 {
					t.Errorf("%s: row %d:\n text %q\n want %q\n ids  %v\n want %v", c.name, i, text, row.Text, ids, row.A)
				}
			}
		}
		if bad > 0 {
			t.Errorf("%s: %d of 720 rows differ", c.name, bad)
		}
		if total != 21801 {
			t.Errorf("%s: %d tokens in all, the reference has 21,801", c.name, total)
		}
		eos := []int{32000}
		if c.llamaCpp {
			eos = []int{32000, 32007}
		}
		if b.Config.PadTokenID != 0 || !slices.Equal(b.Config.EOSTokenIDs, eos) || b.Config.BOSTokenID != 1 {
			t.Errorf("%s: pad %d eos %v bos %d", c.name, b.Config.PadTokenID, b.Config.EOSTokenIDs, b.Config.BOSTokenID)
		}
		// Decoding a row gives its text back, special tokens skipped or not.
		if got := tk.Decode(ref.Rows[0].A, false); got != hf.Decode(ref.Rows[0].A, false) {
			t.Errorf("%s: decode %q, HF %q", c.name, got, hf.Decode(ref.Rows[0].A, false))
		}
		b.Close()
	}
}
