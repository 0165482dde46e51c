package finetune

// The Backend is the list of coarse ops the Phi-3 model is written over, in
// the spirit of llm.c's *_forward / *_backward pairs. The model's forward and
// backward (model.go) are written once against it; the CPU backend
// (cpu_*.go) is the readable reference; cuda.Backend implements the same ops
// on the GPU and is tested op by op against the CPU.
//
// Conventions every implementation follows:
//   - Tensors are dense, row-major, and hold values in the backend's compute
//     type; on the host side they are always exchanged as float32.
//   - T is the number of tokens (batch x sequence, flattened), C the hidden
//     size, I the intermediate size, V the vocabulary, H/K the query/KV head
//     counts, D the head dimension, r the LoRA rank.
//   - Backward ops ACCUMULATE (+=) into the gradients they produce (dx, LoRA
//     grads), like llm.c; callers zero what must start at zero. Forward ops
//     overwrite their outputs.
//   - Ops never retain their arguments; they may run asynchronously (GPU),
//     and only the calls that return host values synchronise.

// DType names a storage or compute type.
type DType int

const (
	F32 DType = iota
	F16
	BF16
	U8
	I32
)

// Bytes is the size of one value of type d (the memory estimates: kept
// weights and activations are held in the compute type).
func (d DType) Bytes() int64 {
	switch d {
	case F16, BF16:
		return 2
	case U8:
		return 1
	}
	return 4
}

func (d DType) String() string {
	switch d {
	case F32:
		return "float32"
	case F16:
		return "float16"
	case BF16:
		return "bfloat16"
	case U8:
		return "uint8"
	case I32:
		return "int32"
	}
	return "unknown"
}

// Tensor is a backend-owned array. Its element type is the backend's compute
// type unless it was allocated with AllocInt32 or AllocBytes.
type Tensor interface {
	Shape() []int
	Numel() int
}

// Weight is a frozen base matrix [out, in]: dense (embeddings, lm_head, or a
// linear layer that is not quantized) or NF4 with double quantization.
type Weight interface {
	Out() int
	In() int
	// Bytes is the weight's storage size, as get_memory_footprint counts it
	// (packed NF4 codes count, their quantization state does not).
	Bytes() int64
}

// LoRA is one adapter on a linear layer: y += scale * B(A(dropout(x))).
type LoRA struct {
	A, B         Tensor  // [r, in], [out, r]
	GradA, GradB Tensor  // same shapes
	Scale        float32 // lora_alpha / r
	Dropout      float32 // probability in [0, 1)
}

// Linear is a frozen base weight with an optional LoRA adapter.
type Linear struct {
	Name string // Hugging Face module name, e.g. model.layers.0.self_attn.qkv_proj
	W    Weight
	LoRA *LoRA // nil when the module has no adapter
}

// AdamParams are one optimizer step's hyper-parameters (torch.optim.AdamW
// semantics: decoupled weight decay, bias correction).
type AdamParams struct {
	LR, Beta1, Beta2, Eps, WeightDecay float32
	Step                               int // 1-based step count after this update
}

// Adam8State is bitsandbytes' blockwise 8-bit optimizer state for one
// parameter: two dynamically quantized moments (signed map for m, unsigned
// for v) with one absmax per block of 256 (bitsandbytes' blocksize).
type Adam8State struct {
	M, V             Tensor // uint8 codes, Numel = parameter Numel
	AbsmaxM, AbsmaxV Tensor // float32, one per 256 elements
}

