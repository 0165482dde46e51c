package finetune

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/optim"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
)

// hookBackend is the CPU backend with the optional ModelLoader and
// GradClipper interfaces, implemented the reference way, counting calls.
type hookBackend struct {
	*CPUBackend
	loads, clips int
	norm         float64
}

func (b *hookBackend) LoadModel(ck *Checkpoint, opts ModelOptions) (*Model, error) {
	b.loads++
	return LoadModel(b, ck, opts)
}

func (b *hookBackend) ClipGradNorm(grads []Tensor, maxNorm float64) {
	b.clips++
	var ss float64
	for _, g := range grads {
		ss += b.SumSquares(g)
	}
	norm, scale := optim.ClipScale(ss, maxNorm)
	b.norm = norm
	if scale < 1 {
		for _, g := range grads {
			b.Scale(g, scale)
		}
	}
}

func (b *hookBackend) GradNorm() (float64, error) { return b.norm, nil }

// TestBackendHooks: Train loads the model through a backend's ModelLoader
// and clips through its GradClipper, and a backend whose hooks compute what
// the reference computes trains to the same adapter, byte for byte, with
// the same logged gradient norms (clipping is active: max_grad_norm is far
// below the norms). The 8-bit optimizer's small parameters take the
// Backend's BnbAdamW32.
func TestBackendHooks(t *testing.T) {
	model := tinyModelDir(t, smallModel.cfg, 21)
	run := func(b Backend) (*Result, []float64) {
		c := smallJob(t, model, filepath.Join(t.TempDir(), "out"), 10)
		c.Training.MaxSteps, c.Training.SaveSteps, c.Training.LoggingSteps = 3, 0, 1
		c.Training.MaxGradNorm = 1e-3
		c.Training.Optim = "adamw_8bit"
		j := newTestJob(t, c, "")
		j.NewBackend = func(DType) (Backend, error) { return b, nil }
		var norms []float64
		res, err := Train(context.Background(), j, func(e TrainEvent) {
			if s, ok := e.(StepEvent); ok {
				norms = append(norms, s.GradNorm)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		return res, norms
	}
	ref, refNorms := run(NewCPUBackend(CPUOptions{}))
	hb := &hookBackend{CPUBackend: NewCPUBackend(CPUOptions{})}
	got, gotNorms := run(hb)
	if hb.loads != 1 || hb.clips != 3 {
		t.Errorf("the hooks ran %d loads and %d clips, want 1 and 3", hb.loads, hb.clips)
	}
	if fmt.Sprint(gotNorms) != fmt.Sprint(refNorms) || len(refNorms) != 3 || !(refNorms[0] > 1e-2) {
		t.Errorf("grad norms %v with the hooks, %v without", gotNorms, refNorms)
	}
	if !bytes.Equal(readFile(t, filepath.Join(got.OutputDir, peft.WeightsName)), readFile(t, filepath.Join(ref.OutputDir, peft.WeightsName))) {
		t.Error("the adapter trained through the hooks differs from the reference")
	}
}

// liveBackend is the CPU backend that fails allocations of more than limit
// values with ErrOutOfMemory, as a GPU would, and counts live tensors.
type liveBackend struct {
	*CPUBackend
	limit int
	live  map[Tensor]bool
}

func (b *liveBackend) track(t Tensor) Tensor { b.live[t] = true; return t }

func (b *liveBackend) Alloc(shape ...int) Tensor {
	if n := numel(shape); n > b.limit {
		panic(fmt.Errorf("fake backend: allocating %v: %w", shape, ErrOutOfMemory))
	}
	return b.track(b.CPUBackend.Alloc(shape...))
}

func (b *liveBackend) AllocInt32(n int) Tensor { return b.track(b.CPUBackend.AllocInt32(n)) }
func (b *liveBackend) AllocBytes(n int) Tensor { return b.track(b.CPUBackend.AllocBytes(n)) }
func (b *liveBackend) Free(t Tensor)           { delete(b.live, t); b.CPUBackend.Free(t) }

// TestEnsureBuffersFreesOnOOM: a training forward whose activation buffers
// do not fit fails with ErrOutOfMemory and leaves the backend holding what
// it held before (the buffers allocated before the failing one are freed);
// a smaller batch then fits and runs.
func TestEnsureBuffersFreesOnOOM(t *testing.T) {
	cfg := tinyPhi3(32, 512, 2, 4)
	b := &liveBackend{CPUBackend: NewCPUBackend(CPUOptions{}), limit: 1 << 30, live: map[Tensor]bool{}}
	m, err := NewModel(b, cfg, RandomWeights(cfg, 5), ModelOptions{LoRA: &LoRAConfig{R: 4, Alpha: 8, TargetModules: []string{"all-linear"}}})
	if err != nil {
		t.Fatal(err)
	}
	held := len(b.live)
	batch := func(B, S int) *Batch {
		bt := &Batch{B: B, S: S}
		for k := range B * S {
			bt.InputIDs = append(bt.InputIDs, int32(k%100))
			bt.PositionIDs = append(bt.PositionIDs, int32(k%S))
			bt.Labels = append(bt.Labels, int32(k%50))
		}
		return bt
	}
	// gate_up [T, 2*512] is the largest buffer: 4 x 16 tokens need 65536
	// values, 1 x 16 need 16384.
	b.limit = 32768
	err = func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				e, _ := r.(error)
				if !errors.Is(e, ErrOutOfMemory) {
					panic(r)
				}
				err = e
			}
		}()
		_, _, _, err = m.Forward(batch(4, 16), true, 1)
		return err
	}()
	if !errors.Is(err, ErrOutOfMemory) {
		t.Fatalf("forward of 4 x 16 tokens: %v, want out of memory", err)
	}
	if len(b.live) != held {
		t.Errorf("after the failed forward the backend holds %d tensors, before it %d", len(b.live), held)
	}
	if _, _, _, err := m.Forward(batch(1, 16), true, 1); err != nil {
		t.Fatal(err)
	}
	if err := m.Backward(); err != nil {
		t.Fatal(err)
	}
	if len(b.live) <= held {
		t.Errorf("the 1 x 16 forward holds no buffers (%d tensors)", len(b.live))
	}
	m.Free()
	if len(b.live) != 0 {
		t.Errorf("after Free the backend holds %d tensors", len(b.live))
	}
}

