package finetune

import (
	"slices"

	"github.com/ollama-tune/ollama-tune/finetune/data"
)

// The plan's memory estimate is what the CUDA backend, the product path,
// holds on the GPU at a training step's peak: its weights, tensors and
// scratch, as its Allocated peak counts them (not the CUDA context, ~0.1-0.5
// GiB, nor cuBLAS's own workspace). Each term below follows one kind of
// the backend's allocations (OLLAMA_TUNE_CUDA_MEMMAP=1 prints them by
// kind); TestDeviceMemoryEstimate checks the sums against the peaks the
// backend measured for each compute type and memory setting (BENCHMARKS.md
// v26). Until v26 the estimate counted the embeddings and lm_head at
// float32 (transformers' get_memory_footprint after the k-bit
// preparation) and no dequantization slots: right for bfloat16 by
// coincidence, 0.6 GiB short under float32 compute, 1.1 GiB over for
// float16 without checkpointing.

// deviceWeightBytes: the decoder linears (NF4 codes and their
// quantization state, linearBytes where not 0: a GGUF file's blocks), the
// token embeddings (unless embedOnHost: the trainer moves them to host
// memory for kept activations) and lm_head in the compute type, the norms
// in float32, and the LoRA matrices with their gradients in float32 (and,
// under bfloat16, a bfloat16 copy packed for the tensor cores).
func deviceWeightBytes(cfg *Config, q QuantizationConfig, trainable, linearBytes int64, embedOnHost bool) int64 {
	cb := q.ComputeDType().Bytes()
	var n int64
	if linearBytes > 0 {
		n = linearBytes
	} else {
		for _, m := range LinearModules {
			out, in := LinearShape(cfg, m)
			n += int64(cfg.NumLayers) * linearWeightBytes(int64(out)*int64(in), q, cb)
		}
	}
	table := int64(cfg.VocabSize) * int64(cfg.HiddenSize) * cb
	if cfg.TieWordEmbeddings {
		n += table // one table; a weight the GEMMs read stays on the device
	} else {
		n += table // lm_head
		if !embedOnHost {
			n += table
		}
	}
	n += int64(2*cfg.NumLayers+1) * int64(cfg.HiddenSize) * 4
	n += 8 * trainable // float32 values and gradients
	if q.ComputeDType() == BF16 {
		n += 2 * trainable
	}
	return n
}

// linearWeightBytes is one decoder linear of n values as the backend holds
// it: NF4 codes (two a byte) and absmax, one a block of 64 (double
// quantization: a byte a block and a float32 scale a 256 of them; else a
// float32 a block), or dense in compute type (cb bytes).
func linearWeightBytes(n int64, q QuantizationConfig, cb int64) int64 {
	if !q.LoadIn4bit {
		return n * cb
	}
	blocks := (n + 63) / 64
	if q.Bnb4bitUseDoubleQuant {
		return (n+1)/2 + blocks + 4*((blocks+255)/256)
	}
	return (n+1)/2 + 4*blocks
}

// FoldStride is the row stride of an NF4 weight's bfloat16 dequantization
// that leaves room for r more columns: the LoRA up-projection's B, folded
// into the base GEMM (the CUDA backend's foldLD), rounded to 64 values
// (128-byte rows: in + r rounded to 8 made the GEMMs slower, v5).
func FoldStride(in, r int) int { return (in + r + 63) &^ 63 }

// dequantStride is the row stride a decoder linear's dequantized weight
// takes: FoldStride for an adapted NF4 weight (fold) under bfloat16.
func dequantStride(in, r int, adapted, fold bool, dt DType) int64 {
	if fold && dt == BF16 && adapted && r > 0 && in%8 == 0 {
		return int64(FoldStride(in, r))
	}
	return int64(in)
}

// dequantizedLinearBytes is every decoder linear dequantized in dt at the
// backend's strides (what keep_dequantized_gb keeps, at most), and one of
// each shape (the dequantization cache's slots); fold: NF4 weights (a
// GGUF base's blocks dequantize at their own width).
func dequantizedLinearBytes(cfg *Config, dt DType, r int, targets []string, fold bool) (all, oneEach int64) {
	for _, m := range LinearModules {
		out, in := LinearShape(cfg, m)
		one := int64(out) * dequantStride(in, r, slices.Contains(targets, m), fold, dt) * dt.Bytes()
		all += int64(cfg.NumLayers) * one
		oneEach += one
	}
	return all, oneEach
}