// Backend is the set of coarse ops the model runs on.
type Backend interface {
	Name() string
	// ComputeDType is the type activations and dequantized weights are
	// rounded to (F32 on the CPU reference unless emulation is asked for).
	ComputeDType() DType

	// Memory.
	Alloc(shape ...int) Tensor // zero-filled, compute type
	AllocInt32(n int) Tensor   // zero-filled int32
	AllocBytes(n int) Tensor   // zero-filled uint8
	Upload(dst Tensor, src []float32)
	UploadInt32(dst Tensor, src []int32)
	// UploadBytes fills a uint8 tensor (resuming 8-bit optimizer state).
	UploadBytes(dst Tensor, src []uint8)
	Download(src Tensor) []float32 // synchronises
	// DownloadBytes returns a uint8 tensor's bytes (a checkpoint's 8-bit
	// optimizer state); it synchronises.
	DownloadBytes(src Tensor) []uint8
	Zero(t Tensor)
	Copy(dst, src Tensor)
	Free(t Tensor)

	// Frozen weights. data is row-major [out, in] in float32 (the caller
	// converts from bf16/f16 storage). DenseWeight rounds to the compute type.
	DenseWeight(data []float32, out, in int) (Weight, error)
	// NF4Weight quantizes on the backend, bitsandbytes' algorithm: blocks of
	// 64, nibble-packed codes (first element in the high nibble), and with
	// doubleQuant the absmax values quantized again in blocks of 256.
	NF4Weight(data []float32, out, in int, doubleQuant bool) (Weight, error)
	// DequantizeWeight returns w as float32 [out*in] (tests, export, merge).
	DequantizeWeight(w Weight) []float32
	FreeWeight(w Weight)

	// Embedding: out[t,:] = table[ids[t],:]. out [T,C], ids int32 [T].
	EmbeddingForward(out, ids Tensor, table Weight)

	// RMSNorm: out = x / sqrt(mean(x^2) + eps) * w.
	// out, x [T,C]; w [C]; rstd [T] saved for backward.
	RMSNormForward(out, rstd, x, w Tensor, eps float32)
	// dx [T,C] += d(out)/dx . dout. The norm weight is frozen (no dw).
	RMSNormBackward(dx, dout, x, w, rstd Tensor)

	// Linear: out [T,out] = x [T,in] . W^T + scale * (dropout(x) . A^T) . B^T.
	// h [T,r] saves dropout(x) . A^T for backward (ignored when l.LoRA is
	// nil). The dropout mask is a pure function of (seed, element index), so
	// backward regenerates it instead of storing it.
	LinearForward(out, x Tensor, l *Linear, h Tensor, seed uint64)
	// dx [T,in] += dout . W + scale * ((dout . B) . A) * mask;
	// l.LoRA.GradB += scale * dout^T . h; l.LoRA.GradA += scale * (dout . B)^T . dropout(x).
	// dx may be nil when the input gradient is not needed.
	LinearBackward(dx, dout, x Tensor, l *Linear, h Tensor, seed uint64)

	// RoPE in place on the q and k parts of a fused qkv [T,(H+2K)*D], with
	// Hugging Face's rotate_half convention over the first rotaryDim
	// features of each head. pos int32 [T].
	RoPEForward(qkv, pos Tensor, nHead, nKV, headDim, rotaryDim int, theta float32)
	// RoPEBackward rotates the q and k parts of dqkv back (in place).
	RoPEBackward(dqkv, pos Tensor, nHead, nKV, headDim, rotaryDim int, theta float32)

	// Causal attention for B rows of S tokens (T = B*S) with packed
	// examples: query i may attend key j only if j <= i, j is in the same
	// row, and j >= i - pos[i] (position ids restart at 0 for every
	// example, so nothing attends across an example boundary); with
	// window > 0 also j > i - window. out [T,H*D]; qkv [T,(H+2K)*D] after
	// RoPE; lse [H,T] saves each query's log-sum-exp for backward.
	AttentionForward(out, lse, qkv, pos Tensor, B, S, nHead, nKV, headDim, window int)
	// dqkv [T,(H+2K)*D] += gradient of out w.r.t. qkv.
	AttentionBackward(dqkv, dout, out, lse, qkv, pos Tensor, B, S, nHead, nKV, headDim, window int)

	// SwiGLU from the fused gate_up [T,2I] (gate first, then up):
	// out [T,I] = silu(gate) * up.
	SwiGLUForward(out, gateUp Tensor)
	// dgateUp [T,2I] += gradient of out w.r.t. gateUp.
	SwiGLUBackward(dgateUp, dout, gateUp Tensor)

	// Add: out = a + b (out may alias a or b).
	Add(out, a, b Tensor)

	// Logits: out [T,V] = x [T,C] . lmHead^T in float32.
	Logits(out, x Tensor, lmHead Weight)
	// CrossEntropy computes the logits of x against lmHead in chunks of
	// tokens (never all T x V at once), the summed cross-entropy over the
	// tokens whose target is not -100, and, when dx is not nil,
	// dx [T,C] += gradScale * d(sum loss)/dx. targets int32 [T]. It returns
	// the loss sum and the number of targets predicted correctly (argmax),
	// for mean token accuracy. It synchronises.
	CrossEntropy(dx, x Tensor, lmHead Weight, targets Tensor, gradScale float32) (lossSum float64, correct int)

	// Optimizer ops. Scale multiplies t by s in place. SumSquares returns
	// sum(t^2) in float64 (synchronises).
	Scale(t Tensor, s float32)
	SumSquares(t Tensor) float64
	// AdamW updates p in place from g with fp32 moments m, v.
	AdamW(p, g, m, v Tensor, hp AdamParams)
	// AdamW8bit is bitsandbytes' blockwise 8-bit AdamW (optimizer_update_8bit_blockwise).
	AdamW8bit(p, g Tensor, st *Adam8State, hp AdamParams)
	// BnbAdamW32 is bitsandbytes' 32-bit Adam kernel (kOptimizer32bit2State,
	// optim.BnbAdam32), which the 8-bit optimizers apply to parameters
	// under optim.Min8bitSize values: p updated in place from g with fp32
	// moments m, v, weight decay after the update.
	BnbAdamW32(p, g, m, v Tensor, hp AdamParams)

	// AttentionCached is the generation path for one sequence: it writes the
	// k and v of qkv [T,(H+2K)*D] (after RoPE) into kCache, vCache
	// [maxSeq,K*D] at positions start..start+T-1 and computes out [T,H*D]
	// causally over the cache's first start+T positions.
	AttentionCached(out, qkv, kCache, vCache Tensor, start, nHead, nKV, headDim, window int)

	// Sync waits for queued work (a no-op on the CPU).
	Sync() error
	// Close frees everything the backend holds.
	Close() error
}

