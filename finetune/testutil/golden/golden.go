// Package golden runs the engine against the golden fixtures of
// finetune/testdata/golden (transformers + peft in float64, written by
// finetune/testdata/gen_golden.py) on any backend: package finetune's tests
// run it on the CPU, package cuda's on the GPU, with the same fixtures,
// tolerance and assertions. It also holds the tensor comparisons both use.
//
// It is apart from testutil because it imports finetune (see tinymodel).
package golden

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// Tol is the relative L2 error every golden value must be within.
const Tol = 1e-5

// Variants are the fixture folders: tiny (NF4 double-quant base, bfloat16
// checkpoint) and tiny_fp32 (float32 base, no quantization).
var Variants = []string{"tiny", "tiny_fp32"}

// Dir is the folder of a fixture variant, finetune/testdata/golden/variant
// under the repository root, and whether its golden.safetensors is there.
func Dir(t testing.TB, variant string) (dir string, ok bool) {
	t.Helper()
	dir = filepath.Join(testutil.RepoRoot(t), "finetune", "testdata", "golden", variant)
	_, err := os.Stat(filepath.Join(dir, "golden.safetensors"))
	return dir, err == nil
}

// Fixture is a fixture's golden.safetensors: the batch and the reference's
// logits, loss, gradients and AdamW results.
type Fixture struct {
	F *safetensors.File
}