// fusedBackend is the CPU backend with the optional fused SwiGLU ops (the
// residual add in down_proj's product too),
// attention with RoPE, the prefetch and keep-inputs hints,
// implemented as their contracts define them (the two ops each), counting
// calls: it checks the model's use of the hooks (checkpointing's recompute
// takes the out-nil form, the forward adds the residual after it, d
// gate_up starts at zero), not the CUDA kernels (cuda's tests do).
type fusedBackend struct {
	*CPUBackend
	fwd, fwdH, bwd, prefetched int
	adds, added                int // SwiGLULinearAddForward calls, and those that added (every other one refuses)
	gradWindows                int // BeginLoRAGrads calls
	gradWindow                 bool
	packs, packed              int // PackLoRA calls, and the linears the last one named
	ropeFwd, ropeBwd           int // attention with RoPE fused
	keeps                      int // KeepLoRAInputs(true) calls
	keeping                    bool
	keepsFwd                   int // KeepLoRAInputsForward(true) calls
	keepingFwd                 bool
	normLin, addNormLin        int         // RMSNormLinearForward without and with the residual add
	halfWidths                 map[int]int // AllocHalf calls by the tensor's last dimension
	skipWidths                 map[int]int // SkipByproduct calls by the tensor's last dimension
	keepDeq                    []int64     // KeepDequantized calls
}

// KeepDequantized records the trade (the CPU keeps nothing).
func (b *fusedBackend) KeepDequantized(bytes int64) { b.keepDeq = append(b.keepDeq, bytes) }

func (b *fusedBackend) KeptDequantized() int64 { return 1_250_000_000 }