// Optional interfaces. A backend may do some of the trainer's work its own
// way; Train uses these when the backend implements them, and the CPU
// path (finetune.LoadModel; SumSquares, optim.ClipScale and Scale) is the
// reference their results must equal.

// ModelLoader builds a model from a checkpoint the backend's own way (the
// CUDA backend uploads the stored bf16 bytes and quantizes on the GPU)
// with LoadModel's result: the same weights, NF4 codes and adapters.
type ModelLoader interface {
	LoadModel(ck *Checkpoint, opts ModelOptions) (*Model, error)
}

// GradClipper clips gradients on the device, without the host round trip
// per gradient that SumSquares takes: ClipGradNorm is
// torch.nn.utils.clip_grad_norm_ (the total norm, summed in float64 in
// the order of grads, then every gradient scaled by optim.ClipScale's
// coefficient when the norm exceeds maxNorm; maxNorm <= 0 only measures),
// and GradNorm returns the norm the last ClipGradNorm computed
// (synchronising).
type GradClipper interface {
	ClipGradNorm(grads []Tensor, maxNorm float64)
	GradNorm() (float64, error)
}

// LoRAHForwarder computes only the adapter half of LinearForward's saved
// state: h [T,r] = dropout(x) . A^T, the same values LinearForward writes
// to h, without the base product x . W^T. Gradient checkpointing's
// recompute needs down_proj's h but not its output (the layer's output is
// already checkpointed), so a backend that implements it saves one
// dequantization and the largest-K matmul of every recomputed layer.
type LoRAHForwarder interface {
	LoRAHForward(h, x Tensor, l *Linear, seed uint64)
}