// Open opens dir/golden.safetensors for the rest of the test.
func Open(t testing.TB, dir string) Fixture {
	t.Helper()
	f, err := safetensors.Open(filepath.Join(dir, "golden.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return Fixture{f}
}

// Quant reports whether the reference ran on an NF4-quantized base.
func (g Fixture) Quant() bool { return g.F.Metadata()["quant"] == "nf4" }

// F32 is the named tensor as float32.
func (g Fixture) F32(t testing.TB, name string) []float32 {
	t.Helper()
	return tensorF32(t, g.F, name)
}

// I32 is the named integer tensor as int32, with its shape.
func (g Fixture) I32(t testing.TB, name string) ([]int32, []int) {
	t.Helper()
	ti, err := g.F.Tensor(name)
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

// Batch is the batch the reference ran.
func (g Fixture) Batch(t testing.TB) *finetune.Batch {
	t.Helper()
	ids, shape := g.I32(t, "input_ids")
	pos, _ := g.I32(t, "position_ids")
	labels, _ := g.I32(t, "labels")
	return &finetune.Batch{B: shape[0], S: shape[1], InputIDs: ids, PositionIDs: pos, Labels: labels}
}

func tensorF32(t testing.TB, f *safetensors.File, name string) []float32 {
	t.Helper()
	ti, err := f.Tensor(name)
	if err != nil {
		t.Fatalf("golden: %v", err)
	}
	v, err := safetensors.ToFloat32(ti)
	if err != nil {
		t.Fatalf("golden %s: %v", name, err)
	}
	return v
}

// adapterConfig is the part of PEFT's adapter_config.json the model needs.
type adapterConfig struct {
	R             int      `json:"r"`
	Alpha         float32  `json:"lora_alpha"`
	Dropout       float32  `json:"lora_dropout"`
	TargetModules []string `json:"target_modules"`
	Bias          string   `json:"bias"`
}

// LoadModel builds the fixture's model on b (quant: NF4 with double
// quantization) with its PEFT adapter, dir/adapter, loaded.
func LoadModel(t testing.TB, b finetune.Backend, dir string, quant bool) *finetune.Model {
	t.Helper()
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ck.Close() }) // the CPU backend may keep views of it
	raw, err := os.ReadFile(filepath.Join(dir, "adapter", "adapter_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var ac adapterConfig
	if err := json.Unmarshal(raw, &ac); err != nil {
		t.Fatalf("adapter_config.json: %v", err)
	}
	lc := &finetune.LoRAConfig{R: ac.R, Alpha: ac.Alpha, Dropout: ac.Dropout, TargetModules: ac.TargetModules, Bias: ac.Bias}
	m, err := finetune.LoadModel(b, ck, finetune.ModelOptions{Quantize: quant, DoubleQuant: true, LoRA: lc})
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
		if err := m.SetLoRA(name, tensorF32(t, af, name)); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// FindLinear returns the model's linear whose weight is called name.
func FindLinear(t testing.TB, m *finetune.Model, name string) *finetune.Linear {
	t.Helper()
	for i := range m.Layers {
		l := &m.Layers[i]
		for _, lin := range []*finetune.Linear{l.QKV, l.O, l.GateUp, l.Down} {
			if lin.Name+".weight" == name {
				return lin
			}
		}
	}
	t.Fatalf("no linear layer has weight %q", name)
	return nil
}

// Run checks the model on b against the fixture in dir: NF4 dequantization
// bit-identical to the weights the reference ran with (tiny), the logits,
// the loss and every LoRA gradient with and without gradient
// checkpointing, and 3 AdamW steps each after clip_grad_norm_(1.0) (loss,
// grad norm, adapter after), all to relative error Tol.
func Run(t *testing.T, b finetune.Backend, dir string) {
	g := Open(t, dir)
	quant := g.Quant()
	m := LoadModel(t, b, dir, quant)
	defer m.Free()

	if quant {
		// Our NF4 + double quant must dequantize to exactly the weights
		// the reference ran with.
		n := 0
		for _, name := range g.F.Names() {
			base, ok := strings.CutPrefix(name, "nf4.")
			if !ok {
				continue
			}
			n++
			CheckBits(t, "nf4 "+base, b.DequantizeWeight(FindLinear(t, m, base).W), g.F32(t, name))
		}
		if n != 4*m.Cfg.NumLayers {
			t.Fatalf("%d nf4.* tensors in the fixture, want %d", n, 4*m.Cfg.NumLayers)
		}
	}

	batch := g.Batch(t)
	logits, err := m.Logits(batch)
	if err != nil {
		t.Fatal(err)
	}
	CheckRel(t, "logits", logits, g.F32(t, "logits"), Tol)

	wantLoss := float64(g.F32(t, "loss")[0])
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
		if e := math.Abs(loss-wantLoss) / math.Abs(wantLoss); e > Tol {
			t.Errorf("checkpointing %v: loss %.9f, reference %.9f (rel err %.2g)", ckpt, loss, wantLoss, e)
		}
		for _, p := range m.LoRAParams() {
			CheckRel(t, fmt.Sprintf("checkpointing %v: grad %s", ckpt, p.Name), b.Download(p.Grad), g.F32(t, "grad."+p.Name), Tol)
		}
	}

	// Three AdamW steps on the same batch, each after clip_grad_norm_(1.0).
	m.GradientCheckpointing = false
	hp := finetune.AdamParams{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01}
	params := m.LoRAParams()
	mom := make([][2]finetune.Tensor, len(params))
	for k, p := range params {
		mom[k] = [2]finetune.Tensor{b.Alloc(p.Shape...), b.Alloc(p.Shape...)}
	}
	defer func() {
		for _, mm := range mom {
			b.Free(mm[0])
			b.Free(mm[1])
		}
	}()
	wantLosses, wantNorms := g.F32(t, "adamw.loss"), g.F32(t, "adamw.grad_norm")
	for step := 1; step <= 3; step++ {
		m.ZeroGrads()
		loss, _, _, err := m.Forward(batch, true, uint64(step))
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Backward(); err != nil {
			t.Fatal(err)
		}
		norm := ClipGradNorm(b, params, 1)
		if e := math.Abs(loss-float64(wantLosses[step-1])) / float64(wantLosses[step-1]); e > Tol {
			t.Errorf("AdamW step %d: loss %.9f, reference %.9f", step, loss, wantLosses[step-1])
		}
		if e := math.Abs(norm-float64(wantNorms[step-1])) / float64(wantNorms[step-1]); e > Tol {
			t.Errorf("AdamW step %d: grad norm %.9f, reference %.9f", step, norm, wantNorms[step-1])
		}
		hp.Step = step
		for k, p := range params {
			b.AdamW(p.Param, p.Grad, mom[k][0], mom[k][1], hp)
		}
	}
	for _, p := range params {
		CheckRel(t, "after AdamW "+p.Name, b.Download(p.Param), g.F32(t, "adamw."+p.Name), Tol)
	}
}

// ClipGradNorm is torch.nn.utils.clip_grad_norm_ over the LoRA gradients:
// it returns their global L2 norm and scales them by
// maxNorm / (norm + 1e-6) where that is below 1.
func ClipGradNorm(b finetune.Backend, params []finetune.NamedLoRA, maxNorm float64) float64 {
	var ss float64
	for _, p := range params {
		ss += b.SumSquares(p.Grad)
	}
	norm := math.Sqrt(ss)
	if coef := float32(maxNorm / (norm + 1e-6)); coef < 1 {
		for _, p := range params {
			b.Scale(p.Grad, coef)
		}
	}
	return norm
}

// RelErr is ||got - want|| / ||want|| in float64 (the plain norm of the
// difference where want is all zeros; infinite for a NaN or a length
// mismatch).
func RelErr(got, want []float32) float64 {
	if len(got) != len(want) {
		return math.Inf(1)
	}
	var num, den float64
	for k := range want {
		d := float64(got[k]) - float64(want[k])
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		num += d * d
		den += float64(want[k]) * float64(want[k])
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// CheckRel fails the test when RelErr(got, want) is above tol (or NaN) and
// logs the error otherwise (go test -v shows the margins).
func CheckRel(t testing.TB, what string, got, want []float32, tol float64) {
	t.Helper()
	e := RelErr(got, want)
	if !(e <= tol) {
		t.Errorf("%s: relative error %.3g > %.3g (got[:4] %v, want[:4] %v)", what, e, tol, got[:min(4, len(got))], want[:min(4, len(want))])
		return
	}
	t.Logf("%s: relative error %.2g", what, e)
}

// CheckBits fails the test unless got and want hold the same float32 bits.
func CheckBits(t testing.TB, what string, got, want []float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d values, want %d", what, len(got), len(want))
		return
	}
	bad, first := 0, -1
	for k := range want {
		if math.Float32bits(got[k]) != math.Float32bits(want[k]) {
			if first < 0 {
				first = k
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d values differ in their bits (first at %d: %v, want %v)", what, bad, len(want), first, got[first], want[first])
	}
}