// dequantSlotBytes is the dequantization cache: a slot for each decoder
// linear's shape, plus, for NF4 weights (nf4: they are prefetched) under
// checkpointing, a spare qkv_proj slot (the recompute reads a layer's
// qkv_proj again in its backward while the layer below's is prefetched).
func dequantSlotBytes(cfg *Config, dt DType, r int, targets []string, ckpt, nf4 bool) int64 {
	_, n := dequantizedLinearBytes(cfg, dt, r, targets, nf4)
	if ckpt && nf4 {
		out, in := LinearShape(cfg, "self_attn.qkv_proj")
		n += int64(out) * dequantStride(in, r, slices.Contains(targets, "self_attn.qkv_proj"), nf4, dt) * dt.Bytes()
	}
	return n
}

// CrossEntropyChunkBytes bounds one chunk of the CUDA backend's
// cross-entropy logits (float32; why this size: cuda.ceChunkBytes).
const CrossEntropyChunkBytes = 64 << 20

// scratchBytes is the backend's scratch a step of T tokens grows: the
// cross-entropy's chunk of logits and its rows of x and dx; under 16-bit
// compute, the 16-bit copy of a GEMM's input (the widest: gate_up_proj's
// out); under float16 and float32, gate_up_proj's float32 gradient (which
// bfloat16 fuses away) and the LoRA products' per-chunk partial sums; under
// IEEE float32, the pinned GEMMs' split-K workspace.
func scratchBytes(cfg *Config, dt DType, tf32 bool, T, r int) int64 {
	V, C, I := int64(cfg.VocabSize), int64(cfg.HiddenSize), int64(cfg.IntermediateSize)
	t := int64(T)
	rows := max(1, min(t, CrossEntropyChunkBytes/(4*V)))
	n := rows*V*4 + 2*rows*C*4
	if dt != F32 {
		n += t * 2 * I * 2
	}
	if dt != BF16 {
		n += t*2*I*4 + 4*((t+31)/32)*int64(r)*2*I
	}
	if dt == F32 && !tf32 {
		n += 48 << 20
	}
	return n
}

// stashDeviceBytes is the device memory of the activations
// gradient_checkpointing_keep_gb keeps (budget bytes) of sizes (what a
// step offers): all of them where the budget holds them all; else every
// hostEvery-th output of a size goes to host memory through a staging
// buffer a size, and the others take the budget while it lasts.
func stashDeviceBytes(sizes []int64, budget int64, hostEvery int) int64 {
	var all int64
	for _, s := range sizes {
		all += s
	}
	if budget <= 0 || all == 0 {
		return 0
	}
	if all <= budget {
		return all
	}
	turns := map[int64]int{} // outputs of a size seen
	var dev int64
	for _, s := range sizes {
		if turns[s] == 0 {
			dev += s // its staging buffer
		}
		if turns[s]%hostEvery != 0 {
			dev += s
		}
		turns[s]++
	}
	return min(budget, dev)
}

// StashHostEvery is the share of the stashed outputs the CUDA backend
// sends to host memory where the budget does not hold them all, by compute
// type: every other; every third under float16, whose stashed outputs are
// float32 at about bfloat16's layer time (cuda.Backend.hostEvery).
func StashHostEvery(dt DType) int {
	if dt == F16 {
		return 3
	}
	return 2
}

// stashElemBytes is the bytes a value of the stashed outputs takes: the
// CUDA backend holds qkv_proj's and gate_up_proj's outputs in bfloat16
// under bfloat16 compute, else in float32.
func stashElemBytes(dt DType) int64 {
	if dt == BF16 {
		return 2
	}
	return 4
}

// EstimateGPUMemory is the plan's GPU memory estimate
// (TrainPlan.EstimatedBytes) for a job of tc's settings on a model of cfg,
// micro-batches of B sequences of S tokens, without its data: what the
// GPU benchmark prints beside the peak it measures, so that a change to
// the backend's memory shows there as a gap.
func EstimateGPUMemory(cfg *Config, tc TrainConfig, B, S int) (int64, error) {
	tc.Training.PerDeviceTrainBatchSize = B
	prep := &prepared{train: []data.Sequence{{InputIDs: make([]int32, S)}}, plan: data.Plan{Sequences: B, StepsPerEpoch: 1}}
	p, err := makePlan(&Job{Config: tc}, cfg, prep)
	return p.EstimatedBytes, err
}
