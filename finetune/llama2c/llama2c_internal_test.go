package llama2c

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
)

// small is a header with every kind of width distinct, GQA and a head dim
// of 4 (two RoPE pairs per head).
var small = Config{Dim: 8, HiddenDim: 6, NumLayers: 2, NumHeads: 2, NumKVHeads: 1, VocabSize: 5, SeqLen: 3, SharedClassifier: true}

func header(c Config) []byte {
	v := int32(c.VocabSize)
	if !c.SharedClassifier {
		v = -v
	}
	h := []int32{int32(c.Dim), int32(c.HiddenDim), int32(c.NumLayers), int32(c.NumHeads), int32(c.NumKVHeads), v, int32(c.SeqLen)}
	b := make([]byte, 0, HeaderBytes)
	for _, x := range h {
		b = binary.LittleEndian.AppendUint32(b, uint32(x))
	}
	return b
}

// tensorOrder is llama2.c's order with each tensor's float count, for the
// synthetic files below.
func tensorOrder(c Config) []struct {
	name string
	n    int
} {
	C, I, L, V, KV, S, D := c.Dim, c.HiddenDim, c.NumLayers, c.VocabSize, c.KVDim(), c.SeqLen, c.HeadDim()
	o := []struct {
		name string
		n    int
	}{
		{"token_embedding", V * C}, {"rms_att", L * C}, {"wq", L * C * C}, {"wk", L * KV * C}, {"wv", L * KV * C},
		{"wo", L * C * C}, {"rms_ffn", L * C}, {"w1", L * I * C}, {"w2", L * C * I}, {"w3", L * I * C},
		{"rms_final", C}, {"freq_cis_real", S * D / 2}, {"freq_cis_imag", S * D / 2},
	}
	if !c.SharedClassifier {
		o = append(o, struct {
			name string
			n    int
		}{"wcls", V * C})
	}
	return o
}

// marker is the value the synthetic file holds at element i of tensor k:
// distinct everywhere and exact in float32.
func marker(k, i int) float32 { return float32(k*10000 + i) }

// synthetic builds a checkpoint whose every element is its marker.
func synthetic(c Config) []byte {
	b := header(c)
	for k, t := range tensorOrder(c) {
		for i := 0; i < t.n; i++ {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(marker(k, i)))
		}
	}
	return b
}

