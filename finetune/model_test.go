package finetune

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

// A small random Phi-3 (GQA, 2 layers, odd vocabulary) for model tests.
func testConfig() *Config {
	return &Config{
		Architecture: "Phi3ForCausalLM", ModelType: "phi3",
		HiddenSize: 16, IntermediateSize: 10, NumLayers: 2, NumHeads: 4, NumKVHeads: 2,
		VocabSize: 23, RMSNormEps: 1e-5, RopeTheta: 10000, PartialRotaryFactor: 1,
		MaxPositionEmbeddings: 64, HiddenAct: "silu", EOSTokenIDs: []int{2}, PadTokenID: -1,
	}
}

// randomWeights returns Hugging Face-named random weights for cfg: matrices
// N(0, 1/in) (large enough that every layer matters), norms 1 + 0.1 N(0,1).
func randomWeights(cfg *Config, seed uint64) map[string][]float32 {
	w := map[string][]float32{}
	C, I, V := cfg.HiddenSize, cfg.IntermediateSize, cfg.VocabSize
	n := uint64(0)
	mat := func(name string, out, in int) {
		n++
		w[name] = randn(out*in, DeriveSeed(seed, n), float32(1/math.Sqrt(float64(in))))
	}
	norm := func(name string) {
		n++
		v := randn(C, DeriveSeed(seed, n), 0.1)
		for k := range v {
			v[k] += 1
		}
		w[name] = v
	}
	mat("model.embed_tokens.weight", V, C)
	w["model.embed_tokens.weight"] = randn(V*C, DeriveSeed(seed, 999), 1)
	mat("lm_head.weight", V, C)
	norm("model.norm.weight")
	for i := 0; i < cfg.NumLayers; i++ {
		p := fmt.Sprintf("model.layers.%d.", i)
		norm(p + "input_layernorm.weight")
		norm(p + "post_attention_layernorm.weight")
		mat(p+"self_attn.qkv_proj.weight", cfg.QKVOut(), C)
		mat(p+"self_attn.o_proj.weight", C, cfg.NumHeads*cfg.HeadDim())
		mat(p+"mlp.gate_up_proj.weight", 2*I, C)
		mat(p+"mlp.down_proj.weight", C, I)
	}
	return w
}

func weightGetter(cfg *Config, w map[string][]float32) func(string) ([]float32, []int, error) {
	return func(name string) ([]float32, []int, error) {
		d, ok := w[name]
		if !ok {
			return nil, nil, fmt.Errorf("no tensor %q", name)
		}
		C := cfg.HiddenSize
		var shape []int
		switch {
		case strings.HasSuffix(name, "norm.weight"):
			shape = []int{C}
		case strings.Contains(name, "embed_tokens") || strings.HasPrefix(name, "lm_head"):
			shape = []int{cfg.VocabSize, C}
		case strings.Contains(name, "qkv_proj"):
			shape = []int{cfg.QKVOut(), C}
		case strings.Contains(name, "o_proj"):
			shape = []int{C, cfg.NumHeads * cfg.HeadDim()}
		case strings.Contains(name, "gate_up_proj"):
			shape = []int{2 * cfg.IntermediateSize, C}
		case strings.Contains(name, "down_proj"):
			shape = []int{C, cfg.IntermediateSize}
		}
		return d, shape, nil
	}
}

func allLinear(r int, alpha, dropout float32) *LoRAConfig {
	return &LoRAConfig{R: r, Alpha: alpha, Dropout: dropout, TargetModules: []string{"all-linear"}, Bias: "none", Seed: 5}
}

// testModel builds the random model; with LoRA, B is set to random values
// so that every gradient is non-zero.
func testModel(t testing.TB, b Backend, opts ModelOptions) *Model {
	t.Helper()
	return testModelOf(t, b, testConfig(), opts)
}