// SkipByproduct records the widths of the tensors the model marks (the
// CPU writes every by-product).
func (b *fusedBackend) SkipByproduct(t Tensor) {
	if b.skipWidths == nil {
		b.skipWidths = map[int]int{}
	}
	b.skipWidths[t.Shape()[len(t.Shape())-1]]++
}

// AllocHalf records the widths the model asks for (the CPU keeps float32).
func (b *fusedBackend) AllocHalf(shape ...int) Tensor {
	if b.halfWidths == nil {
		b.halfWidths = map[int]int{}
	}
	b.halfWidths[shape[len(shape)-1]]++
	return b.Alloc(shape...)
}

func (b *fusedBackend) RMSNormLinearForward(out, xn, rstd, sum, a, bt, w Tensor, eps float32, l *Linear, h Tensor, seed uint64) {
	if bt == nil {
		b.normLin++
		b.RMSNormForward(xn, rstd, a, w, eps)
	} else {
		b.addNormLin++
		b.Add(sum, a, bt)
		b.RMSNormForward(xn, rstd, sum, w, eps)
	}
	if out == nil { // a stashed output: only the adapter's h
		b.LoRAHForward(h, xn, l, seed)
		return
	}
	b.LinearForward(out, xn, l, h, seed)
}

// KeepLoRAInputs and KeepLoRAInputsForward count their windows and check
// that no window opens inside another.
func (b *fusedBackend) KeepLoRAInputs(on bool) { b.keepWindow(on, &b.keeping, &b.keeps) }

func (b *fusedBackend) KeepLoRAInputsForward(on bool) { b.keepWindow(on, &b.keepingFwd, &b.keepsFwd) }

func (b *fusedBackend) keepWindow(on bool, open *bool, count *int) {
	if on && (b.keeping || b.keepingFwd) {
		panic("a window to keep LoRA inputs opened inside another")
	}
	if on {
		*count++
	}
	*open = on
}

func (b *fusedBackend) RoPEAttention(B, S, nHead, nKV, headDim, rotaryDim int) bool { return true }

// rotated is a copy of qkv after RoPE.
func (b *fusedBackend) rotated(qkv, pos Tensor, H, K, D, rot int, theta float32) Tensor {
	r := b.Alloc(qkv.Shape()...)
	b.Copy(r, qkv)
	b.RoPEForward(r, pos, H, K, D, rot, theta)
	return r
}

func (b *fusedBackend) AttentionForwardRoPE(out, lse, qkv, pos Tensor, B, S, H, K, D, window, rot int, theta float32) {
	b.ropeFwd++
	r := b.rotated(qkv, pos, H, K, D, rot, theta)
	defer b.Free(r)
	b.AttentionForward(out, lse, r, pos, B, S, H, K, D, window)
}

func (b *fusedBackend) AttentionBackwardRoPE(dqkv, dout, out, lse, qkv, pos Tensor, B, S, H, K, D, window, rot int, theta float32) {
	b.ropeBwd++
	r := b.rotated(qkv, pos, H, K, D, rot, theta)
	defer b.Free(r)
	b.AttentionBackward(dqkv, dout, out, lse, r, pos, B, S, H, K, D, window)
	b.RoPEBackward(dqkv, pos, H, K, D, rot, theta)
}

// PackLoRA counts the calls and checks that each names every linear of
// the model once (the CPU has nothing to pack).
func (b *fusedBackend) PackLoRA(ls []*Linear) {
	seen := map[*Linear]bool{}
	for _, l := range ls {
		if l == nil || l.LoRA == nil || seen[l] {
			panic("PackLoRA: a nil, adapterless or repeated linear")
		}
		seen[l] = true
	}
	b.packs++
	b.packed = len(ls)
}

// PrefetchLinears counts the hints (the CPU has nothing to prefetch).
func (b *fusedBackend) PrefetchLinears(ls ...*Linear) {
	for _, l := range ls {
		if l == nil || l.W == nil {
			panic("PrefetchLinears: a linear without a weight")
		}
	}
	b.prefetched += len(ls)
}

