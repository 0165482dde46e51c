package finetune

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
)

// Golden tests: the engine against PyTorch + transformers + peft, run in
// float64 by testdata/gen_golden.py (see testdata/README.md). A tiny
// random Phi-3 with an all-linear LoRA adapter; we check the logits, the
// loss, every LoRA gradient (with and without gradient checkpointing) and
// the adapter after 3 clipped AdamW steps, to relative L2 error 1e-5; in
// tiny/ also that our NF4 + double-quant dequantization is bit-identical to
// the weights the reference used.

const goldenTol = 1e-5

// checkGolden is checkRel that also logs the error (go test -v shows the margins).
func checkGolden(t *testing.T, what string, got []float32, want []float64) {
	t.Helper()
	t.Logf("%s: relative error %.2g", what, relErr(got, want))
	checkRel(t, what, got, want, goldenTol)
}

// golden holds a fixture's golden.safetensors.
type golden struct {
	f *safetensors.File
}

func (g golden) f32(t *testing.T, name string) []float32 {
	t.Helper()
	ti, err := g.f.Tensor(name)
	if err != nil {
		t.Fatalf("golden: %v", err)
	}
	v, err := safetensors.ToFloat32(ti)
	if err != nil {
		t.Fatalf("golden %s: %v", name, err)
	}
	return v
}

func (g golden) i32(t *testing.T, name string) ([]int32, []int) {
	t.Helper()
	ti, err := g.f.Tensor(name)
	if err != nil {
		t.Fatalf("golden: %v", err)
	}
	v, err := safetensors.Int64s(ti)
	if err != nil {
		t.Fatalf("golden %s: %v", name, err)
	}
	out := make([]int32, len(v))
	for k, x := range v {
		out[k] = int32(x)
	}
	return out, ti.Shape
}

// peftAdapterConfig is the part of adapter_config.json the test needs.
type peftAdapterConfig struct {
	R             int      `json:"r"`
	Alpha         float32  `json:"lora_alpha"`
	Dropout       float32  `json:"lora_dropout"`
	TargetModules []string `json:"target_modules"`
	Bias          string   `json:"bias"`
}