// MultiAdamW8bit applies AdamW8bit to several parameters at once (the CUDA
// backend: one launch a step instead of one per LoRA matrix). The result
// must equal AdamW8bit on each parameter in turn, bit for bit.
type MultiAdamW8bit interface {
	AdamW8bitMulti(ps, gs []Tensor, sts []*Adam8State, hp AdamParams)
}

// WeightPrefetcher takes a hint: the model will use these linears next, so
// a backend may start preparing their weights now (the CUDA backend
// dequantizes NF4 weights on a second stream while the queued work runs;
// issue 8). It must not change any result. The model gives it each
// layer's o_proj, gate_up_proj and down_proj when the layer's forward (or
// checkpointing's recompute) starts; in a forward, each module of the
// next layer once the layer's use of that module is queued; in a
// recompute, the qkv_proj of the layer below once the layer's is queued
// (its backward reads the layer's qkv_proj weight again: the CUDA backend
// takes a spare slot); and in a backward, each module of the layer below
// once the layer's backward of that module is queued.
type WeightPrefetcher interface {
	PrefetchLinears(ls ...*Linear)
}

// DequantKeeper takes a trade of memory for speed (issue 8,
// quantization.keep_dequantized_gb): the backend may keep up to bytes of
// the quantized base weights dequantized for as long as the weights live,
// so that later steps do not dequantize them again. It must not change
// any result. The trainer calls it before it loads the model, and with 0
// (free what is kept, keep no more) when a step runs out of memory;
// after the first step it logs KeptDequantized, the bytes kept.
type DequantKeeper interface {
	KeepDequantized(bytes int64)
	KeptDequantized() int64
}

// TF32Setter runs the float32 matrix products on TF32 tensor cores
// (training.tf32, TrainingArguments' tf32: what
// torch.backends.cuda.matmul.allow_tf32 = True does): their inputs rounded
// to TF32's 10-bit mantissa, float32 accumulation and output. It changes
// results at the 1e-5 level (relative to sum |a b|) and only the float32
// products: bfloat16 and float16 compute take no TF32. The trainer calls
// it once, before it loads the model; a backend without it computes in
// IEEE float32 (the CPU backend: training.tf32 is then ignored, with a
// log line).
type TF32Setter interface {
	SetTF32(on bool) error
}

// StepRehearser rehearses a training step beside the model's load: the
// CUDA backend runs one layer of cfg (random weights, opts) on a batch of
// rows x seq tokens on a backend of its own, so that the first real step
// does not pay cuBLAS's first calls. It must not change any result, and
// must leave the job the memory it needs (need: the plan's estimate). The
// trainer calls it before the load and the returned function after it,
// before the first step: that waits for the rehearsal to end (and free its
// memory) and says how it went ("" when it did nothing).
type StepRehearser interface {
	RehearseStep(cfg *Config, opts ModelOptions, rows, seq int, need int64) (wait func() string)
}

// LoRAPacker takes a promise: the LoRA matrices of these linears stay as
// they are until the backend's own ops write them (an upload, an
// optimizer step), so a backend may keep rounded copies for its kernels
// (the CUDA backend packs bfloat16 A and B^T for its row kernels; issue
// 8, v11). It must not change any result. The model gives it all its
// linears when a forward starts.
type LoRAPacker interface {
	PackLoRA(ls []*Linear)
}

