//go:build cuda

package cuda

// The device-side loaders (LoadModel from raw checkpoint bytes,
// RandomModel), device-side gradient clipping and the profiler, against
// the host paths they replace.

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
)

// modelWeights lists a model's frozen weights by name.
func modelWeights(m *finetune.Model) map[string]finetune.Weight {
	ws := map[string]finetune.Weight{"embed": m.Embed, "lm_head": m.LMHead}
	for i := range m.Layers {
		l := &m.Layers[i]
		for _, lin := range []*finetune.Linear{l.QKV, l.O, l.GateUp, l.Down} {
			ws[lin.Name] = lin.W
		}
	}
	return ws
}

// compareModels checks that two models on b hold the same weights: at most
// maxBad of the elements of each weight may differ in their bits (0 for
// models built from the same bytes).
func compareModels(t *testing.T, b *Backend, got, want *finetune.Model, maxBad float64) {
	t.Helper()
	gw, ww := modelWeights(got), modelWeights(want)
	for name, w := range ww {
		g := b.DequantizeWeight(gw[name])
		r := b.DequantizeWeight(w)
		bad := 0
		for k := range r {
			if math.Float32bits(g[k]) != math.Float32bits(r[k]) {
				bad++
			}
		}
		if frac := float64(bad) / float64(len(r)); frac > maxBad {
			t.Errorf("%s: %d of %d values differ (%.2g > %.2g)", name, bad, len(r), frac, maxBad)
		}
		if cg, ok := gw[name].(*weight); ok && cg.q != nil && maxBad == 0 {
			if o := w.(*weight).q.offset; cg.q.offset != o {
				t.Errorf("%s: double-quant offset %v, host path %v", name, cg.q.offset, o)
			}
		}
	}
	checkBits(t, "final norm", b.Download(got.FinalNorm), b.Download(want.FinalNorm))
	for i := range want.Layers {
		checkBits(t, fmt.Sprintf("layer %d input norm", i), b.Download(got.Layers[i].InputNorm), b.Download(want.Layers[i].InputNorm))
	}
}

func TestLoadModelUploadsRawBytes(t *testing.T) {
	cfg := smallConfig()
	lc := &finetune.LoRAConfig{R: 4, Alpha: 8, Dropout: 0.1, TargetModules: []string{"all-linear"}, Bias: "none", Seed: 7}
	for _, dt := range []finetune.DType{finetune.BF16, finetune.F16, finetune.F32} {
		dir := t.TempDir()
		if err := finetune.WriteRandomCheckpoint(dir, cfg, 11, dt); err != nil {
			t.Fatal(err)
		}
		ck, err := finetune.LoadCheckpoint(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range []*Backend{gpu, gpuB16, gpuF16} {
			for _, quant := range []bool{true, false} {
				t.Run(fmt.Sprintf("%v compute %v nf4 %v", dt, g.ComputeDType(), quant), func(t *testing.T) {
					opts := finetune.ModelOptions{Quantize: quant, DoubleQuant: true, LoRA: lc}
					m, err := g.LoadModel(ck, opts)
					if err != nil {
						t.Fatal(err)
					}
					defer m.Free()
					ref, err := finetune.LoadModel(g, ck, opts)
					if err != nil {
						t.Fatal(err)
					}
					defer ref.Free()
					compareModels(t, g, m, ref, 0)
					if m.B != finetune.Backend(g) {
						t.Errorf("the model runs on %T, want the backend itself", m.B)
					}
					// Same adapter initialisation: the same logits.
					batch := smallBatch(cfg.VocabSize)
					gl, err := m.Logits(batch)
					if err != nil {
						t.Fatal(err)
					}
					rl, err := ref.Logits(batch)
					if err != nil {
						t.Fatal(err)
					}
					checkBits(t, "logits", gl, rl)
				})
			}
		}
		ck.Close()
	}
}

// randomCheckpoint writes a random checkpoint of cfg (weights in dt) and
// opens it; the test closes it.
func randomCheckpoint(t *testing.T, cfg *finetune.Config, seed uint64, dt finetune.DType) *finetune.Checkpoint {
	t.Helper()
	dir := t.TempDir()
	if err := finetune.WriteRandomCheckpoint(dir, cfg, seed, dt); err != nil {
		t.Fatal(err)
	}
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ck.Close() })
	return ck
}

func TestLoadModelRejectsNonFinite(t *testing.T) {
	cfg := smallConfig()
	dir := t.TempDir()
	if err := finetune.WriteRandomCheckpoint(dir, cfg, 12, finetune.BF16); err != nil {
		t.Fatal(err)
	}
	ck, err := finetune.LoadCheckpoint(dir)
	if err != nil {
		t.Fatal(err)
	}
	const bad = "model.layers.1.mlp.down_proj.weight"
	var tensors []safetensors.TensorInfo
	for _, name := range ck.Tensors().Names() {
		ti, err := ck.Tensors().Tensor(name)
		if err != nil {
			t.Fatal(err)
		}
		ti.Data = append([]byte(nil), ti.Data...)
		if name == bad {
			ti.Data[2*37], ti.Data[2*37+1] = 0xc0, 0x7f // bf16 NaN at element 37
		}
		tensors = append(tensors, ti)
	}
	ck.Close()
	dir2 := t.TempDir()
	cj, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir2, "config.json"), cj, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := safetensors.Write(filepath.Join(dir2, safetensors.SingleFileName), tensors, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	ck2, err := finetune.LoadCheckpoint(dir2)
	if err != nil {
		t.Fatal(err)
	}
	defer ck2.Close()
	live, _ := gpu.Allocated()
	_, err = gpu.LoadModel(ck2, finetune.ModelOptions{Quantize: true, DoubleQuant: true})
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "NaN") {
		t.Fatalf("LoadModel of a checkpoint with a NaN in %s: error %v", bad, err)
	}
	t.Logf("as expected: %v", err)
	if now, _ := gpu.Allocated(); now > live {
		t.Errorf("the failed load left %d bytes allocated", now-live)
	}
}