// loadGoldenModel builds the fixture's model with its adapter.
func loadGoldenModel(t *testing.T, dir string, quant bool) *Model {
	t.Helper()
	ck, err := LoadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ck.Close() })
	raw, err := os.ReadFile(filepath.Join(dir, "adapter", "adapter_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ac peftAdapterConfig
	if err := json.Unmarshal(raw, &ac); err != nil {
		t.Fatalf("adapter_config.json: %v", err)
	}
	lc := &LoRAConfig{R: ac.R, Alpha: ac.Alpha, Dropout: ac.Dropout, TargetModules: ac.TargetModules, Bias: ac.Bias}
	m, err := LoadModel(NewCPUBackend(CPUOptions{}), ck, ModelOptions{Quantize: quant, DoubleQuant: true, LoRA: lc})
	if err != nil {
		t.Fatal(err)
	}
	af, err := safetensors.Open(filepath.Join(dir, "adapter", "adapter_model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer af.Close()
	if len(af.Names()) != len(m.LoRAParams()) {
		t.Fatalf("adapter file has %d tensors, the model %d LoRA matrices", len(af.Names()), len(m.LoRAParams()))
	}
	for _, name := range af.Names() {
		ti, _ := af.Tensor(name)
		v, err := safetensors.ToFloat32(ti)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.SetLoRA(name, v); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func TestGolden(t *testing.T) {
	for _, variant := range []string{"tiny", "tiny_fp32"} {
		t.Run(variant, func(t *testing.T) { goldenVariant(t, filepath.Join("testdata", "golden", variant)) })
	}
}

func goldenVariant(t *testing.T, dir string) {
	path := filepath.Join(dir, "golden.safetensors")
	if _, err := os.Stat(path); err != nil {
		t.Skipf("golden fixture %s is missing: run python3 finetune/testdata/gen_golden.py --out finetune/testdata/golden on a machine with torch/transformers/peft and commit the result", path)
	}
	gf, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer gf.Close()
	g := golden{gf}
	quant := gf.Metadata()["quant"] == "nf4"
	m := loadGoldenModel(t, dir, quant)
	b := m.B

	if quant {
		// Our NF4 + double quant must dequantize to exactly the weights
		// the reference ran with.
		n := 0
		for _, name := range gf.Names() {
			base, ok := strings.CutPrefix(name, "nf4.")
			if !ok {
				continue
			}
			n++
			w := findLinear(t, m, base).W
			got, want := b.DequantizeWeight(w), g.f32(t, name)
			for k := range want {
				if math.Float32bits(got[k]) != math.Float32bits(want[k]) {
					t.Fatalf("%s: dequantized value %d is %v, the reference used %v", base, k, got[k], want[k])
				}
			}
		}
		if n != 4*m.Cfg.NumLayers {
			t.Fatalf("%d nf4.* tensors in the fixture, want %d", n, 4*m.Cfg.NumLayers)
		}
	}

	ids, shape := g.i32(t, "input_ids")
	pos, _ := g.i32(t, "position_ids")
	labels, _ := g.i32(t, "labels")
	batch := &Batch{B: shape[0], S: shape[1], InputIDs: ids, PositionIDs: pos, Labels: labels}

	logits, err := m.Logits(batch)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "logits", logits, to64(g.f32(t, "logits")))

	wantLoss := float64(g.f32(t, "loss")[0])
	for _, ckpt := range []bool{false, true} {
		m.GradientCheckpointing = ckpt
		m.ZeroGrads()
		loss, _, _, err := m.Forward(batch, true, 1)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Backward(); err != nil {
			t.Fatal(err)
		}
		t.Logf("checkpointing %v: loss %.9f, reference %.9f", ckpt, loss, wantLoss)
		if e := math.Abs(loss-wantLoss) / math.Abs(wantLoss); e > goldenTol {
			t.Errorf("checkpointing %v: loss %.9f, reference %.9f (rel err %.2g)", ckpt, loss, wantLoss, e)
		}
		for _, p := range m.LoRAParams() {
			checkGolden(t, fmt.Sprintf("checkpointing %v: grad %s", ckpt, p.Name), b.Download(p.Grad), to64(g.f32(t, "grad."+p.Name)))
		}
	}

	// Three AdamW steps on the same batch, each after clip_grad_norm_(1.0).
	m.GradientCheckpointing = false
	hp := AdamParams{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01}
	params := m.LoRAParams()
	mom := make([][2]Tensor, len(params))
	for k, p := range params {
		mom[k] = [2]Tensor{b.Alloc(p.Shape...), b.Alloc(p.Shape...)}
	}
	wantLosses, wantNorms := g.f32(t, "adamw.loss"), g.f32(t, "adamw.grad_norm")
	for step := 1; step <= 3; step++ {
		m.ZeroGrads()
		loss, _, _, err := m.Forward(batch, true, uint64(step))
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Backward(); err != nil {
			t.Fatal(err)
		}
		var ss float64
		for _, p := range params {
			ss += b.SumSquares(p.Grad)
		}
		norm := math.Sqrt(ss)
		if e := math.Abs(loss-float64(wantLosses[step-1])) / float64(wantLosses[step-1]); e > goldenTol {
			t.Errorf("AdamW step %d: loss %.9f, reference %.9f", step, loss, wantLosses[step-1])
		}
		if e := math.Abs(norm-float64(wantNorms[step-1])) / float64(wantNorms[step-1]); e > goldenTol {
			t.Errorf("AdamW step %d: grad norm %.9f, reference %.9f", step, norm, wantNorms[step-1])
		}
		// torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1.
		if coef := float32(1.0 / (norm + 1e-6)); coef < 1 {
			for _, p := range params {
				b.Scale(p.Grad, coef)
			}
		}
		hp.Step = step
		for k, p := range params {
			b.AdamW(p.Param, p.Grad, mom[k][0], mom[k][1], hp)
		}
	}
	for _, p := range params {
		checkGolden(t, "after AdamW "+p.Name, b.Download(p.Param), to64(g.f32(t, "adamw."+p.Name)))
	}
}

// findLinear returns the linear whose weight is called name.
func findLinear(t *testing.T, m *Model, name string) *Linear {
	t.Helper()
	for i := range m.Layers {
		for _, l := range m.Layers[i].linears() {
			if l.Name+".weight" == name {
				return l
			}
		}
	}
	t.Fatalf("no linear layer has weight %q", name)
	return nil
}