// SwiGLULinearForwarder fuses SwiGLU into the linear that consumes its
// output (down_proj): SwiGLULinearForward(out, act, gateUp, l, h, seed) is
// SwiGLUForward(act, gateUp) then LinearForward(out, act, l, h, seed), or,
// with out nil, LoRAHForward(h, act, l, seed) (checkpointing's recompute,
// so a backend with this has LoRAHForward too); the same results. The
// model uses it when the backend has it, down_proj has an adapter and no
// finiteness check is on; the CPU backend has not.
type SwiGLULinearForwarder interface {
	SwiGLULinearForward(out, act, gateUp Tensor, l *Linear, h Tensor, seed uint64)
}

// SwiGLULinearAdder is a SwiGLULinearForwarder that can add into its
// output: SwiGLULinearAddForward(out, act, gateUp, l, h, seed) is
// SwiGLULinearForward(tmp, act, gateUp, l, h, seed) then Add(out, out,
// tmp), bit for bit, and returns true; or it does nothing and returns false
// (the caller then runs those two ops). The model uses it for the residual
// add after down_proj where the layer's res1 (x + o_proj) is not read again
// (a checkpointed training forward below the last layer, an evaluation
// forward): the norm before gate_up_proj writes res1 into the layer's output
// itself, and the CUDA backend adds the product to it in the GEMM's
// epilogue (beta 1) instead of a pass of its own (issue 8, v18).
type SwiGLULinearAdder interface {
	SwiGLULinearForwarder
	SwiGLULinearAddForward(out, act, gateUp Tensor, l *Linear, h Tensor, seed uint64) bool
}

// LoRAGradBatcher lets a backend hold back the LoRA weight gradients of
// one layer's backward and compute them together: between BeginLoRAGrads
// and FlushLoRAGrads, LinearBackward may leave its GradA and GradB
// unwritten; FlushLoRAGrads writes them, with the values they would have
// had. The model opens a window for each layer's backward. The CUDA backend
// runs the products that share a shape as one batched GEMM (Phi-3-mini: the
// GradA of qkv_proj, o_proj and gate_up_proj, the GradB of o_proj and
// down_proj), where cuBLAS takes as long for three of these small products
// as for one (issue 8, v18).
type LoRAGradBatcher interface {
	BeginLoRAGrads()
	FlushLoRAGrads()
}

// SwiGLULinearBackwarder fuses SwiGLU's backward into the backward of the
// linear that produced its input (gate_up_proj): with dgateUp zeroed (Zero)
// on entry, SwiGLULinearBackward(dx, dgateUp, dact, gateUp, x, l, h, seed)
// is SwiGLUBackward(dgateUp, dact, gateUp) then LinearBackward(dx,
// dgateUp, x, l, h, seed), with the same dx and LoRA gradients up to
// float32 rounding; dgateUp is scratch: afterwards it holds d gate_up or
// still its zeros (the CUDA backend then never materialises d gate_up in
// float32; issue 8). The model passes a nil dgateUp (v16: it holds none,
// 64 MiB for Phi-3-mini's 1,024 tokens): a backend that needs one then
// uses scratch of its own. The model uses it when the backend has it and
// no finiteness check needs d gate_up; the CPU backend has not, so its two
// ops stay the reference.
type SwiGLULinearBackwarder interface {
	SwiGLULinearBackward(dx, dgateUp, dact, gateUp, x Tensor, l *Linear, h Tensor, seed uint64)
}

// RoPEAttentioner fuses RoPE into attention. With qkv holding q and k
// before RoPE, AttentionForwardRoPE(out, lse, qkv, pos, ...) gives what
// RoPEForward on a copy of qkv then AttentionForward on the copy give; with
// dqkv zeroed (Zero) on entry, AttentionBackwardRoPE(dqkv, dout, out, lse,
// qkv, pos, ...) leaves in dqkv what AttentionBackward (from the rotated
// copy) then RoPEBackward leave: the gradient w.r.t. the unrotated qkv.
// RoPEAttention says whether it takes these shapes. The model uses it when
// it does and no finiteness check is on (qkv then stays unrotated: nothing
// else reads it); the CPU backend has not, so its ops stay the reference.
type RoPEAttentioner interface {
	RoPEAttention(B, S, nHead, nKV, headDim, rotaryDim int) bool
	AttentionForwardRoPE(out, lse, qkv, pos Tensor, B, S, nHead, nKV, headDim, window, rotaryDim int, theta float32)
	AttentionBackwardRoPE(dqkv, dout, out, lse, qkv, pos Tensor, B, S, nHead, nKV, headDim, window, rotaryDim int, theta float32)
}

