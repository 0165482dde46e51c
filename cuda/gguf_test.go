//go:build cuda

package cuda

// GGUF weights kept as blocks (quantization.keep_gguf) on the GPU against
// finetune/gguf, the bit-exact port of ggml-quants.c: every type's random
// blocks dequantize to the same float32 bits (and the same bits rounded to
// bfloat16 or float16 under 16-bit compute); llama's permuted q/k rows come
// back in Hugging Face order; a tiny model whose linears are blocks of all
// the types trains like the CPU backend's.

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/gguf"
	"github.com/ollama-tune/ollama-tune/finetune/testutil/tinymodel"
)

// ggufHalves are the byte offsets of the fp16 fields (d, dmin or m) in a
// block of each quantized type (ggml-common.h).
var ggufHalves = map[gguf.Type][]int{
	gguf.Q4_0: {0}, gguf.Q4_1: {0, 2}, gguf.Q5_0: {0}, gguf.Q5_1: {0, 2}, gguf.Q8_0: {0},
	gguf.Q2_K: {80, 82}, gguf.Q3_K: {108}, gguf.Q4_K: {0, 2}, gguf.Q5_K: {0, 2}, gguf.Q6_K: {208},
}

// ggufModelScale is a power of two for the fp16 fields of each type that
// keeps its values within about ±0.06 (the largest code times the largest
// sub-block scale times 2 * scale; the float types: any scale > 0, their
// values are N(0, 0.025)). Larger weights make the tiny model too
// sensitive for 1e-5: at 8 times these, float32 rounding alone (inputs
// perturbed by 1e-7 on the CPU) moves the gradients by 2e-5, and the GPU
// differed from the CPU by as much; here the same perturbation moves them
// by under 2e-6.
var ggufModelScale = map[gguf.Type]float32{
	gguf.F32: 1, gguf.F16: 1, gguf.BF16: 1,
	gguf.Q4_0: 0x1p-8, gguf.Q4_1: 0x1p-9, gguf.Q5_0: 0x1p-9, gguf.Q5_1: 0x1p-10, gguf.Q8_0: 0x1p-12,
	gguf.Q2_K: 0x1p-10, gguf.Q3_K: 0x1p-12, gguf.Q4_K: 0x1p-15, gguf.Q5_K: 0x1p-16, gguf.Q6_K: 0x1p-17,
}

// ggufRandomBlocks returns rows*in values of type t: random bytes with
// every floating-point field finite. scale 0: any finite fp16 (zeros,
// subnormals and negatives included) and any finite F32, F16 or BF16
// value; scale > 0: fp16 fields scale*(1 + k/8), k < 8 (subnormal below
// 2^-14, still exact), and F32, F16, BF16 values N(0, 0.025).
func ggufRandomBlocks(r *rand.Rand, t gguf.Type, rows, in int, scale float32) []byte {
	n := int(t.RowBytes(int64(in))) * rows
	b := make([]byte, n)
	for k := range b {
		b[k] = byte(r.Uint32())
	}
	finiteHalf := func(h uint16) uint16 {
		if h&0x7c00 == 0x7c00 {
			h &^= 0x0400
		}
		return h
	}
	switch t {
	case gguf.F32, gguf.F16, gguf.BF16:
		if scale > 0 {
			v := make([]float32, rows*in)
			for k := range v {
				v[k] = 0.025 * float32(r.NormFloat64())
			}
			q, err := gguf.Quantize(t, v)
			if err != nil {
				panic(err)
			}
			return q
		}
		for k := 0; k < n; k += t.TypeSize() {
			switch t {
			case gguf.F32:
				u := binary.LittleEndian.Uint32(b[k:])
				if u&0x7f800000 == 0x7f800000 {
					binary.LittleEndian.PutUint32(b[k:], u&^0x00800000)
				}
			case gguf.F16:
				binary.LittleEndian.PutUint16(b[k:], finiteHalf(binary.LittleEndian.Uint16(b[k:])))
			case gguf.BF16:
				if h := binary.LittleEndian.Uint16(b[k:]); h&0x7f80 == 0x7f80 {
					binary.LittleEndian.PutUint16(b[k:], h&^0x0080)
				}
			}
		}
		return b
	}
	offs, ok := ggufHalves[t]
	if !ok {
		panic(fmt.Sprintf("no fp16 fields known for %s", t))
	}
	for blk := 0; blk < n; blk += t.TypeSize() {
		for _, o := range offs {
			h := finiteHalf(binary.LittleEndian.Uint16(b[blk+o:]))
			if scale > 0 {
				h = gguf.FP32ToFP16(scale * (1 + float32(r.IntN(8))/8))
			}
			binary.LittleEndian.PutUint16(b[blk+o:], h)
		}
	}
	return b
}