func (b *fusedBackend) SwiGLULinearForward(out, act, gateUp Tensor, l *Linear, h Tensor, seed uint64) {
	b.SwiGLUForward(act, gateUp)
	if out == nil {
		b.fwdH++
		b.LoRAHForward(h, act, l, seed)
		return
	}
	b.fwd++
	b.LinearForward(out, act, l, h, seed)
}

// BeginLoRAGrads and FlushLoRAGrads count the model's windows and check
// that they pair (the CPU computes every gradient at once).
func (b *fusedBackend) BeginLoRAGrads() {
	if b.gradWindow {
		panic("BeginLoRAGrads inside a window")
	}
	b.gradWindow = true
	b.gradWindows++
}

func (b *fusedBackend) FlushLoRAGrads() {
	if !b.gradWindow {
		panic("FlushLoRAGrads without a window")
	}
	b.gradWindow = false
}

// SwiGLULinearAddForward adds on every other call (the contract's two
// ops) and refuses on the others, so that the model's fallback runs too.
func (b *fusedBackend) SwiGLULinearAddForward(out, act, gateUp Tensor, l *Linear, h Tensor, seed uint64) bool {
	b.adds++
	if b.adds%2 == 0 {
		return false
	}
	b.added++
	tmp := b.Alloc(out.Shape()...)
	defer b.Free(tmp)
	b.SwiGLUForward(act, gateUp)
	b.LinearForward(tmp, act, l, h, seed)
	b.Add(out, out, tmp)
	return true
}

func (b *fusedBackend) SwiGLULinearBackward(dx, dgateUp, dact, gateUp, x Tensor, l *Linear, h Tensor, seed uint64) {
	if !b.gradWindow {
		panic("a layer's backward outside a LoRAGradBatcher window")
	}
	b.bwd++
	if dgateUp == nil {
		dgateUp = b.Alloc(gateUp.Shape()...)
	}
	b.SwiGLUBackward(dgateUp, dact, gateUp)
	b.LinearBackward(dx, dgateUp, x, l, h, seed)
}