// LoRAInputKeeper keeps, between KeepLoRAInputs(true) and (false), what a
// linear's LinearForward (or LoRAHForward, SwiGLULinearForward) computes
// from its input that the same linear's LinearBackward needs again, for
// that backward with the same input and seed (the CUDA backend: the
// rounded dropout(x) of GradA), so that it is not computed twice. The
// model brackets the forward of a layer whose backward comes next:
// checkpointing's recompute and the last layer's training forward. The
// results are the same with or without.
type LoRAInputKeeper interface {
	KeepLoRAInputs(on bool)
}

// LoRAInputForwardKeeper keeps what LoRAInputKeeper keeps for every layer
// of a training forward without gradient checkpointing, whose backward
// then takes each layer's: the model brackets the whole forward with
// KeepLoRAInputsForward(true) and (false). Unlike KeepLoRAInputs it says
// nothing of the weights (the backward of layer 0 comes last). The CUDA
// backend keeps the rounded dropout(x) of each linear (~36 MB a Phi-3-mini
// layer at 1,024 tokens, within what activationBytes counts in float32),
// so that the backward makes no pass of its own for them and batches the
// layer's GradA (LoRAGradBatcher); what does not fit is not kept (issue 8,
// v18). The results are the same with or without.
type LoRAInputForwardKeeper interface {
	KeepLoRAInputsForward(on bool)
}

// Viewer gives a tensor of another shape over the first values of t's
// memory: View(t, shape...) holds prod(shape) <= t.Numel() values of t's
// element type, t's first ones (a write through either shows in both).
// Free of a view frees nothing; t must outlive its views. The model keeps
// one set of activation buffers for the largest micro-batch so far and
// views it for smaller ones (an epoch's last, partial batch) instead of
// freeing and allocating the set twice an epoch.
type Viewer interface {
	View(t Tensor, shape ...int) Tensor
}

// ByproductSkipper lets fused ops leave unwritten an activation the model
// never reads back itself. SkipByproduct(t) marks t (for its life): an op
// that writes t only as a by-product of its own work may then skip the
// write where nothing else needs it. In the CUDA backend these are
// RMSNormLinearForward's xn and SwiGLULinearForward's act, whose linears
// read the rows from registers. The values are not needed in a forward
// that no backward follows, nor where a LoRAInputKeeper has kept the
// rounded dropout(x) that GradA would otherwise read from t. Reading a
// skipped tensor is an error naming the op, never garbage, until an op or
// the host writes it again. The model marks the layer activations that
// gradient checkpointing recomputes (input_layernorm's and
// post_attention_layernorm's outputs, SwiGLU's output); the results are
// the same with or without.
type ByproductSkipper interface {
	SkipByproduct(t Tensor)
}

// RMSNormLinearForwarder fuses an RMSNorm into the linear that consumes
// its output (qkv_proj after input_layernorm, gate_up_proj after
// post_attention_layernorm): RMSNormLinearForward(out, xn, rstd, sum, a, b,
// w, eps, l, h, seed) is, with b nil, RMSNormForward(xn, rstd, a, w, eps)
// (sum unused), else AddRMSNormForward(sum, xn, rstd, a, b, w, eps); then
// LinearForward(out, xn, l, h, seed) (with out nil, LoRAHForward(h, xn,
// l, seed): checkpointing's recompute of a linear whose output was
// stashed, ActivationStasher); the same results (the CUDA backend
// sums the squares in another order, in float64: the same bits unless
// two float64 sums fall on either side of a float32 rounding boundary).
// xn must not alias a, b or sum. The model uses it when the backend has it
// and no finiteness check is on; the CPU backend has not, so its ops stay
// the reference.
type RMSNormLinearForwarder interface {
	RMSNormLinearForward(out, xn, rstd, sum, a, b, w Tensor, eps float32, l *Linear, h Tensor, seed uint64)
}

