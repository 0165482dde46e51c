package llama2c_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/llama2c"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// The greedy continuation every test here checks: BOS, then 120 tokens.
const newTokens = 120

// nearTie is the top-1/top-2 logit gap below which two float32
// implementations may legitimately pick different tokens; past such a step
// the sequences are not compared (and the test says so).
const nearTie = 1e-4

// stories returns a path under ../shared/data/stories260K, skipping the
// test when the shared data folder is absent.
func stories(t *testing.T, name string) string {
	t.Helper()
	return testutil.SharedData(t, "stories260K", name)
}

func readStories(t *testing.T) *llama2c.Model {
	t.Helper()
	m, err := llama2c.Read(stories(t, "stories260K.bin"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestConvertStories260K(t *testing.T) {
	m := readStories(t)
	want := llama2c.Config{Dim: 64, HiddenDim: 172, NumLayers: 5, NumHeads: 8, NumKVHeads: 4, VocabSize: 512, SeqLen: 512, SharedClassifier: true}
	if m.Config != want {
		t.Fatalf("header %+v, want %+v", m.Config, want)
	}
	// The file's RoPE tables are cos/sin(pos * 10000^(-2i/D)) for pair i:
	// theta 10000, and pair i uses the frequency rotate_half gives feature
	// i, which is what the q/k row permutation relies on.
	D := m.Config.HeadDim()
	var maxErr float64
	for pos := 0; pos < m.Config.SeqLen; pos++ {
		for i := 0; i < D/2; i++ {
			ang := float64(pos) / math.Pow(10000, float64(2*i)/float64(D))
			s, c := math.Sincos(ang)
			e := math.Max(math.Abs(float64(m.FreqCisReal[pos*D/2+i])-c), math.Abs(float64(m.FreqCisImag[pos*D/2+i])-s))
			maxErr = math.Max(maxErr, e)
		}
	}
	// float32 angles up to 511 rad: a few ulps of 511 is ~1e-4.
	if maxErr > 2e-4 {
		t.Fatalf("freq_cis differs from cos/sin(pos * 10000^(-2i/D)) by up to %g", maxErr)
	}

	dir := t.TempDir()
	if err := m.WritePhi3(dir); err != nil {
		t.Fatal(err)
	}
	cfg, err := finetune.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.QKVOut() != 128 || cfg.HeadDim() != 8 || cfg.VocabSize != 512 || cfg.MaxPositionEmbeddings != 512 || cfg.TieWordEmbeddings {
		t.Fatalf("config %+v", cfg)
	}
	f, err := safetensors.Open(filepath.Join(dir, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	shapes := map[string][]int{
		"model.embed_tokens.weight": {512, 64},
		"lm_head.weight":            {512, 64},
		"model.norm.weight":         {64},
	}
	for l := 0; l < 5; l++ {
		p := fmt.Sprintf("model.layers.%d.", l)
		shapes[p+"input_layernorm.weight"] = []int{64}
		shapes[p+"post_attention_layernorm.weight"] = []int{64}
		shapes[p+"self_attn.qkv_proj.weight"] = []int{(8 + 2*4) * 8, 64}
		shapes[p+"self_attn.o_proj.weight"] = []int{64, 64}
		shapes[p+"mlp.gate_up_proj.weight"] = []int{2 * 172, 64}
		shapes[p+"mlp.down_proj.weight"] = []int{64, 172}
	}
	if got := f.Names(); len(got) != len(shapes) {
		t.Errorf("%d tensors, want %d: %v", len(got), len(shapes), got)
	}
	for name, shape := range shapes {
		dt, sh, ok := f.Info(name)
		if !ok {
			t.Errorf("missing %s", name)
			continue
		}
		if dt != safetensors.F32 || fmt.Sprint(sh) != fmt.Sprint(shape) {
			t.Errorf("%s: %s %v, want F32 %v", name, dt, sh, shape)
		}
	}
	// The whole checkpoint passes the engine's loader and its shape checks.
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	ck.Close()
}

// ---------------------------------------------------------------------------
// An independent reference: llama2.c's run.c forward, ported line for line
// (float32, interleaved RoPE, the original unfused, unpermuted weights).

type runState struct {
	m                         *llama2c.Model
	keyCache, valueCache      [][]float32 // [layer][pos*kvDim]
	x, xb, xb2, hb, hb2, q, k []float32
	v, att, logits            []float32
}

func newRunState(m *llama2c.Model, maxSeq int) *runState {
	c := m.Config
	s := &runState{m: m}
	s.x, s.xb, s.xb2 = make([]float32, c.Dim), make([]float32, c.Dim), make([]float32, c.Dim)
	s.hb, s.hb2 = make([]float32, c.HiddenDim), make([]float32, c.HiddenDim)
	s.q, s.k, s.v = make([]float32, c.Dim), make([]float32, c.KVDim()), make([]float32, c.KVDim())
	s.att, s.logits = make([]float32, maxSeq), make([]float32, c.VocabSize)
	for l := 0; l < c.NumLayers; l++ {
		s.keyCache = append(s.keyCache, make([]float32, maxSeq*c.KVDim()))
		s.valueCache = append(s.valueCache, make([]float32, maxSeq*c.KVDim()))
	}
	return s
}

func rmsnorm(o, x, w []float32) {
	var ss float32
	for _, v := range x {
		ss += v * v
	}
	ss = ss/float32(len(x)) + 1e-5
	ss = 1 / float32(math.Sqrt(float64(ss)))
	for j := range o {
		o[j] = w[j] * (ss * x[j])
	}
}

// matmul: xout[i] = sum_j w[i*n+j] x[j], w [d, n].
func matmul(xout, x, w []float32) {
	n := len(x)
	for i := range xout {
		var v float32
		row := w[i*n : (i+1)*n]
		for j, xj := range x {
			v += row[j] * xj
		}
		xout[i] = v
	}
}

func softmax(x []float32) {
	mx := x[0]
	for _, v := range x[1:] {
		mx = max(mx, v)
	}
	var sum float32
	for i, v := range x {
		x[i] = float32(math.Exp(float64(v - mx)))
		sum += x[i]
	}
	for i := range x {
		x[i] /= sum
	}
}

// forward is run.c's transformer(token, pos); it returns the logits.
func (s *runState) forward(token int32, pos int) []float32 {
	m, c := s.m, s.m.Config
	D, kvDim, kvMul := c.HeadDim(), c.KVDim(), c.NumHeads/c.NumKVHeads
	copy(s.x, m.TokenEmbedding[int(token)*c.Dim:(int(token)+1)*c.Dim])
	for l, L := range m.Layers {
		rmsnorm(s.xb, s.x, L.RMSAtt)
		matmul(s.q, s.xb, L.WQ)
		matmul(s.k, s.xb, L.WK)
		matmul(s.v, s.xb, L.WV)
		for i := 0; i < c.Dim; i += 2 {
			headDim := i % D
			freq := float32(1 / math.Pow(10000, float64(headDim)/float64(D)))
			val := float32(pos) * freq
			fcr, fci := float32(math.Cos(float64(val))), float32(math.Sin(float64(val)))
			rotn := 1
			if i < kvDim {
				rotn = 2
			}
			for v := 0; v < rotn; v++ {
				vec := s.q
				if v == 1 {
					vec = s.k
				}
				v0, v1 := vec[i], vec[i+1]
				vec[i] = v0*fcr - v1*fci
				vec[i+1] = v0*fci + v1*fcr
			}
		}
		copy(s.keyCache[l][pos*kvDim:], s.k)
		copy(s.valueCache[l][pos*kvDim:], s.v)
		for h := 0; h < c.NumHeads; h++ {
			q := s.q[h*D : (h+1)*D]
			att := s.att[:pos+1]
			for t := 0; t <= pos; t++ {
				k := s.keyCache[l][t*kvDim+(h/kvMul)*D:]
				var score float32
				for i := 0; i < D; i++ {
					score += q[i] * k[i]
				}
				att[t] = score / float32(math.Sqrt(float64(D)))
			}
			softmax(att)
			xb := s.xb[h*D : (h+1)*D]
			clear(xb)
			for t := 0; t <= pos; t++ {
				v := s.valueCache[l][t*kvDim+(h/kvMul)*D:]
				for i := 0; i < D; i++ {
					xb[i] += att[t] * v[i]
				}
			}
		}
		matmul(s.xb2, s.xb, L.WO)
		for i := range s.x {
			s.x[i] += s.xb2[i]
		}
		rmsnorm(s.xb, s.x, L.RMSFFN)
		matmul(s.hb, s.xb, L.W1)
		matmul(s.hb2, s.xb, L.W3)
		for i, v := range s.hb {
			s.hb[i] = v * (1 / (1 + float32(math.Exp(float64(-v))))) * s.hb2[i]
		}
		matmul(s.xb, s.hb, L.W2)
		for i := range s.x {
			s.x[i] += s.xb[i]
		}
	}
	rmsnorm(s.x, s.x, m.RMSFinal)
	matmul(s.logits, s.x, m.Classifier)
	return s.logits
}

// top2 returns the argmax (first maximum) and its gap to the runner-up.
func top2(logits []float32) (int32, float64) {
	best, second := 0, -1
	for i := 1; i < len(logits); i++ {
		switch {
		case logits[i] > logits[best]:
			best, second = i, best
		case second < 0 || logits[i] > logits[second]:
			second = i
		}
	}
	return int32(best), float64(logits[best]) - float64(logits[second])
}

// llama2cGreedy is run.c's generate loop with temperature 0 and no stop.
func llama2cGreedy(m *llama2c.Model, prompt []int32, n int) (ids []int32, margins []float64) {
	s := newRunState(m, len(prompt)+n)
	tok := prompt[0]
	for pos := 0; pos < len(prompt)+n-1; pos++ {
		logits := s.forward(tok, pos)
		if pos+1 < len(prompt) {
			tok = prompt[pos+1]
			continue
		}
		next, gap := top2(logits)
		ids, margins = append(ids, next), append(margins, gap)
		tok = next
	}
	return ids, margins
}

// ---------------------------------------------------------------------------

// greedyGolden is finetune/testdata/golden/stories260k/greedy.json, written
// by finetune/testdata/gen_stories_greedy.py (transformers, float32).
type greedyGolden struct {
	Prompt   []int32           `json:"prompt"`
	IDs      []int32           `json:"ids"`
	Margins  []float64         `json:"margins"`
	Versions map[string]string `json:"versions"`
}

func loadGreedyGolden(t *testing.T) *greedyGolden {
	t.Helper()
	p := filepath.Join(testutil.RepoRoot(t), "finetune", "testdata", "golden", "stories260k", "greedy.json")
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		t.Skipf("%s is missing: run finetune/testdata/gen_stories_greedy.py on a machine with transformers (see finetune/testdata/README.md) and commit its output", p)
	}
	if err != nil {
		t.Fatal(err)
	}
	var g greedyGolden
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if len(g.Prompt) != 1 || g.Prompt[0] != 1 || len(g.IDs) != newTokens || len(g.Margins) != newTokens {
		t.Fatalf("%s: prompt %v, %d ids, %d margins; want [1], %d, %d", p, g.Prompt, len(g.IDs), len(g.Margins), newTokens, newTokens)
	}
	return &g
}

// compareGreedy checks got against want token by token. At the first
// difference it accepts the rest only if the reference's top-2 gap there
// (margins[i], when given) is a near tie.
func compareGreedy(t *testing.T, what string, got, want []int32, margins []float64, tok *vocab) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d tokens, want %d\n got: %s\nwant: %s", what, len(got), len(want), tok.decode(got), tok.decode(want))
	}
	for i := range want {
		if got[i] == want[i] {
			continue
		}
		if margins != nil && margins[i] < nearTie {
			t.Logf("%s: token %d differs (%d vs %d) where the reference's top-2 gap is %.2g, a near tie; the %d tokens before it match",
				what, i, got[i], want[i], margins[i], i)
			return
		}
		gap := ""
		if margins != nil {
			gap = fmt.Sprintf(" (reference top-2 gap there %.3g)", margins[i])
		}
		t.Fatalf("%s: first difference at new token %d: %d vs %d%s\n got: %q\nwant: %q\n got ids: %v\nwant ids: %v",
			what, i, got[i], want[i], gap, tok.decode(got), tok.decode(want), got, want)
	}
}

// engineModel writes m as a Phi-3 checkpoint and loads it into the engine
// (CPU backend, fp32, no quantization, no LoRA), freed when the test ends.
func engineModel(t *testing.T, m *llama2c.Model) *finetune.Model {
	t.Helper()
	dir := t.TempDir()
	if err := m.WritePhi3(dir); err != nil {
		t.Fatal(err)
	}
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer ck.Close()
	b := finetune.NewCPUBackend(finetune.CPUOptions{})
	t.Cleanup(func() { b.Close() })
	model, err := finetune.LoadModel(b, ck, finetune.ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(model.Free)
	return model
}

// TestTransformersAgreesWithLlama2c: the converted checkpoint, run by
// transformers (the golden file), continues BOS exactly as llama2.c's own
// forward does on the original file. This checks the converter against two
// independent implementations and needs no engine.
func TestTransformersAgreesWithLlama2c(t *testing.T) {
	g := loadGreedyGolden(t)
	m := readStories(t)
	ids, margins := llama2cGreedy(m, []int32{1}, newTokens)
	tok := loadVocab(t)
	t.Logf("llama2.c greedy: %q", tok.decode(ids))
	compareGreedy(t, "llama2.c port vs transformers (golden)", ids, g.IDs, minMargins(margins, g.Margins), tok)
}

// TestEngineGreedyStories260K: the engine's Generate on the converted
// checkpoint (CPU backend, fp32, no quantization, no LoRA) continues BOS
// like llama2.c's forward and like transformers (when the golden file is
// there).
func TestEngineGreedyStories260K(t *testing.T) {
	m := readStories(t)
	model := engineModel(t, m)
	got, err := model.Generate([]int32{1}, finetune.GenerateOptions{MaxNewTokens: newTokens, Temperature: 0, IgnoreEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	tok := loadVocab(t)
	t.Logf("engine greedy: %q", tok.decode(got))

	ref, margins := llama2cGreedy(m, []int32{1}, newTokens)
	compareGreedy(t, "engine vs llama2.c port", got, ref, margins, tok)

	g := loadGreedyGolden(t)
	compareGreedy(t, "engine vs transformers (golden)", got, g.IDs, g.Margins, tok)
}

// TestEngineLogitsStories260K compares the engine's full-sequence logits
// with transformers' for the first 8 positions of the golden sequence.
func TestEngineLogitsStories260K(t *testing.T) {
	g := loadGreedyGolden(t)
	p := filepath.Join(testutil.RepoRoot(t), "finetune", "testdata", "golden", "stories260k", "logits_first8.safetensors")
	f, err := safetensors.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ti, err := f.Tensor("logits")
	if err != nil {
		t.Fatal(err)
	}
	want, err := safetensors.ToFloat32(ti)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ti.Shape) != "[8 512]" {
		t.Fatalf("%s: logits shape %v, want [8 512]", p, ti.Shape)
	}
	m := readStories(t)
	model := engineModel(t, m)
	ids := append([]int32{1}, g.IDs[:7]...)
	pos := []int32{0, 1, 2, 3, 4, 5, 6, 7}
	got, err := model.Logits(&finetune.Batch{B: 1, S: 8, InputIDs: ids, PositionIDs: pos})
	if err != nil {
		t.Fatal(err)
	}
	var num, den float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	rel := math.Sqrt(num / den)
	t.Logf("engine vs transformers logits, first 8 positions: relative error %.3g", rel)
	if rel > 1e-5 {
		t.Fatalf("engine logits differ from transformers' by relative error %g (> 1e-5)", rel)
	}
}

// minMargins is the elementwise smaller gap of two references: a near tie
// in either makes a difference there acceptable.
func minMargins(a, b []float64) []float64 {
	out := make([]float64, len(a))
	for i := range a {
		out[i] = math.Min(a[i], b[i])
	}
	return out
}

// ---------------------------------------------------------------------------
// llama2.c's tokenizer.bin, only to print text in test messages.

type vocab struct{ pieces []string }

func loadVocab(t *testing.T) *vocab {
	t.Helper()
	b, err := os.ReadFile(stories(t, "tok512.bin"))
	if err != nil {
		t.Logf("no tokenizer for messages: %v", err)
		return &vocab{}
	}
	v := &vocab{}
	// int32 max_token_length, then per token: float32 score, int32 len, bytes.
	for off := 4; off+8 <= len(b); {
		n := int(binary.LittleEndian.Uint32(b[off+4:]))
		off += 8
		if n < 0 || off+n > len(b) {
			break
		}
		v.pieces = append(v.pieces, string(b[off:off+n]))
		off += n
	}
	return v
}

// decode joins pieces the way run.c prints them: raw-byte pieces <0xXX>
// become the byte, and the leading space after BOS is dropped.
func (v *vocab) decode(ids []int32) string {
	if v == nil || len(v.pieces) == 0 {
		return fmt.Sprint(ids)
	}
	var sb strings.Builder
	prev := int32(1)
	for _, id := range ids {
		if int(id) >= len(v.pieces) || id < 0 {
			fmt.Fprintf(&sb, "<%d>", id)
			continue
		}
		p := v.pieces[id]
		if prev == 1 {
			p = strings.TrimPrefix(p, " ")
		}
		if len(p) == 6 && strings.HasPrefix(p, "<0x") && strings.HasSuffix(p, ">") {
			if x, err := strconv.ParseUint(p[3:5], 16, 8); err == nil {
				p = string([]byte{byte(x)})
			}
		}
		sb.WriteString(p)
		prev = id
	}
	return sb.String()
}