// testModelOf is testModel for another config.
func testModelOf(t testing.TB, b Backend, cfg *Config, opts ModelOptions) *Model {
	t.Helper()
	m, err := NewModel(b, cfg, weightGetter(cfg, randomWeights(cfg, 1)), opts)
	if err != nil {
		t.Fatal(err)
	}
	for k, p := range m.LoRAParams() {
		if strings.Contains(p.Name, "lora_B") {
			if err := m.SetLoRA(p.Name, randn(p.Numel(), uint64(100+k), 0.3)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return m
}

// testBatch: 2 rows of 8; row 0 packs examples of 3 and 5 tokens, row 1
// one of 8; prompts (the first 1-2 tokens of each example) are ignored.
func testBatch() *Batch {
	ids := []int32{1, 5, 9, 1, 7, 7, 20, 3, 1, 4, 8, 15, 16, 22, 0, 6}
	pos := []int32{0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 7}
	labels := []int32{-100, 5, 9, -100, -100, 7, 20, 3, -100, -100, 8, 15, 16, 22, 0, 6}
	return &Batch{B: 2, S: 8, InputIDs: ids, PositionIDs: pos, Labels: labels}
}

func TestShiftLabels(t *testing.T) {
	got := ShiftLabels([]int32{1, 2, 3, 4, 5, 6}, 2, 3)
	want := []int32{2, 3, -100, 5, 6, -100}
	for k := range want {
		if got[k] != want[k] {
			t.Fatalf("ShiftLabels = %v, want %v", got, want)
		}
	}
}

// lossAndGrads runs one training step's forward and backward.
func lossAndGrads(t testing.TB, m *Model, batch *Batch, seed uint64) (float64, map[string][]float32) {
	t.Helper()
	m.ZeroGrads()
	loss, _, _, err := m.Forward(batch, true, seed)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Backward(); err != nil {
		t.Fatal(err)
	}
	g := map[string][]float32{}
	for _, p := range m.LoRAParams() {
		g[p.Name] = m.B.Download(p.Grad)
	}
	return loss, g
}

// TestModelGradientsFiniteDifference checks every LoRA gradient of the
// whole model (all four modules, both layers, dropout on, packed rows,
// NF4 base) against central differences of the float32 loss, Richardson-
// extrapolated (error O(h^4)), along two directions per matrix: the
// gradient itself (so the check is relative to |g|) and a random one
// (checked to 5e-4 |g| |d|, the scale Cauchy-Schwarz allows).
func TestModelGradientsFiniteDifference(t *testing.T) {
	for _, quant := range []bool{false, true} {
		t.Run(fmt.Sprintf("nf4=%v", quant), func(t *testing.T) {
			b := testBackend()
			m := testModel(t, b, ModelOptions{Quantize: quant, DoubleQuant: true, LoRA: allLinear(3, 6, 0.1)})
			batch := testBatch()
			const seed = 42
			_, grads := lossAndGrads(t, m, batch, seed)
			if len(m.LoRAParams()) != 2*4*2 {
				t.Fatalf("%d LoRA matrices, want 16", len(m.LoRAParams()))
			}
			for k, p := range m.LoRAParams() {
				w0, _ := m.GetLoRA(p.Name)
				g := grads[p.Name]
				lossAlong := func(dir []float32, s float64) float64 {
					w := make([]float32, len(w0))
					for j := range w {
						w[j] = w0[j] + float32(s*float64(dir[j]))
					}
					if err := m.SetLoRA(p.Name, w); err != nil {
						t.Fatal(err)
					}
					l, _, _, err := m.Forward(batch, true, seed)
					if err != nil {
						t.Fatal(err)
					}
					return l
				}
				random := randn(len(w0), uint64(500+k), 1)
				for _, dir := range [][]float32{g, random} {
					var analytic, dn, gn float64
					for j, d := range dir {
						analytic += float64(d) * float64(g[j])
						dn += float64(d) * float64(d)
						gn += float64(g[j]) * float64(g[j])
					}
					if gn == 0 {
						t.Fatalf("%s: zero gradient", p.Name)
					}
					// h moves each weight by about 4e-3.
					h := 4e-3 / math.Sqrt(dn/float64(len(dir)))
					d1 := (lossAlong(dir, h) - lossAlong(dir, -h)) / (2 * h)
					d2 := (lossAlong(dir, h/2) - lossAlong(dir, -h/2)) / h
					numeric := (4*d2 - d1) / 3
					scale := math.Sqrt(dn * gn)
					if e := math.Abs(numeric-analytic) / scale; e > 5e-4 {
						t.Errorf("%s: directional derivative %.6g, finite difference %.6g (error %.2g of |g||d|)", p.Name, analytic, numeric, e)
					}
				}
				if err := m.SetLoRA(p.Name, w0); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestGradientCheckpointingIsBitwiseEqual(t *testing.T) {
	// Without an adapter on down_proj the recompute skips that module.
	noDown := allLinear(4, 8, 0.2)
	noDown.TargetModules = []string{"qkv_proj", "o_proj", "gate_up_proj"}
	for name, lc := range map[string]*LoRAConfig{"all-linear": allLinear(4, 8, 0.2), "no down_proj": noDown} {
		t.Run(name, func(t *testing.T) {
			b := testBackend()
			m := testModel(t, b, ModelOptions{Quantize: true, DoubleQuant: true, LoRA: lc})
			batch := testBatch()
			loss1, g1 := lossAndGrads(t, m, batch, 7)
			m.GradientCheckpointing = true
			loss2, g2 := lossAndGrads(t, m, batch, 7)
			if loss1 != loss2 {
				t.Fatalf("loss %v with checkpointing, %v without", loss2, loss1)
			}
			for name, a := range g1 {
				for k := range a {
					if math.Float32bits(a[k]) != math.Float32bits(g2[name][k]) {
						t.Fatalf("%s[%d]: %v with checkpointing, %v without", name, k, g2[name][k], a[k])
					}
				}
			}
			// A different step seed draws other dropout masks.
			_, g3 := lossAndGrads(t, m, batch, 8)
			same := true
			for name, a := range g1 {
				for k := range a {
					same = same && a[k] == g3[name][k]
				}
			}
			if same {
				t.Fatal("gradients do not depend on the step seed: dropout is not applied")
			}
		})
	}
}

func TestGradientAccumulationAndNumItems(t *testing.T) {
	b := testBackend()
	m := testModel(t, b, ModelOptions{LoRA: allLinear(2, 4, 0)})
	batch := testBatch()
	_, g1 := lossAndGrads(t, m, batch, 1)
	_, ntok, _, _ := m.Forward(batch, false, 0)
	// num_items_in_batch = 2x the tokens: exactly half the gradient (a
	// power-of-two scale is exact in floating point).
	m.NumItemsInBatch = 2 * ntok
	_, g2 := lossAndGrads(t, m, batch, 1)
	// Two micro-batches accumulate.
	m.ZeroGrads()
	for range 2 {
		if _, _, _, err := m.Forward(batch, true, 1); err != nil {
			t.Fatal(err)
		}
		if err := m.Backward(); err != nil {
			t.Fatal(err)
		}
	}
	m.NumItemsInBatch = 0
	for _, p := range m.LoRAParams() {
		acc := b.Download(p.Grad)
		for k, v := range g1[p.Name] {
			if g2[p.Name][k] != v/2 {
				t.Fatalf("%s[%d]: NumItemsInBatch=2n gives %v, want %v/2", p.Name, k, g2[p.Name][k], v)
			}
			if math.Abs(float64(acc[k]-v)) > 1e-6*math.Abs(float64(v))+1e-9 {
				t.Fatalf("%s[%d]: two accumulated half-gradients %v, want %v", p.Name, k, acc[k], v)
			}
		}
	}
	if err := m.Backward(); err == nil {
		t.Fatal("a second Backward without Forward was accepted")
	}
}

func TestPackedRowsEqualSeparateExamples(t *testing.T) {
	b := testBackend()
	m := testModel(t, b, ModelOptions{LoRA: allLinear(2, 4, 0)})
	packed := testBatch()
	all, err := m.Logits(packed)
	if err != nil {
		t.Fatal(err)
	}
	V := m.Cfg.VocabSize
	// Row 0's second example (tokens 3..7) alone.
	alone, err := m.Logits(&Batch{B: 1, S: 5, InputIDs: packed.InputIDs[3:8], PositionIDs: []int32{0, 1, 2, 3, 4}})
	if err != nil {
		t.Fatal(err)
	}
	for k := range alone {
		if alone[k] != all[3*V+k] {
			t.Fatalf("logit %d of the packed example differs from the example alone: %v vs %v", k, all[3*V+k], alone[k])
		}
	}
}

func TestLoRAInitIsIdentityAndSeeded(t *testing.T) {
	b := testBackend()
	cfg := testConfig()
	w := randomWeights(cfg, 1)
	base, err := NewModel(b, cfg, weightGetter(cfg, w), ModelOptions{})
	if err != nil {
		t.Fatal(err)
	}
	lm, err := NewModel(b, cfg, weightGetter(cfg, w), ModelOptions{LoRA: allLinear(4, 8, 0.1)})
	if err != nil {
		t.Fatal(err)
	}
	batch := testBatch()
	l0, _ := base.Logits(batch)
	l1, _ := lm.Logits(batch)
	for k := range l0 {
		if l0[k] != l1[k] {
			t.Fatalf("B = 0 adapter changes logit %d: %v vs %v", k, l1[k], l0[k])
		}
	}
	if got, want := lm.TrainableParams(), int64(2*4*(cfg.QKVOut()+16+16+16+2*10+16+10+16)); got != want {
		t.Fatalf("trainable params %d, want %d", got, want)
	}
	for _, p := range lm.LoRAParams() {
		v, _ := lm.GetLoRA(p.Name)
		if strings.Contains(p.Name, "lora_B") {
			for _, x := range v {
				if x != 0 {
					t.Fatalf("%s is not zero-initialised", p.Name)
				}
			}
			continue
		}
		in := p.Shape[1]
		bound := 1 / math.Sqrt(float64(in))
		var mx float64
		for _, x := range v {
			mx = math.Max(mx, math.Abs(float64(x)))
		}
		if mx > bound || mx < 0.5*bound {
			t.Fatalf("%s: max |A| %v, want close to and below 1/sqrt(in) = %v", p.Name, mx, bound)
		}
	}
	// Same seed, same A; another seed, another A.
	again, _ := NewModel(b, cfg, weightGetter(cfg, w), ModelOptions{LoRA: allLinear(4, 8, 0.1)})
	other := allLinear(4, 8, 0.1)
	other.Seed = 6
	diff, _ := NewModel(b, cfg, weightGetter(cfg, w), ModelOptions{LoRA: other})
	name := PEFTName(1, modGateUp, "A")
	a1, _ := lm.GetLoRA(name)
	a2, _ := again.GetLoRA(name)
	a3, _ := diff.GetLoRA(name)
	if a1[0] != a2[0] || a1[0] == a3[0] {
		t.Fatal("lora_A initialisation is not a function of the seed")
	}
	if name != "base_model.model.model.layers.1.mlp.gate_up_proj.lora_A.weight" {
		t.Fatalf("PEFT name %q", name)
	}
}

func TestLoRAConfigValidation(t *testing.T) {
	ok := []struct {
		targets []string
		want    [numModules]bool
	}{
		{[]string{"all-linear"}, [numModules]bool{true, true, true, true}},
		{[]string{"qkv_proj", "down_proj"}, [numModules]bool{true, false, false, true}},
		{[]string{"self_attn.o_proj", "gate_up_proj"}, [numModules]bool{false, true, true, false}},
	}
	for _, c := range ok {
		lc := &LoRAConfig{R: 8, Alpha: 16, TargetModules: c.targets}
		got, err := lc.Validate()
		if err != nil || got != c.want {
			t.Fatalf("%v: %v %v, want %v", c.targets, got, err, c.want)
		}
	}
	bad := []struct {
		cfg  LoRAConfig
		want string
	}{
		{LoRAConfig{R: 8, Alpha: 16, TargetModules: []string{"q_proj"}}, "valid names: qkv_proj, o_proj, gate_up_proj, down_proj"},
		{LoRAConfig{R: 8, Alpha: 16, TargetModules: []string{"lm_head"}}, "valid names"},
		{LoRAConfig{R: 8, Alpha: 16, TargetModules: []string{"all-linear"}, Bias: "all"}, "not implemented"},
		{LoRAConfig{R: 0, Alpha: 16, TargetModules: []string{"all-linear"}}, "r is 0"},
		{LoRAConfig{R: 8, Alpha: 16, Dropout: 1, TargetModules: []string{"all-linear"}}, "lora_dropout"},
		{LoRAConfig{R: 8, Alpha: 16}, "target_modules is empty"},
	}
	for _, c := range bad {
		if _, err := c.cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one containing %q", c.cfg, err, c.want)
		}
	}
	// Only the targeted modules get adapters.
	b := testBackend()
	cfg := testConfig()
	m, err := NewModel(b, cfg, weightGetter(cfg, randomWeights(cfg, 1)), ModelOptions{LoRA: &LoRAConfig{R: 2, Alpha: 2, TargetModules: []string{"o_proj"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.LoRAParams()) != 4 || m.Layers[0].QKV.LoRA != nil || m.Layers[1].O.LoRA == nil {
		t.Fatalf("o_proj only: %d matrices", len(m.LoRAParams()))
	}
}

func TestModelInputErrors(t *testing.T) {
	b := testBackend()
	m := testModel(t, b, ModelOptions{LoRA: allLinear(2, 4, 0)})
	bad := testBatch()
	bad.InputIDs = append([]int32(nil), bad.InputIDs...)
	bad.InputIDs[3] = 23
	if _, _, _, err := m.Forward(bad, true, 0); err == nil || !strings.Contains(err.Error(), "outside the vocabulary") {
		t.Fatalf("out-of-vocabulary id: %v", err)
	}
	short := testBatch()
	short.Labels = short.Labels[:3]
	if _, _, _, err := m.Forward(short, false, 0); err == nil {
		t.Fatal("short labels accepted")
	}
	if err := m.SetLoRA("nope", nil); err == nil {
		t.Fatal("unknown LoRA name accepted")
	}
	cfg := testConfig()
	w := randomWeights(cfg, 1)
	w["model.layers.1.mlp.down_proj.weight"] = w["model.layers.1.mlp.down_proj.weight"][:7]
	get := weightGetter(cfg, w)
	wrong := func(name string) ([]float32, []int, error) {
		d, s, err := get(name)
		if strings.Contains(name, "layers.1.mlp.down_proj") {
			s = []int{7}
		}
		return d, s, err
	}
	if _, err := NewModel(b, cfg, wrong, ModelOptions{}); err == nil || !strings.Contains(err.Error(), "model.layers.1.mlp.down_proj.weight") {
		t.Fatalf("wrong shape: %v", err)
	}
	base, _ := NewModel(b, cfg, weightGetter(cfg, randomWeights(cfg, 1)), ModelOptions{})
	if _, _, _, err := base.Forward(testBatch(), true, 0); err == nil {
		t.Fatal("training without an adapter accepted")
	}
}

func TestForwardLossMatchesLogits(t *testing.T) {
	b := testBackend()
	m := testModel(t, b, ModelOptions{LoRA: allLinear(2, 4, 0)})
	batch := testBatch()
	loss, n, correct, err := m.Forward(batch, false, 0)
	if err != nil {
		t.Fatal(err)
	}
	logits, _ := m.Logits(batch)
	V := m.Cfg.VocabSize
	targets := ShiftLabels(batch.Labels, batch.B, batch.S)
	var sum float64
	cnt, hits := 0, 0
	for t2, tg := range targets {
		if tg == IgnoreIndex {
			continue
		}
		row := to64(logits[t2*V : (t2+1)*V])
		mx, arg := row[0], 0
		for v, l := range row {
			if l > mx {
				mx, arg = l, v
			}
		}
		var s float64
		for _, l := range row {
			s += math.Exp(l - mx)
		}
		sum += mx + math.Log(s) - row[tg]
		cnt++
		if arg == int(tg) {
			hits++
		}
	}
	if n != cnt || correct != hits || math.Abs(loss-sum/float64(cnt)) > 1e-6 {
		t.Fatalf("Forward: loss %v n %d correct %d; from logits: %v %d %d", loss, n, correct, sum/float64(cnt), cnt, hits)
	}
	if n != 11 {
		t.Fatalf("%d targets, want 11", n)
	}
}

// TestEmulatedComputeDType: bf16/f16 rounding of the base weights moves
// the logits a little (bf16 more than f16), never a lot.
func TestEmulatedComputeDType(t *testing.T) {
	batch := testBatch()
	ref, _ := testModel(t, testBackend(), ModelOptions{Quantize: true, DoubleQuant: true, LoRA: allLinear(2, 4, 0)}).Logits(batch)
	errs := map[DType]float64{}
	for _, dt := range []DType{BF16, F16} {
		m := testModel(t, NewCPUBackend(CPUOptions{ComputeDType: dt}), ModelOptions{Quantize: true, DoubleQuant: true, LoRA: allLinear(2, 4, 0)})
		got, err := m.Logits(batch)
		if err != nil {
			t.Fatal(err)
		}
		errs[dt] = relErr(got, to64(ref))
	}
	if !(errs[BF16] > 1e-4 && errs[BF16] < 3e-2 && errs[F16] > 1e-6 && errs[F16] < errs[BF16]) {
		t.Fatalf("relative logit change from fp32: bf16 %.3g, f16 %.3g", errs[BF16], errs[F16])
	}
}

// stashCounter is the CPU backend counting its accepted Stash, Unstash and
// LinearForward calls.
type stashCounter struct {
	*CPUBackend
	stashed, unstashed, linears int
	offered                     []int64 // the bytes of every tensor offered to Stash
}

func (b *stashCounter) Stash(key int, t Tensor) bool {
	b.offered = append(b.offered, 4*int64(len(f32(t))))
	ok := b.CPUBackend.Stash(key, t)
	if ok {
		b.stashed++
	}
	return ok
}

func (b *stashCounter) Unstash(key int, t Tensor) {
	b.unstashed++
	b.CPUBackend.Unstash(key, t)
}

func (b *stashCounter) LinearForward(out, x Tensor, l *Linear, h Tensor, seed uint64) {
	b.linears++
	b.CPUBackend.LinearForward(out, x, l, h, seed)
}

// TestCheckpointKeepIsBitwiseEqual: checkpointing that keeps qkv_proj's and
// gate_up_proj's outputs (CheckpointKeepBytes) gives the full recompute's
// loss and gradients bit for bit, over two steps, whether it keeps every
// output, some or none, through the plain ops and the fused ones; the
// outputs are kept layer 0 up while they fit, each comes back once, and
// the recompute skips one linear's matmul for each.
func TestCheckpointKeepIsBitwiseEqual(t *testing.T) {
	cfg := testConfig()
	cfg.NumLayers = 4
	batch := testBatch()
	T := batch.B * batch.S
	qkvB, guB := int64(4*T*cfg.QKVOut()), int64(4*T*2*cfg.IntermediateSize)
	build := func(b Backend) *Model {
		return testModelOf(t, b, cfg, ModelOptions{Quantize: true, DoubleQuant: true, LoRA: allLinear(4, 8, 0.2), GradientCheckpointing: true})
	}
	type step struct {
		loss  float64
		grads map[string][]float32
	}
	run := func(m *Model) []step {
		var out []step
		for _, seed := range []uint64{7, 8} {
			l, g := lossAndGrads(t, m, batch, seed)
			out = append(out, step{l, g})
		}
		return out
	}
	same := func(what string, got, want []step) {
		t.Helper()
		for s := range want {
			if got[s].loss != want[s].loss {
				t.Fatalf("%s, step %d: loss %v, want %v", what, s, got[s].loss, want[s].loss)
			}
			for name, a := range want[s].grads {
				for k := range a {
					if math.Float32bits(a[k]) != math.Float32bits(got[s].grads[name][k]) {
						t.Fatalf("%s, step %d: %s[%d] = %v, want %v", what, s, name, k, got[s].grads[name][k], a[k])
					}
				}
			}
		}
	}
	ref := &stashCounter{CPUBackend: testBackend()}
	want := run(build(ref))
	// Layers 0-2 (not the last) in forward order: qkv0, gu0, qkv1, gu1, ...
	for _, c := range []struct {
		budget int64
		kept   int
	}{{0, 0}, {qkvB, 1}, {qkvB + guB + qkvB, 3}, {1 << 40, 6}} {
		sc := &stashCounter{CPUBackend: testBackend()}
		m := build(sc)
		m.CheckpointKeepBytes = c.budget
		same(fmt.Sprintf("budget %d", c.budget), run(m), want)
		if sc.stashed != 2*c.kept || sc.unstashed != 2*c.kept || sc.linears != ref.linears-2*c.kept {
			t.Errorf("budget %d: %d stashed, %d unstashed, %d linear forwards over two steps, want %d, %d, %d",
				c.budget, sc.stashed, sc.unstashed, sc.linears, 2*c.kept, 2*c.kept, ref.linears-2*c.kept)
		}
		// What the trainer tells a StashPreparer is what a step offers.
		if want := StashSizes(sc, cfg, allLinear(4, 8, 0.2), batch.B, batch.S); c.budget > 0 &&
			fmt.Sprint(sc.offered) != fmt.Sprint(append(want, want...)) {
			t.Errorf("budget %d: two steps offered the stash %v, StashSizes says %v a step", c.budget, sc.offered, want)
		}
		fb := &fusedBackend{CPUBackend: testBackend()}
		m = build(fb)
		m.CheckpointKeepBytes = c.budget
		same(fmt.Sprintf("budget %d, fused ops", c.budget), run(m), want)
	}
}