func TestRandomModelMatchesHostWeights(t *testing.T) {
	cfg := smallConfig()
	host := finetune.RandomWeights(cfg, 5)
	bf16 := func(name string) ([]float32, []int, error) {
		v, s, err := host(name)
		if err == nil && len(s) == 2 {
			for k := range v {
				v[k] = finetune.RoundBF16(v[k])
			}
		}
		return v, s, err
	}
	for _, g := range []*Backend{gpu, gpuB16} {
		for _, quant := range []bool{true, false} {
			t.Run(fmt.Sprintf("compute %v nf4 %v", g.ComputeDType(), quant), func(t *testing.T) {
				opts := finetune.ModelOptions{Quantize: quant, DoubleQuant: true}
				m, err := g.RandomModel(cfg, 5, opts)
				if err != nil {
					t.Fatal(err)
				}
				defer m.Free()
				ref, err := finetune.NewModel(g, cfg, bf16, opts)
				if err != nil {
					t.Fatal(err)
				}
				defer ref.Free()
				// The device's float64 log and cos may round differently
				// from Go's in the last bit, rarely visible after rounding
				// to bfloat16 (and NF4).
				compareModels(t, g, m, ref, 1e-3)
			})
		}
	}
}

// ClipGradNorm gives the host path's norm and scaled gradients bit for
// bit (SumSquares per tensor, summed in order, Scale), with the warp
// kernels (v19) and the block ones.
func TestClipGradNormMatchesHost(t *testing.T) {
	defer func(v bool) { optimWarp = v }(optimWarp)
	for _, w := range []bool{true, false} {
		optimWarp = w
		testClipGradNormMatchesHost(t)
	}
}

func testClipGradNormMatchesHost(t *testing.T) {
	sizes := []int{3, 256, 1000, 300*1024 + 7, 24576, 9216 * 8}
	for _, c := range []struct {
		scale, maxNorm float64
	}{{1, 1}, {1e-4, 1}, {1, 0}, {1, -1}} {
		var gs, hs []finetune.Tensor
		for k, n := range sizes {
			v := randn(n, uint64(200+k), float32(c.scale))
			g, h := gpu.Alloc(n), gpu.Alloc(n)
			gpu.Upload(g, v)
			gpu.Upload(h, v)
			gs, hs = append(gs, g), append(hs, h)
		}
		var ss float64
		for _, h := range hs {
			ss += gpu.SumSquares(h)
		}
		norm := math.Sqrt(ss)
		coef := float32(1)
		if c.maxNorm > 0 {
			coef = float32(c.maxNorm) / (float32(norm) + float32(1e-6))
			coef = min(coef, 1)
		}
		if coef < 1 {
			for _, h := range hs {
				gpu.Scale(h, coef)
			}
		}
		gpu.ClipGradNorm(gs, c.maxNorm)
		got, err := gpu.GradNorm()
		if err != nil {
			t.Fatal(err)
		}
		if got != norm {
			t.Errorf("warp %v scale %g max %g: norm %v, host %v", optimWarp, c.scale, c.maxNorm, got, norm)
		}
		for k := range gs {
			checkBits(t, fmt.Sprintf("warp %v scale %g max %g grad %d (coef %v)", optimWarp, c.scale, c.maxNorm, k, coef), gpu.Download(gs[k]), gpu.Download(hs[k]))
			gpu.Free(gs[k])
			gpu.Free(hs[k])
		}
	}
}

func TestProfile(t *testing.T) {
	T, in, out := 33, 64, 96
	w, err := gpuB16.NF4Weight(randn(out*in, 90, 0.1), out, in, true)
	if err != nil {
		t.Fatal(err)
	}
	defer gpuB16.FreeWeight(w)
	x, y := gpuB16.Alloc(T, in), gpuB16.Alloc(T, out)
	gpuB16.Upload(x, randn(T*in, 91, 1))
	gpuB16.StartProfile()
	for range 3 {
		gpuB16.LinearForward(y, x, &finetune.Linear{Name: "p", W: w}, nil, 0)
		gpuB16.Zero(y)
		gpuB16.Scale(y, 1) // reads y: the lazy Zero's memset runs (device.go)
	}
	p, err := gpuB16.StopProfile()
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]int{}
	for _, e := range p.Entries {
		calls[e.Name] = e.Calls
		t.Logf("%-40s %3d calls %.3f ms", e.Name, e.Calls, e.Ms)
	}
	// The weight is dequantized once: the cache keeps it (Options.DequantCache).
	want := map[string]int{"nf4_dequant_bf16": 1, "f32_to_bf16_v4": 3, fmt.Sprintf("gemm bf16 %dx%dx%d", T, out, in): 3, "memset": 3}
	for name, n := range want {
		if calls[name] != n {
			t.Errorf("%s: %d calls, want %d (profile %v)", name, calls[name], n, calls)
		}
	}
	if !(p.BusyMs > 0 && p.BusyMs <= p.WallMs*1.001) {
		t.Errorf("busy %.4f ms, wall %.4f ms", p.BusyMs, p.WallMs)
	}
	gpuB16.Free(x)
	gpuB16.Free(y)
}