func writeTemp(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "model.bin")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseHeader(t *testing.T) {
	for _, shared := range []bool{true, false} {
		want := small
		want.SharedClassifier = shared
		got, err := ParseHeader(header(want))
		if err != nil {
			t.Fatalf("shared=%v: %v", shared, err)
		}
		if got != want {
			t.Errorf("shared=%v: got %+v, want %+v", shared, got, want)
		}
	}
	bad := []struct {
		name string
		edit func(c *Config)
		want string
	}{
		{"zero dim", func(c *Config) { c.Dim = 0 }, "field dim is 0"},
		{"negative layers", func(c *Config) { c.NumLayers = -3 }, "field n_layers is -3"},
		{"zero vocab", func(c *Config) { c.VocabSize = 0 }, "field vocab_size is 0"},
		{"absurd seq_len", func(c *Config) { c.SeqLen = 1 << 28 }, "field seq_len is 268435456"},
		{"dim not a multiple of heads", func(c *Config) { c.NumHeads = 3 }, "dim 8 is not a multiple of n_heads 3"},
		{"odd head size", func(c *Config) { c.Dim = 6; c.NumHeads = 2 }, "head size dim/n_heads = 3 is odd"},
		{"kv heads do not divide", func(c *Config) { c.Dim = 12; c.NumHeads = 3; c.NumKVHeads = 2 }, "n_heads 3 is not a multiple of n_kv_heads 2"},
		{"more kv heads than heads", func(c *Config) { c.NumKVHeads = 4 }, "n_heads 2 is not a multiple of n_kv_heads 4"},
	}
	for _, tc := range bad {
		c := small
		tc.edit(&c)
		_, err := ParseHeader(header(c))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := ParseHeader(make([]byte, 27)); err == nil || !strings.Contains(err.Error(), "header is 27 bytes") {
		t.Errorf("short header: got %v", err)
	}
	v1 := binary.LittleEndian.AppendUint32(nil, 0x616b3432)
	v1 = binary.LittleEndian.AppendUint32(v1, 1)
	v1 = append(v1, make([]byte, 20)...)
	if _, err := ParseHeader(v1); err == nil || !strings.Contains(err.Error(), "version 1") || !strings.Contains(err.Error(), "--version 0") {
		t.Errorf("version 1 export: got %v", err)
	}
}

func TestReadPlacesEveryTensor(t *testing.T) {
	for _, shared := range []bool{true, false} {
		c := small
		c.SharedClassifier = shared
		m, err := Read(writeTemp(t, synthetic(c)))
		if err != nil {
			t.Fatalf("shared=%v: %v", shared, err)
		}
		if m.Config != c {
			t.Fatalf("config %+v, want %+v", m.Config, c)
		}
		// For each tensor k, element i of the whole [L, ...] block.
		check := func(k int, name string, layered func(l int) []float32, per int) {
			t.Helper()
			for l := 0; l < c.NumLayers; l++ {
				v := layered(l)
				if len(v) != per {
					t.Fatalf("%s[%d]: %d values, want %d", name, l, len(v), per)
				}
				for i, x := range v {
					if want := marker(k, l*per+i); x != want {
						t.Fatalf("%s[%d][%d] = %v, want %v", name, l, i, x, want)
					}
				}
			}
		}
		C, I, KV := c.Dim, c.HiddenDim, c.KVDim()
		check(1, "rms_att", func(l int) []float32 { return m.Layers[l].RMSAtt }, C)
		check(2, "wq", func(l int) []float32 { return m.Layers[l].WQ }, C*C)
		check(3, "wk", func(l int) []float32 { return m.Layers[l].WK }, KV*C)
		check(4, "wv", func(l int) []float32 { return m.Layers[l].WV }, KV*C)
		check(5, "wo", func(l int) []float32 { return m.Layers[l].WO }, C*C)
		check(6, "rms_ffn", func(l int) []float32 { return m.Layers[l].RMSFFN }, C)
		check(7, "w1", func(l int) []float32 { return m.Layers[l].W1 }, I*C)
		check(8, "w2", func(l int) []float32 { return m.Layers[l].W2 }, C*I)
		check(9, "w3", func(l int) []float32 { return m.Layers[l].W3 }, I*C)
		one := func(k int, name string, v []float32, n int) {
			t.Helper()
			if len(v) != n {
				t.Fatalf("%s: %d values, want %d", name, len(v), n)
			}
			for i, x := range v {
				if x != marker(k, i) {
					t.Fatalf("%s[%d] = %v, want %v", name, i, x, marker(k, i))
				}
			}
		}
		one(0, "token_embedding", m.TokenEmbedding, c.VocabSize*C)
		one(10, "rms_final", m.RMSFinal, C)
		one(11, "freq_cis_real", m.FreqCisReal, c.SeqLen*c.HeadDim()/2)
		one(12, "freq_cis_imag", m.FreqCisImag, c.SeqLen*c.HeadDim()/2)
		if shared {
			one(0, "classifier (shared)", m.Classifier, c.VocabSize*C)
		} else {
			one(13, "wcls", m.Classifier, c.VocabSize*C)
		}
	}
}

func TestReadErrors(t *testing.T) {
	good := synthetic(small)
	unshared := small
	unshared.SharedClassifier = false
	nan := synthetic(small)
	binary.LittleEndian.PutUint32(nan[HeaderBytes+4*7:], math.Float32bits(float32(math.NaN())))
	cases := []struct {
		name string
		data []byte
		want []string
	}{
		{"empty", nil, []string{"the file has 0 bytes, fewer than the 28-byte header"}},
		{"header only", good[:HeaderBytes], []string{"implies", "the file has 28", "truncated"}},
		{"last float missing", good[:len(good)-4], []string{"implies", "truncated"}},
		{"one byte short", good[:len(good)-1], []string{"truncated"}},
		{"trailing bytes", append(append([]byte(nil), good...), 0, 0, 0, 0), []string{"longer than that"}},
		// A shared-classifier header on an unshared file: wcls is extra.
		{"wcls without the flag", append(header(small), synthetic(unshared)[HeaderBytes:]...), []string{"longer than that"}},
		{"bad header", append(header(Config{Dim: 8, HiddenDim: 6, NumLayers: 0, NumHeads: 2, NumKVHeads: 1, VocabSize: 5, SeqLen: 3}), good[HeaderBytes:]...), []string{"n_layers is 0"}},
		{"NaN weight", nan, []string{"token_embedding", "element 7 is NaN", "corrupt"}},
	}
	for _, tc := range cases {
		p := writeTemp(t, tc.data)
		_, err := Read(p)
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), p) {
			t.Errorf("%s: error %q does not name the file", tc.name, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not contain %q", tc.name, err, w)
			}
		}
	}
	if _, err := Read(filepath.Join(t.TempDir(), "missing.bin")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: got %v, want a not-exist error", err)
	}
}