// ActivationStasher sets activations aside and puts them back, so that
// gradient checkpointing's backward takes them back instead of recomputing
// them (issue 8, v16; Model.CheckpointKeepBytes). Stash(key, t) copies
// t's values (as they are held: a HalfAllocator tensor's 16-bit values
// stay 16-bit) to the stash under key, unless they do not fit in the
// budget (false: nothing is stashed); Unstash(key, t) copies them back
// into t (the same number of values). The copies may run beside the
// queued work: t's next writer after a Stash, and its next reader after
// an Unstash, wait for them. PrefetchStash(key) is a hint: key's Unstash
// comes soon (the CUDA backend moves values it holds in host memory back
// to the device ahead). SetStashBudget bounds the device bytes the stash
// holds (0 frees them all). The values come back exactly as they were
// stashed, so the results are the same with or without.
type ActivationStasher interface {
	SetStashBudget(bytes int64)
	Stash(key int, t Tensor) bool
	PrefetchStash(key int)
	Unstash(key int, t Tensor)
}

// StashPreparer is an ActivationStasher that can make the memory of the
// outputs a step will stash before the first step, beside the model's load
// (the CUDA backend: the page-locked host memory, ~0.4 s of the first step
// otherwise; issue 8, v17). PrepareStash(budget, sizes) gives the budget
// SetStashBudget will get and the byte sizes of the outputs a training
// step offers Stash, in that order. A wrong guess costs memory for a
// while, never results: the step makes what is missing.
type StashPreparer interface {
	PrepareStash(budget int64, sizes []int64)
}

// HostWeighter keeps a frozen dense weight's values in host memory instead
// of the device's: MoveToHost(w) moves them there, and the ops that read
// w read them there (the CUDA backend: the embedding gather reads the
// step's rows over PCIe; a weight a GEMM reads must stay). The same
// results. The trainer moves the token embeddings with
// training.gradient_checkpointing_keep_gb, so that the kept activations
// have their room (issue 8, v16).
type HostWeighter interface {
	MoveToHost(w Weight) error
}

// HalfAllocator allocates an activation that the backend may hold in its
// 16-bit compute type between the op that writes it and the ops that read
// it: AllocHalf(shape...) is Alloc(shape...) whose values, once an op has
// written them, may be rounded to the compute type (every op, Download
// included, then reads the rounded values): unlike the other optional
// interfaces it may change results, by that rounding alone. The model
// allocates so gate_up_proj's output (where down_proj has an adapter) and,
// where the backend fuses RoPE into attention, qkv_proj's output and its
// gradient. Under bfloat16 compute the CUDA backend then stores them in
// bfloat16 (what PyTorch's autocast does with a linear's output;
// qkv_proj's backward rounds its gradient to bfloat16 anyway) and its
// SwiGLU, attention and LoRA kernels read half the bytes (issue 8); the
// CPU backend has not, so its activations stay float32.
type HalfAllocator interface {
	AllocHalf(shape ...int) Tensor
}

// AddRMSNormer fuses the residual add and the RMSNorm after it:
// AddRMSNormForward(sum, out, rstd, a, b, w, eps) is Add(sum, a, b) then
// RMSNormForward(out, rstd, sum, w, eps), with the same results (out must
// not alias a, b or sum). The model uses it when the backend has it; the
// CPU backend has not, so its two ops stay the reference.
type AddRMSNormer interface {
	AddRMSNormForward(sum, out, rstd, a, b, w Tensor, eps float32)
}