// TestFusedSwiGLUHooks: training through a backend with the fused SwiGLU,
// RoPE-attention and RMSNorm-linear hooks gives the reference adapter byte for byte, with and without
// gradient checkpointing, and the hooks ran where the model should call
// them: every layer's forward, the recompute of every layer but the last,
// every layer's backward.
func TestFusedSwiGLUHooks(t *testing.T) {
	model := tinyModelDir(t, smallModel.cfg, 22)
	L := smallModel.cfg.NumLayers
	for _, ckpt := range []bool{false, true} {
		var logs []string
		run := func(b Backend) *Result {
			c := smallJob(t, model, filepath.Join(t.TempDir(), "out"), 10)
			c.Training.MaxSteps, c.Training.SaveSteps, c.Training.GradientAccumulationSteps = 2, 0, 1
			c.Training.GradientCheckpointing = ckpt
			c.Quantization.KeepDequantizedGB = 1.5
			j := newTestJob(t, c, "")
			j.NewBackend = func(DType) (Backend, error) { return b, nil }
			logs = nil
			res, err := Train(context.Background(), j, func(e TrainEvent) {
				if l, ok := e.(LogEvent); ok && strings.Contains(l.Message, "keep_dequantized_gb") {
					logs = append(logs, l.Message)
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			return res
		}
		ref := run(NewCPUBackend(CPUOptions{}))
		if len(logs) != 1 || !strings.Contains(logs[0], "ignored") {
			t.Errorf("the CPU backend's keep_dequantized_gb messages: %q", logs)
		}
		fb := &fusedBackend{CPUBackend: NewCPUBackend(CPUOptions{})}
		got := run(fb)
		if len(logs) != 1 || !strings.Contains(logs[0], "1.25 GB of dequantized weights kept") {
			t.Errorf("keep_dequantized_gb messages: %q, want one after the first step", logs)
		}
		wantH := 0
		if ckpt {
			wantH = 2 * (L - 1)
		}
		// Hints: each forward layer's three and the next layer's four
		// (with checkpointing the last layer's are the first recompute's);
		// each recompute's three and the layer below's qkv_proj; each
		// backward layer's four for the layer below.
		wantP := 2 * (3*L + 4*(L-1) + 4*(L-1))
		if ckpt {
			wantP += 2 * (4 + 3*(L-1) + L - 2)
		}
		if fmt.Sprint(fb.keepDeq) != "[1500000000]" {
			t.Errorf("checkpointing %v: KeepDequantized calls %v, want one, before the load, with keep_dequantized_gb's 1.5 GB", ckpt, fb.keepDeq)
		}
		if fb.prefetched != wantP {
			t.Errorf("checkpointing %v: %d prefetch hints, want %d", ckpt, fb.prefetched, wantP)
		}
		if fb.packs != 2 || fb.packed != 4*L {
			t.Errorf("checkpointing %v: %d PackLoRA calls (the last with %d linears), want one a forward (2) with %d", ckpt, fb.packs, fb.packed, 4*L)
		}
		// The residual add in down_proj's product: each checkpointed
		// forward's layers but the last (their res1 is recomputed), none
		// without checkpointing (the backward reads every layer's res1).
		wantAdds := 0
		if ckpt {
			wantAdds = 2 * (L - 1)
		}
		if fb.adds != wantAdds || fb.added != (wantAdds+1)/2 {
			t.Errorf("checkpointing %v: %d SwiGLULinearAddForward calls (%d added), want %d (%d)", ckpt, fb.adds, fb.added, wantAdds, (wantAdds+1)/2)
		}
		// A LoRAGradBatcher window for each layer's backward, all closed.
		if fb.gradWindows != 2*L || fb.gradWindow {
			t.Errorf("checkpointing %v: %d LoRA gradient windows (one open at the end: %v), want %d", ckpt, fb.gradWindows, fb.gradWindow, 2*L)
		}
		if fb.fwd+fb.added != 2*L || fb.fwdH != wantH || fb.bwd != 2*L {
			t.Errorf("checkpointing %v: %d forwards (and %d adding), %d recomputes, %d backwards through the hooks, want %d, %d, %d",
				ckpt, fb.fwd, fb.added, fb.fwdH, fb.bwd, 2*L, wantH, 2*L)
		}
		// Kept LoRA inputs: the last layer's forward and each recompute
		// (checkpointing), each window closed.
		wantK := 0
		if ckpt {
			wantK = 2 * L
		}
		if fb.keeps != wantK || fb.keeping {
			t.Errorf("checkpointing %v: %d windows to keep LoRA inputs (open at the end: %v), want %d", ckpt, fb.keeps, fb.keeping, wantK)
		}
		// Without checkpointing, a window over each training forward.
		wantKF := 2
		if ckpt {
			wantKF = 0
		}
		if fb.keepsFwd != wantKF || fb.keepingFwd {
			t.Errorf("checkpointing %v: %d whole-forward windows to keep LoRA inputs (open at the end: %v), want %d", ckpt, fb.keepsFwd, fb.keepingFwd, wantKF)
		}
		// The norms fused into qkv_proj and gate_up_proj: every forward and
		// recompute.
		if fb.normLin != 2*L+wantH || fb.addNormLin != 2*L+wantH {
			t.Errorf("checkpointing %v: %d norm + qkv_proj, %d add + norm + gate_up_proj forwards through the hook, want %d each",
				ckpt, fb.normLin, fb.addNormLin, 2*L+wantH)
		}
		// 16-bit activations: gate_up_proj's output ([T, 2I]; down_proj has
		// an adapter) and, with RoPE fused, qkv_proj's output and gradient
		// ([T, QKVOut]), nothing else.
		cfg := smallModel.cfg
		if w := fb.halfWidths; len(w) != 2 || w[2*cfg.IntermediateSize] == 0 || w[cfg.QKVOut()] == 0 || w[cfg.QKVOut()] <= w[2*cfg.IntermediateSize] {
			t.Errorf("checkpointing %v: AllocHalf by width %v, want gate_up's %d and qkv's %d (output and gradient)", ckpt, w,
				2*cfg.IntermediateSize, cfg.QKVOut())
		}
		// By-products nobody reads: each allocation of the activations (one
		// set with checkpointing; without, one a layer, their LoRA inputs
		// kept through the forward) marks its two norm outputs ([T, C])
		// and SwiGLU's ([T, I]).
		if w := fb.skipWidths; len(w) != 2 || w[cfg.IntermediateSize] == 0 || w[cfg.HiddenSize] != 2*w[cfg.IntermediateSize] ||
			!ckpt && w[cfg.IntermediateSize]%L != 0 {
			t.Errorf("checkpointing %v: SkipByproduct by width %v, want twice as many of %d as of %d (a multiple of %d layers without)", ckpt, w,
				cfg.HiddenSize, cfg.IntermediateSize, L)
		}
		// Attention with RoPE: every forward and recompute, every backward.
		if fb.ropeFwd != 2*L+wantH || fb.ropeBwd != 2*L {
			t.Errorf("checkpointing %v: %d attention forwards, %d backwards with RoPE fused, want %d, %d",
				ckpt, fb.ropeFwd, fb.ropeBwd, 2*L+wantH, 2*L)
		}
		if !bytes.Equal(readFile(t, filepath.Join(got.OutputDir, peft.WeightsName)), readFile(t, filepath.Join(ref.OutputDir, peft.WeightsName))) {
			t.Errorf("checkpointing %v: the adapter trained through the hooks differs from the reference", ckpt)
		}
	}
}

// tf32Backend is the CPU backend with a TF32Setter that records its calls
// (the CPU's products stay IEEE float32: the setting changes nothing here).
type tf32Backend struct {
	*CPUBackend
	calls []bool
}

func (b *tf32Backend) SetTF32(on bool) error { b.calls = append(b.calls, on); return nil }

// TestTF32Setting: training.tf32 true reaches a backend's TF32Setter once,
// before training, and says so; a backend without one logs that it is
// ignored; nil or false asks nothing.
func TestTF32Setting(t *testing.T) {
	model := tinyModelDir(t, smallModel.cfg, 23)
	yes, no := true, false
	for _, tc := range []struct {
		tf32    *bool
		setter  bool
		calls   string
		logWant string
	}{
		{&yes, true, "[true]", "run on TF32 tensor cores"},
		{&yes, false, "[]", "has no TF32 and computes in IEEE float32; ignored"},
		{&no, true, "[]", ""},
		{nil, true, "[]", ""},
	} {
		c := smallJob(t, model, filepath.Join(t.TempDir(), "out"), 10)
		c.Training.MaxSteps, c.Training.SaveSteps = 1, 0
		c.Training.TF32 = tc.tf32
		j := newTestJob(t, c, "")
		tb := &tf32Backend{CPUBackend: NewCPUBackend(CPUOptions{})}
		if tc.setter {
			j.NewBackend = func(DType) (Backend, error) { return tb, nil }
		} else {
			j.NewBackend = func(DType) (Backend, error) { return tb.CPUBackend, nil }
		}
		var logs []string
		if _, err := Train(context.Background(), j, func(e TrainEvent) {
			if l, ok := e.(LogEvent); ok && strings.Contains(l.Message, "training.tf32") {
				logs = append(logs, l.Message)
			}
		}); err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(tb.calls); got != tc.calls {
			t.Errorf("tf32 %v, setter %v: SetTF32 calls %s, want %s", tc.tf32, tc.setter, got, tc.calls)
		}
		if tc.logWant == "" && len(logs) != 0 || tc.logWant != "" && (len(logs) != 1 || !strings.Contains(logs[0], tc.logWant)) {
			t.Errorf("tf32 %v, setter %v: logs %q, want one with %q", tc.tf32, tc.setter, logs, tc.logWant)
		}
	}
}