// llama2cRoPE rotates q (nHeads heads of headDim) at position pos the way
// run.c does: interleaved pairs (2i, 2i+1) of each head, frequency
// theta^(-2i/headDim).
func llama2cRoPE(q []float64, headDim, pos int, theta float64) []float64 {
	out := append([]float64(nil), q...)
	for j := 0; j < len(q); j += 2 {
		hd := j % headDim
		freq := 1 / math.Pow(theta, float64(hd)/float64(headDim))
		s, c := math.Sincos(float64(pos) * freq)
		out[j] = q[j]*c - q[j+1]*s
		out[j+1] = q[j]*s + q[j+1]*c
	}
	return out
}

// hfRoPE is transformers' apply_rotary_pos_emb: q*cos + rotate_half(q)*sin
// per head, with cos/sin = cat(freqs, freqs) and inv_freq[i] =
// theta^(-2i/headDim).
func hfRoPE(q []float64, headDim, pos int, theta float64) []float64 {
	out := make([]float64, len(q))
	half := headDim / 2
	for h := 0; h < len(q)/headDim; h++ {
		x := q[h*headDim : (h+1)*headDim]
		o := out[h*headDim : (h+1)*headDim]
		for d := 0; d < headDim; d++ {
			i := d % half
			freq := 1 / math.Pow(theta, float64(2*i)/float64(headDim))
			s, c := math.Sincos(float64(pos) * freq)
			var rot float64 // rotate_half(x)[d] = -x[d+half] for d < half, x[d-half] otherwise
			if d < half {
				rot = -x[d+half]
			} else {
				rot = x[d-half]
			}
			o[d] = x[d]*c + rot*s
		}
	}
	return out
}

// permuteVec applies PermuteRoPERows to a vector (rows of width 1).
func permuteVec(v []float64, nHeads, headDim int) []float64 {
	f := make([]float32, len(v))
	for i, x := range v {
		f[i] = float32(i) // carry indices, not values, to keep float64 precision
		_ = x
	}
	idx := PermuteRoPERows(f, nHeads, headDim, 1)
	out := make([]float64, len(v))
	for i, k := range idx {
		out[i] = v[int(k)]
	}
	return out
}

func TestPermuteRoPEMatchesRotateHalf(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, hd := range [][2]int{{1, 2}, {2, 4}, {3, 8}, {8, 8}, {4, 16}} {
		nHeads, headDim := hd[0], hd[1]
		for _, pos := range []int{0, 1, 5, 17, 511} {
			q := make([]float64, nHeads*headDim)
			k := make([]float64, nHeads*headDim)
			for i := range q {
				q[i], k[i] = rng.NormFloat64(), rng.NormFloat64()
			}
			// Rotating then permuting (llama2.c, then our layout) must equal
			// permuting then rotating the HF way.
			want := permuteVec(llama2cRoPE(q, headDim, pos, 10000), nHeads, headDim)
			got := hfRoPE(permuteVec(q, nHeads, headDim), headDim, pos, 10000)
			for i := range want {
				if math.Abs(got[i]-want[i]) > 1e-12 {
					t.Fatalf("heads %d, head dim %d, pos %d: element %d: HF rotation of the permuted vector %v, permuted llama2.c rotation %v",
						nHeads, headDim, pos, i, got[i], want[i])
				}
			}
			// And so every attention score is unchanged: q_m . k_n with q
			// at position pos and k at position 3.
			if pos > 0 {
				a := dotHeads(llama2cRoPE(q, headDim, pos, 10000), llama2cRoPE(k, headDim, 3, 10000), headDim)
				b := dotHeads(hfRoPE(permuteVec(q, nHeads, headDim), headDim, pos, 10000), hfRoPE(permuteVec(k, nHeads, headDim), headDim, 3, 10000), headDim)
				for h := range a {
					if math.Abs(a[h]-b[h]) > 1e-10 {
						t.Fatalf("head %d: score %v (llama2.c) vs %v (converted)", h, a[h], b[h])
					}
				}
			}
		}
	}
	// Without the permutation the two conventions disagree (so the test
	// above can fail).
	q := []float64{1, 2, 3, 4}
	a, b := llama2cRoPE(q, 4, 1, 10000), hfRoPE(q, 4, 1, 10000)
	if math.Abs(a[1]-b[1]) < 1e-3 {
		t.Fatalf("llama2.c and HF rotations agree on an unpermuted vector: %v vs %v", a, b)
	}
}

func dotHeads(q, k []float64, headDim int) []float64 {
	out := make([]float64, len(q)/headDim)
	for i := range q {
		out[i/headDim] += q[i] * k[i]
	}
	return out
}