// roundTo is the compute type's rounding of a dequantized value.
func roundTo(h halfKind) func(float32) float32 {
	switch h {
	case halfBF16:
		return finetune.RoundBF16
	case halfF16:
		return finetune.RoundF16
	}
	return func(v float32) float32 { return v }
}

// TestGGUFDequantIsBitIdentical: each type's random blocks (7 rows of 512
// values: 16 blocks of 32 or 2 of 256 a row), dequantized on the GPU, are
// finetune/gguf's values bit for bit, rounded as the CPU rounds them under
// bfloat16 and float16 compute; the weight holds exactly the blocks' bytes
// on the device and gives them back when freed.
func TestGGUFDequantIsBitIdentical(t *testing.T) {
	const rows, in = 7, 512
	r := rand.New(rand.NewPCG(1, 2))
	for _, typ := range gguf.DequantizableTypes() {
		data := ggufRandomBlocks(r, typ, rows, in, 0)
		m, err := finetune.NewGGUFMatrix("w."+typ.String(), in, []finetune.GGUFPart{
			{Tensor: "blk.0.w", Type: typ, Data: data, Rows: rows, RowBytes: int(typ.RowBytes(in))},
		})
		if err != nil {
			t.Fatal(err)
		}
		want := make([]float32, rows*in)
		if err := gguf.Dequantize(typ, data, want); err != nil {
			t.Fatal(err)
		}
		for _, dc := range dtypeCases() {
			t.Run(typ.String()+" "+dc.name, func(t *testing.T) {
				before, _ := dc.g.Allocated()
				w, err := dc.g.GGUFWeight(m)
				if err != nil {
					t.Fatal(err)
				}
				if after, _ := dc.g.Allocated(); after-before != int64(len(data)) || w.Bytes() != int64(len(data)) {
					t.Errorf("the weight holds %d bytes on the device (Bytes %d), want the %d bytes of blocks", after-before, w.Bytes(), len(data))
				}
				round := roundTo(dc.g.half)
				rw := make([]float32, len(want))
				for k, v := range want {
					rw[k] = round(v)
				}
				checkBits(t, "dequantized", dc.g.DequantizeWeight(w), rw)
				live, _ := dc.g.Allocated()
				dc.g.FreeWeight(w)
				if now, _ := dc.g.Allocated(); live-now != int64(len(data)) {
					t.Errorf("FreeWeight gave back %d bytes, want %d", live-now, len(data))
				}
			})
		}
	}
}

// ggufUnpermute puts the rows of a part that llama.cpp permuted back in
// Hugging Face order: within each head of D rows, stored rows 0, 2, 4, ...
// are the head's first D/2 rows, stored rows 1, 3, 5, ... its last D/2.
func ggufUnpermute(stored []float32, rows, in, heads int) []float32 {
	out := make([]float32, 0, len(stored))
	D := rows / heads
	for h := 0; h < heads; h++ {
		for _, parity := range []int{0, 1} {
			for s := parity; s < D; s += 2 {
				row := h*D + s
				out = append(out, stored[row*in:(row+1)*in]...)
			}
		}
	}
	return out
}