func TestPermuteRoPERowsExplicit(t *testing.T) {
	// Two heads of dim 4, rows of width 2: row r holds (10r, 10r+1).
	w := make([]float32, 8*2)
	for r := 0; r < 8; r++ {
		w[2*r], w[2*r+1] = float32(10*r), float32(10*r+1)
	}
	got := PermuteRoPERows(w, 2, 4, 2)
	order := []int{0, 2, 1, 3, 4, 6, 5, 7} // HF row i <- llama2.c row order[i]
	for i, r := range order {
		if got[2*i] != float32(10*r) || got[2*i+1] != float32(10*r+1) {
			t.Fatalf("row %d = (%v, %v), want llama2.c row %d", i, got[2*i], got[2*i+1], r)
		}
	}
}

func TestWritePhi3Layout(t *testing.T) {
	for _, shared := range []bool{true, false} {
		c := small
		c.SharedClassifier = shared
		m, err := Read(writeTemp(t, synthetic(c)))
		if err != nil {
			t.Fatal(err)
		}
		dir := filepath.Join(t.TempDir(), "phi3")
		if err := m.WritePhi3(dir); err != nil {
			t.Fatal(err)
		}
		cfg, err := finetune.LoadConfig(dir)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.HiddenSize != 8 || cfg.IntermediateSize != 6 || cfg.NumLayers != 2 || cfg.NumHeads != 2 || cfg.NumKVHeads != 1 ||
			cfg.VocabSize != 5 || cfg.MaxPositionEmbeddings != 3 || cfg.RopeTheta != 10000 || cfg.RMSNormEps != 1e-5 ||
			cfg.SlidingWindow != 0 || cfg.TieWordEmbeddings || cfg.BOSTokenID != 1 || len(cfg.EOSTokenIDs) != 1 || cfg.EOSTokenIDs[0] != 2 ||
			cfg.TorchDType != "float32" || cfg.Architecture != "Phi3ForCausalLM" {
			t.Fatalf("config.json parsed to %+v", cfg)
		}
		f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		get := func(name string, shape ...int) []float32 {
			t.Helper()
			ti, err := f.Tensor(name)
			if err != nil {
				t.Fatal(err)
			}
			if ti.DType != safetensors.F32 || !slices.Equal(ti.Shape, shape) {
				t.Fatalf("%s: %s %v, want F32 %v", name, ti.DType, ti.Shape, shape)
			}
			v, err := safetensors.ToFloat32(ti)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		C, I, D := c.Dim, c.HiddenDim, c.HeadDim()
		if n := len(f.Names()); n != 2+6*c.NumLayers+1 {
			t.Errorf("%d tensors, want %d: %v", n, 3+6*c.NumLayers, f.Names())
		}
		want := func(name string, got []float32, src []float32) {
			t.Helper()
			for i := range src {
				if got[i] != src[i] {
					t.Fatalf("%s[%d] = %v, want %v", name, i, got[i], src[i])
				}
			}
		}
		want("embed", get("model.embed_tokens.weight", 5, C), m.TokenEmbedding)
		want("lm_head", get("lm_head.weight", 5, C), m.Classifier)
		want("norm", get("model.norm.weight", C), m.RMSFinal)
		for l := 0; l < c.NumLayers; l++ {
			p := fmt.Sprintf("model.layers.%d.", l)
			L := m.Layers[l]
			want("input_layernorm", get(p+"input_layernorm.weight", C), L.RMSAtt)
			want("post_attention_layernorm", get(p+"post_attention_layernorm.weight", C), L.RMSFFN)
			want("o_proj", get(p+"self_attn.o_proj.weight", C, C), L.WO)
			want("down_proj", get(p+"mlp.down_proj.weight", C, I), L.W2)
			gu := get(p+"mlp.gate_up_proj.weight", 2*I, C)
			want("gate", gu[:I*C], L.W1)
			want("up", gu[I*C:], L.W3)
			qkv := get(p+"self_attn.qkv_proj.weight", (2+2*1)*D, C)
			// q: HF row h*D + i (i < D/2) is llama2.c row h*D + 2i; row
			// h*D + D/2 + i is h*D + 2i + 1. k likewise; v unchanged.
			src := func(r int) int { h, d := r/D, r%D; return h*D + 2*(d%(D/2)) + d/(D/2) }
			for r := 0; r < C; r++ {
				want("q row", qkv[r*C:(r+1)*C], L.WQ[src(r)*C:(src(r)+1)*C])
			}
			for r := 0; r < D; r++ {
				want("k row", qkv[(C+r)*C:(C+r+1)*C], L.WK[src(r)*C:(src(r)+1)*C])
			}
			want("v", qkv[(C+D)*C:], L.WV)
		}
		f.Close()
	}
}