// TestGGUFPermutedParts: a fused qkv of three parts of different types,
// q and k with llama.cpp's row permutation (a block type and a float type,
// the two kernel families), comes back in Hugging Face row order under
// every compute type, as on the CPU; two weights of one shape share a
// dequantization cache slot without seeing each other's values.
func TestGGUFPermutedParts(t *testing.T) {
	const in = 256
	r := rand.New(rand.NewPCG(3, 4))
	type spec struct {
		typ         gguf.Type
		rows, heads int
	}
	specs := []spec{{gguf.Q4_K, 16, 2}, {gguf.F16, 8, 1}, {gguf.Q8_0, 8, 0}}
	var parts []finetune.GGUFPart
	var want []float32
	for k, s := range specs {
		data := ggufRandomBlocks(r, s.typ, s.rows, in, 0)
		parts = append(parts, finetune.GGUFPart{Tensor: fmt.Sprintf("part%d", k), Type: s.typ, Data: data, Rows: s.rows, RowBytes: int(s.typ.RowBytes(in)), Heads: s.heads})
		v := make([]float32, s.rows*in)
		if err := gguf.Dequantize(s.typ, data, v); err != nil {
			t.Fatal(err)
		}
		if s.heads > 0 {
			v = ggufUnpermute(v, s.rows, in, s.heads)
		}
		want = append(want, v...)
	}
	m, err := finetune.NewGGUFMatrix("qkv", in, parts)
	if err != nil {
		t.Fatal(err)
	}
	// The same shape, other blocks, no permutation.
	other := make([]finetune.GGUFPart, len(parts))
	var otherWant []float32
	for k, p := range m.Parts() {
		p.Data, p.Heads = ggufRandomBlocks(r, p.Type, p.Rows, in, 0), 0
		other[k] = p
		v := make([]float32, p.Rows*in)
		if err := gguf.Dequantize(p.Type, p.Data, v); err != nil {
			t.Fatal(err)
		}
		otherWant = append(otherWant, v...)
	}
	m2, err := finetune.NewGGUFMatrix("qkv2", in, other)
	if err != nil {
		t.Fatal(err)
	}
	for _, dc := range dtypeCases() {
		t.Run(dc.name, func(t *testing.T) {
			round := roundTo(dc.g.half)
			rounded := func(v []float32) []float32 {
				out := make([]float32, len(v))
				for k, x := range v {
					out[k] = round(x)
				}
				return out
			}
			w, err := dc.g.GGUFWeight(m)
			if err != nil {
				t.Fatal(err)
			}
			defer dc.g.FreeWeight(w)
			w2, err := dc.g.GGUFWeight(m2)
			if err != nil {
				t.Fatal(err)
			}
			defer dc.g.FreeWeight(w2)
			cw, err := dc.c.(finetune.GGUFWeighter).GGUFWeight(m)
			if err != nil {
				t.Fatal(err)
			}
			checkBits(t, "qkv", dc.g.DequantizeWeight(w), rounded(want))
			checkBits(t, "qkv against the CPU backend", dc.g.DequantizeWeight(w), dc.c.DequantizeWeight(cw))
			checkBits(t, "another weight of the shape", dc.g.DequantizeWeight(w2), rounded(otherWant))
			checkBits(t, "qkv again", dc.g.DequantizeWeight(w), rounded(want))
		})
	}
}

func TestGGUFWeightErrors(t *testing.T) {
	if _, err := gpu.GGUFWeight(nil); err == nil {
		t.Error("a nil matrix: no error")
	}
	for _, typ := range gguf.DequantizableTypes() {
		if err := checkGGUFType(typ); err != nil {
			t.Errorf("the CPU dequantizes %s, the GPU not: %v", typ, err)
		}
	}
	err := checkGGUFType(gguf.IQ2_XXS)
	if err == nil || !strings.Contains(err.Error(), "IQ2_XXS is not implemented on CUDA") || !strings.Contains(err.Error(), "keep_gguf: false") {
		t.Errorf("IQ2_XXS: %v; want an error naming the type and keep_gguf: false", err)
	}
}

// ggufTinyConfig: smallConfig with sizes that are whole k-quant blocks
// (256), four heads of 64 and two KV heads.
func ggufTinyConfig() *finetune.Config {
	cfg := smallConfig()
	cfg.HiddenSize, cfg.IntermediateSize, cfg.NumLayers, cfg.NumHeads, cfg.NumKVHeads = 256, 256, 2, 4, 2
	return cfg
}

// ggufTinyMatrices are the tiny model's linears as GGUF blocks of all
// thirteen types, qkv in llama's three parts (q and k permuted) and
// gate_up in two, with values of a trainable size.
func ggufTinyMatrices(t *testing.T, cfg *finetune.Config) map[string]*finetune.GGUFMatrix {
	t.Helper()
	type part struct {
		typ         gguf.Type
		rows, heads int
	}
	C, I, D := cfg.HiddenSize, cfg.IntermediateSize, cfg.HeadDim()
	qRows, kvRows := cfg.NumHeads*D, cfg.NumKVHeads*D
	layers := []map[string][]part{
		{
			"self_attn.qkv_proj": {{gguf.Q4_K, qRows, cfg.NumHeads}, {gguf.Q6_K, kvRows, cfg.NumKVHeads}, {gguf.Q8_0, kvRows, 0}},
			"self_attn.o_proj":   {{gguf.Q4_0, C, 0}},
			"mlp.gate_up_proj":   {{gguf.Q5_K, I, 0}, {gguf.F16, I, 0}},
			"mlp.down_proj":      {{gguf.BF16, C, 0}},
		},
		{
			"self_attn.qkv_proj": {{gguf.Q2_K, qRows, cfg.NumHeads}, {gguf.Q3_K, kvRows, cfg.NumKVHeads}, {gguf.Q5_0, kvRows, 0}},
			"self_attn.o_proj":   {{gguf.Q5_1, C, 0}},
			"mlp.gate_up_proj":   {{gguf.Q4_1, I, 0}, {gguf.F32, I, 0}},
			"mlp.down_proj":      {{gguf.Q6_K, C, 0}},
		},
	}
	r := rand.New(rand.NewPCG(5, 6))
	mats := map[string]*finetune.GGUFMatrix{}
	for l, mods := range layers {
		for _, mod := range finetune.LinearModules {
			name := finetune.LayerName(l, mod) + ".weight"
			_, in := finetune.LinearShape(cfg, mod)
			var parts []finetune.GGUFPart
			for k, p := range mods[mod] {
				scale := ggufModelScale[p.typ]
				parts = append(parts, finetune.GGUFPart{Tensor: fmt.Sprintf("%s.%d", name, k), Type: p.typ,
					Data: ggufRandomBlocks(r, p.typ, p.rows, in, scale), Rows: p.rows, RowBytes: int(p.typ.RowBytes(int64(in))), Heads: p.heads})
			}
			m, err := finetune.NewGGUFMatrix(name, in, parts)
			if err != nil {
				t.Fatal(err)
			}
			mats[name] = m
		}
	}
	return mats
}

// ggufTinyModel builds the tiny model on b with its linears kept as the
// blocks, an all-linear adapter with random B matrices.
func ggufTinyModel(t *testing.T, b finetune.Backend, cfg *finetune.Config, mats map[string]*finetune.GGUFMatrix) *finetune.Model {
	t.Helper()
	gw := b.(finetune.GGUFWeighter)
	lc := &finetune.LoRAConfig{R: 4, Alpha: 8, TargetModules: []string{"all-linear"}, Bias: "none", Seed: 7}
	m, err := finetune.NewModel(b, cfg, finetune.RandomWeights(cfg, 3), finetune.ModelOptions{LoRA: lc,
		LinearWeight: func(name string, out, in int) (finetune.Weight, error) {
			mat, ok := mats[name]
			if !ok {
				return nil, fmt.Errorf("no GGUF matrix %s", name)
			}
			return gw.GGUFWeight(mat)
		}})
	if err != nil {
		t.Fatal(err)
	}
	tinymodel.RandomLoRAB(t, m)
	return m
}

// TestGGUFModelMatchesCPU: the tiny model with keep_gguf linears on the GPU
// and on the CPU (float32): loss, token count, accuracy and every LoRA
// gradient over two AdamW steps agree to 1e-5, with and without gradient
// checkpointing (whose backward reuses the cached dequantization).
func TestGGUFModelMatchesCPU(t *testing.T) {
	cfg := ggufTinyConfig()
	mats := ggufTinyMatrices(t, cfg)
	batch := tinymodel.PackedBatch(2, 24, cfg.VocabSize, []int{9, 17, 5})
	for _, ckpt := range []bool{false, true} {
		t.Run(fmt.Sprintf("ckpt %v", ckpt), func(t *testing.T) {
			gm, cm := ggufTinyModel(t, gpu, cfg, mats), ggufTinyModel(t, cpu, cfg, mats)
			defer gm.Free()
			defer cm.Free()
			gm.GradientCheckpointing, cm.GradientCheckpointing = ckpt, ckpt
			w := newTwin(gm, cm)
			defer w.free()
			for step := 1; step <= 2; step++ {
				if cl := w.forward(t, step, batch, tolF32, true); math.IsNaN(cl) || cl <= 0 {
					t.Fatalf("step %d: cpu loss %v; the model's weights are out of range", step, cl)
				}
				w.backward(t, step, tolF32)
				w.adamW(step)
			}
			w.checkParams(t, tolF32)
		})
	}
}
