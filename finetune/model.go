package finetune

import (
	"errors"
	"fmt"
	"slices"
)

// The Phi-3 decoder (Phi3ForCausalLM), written once over the Backend's ops.
//
// One layer, x the residual stream [T,C]:
//
//	ln1  = input_layernorm(x)
//	qkv  = qkv_proj(ln1); RoPE on q, k          [T,(H+2K)*D]
//	att  = attention(qkv)                        [T,H*D]
//	res1 = x + o_proj(att)
//	ln2  = post_attention_layernorm(res1)
//	gu   = gate_up_proj(ln2)                     [T,2I] (gate, then up)
//	act  = up * silu(gate)                       [T,I]
//	out  = res1 + down_proj(act)
//
// then model.norm and lm_head. Phi-3's dropouts (embd_pdrop, resid_pdrop,
// attention_dropout) are 0 in every released config and not implemented;
// LoRA dropout is.

// Layer is one decoder layer's frozen weights and adapters.
type Layer struct {
	InputNorm, PostAttnNorm Tensor // [C], float32
	QKV, O, GateUp, Down    *Linear
}

// linears returns the layer's four linears in module order.
func (l *Layer) linears() [numModules]*Linear {
	return [numModules]*Linear{l.QKV, l.O, l.GateUp, l.Down}
}

// ModelOptions says how to build the model.
type ModelOptions struct {
	Quantize    bool // NF4 for the decoder linears (embeddings, lm_head stay dense)
	DoubleQuant bool // quantize the NF4 absmax values again (bnb_4bit_use_double_quant)
	LoRA        *LoRAConfig
	// GradientCheckpointing keeps only each layer's input during a training
	// forward and recomputes the layer in backward.
	GradientCheckpointing bool
	// LinearWeight, when set, makes the frozen weight of each decoder
	// linear (by Hugging Face name, ".weight" included) instead of the
	// getter's values through DenseWeight or NF4Weight: a GGUF base keeps
	// its blocks this way (quantization.keep_gguf).
	LinearWeight func(name string, out, in int) (Weight, error)
}

// Model is a Phi-3 causal LM on a backend.
type Model struct {
	Cfg       *Config
	B         Backend
	Embed     Weight // [V,C]
	LMHead    Weight // [V,C]; the same Weight as Embed when tied
	FinalNorm Tensor // [C]
	Layers    []Layer

	// GradientCheckpointing: see ModelOptions; may be changed between steps.
	GradientCheckpointing bool
	// CheckpointKeepBytes trades memory for speed under gradient
	// checkpointing (training.gradient_checkpointing_keep_gb): an
	// ActivationStasher backend keeps up to this many bytes of the
	// training forward's qkv_proj and gate_up_proj outputs, layer 0 up
	// while they fit, and the backward's recompute of a layer takes them
	// back instead of running those two matmuls again (issue 8, v16). The
	// same results. 0: everything is recomputed. May be changed between
	// steps.
	CheckpointKeepBytes int64
	// CheckFinite makes Forward and Backward stop at the first non-finite
	// activation or gradient (finite.go; OLLAMA_TUNE_CHECK_FINITE=1 too).
	CheckFinite bool
	// NumItemsInBatch, when > 0, is the number of label tokens of the whole
	// optimizer step: Backward then produces gradients of sum(loss) /
	// NumItemsInBatch instead of the micro-batch's mean, so that gradient
	// accumulation averages over all tokens of the step, as transformers
	// >= 4.46 does with num_items_in_batch. The loss Forward returns stays
	// the micro-batch mean.
	NumItemsInBatch int

	loraParams []NamedLoRA
	fc         *finiteCheck // the pass's finite checks, when on
	bufs       [2]*buffers  // [0] inference, [1] training: an eval between steps keeps the training buffers
	pending    *pendingBackward
	// stashed says, by layer, which outputs the last checkpointed training
	// forward stashed (CheckpointKeepBytes): the backward takes them back.
	stashed []stashedOutputs
}

// stashedOutputs are the outputs of a layer that checkpointing's backward
// takes back from an ActivationStasher instead of recomputing.
type stashedOutputs struct{ qkv, gateUp bool }

// stashKey is the ActivationStasher key of layer li's output of module mod.
func stashKey(li, mod int) int { return li*numModules + mod }

// stasher is the backend's ActivationStasher when checkpointing keeps
// outputs (CheckpointKeepBytes > 0): the backend must also compute a
// skipped linear's h alone (LoRAHForwarder). Else nil.
func (m *Model) stasher() ActivationStasher {
	st, ok := m.B.(ActivationStasher)
	_, hOnly := m.B.(LoRAHForwarder)
	if !ok || !hOnly || m.CheckpointKeepBytes <= 0 {
		return nil
	}
	return st
}

// Batch is a micro-batch of B rows of S tokens; each field is [B*S].
// Labels use IgnoreIndex (-100) for tokens that are not predicted; the
// model shifts them itself (logits at s predict labels[s+1]).
type Batch struct {
	B, S        int
	InputIDs    []int32
	PositionIDs []int32
	Labels      []int32
	// NextLabels, when not nil, holds for each row the label that follows
	// it ([B]): the target its last position is scored on, IgnoreIndex
	// for none (ShiftLabels' default). A row-per-sequence layout of a
	// padding-free batch uses it (data.Collator.RowPerSequence).
	NextLabels []int32
}

// Targets are the labels each position is scored on: ShiftLabels, then a
// row's last position takes NextLabels' entry.
func (b *Batch) Targets() []int32 {
	t := ShiftLabels(b.Labels, b.B, b.S)
	for r, l := range b.NextLabels {
		t[r*b.S+b.S-1] = l
	}
	return t
}

// LoadModel builds a model from a checkpoint directory's weights
// (converted to float32 one tensor at a time).
func LoadModel(b Backend, ck *Checkpoint, opts ModelOptions) (*Model, error) {
	m, err := NewModel(b, ck.Config, ck.Float32, opts)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", ck.Dir, err)
	}
	return m, nil
}

// NewModel builds a model from weights in Hugging Face naming; get returns
// a tensor's float32 values and shape. Tests build models from memory with
// it; LoadModel reads a checkpoint.
func NewModel(b Backend, cfg *Config, get func(name string) ([]float32, []int, error), opts ModelOptions) (*Model, error) {
	m := &Model{Cfg: cfg, B: b, GradientCheckpointing: opts.GradientCheckpointing}
	var targets [numModules]bool
	if opts.LoRA != nil {
		var err error
		if targets, err = opts.LoRA.Validate(); err != nil {
			return nil, err
		}
	}
	C, I, V := cfg.HiddenSize, cfg.IntermediateSize, cfg.VocabSize
	load := func(name string, shape ...int) ([]float32, error) {
		data, got, err := get(name)
		if err != nil {
			return nil, fmt.Errorf("load weight %q: %w", name, err)
		}
		if !slices.Equal(got, shape) {
			return nil, fmt.Errorf("load weight %q: shape %v, but the config (hidden %d, intermediate %d, heads %d/%d, vocab %d) needs %v",
				name, got, C, I, cfg.NumHeads, cfg.NumKVHeads, V, shape)
		}
		if len(data) != numel(shape) {
			return nil, fmt.Errorf("load weight %q: %d values for shape %v", name, len(data), shape)
		}
		return data, nil
	}
	dense := func(name string, out, in int) (Weight, error) {
		data, err := load(name, out, in)
		if err != nil {
			return nil, err
		}
		w, err := b.DenseWeight(data, out, in)
		if err != nil {
			return nil, fmt.Errorf("load weight %q: %w", name, err)
		}
		return w, nil
	}
	norm := func(name string) (Tensor, error) {
		data, err := load(name, C)
		if err != nil {
			return nil, err
		}
		t := b.Alloc(C)
		b.Upload(t, data)
		return t, nil
	}
	linear := func(layer, mod, out, in int) (*Linear, error) {
		name := moduleName(layer, mod)
		var w Weight
		var err error
		switch {
		case opts.LinearWeight != nil:
			if w, err = opts.LinearWeight(name+".weight", out, in); err == nil && (w.Out() != out || w.In() != in) {
				b.FreeWeight(w)
				err = fmt.Errorf("shape [%d, %d], but the config needs [%d, %d]", w.Out(), w.In(), out, in)
			}
		default:
			var data []float32
			if data, err = load(name+".weight", out, in); err != nil {
				return nil, err
			}
			if opts.Quantize {
				w, err = b.NF4Weight(data, out, in, opts.DoubleQuant)
			} else {
				w, err = b.DenseWeight(data, out, in)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("load weight %q: %w", name+".weight", err)
		}
		l := &Linear{Name: name, W: w}
		if opts.LoRA != nil && targets[mod] {
			initLoRA(b, l, layer, mod, opts.LoRA)
		}
		return l, nil
	}

	var err error
	if m.Embed, err = dense("model.embed_tokens.weight", V, C); err != nil {
		return nil, err
	}
	if cfg.TieWordEmbeddings {
		m.LMHead = m.Embed
	} else if m.LMHead, err = dense("lm_head.weight", V, C); err != nil {
		return nil, err
	}
	if m.FinalNorm, err = norm("model.norm.weight"); err != nil {
		return nil, err
	}
	m.Layers = make([]Layer, cfg.NumLayers)
	for i := range m.Layers {
		l := &m.Layers[i]
		p := fmt.Sprintf("model.layers.%d.", i)
		if l.InputNorm, err = norm(p + "input_layernorm.weight"); err != nil {
			return nil, err
		}
		if l.PostAttnNorm, err = norm(p + "post_attention_layernorm.weight"); err != nil {
			return nil, err
		}
		if l.QKV, err = linear(i, modQKV, cfg.QKVOut(), C); err != nil {
			return nil, err
		}
		if l.O, err = linear(i, modO, C, cfg.NumHeads*cfg.HeadDim()); err != nil {
			return nil, err
		}
		if l.GateUp, err = linear(i, modGateUp, 2*I, C); err != nil {
			return nil, err
		}
		if l.Down, err = linear(i, modDown, C, I); err != nil {
			return nil, err
		}
		for mod, lin := range l.linears() {
			if lin.LoRA == nil {
				continue
			}
			lo := lin.LoRA
			m.loraParams = append(m.loraParams,
				NamedLoRA{Name: PEFTName(i, mod, "A"), Layer: i, Module: LinearModules[mod], Param: lo.A, Grad: lo.GradA, Shape: lo.A.Shape()},
				NamedLoRA{Name: PEFTName(i, mod, "B"), Layer: i, Module: LinearModules[mod], Param: lo.B, Grad: lo.GradB, Shape: lo.B.Shape()})
		}
	}
	return m, nil
}

// Free releases the model's weights and buffers on the backend.
func (m *Model) Free() {
	m.freeBuffers(0)
	m.freeBuffers(1)
	b := m.B
	b.FreeWeight(m.Embed)
	if m.LMHead != m.Embed {
		b.FreeWeight(m.LMHead)
	}
	b.Free(m.FinalNorm)
	for _, l := range m.Layers {
		b.Free(l.InputNorm)
		b.Free(l.PostAttnNorm)
		for _, lin := range l.linears() {
			b.FreeWeight(lin.W)
			if lo := lin.LoRA; lo != nil {
				b.Free(lo.A)
				b.Free(lo.B)
				b.Free(lo.GradA)
				b.Free(lo.GradB)
			}
		}
	}
	m.loraParams = nil
}

// ---------------------------------------------------------------------------
// Activation buffers

// layerActs are one layer's saved activations (the layer's input lives in
// buffers.inputs).
type layerActs struct {
	ln1, rstd1  Tensor             // [T,C], [T]
	qkv         Tensor             // [T,(H+2K)*D], after RoPE (before it where ropeFused)
	ropeFused   bool               // attention ran through RoPEAttentioner: qkv is unrotated
	att, lse    Tensor             // [T,H*D], [H,T]
	res1        Tensor             // [T,C] = x + o_proj(att)
	ln2, rstd2  Tensor             // [T,C], [T]
	gateUp, act Tensor             // [T,2I], [T,I]
	h           [numModules]Tensor // LoRA's saved dropout(x).A^T [T,r], nil without adapter
}

// buffers are sized for one batch shape and training mode.
type buffers struct {
	T, B, S   int
	train     bool
	ckpt      bool
	ropeAttn  bool        // the backend fuses RoPE into attention at these shapes (RoPEAttentioner)
	ids, pos  Tensor      // int32 [T]
	targets   Tensor      // int32 [T]
	inputs    []Tensor    // [L+1][T,C]: each layer's input, then the last layer's output (train); 2 ping-pong buffers (eval)
	acts      []layerActs // L (train, no checkpointing) or 1
	tmp       Tensor      // [T,C] o_proj / down_proj outputs
	lnf, rstd Tensor      // [T,C], [T]: final norm
	// gradients (train only)
	dlnf, dres, dln, datt Tensor // [T,C]
	dqkv                  Tensor // [T,(H+2K)*D]
	dgu, dact             Tensor // [T,2I] (nil where the backend fuses SwiGLU's backward), [T,I]
	// all is every tensor above, in the order newBuffers made them; held
	// those this set allocated (nil for a view set: base holds them).
	all, held []Tensor
	base      *buffers
}

func (m *Model) freeBuffers(slot int) {
	bf := m.bufs[slot]
	if bf == nil {
		return
	}
	if bf.base != nil {
		bf = bf.base // a view set holds no memory of its own
	}
	for _, t := range bf.held {
		m.B.Free(t)
	}
	m.bufs[slot] = nil
}

// ReleaseBuffers frees the activation buffers (the next Forward allocates
// them again for its shape): what a retry with a smaller batch after
// running out of memory needs, since a smaller batch would view them.
func (m *Model) ReleaseBuffers() {
	m.pending = nil
	m.freeBuffers(0)
	m.freeBuffers(1)
}

// ensureBuffers returns the buffers for B x S tokens. The set of the
// largest T = B x S so far stays allocated: a smaller batch (an epoch's
// last, partial micro-batch; another row length) gets a set of views of
// it where the backend is a Viewer, and the next batch of its own shape
// gets it back, each time with every tensor zeroed as if new (a lazy
// Zero on the GPU), instead of freeing and allocating the whole set twice
// an epoch (issue 8: tens of ms on an H100 each time, the driver's frees
// and allocations). A larger batch (re)allocates. An allocation that fails
// (a backend panics with ErrOutOfMemory) frees what this call allocated
// before the panic goes on, so auto_find_batch_size can retry with a
// smaller batch on a device that holds nothing of the failed try.
func (m *Model) ensureBuffers(B, S int, train bool) *buffers {
	ckpt := train && m.GradientCheckpointing
	slot := 0
	if train {
		slot = 1
	}
	if bf := m.bufs[slot]; bf != nil && bf.ckpt == ckpt {
		if bf.B == B && bf.S == S {
			return bf
		}
		base := bf
		if bf.base != nil {
			base = bf.base
		}
		vw, views := m.B.(Viewer)
		switch {
		case base.B == B && base.S == S:
			m.zeroBuffers(base)
			m.bufs[slot] = base
			return base
		case views && B*S <= base.T && m.ropeAttention(B, S) == base.ropeAttn:
			// (the same RoPE fusion: a view of a 16-bit qkv is one too)
			k := 0
			next := func() Tensor { k++; return base.held[k-1] }
			view := func(shape ...int) Tensor { return vw.View(next(), shape...) }
			vs := m.newBuffers(B, S, train, ckpt, view, func(n int) Tensor { return vw.View(next(), n) }, view)
			vs.base = base
			m.zeroBuffers(vs)
			m.bufs[slot] = vs
			return vs
		}
	}
	m.freeBuffers(slot)
	b := m.B
	var allocated []Tensor
	done := false
	defer func() {
		if !done {
			for _, t := range allocated {
				b.Free(t)
			}
		}
	}()
	alloc := func(shape ...int) Tensor {
		t := b.Alloc(shape...)
		allocated = append(allocated, t)
		return t
	}
	allocInt32 := func(n int) Tensor {
		t := b.AllocInt32(n)
		allocated = append(allocated, t)
		return t
	}
	// Some activations may be held in the backend's 16-bit type (the
	// backend decides, HalfAllocator).
	allocHalf := alloc
	if ha, ok := b.(HalfAllocator); ok {
		allocHalf = func(shape ...int) Tensor {
			t := ha.AllocHalf(shape...)
			allocated = append(allocated, t)
			return t
		}
	}
	bf := m.newBuffers(B, S, train, ckpt, alloc, allocInt32, allocHalf)
	bf.held = allocated
	m.bufs[slot] = bf
	done = true
	return bf
}

// ropeAttention says whether the backend fuses RoPE into attention for
// B x S tokens (RoPEAttentioner).
func (m *Model) ropeAttention(B, S int) bool {
	c := m.Cfg
	ra, ok := m.B.(RoPEAttentioner)
	return ok && ra.RoPEAttention(B, S, c.NumHeads, c.NumKVHeads, c.HeadDim(), c.RotaryDim())
}

// zeroBuffers zeroes every tensor of bf (views included).
func (m *Model) zeroBuffers(bf *buffers) {
	for _, t := range bf.all {
		m.B.Zero(t)
	}
}

// newBuffers builds the buffers for B x S tokens from alloc, allocInt32
// and allocHalf (called in the same order for every shape: a view set
// takes the tensors of the set it views in that order).
func (m *Model) newBuffers(B, S int, train, ckpt bool, alloc0 func(...int) Tensor, allocInt320 func(int) Tensor,
	allocHalf0 func(...int) Tensor) *buffers {
	b, c := m.B, m.Cfg
	var all []Tensor
	keep := func(t Tensor) Tensor { all = append(all, t); return t }
	alloc := func(shape ...int) Tensor { return keep(alloc0(shape...)) }
	allocInt32 := func(n int) Tensor { return keep(allocInt320(n)) }
	allocHalf := func(shape ...int) Tensor { return keep(allocHalf0(shape...)) }
	T, C, I, H := B*S, c.HiddenSize, c.IntermediateSize, c.NumHeads
	// qkv_proj's output where attention takes RoPE fused (no op writes qkv
	// after its linear then, but RoPEForward under a finiteness check, which
	// gets it widened), and the gradient the fused attention's backward
	// writes for qkv_proj's backward.
	ropeAttn := m.ropeAttention(B, S)
	allocQKV := alloc
	if ropeAttn {
		allocQKV = allocHalf
	}
	bf := &buffers{T: T, B: B, S: S, train: train, ckpt: ckpt, ropeAttn: ropeAttn}
	bf.ids, bf.pos, bf.targets = allocInt32(T), allocInt32(T), allocInt32(T)
	nIn, nActs := 2, 1
	if train {
		nIn = c.NumLayers + 1
		if !ckpt {
			nActs = c.NumLayers
		}
	}
	for range nIn {
		bf.inputs = append(bf.inputs, alloc(T, C))
	}
	_, keepsForward := b.(LoRAInputForwardKeeper)
	sk, skips := b.(ByproductSkipper)
	skips = skips && (ckpt || train && keepsForward)
	for k := range nActs {
		// gate_up's readers take a 16-bit gate_up when down_proj has an
		// adapter (the fused SwiGLU); else it stays in the compute type.
		allocGateUp := alloc
		if d := m.Layers[k].Down; d != nil && d.LoRA != nil {
			allocGateUp = allocHalf
		}
		a := layerActs{
			ln1: alloc(T, C), rstd1: alloc(T),
			qkv: allocQKV(T, c.QKVOut()),
			att: alloc(T, H*c.HeadDim()), lse: alloc(H, T),
			res1: alloc(T, C),
			ln2:  alloc(T, C), rstd2: alloc(T),
			gateUp: allocGateUp(T, 2*I), act: alloc(T, I),
		}
		// The adapters' ranks come from layer k (every layer has the same
		// targets, so any layer's shapes serve the shared set).
		for mod, lin := range m.Layers[k].linears() {
			if r := loraRank(lin); r > 0 {
				a.h[mod] = alloc(T, r)
			}
		}
		if skips {
			// No op reads them after their layer's fused ops: a forward's
			// are dropped, and the backward after a recompute takes the
			// LoRA inputs the backend kept (issue 8, v10); without
			// checkpointing, the backward takes those kept through the
			// forward (v18), and the backend writes any it did not keep.
			sk.SkipByproduct(a.ln1)
			sk.SkipByproduct(a.ln2)
			sk.SkipByproduct(a.act)
		}
		bf.acts = append(bf.acts, a)
	}
	bf.tmp = alloc(T, C)
	bf.lnf, bf.rstd = alloc(T, C), alloc(T)
	if train {
		bf.dlnf, bf.dres, bf.dln, bf.datt = alloc(T, C), alloc(T, C), alloc(T, C), alloc(T, H*c.HeadDim())
		bf.dqkv = allocQKV(T, c.QKVOut())
		if _, fused := b.(SwiGLULinearBackwarder); !fused {
			// (a fused backward takes no d gate_up: issue 8, v16)
			bf.dgu = alloc(T, 2*I)
		}
		bf.dact = alloc(T, I)
	}
	bf.all = all
	return bf
}

func loraRank(l *Linear) int {
	if l.LoRA == nil {
		return 0
	}
	return l.LoRA.A.Shape()[0]
}

// ---------------------------------------------------------------------------
// Forward

// pendingBackward is what a training forward leaves for Backward.
type pendingBackward struct {
	stepSeed uint64
	batch    *Batch // for the finite checks' messages
}

// validate checks a batch against the model (user data: errors, not panics).
func (m *Model) validate(batch *Batch, needLabels bool) error {
	if batch == nil || batch.B <= 0 || batch.S <= 0 {
		return errors.New("batch: B and S must be positive")
	}
	T := batch.B * batch.S
	if len(batch.InputIDs) != T || len(batch.PositionIDs) != T {
		return fmt.Errorf("batch: %d x %d tokens need %d input ids and position ids, got %d and %d", batch.B, batch.S, T, len(batch.InputIDs), len(batch.PositionIDs))
	}
	if needLabels && len(batch.Labels) != T {
		return fmt.Errorf("batch: %d x %d tokens need %d labels, got %d", batch.B, batch.S, T, len(batch.Labels))
	}
	V := int32(m.Cfg.VocabSize)
	for t, id := range batch.InputIDs {
		if id < 0 || id >= V {
			return fmt.Errorf("batch: input id %d at row %d, position %d is outside the vocabulary [0, %d)", id, t/batch.S, t%batch.S, V)
		}
		if p := batch.PositionIDs[t]; p < 0 {
			return fmt.Errorf("batch: position id %d at row %d, position %d is negative", p, t/batch.S, t%batch.S)
		}
	}
	if needLabels {
		for t, l := range batch.Labels {
			if l != IgnoreIndex && (l < 0 || l >= V) {
				return fmt.Errorf("batch: label %d at row %d, position %d is neither %d nor in the vocabulary [0, %d)", l, t/batch.S, t%batch.S, IgnoreIndex, V)
			}
		}
		if batch.NextLabels != nil && len(batch.NextLabels) != batch.B {
			return fmt.Errorf("batch: %d rows need %d next labels, got %d", batch.B, batch.B, len(batch.NextLabels))
		}
		for r, l := range batch.NextLabels {
			if l != IgnoreIndex && (l < 0 || l >= V) {
				return fmt.Errorf("batch: the label after row %d, %d, is neither %d nor in the vocabulary [0, %d)", r, l, IgnoreIndex, V)
			}
		}
	}
	return nil
}

// ShiftLabels returns the targets the logits at each position are scored
// against: target[b,s] = labels[b,s+1], and IgnoreIndex at the last
// position of each row (Hugging Face's shift in ForCausalLMLoss).
func ShiftLabels(labels []int32, B, S int) []int32 {
	t := make([]int32, B*S)
	for b := range B {
		for s := range S {
			if s+1 < S {
				t[b*S+s] = labels[b*S+s+1]
			} else {
				t[b*S+s] = IgnoreIndex
			}
		}
	}
	return t
}

// moduleSeed is the dropout seed of one module in one step.
func moduleSeed(stepSeed uint64, layer, mod int) uint64 {
	return DeriveSeed(stepSeed, uint64(layer), uint64(mod))
}

// noDropout returns l, or a copy of it whose adapter has no dropout (eval).
func noDropout(l *Linear, train bool) *Linear {
	if train || l.LoRA == nil || l.LoRA.Dropout == 0 {
		return l
	}
	c, lo := *l, *l.LoRA
	lo.Dropout = 0
	c.LoRA = &lo
	return &c
}

// layerForward runs layer li on x [T,C] into out [T,C], saving activations in a.
// A nil out is gradient checkpointing's recompute in Backward, which needs
// the saved activations but not the layer's output: down_proj runs only
// for its adapter's h (LoRAHForward where the backend has it, else
// LinearForward with its base matmul), and the residual add not at all.
// next is the layer whose forward or recompute comes after this one (li+1
// in a forward, li-1 in checkpointing's backward; -1 none): once this
// layer's use of a module's weight is queued, next's weight of it is
// prefetched into its place, so that it has most of a layer's time to get
// ready (issue 8, v12). A recompute does that for qkv_proj only: the
// backward reads this layer's other weights again before next needs
// them (and asks for next's itself).
func (m *Model) layerForward(li, next int, a *layerActs, x, out Tensor, bf *buffers, train bool, stepSeed uint64) {
	b, c, l := m.B, m.Cfg, &m.Layers[li]
	H, K, D := c.NumHeads, c.NumKVHeads, c.HeadDim()
	lin := l.linears()
	for k := range lin {
		lin[k] = noDropout(lin[k], train)
	}
	chk := func(what string, t Tensor) {
		if m.fc != nil {
			m.fc.check(fmt.Sprintf("layer %d %s", li, what), t)
		}
	}
	m.prefetch(lin[modO], lin[modGateUp], lin[modDown]) // no-ops unless the layer before did not ask
	ahead := func(mod int) {
		if next >= 0 && next < len(m.Layers) && (out != nil || mod == modQKV) {
			m.prefetch(m.Layers[next].linears()[mod])
		}
	}
	// A checkpointed training forward stashes qkv_proj's and gate_up_proj's
	// outputs while they fit (not the last layer's: its backward reads
	// them where they are); the recompute of a layer whose outputs were
	// stashed finds them put back (Backward unstashes them once the layer
	// above is done with the buffers) and computes only the adapters' h
	// of those linears, and the norms before them.
	var st ActivationStasher
	if out != nil && train && bf.ckpt && li < len(m.Layers)-1 {
		st = m.stasher()
	}
	var kept stashedOutputs
	if out == nil && li < len(m.stashed) {
		kept = m.stashed[li]
	}
	stash := func(mod int, t Tensor) bool { return st != nil && st.Stash(stashKey(li, mod), t) }
	nl, fuseNorm := b.(RMSNormLinearForwarder)
	fuseNorm = fuseNorm && m.fc == nil
	// Where no backward reads this layer's res1 (a checkpointed training
	// forward below the last layer recomputes it; an evaluation forward has
	// no backward), res1 is written into out and down_proj's product is
	// added to it there (SwiGLULinearAdder): no pass of its own for the
	// residual add.
	adder, addInto := b.(SwiGLULinearAdder)
	addInto = addInto && out != nil && m.fc == nil && a.h[modDown] != nil &&
		(!train || bf.ckpt && li < len(m.Layers)-1)
	res1 := a.res1
	if addInto {
		res1 = out
	}
	qkvOut := a.qkv
	if kept.qkv {
		qkvOut = nil
	}
	if fuseNorm {
		nl.RMSNormLinearForward(qkvOut, a.ln1, a.rstd1, nil, x, nil, l.InputNorm, c.RMSNormEps, lin[modQKV], a.h[modQKV],
			moduleSeed(stepSeed, li, modQKV))
	} else {
		b.RMSNormForward(a.ln1, a.rstd1, x, l.InputNorm, c.RMSNormEps)
		chk("input_layernorm", a.ln1)
		m.linearOrH(qkvOut, a.ln1, lin[modQKV], a.h[modQKV], moduleSeed(stepSeed, li, modQKV))
	}
	chk("qkv_proj", a.qkv)
	ahead(modQKV)
	a.ropeFused = bf.ropeAttn && m.fc == nil
	if a.ropeFused {
		b.(RoPEAttentioner).AttentionForwardRoPE(a.att, a.lse, a.qkv, bf.pos, bf.B, bf.S, H, K, D, c.SlidingWindow, c.RotaryDim(), c.RopeTheta)
	} else {
		if !kept.qkv { // a stashed qkv was stashed rotated
			b.RoPEForward(a.qkv, bf.pos, H, K, D, c.RotaryDim(), c.RopeTheta)
		}
		chk("rope", a.qkv)
		b.AttentionForward(a.att, a.lse, a.qkv, bf.pos, bf.B, bf.S, H, K, D, c.SlidingWindow)
	}
	chk("attention", a.att)
	if st != nil {
		m.stashed[li].qkv = stash(modQKV, a.qkv)
	}
	b.LinearForward(bf.tmp, a.att, lin[modO], a.h[modO], moduleSeed(stepSeed, li, modO))
	chk("o_proj", bf.tmp)
	ahead(modO)
	guOut := a.gateUp
	if kept.gateUp {
		guOut = nil
	}
	if fuseNorm {
		nl.RMSNormLinearForward(guOut, a.ln2, a.rstd2, res1, x, bf.tmp, l.PostAttnNorm, c.RMSNormEps, lin[modGateUp],
			a.h[modGateUp], moduleSeed(stepSeed, li, modGateUp))
	} else {
		if f, ok := b.(AddRMSNormer); ok {
			f.AddRMSNormForward(res1, a.ln2, a.rstd2, x, bf.tmp, l.PostAttnNorm, c.RMSNormEps)
		} else {
			b.Add(res1, x, bf.tmp)
			b.RMSNormForward(a.ln2, a.rstd2, res1, l.PostAttnNorm, c.RMSNormEps)
		}
		chk("post_attention_layernorm", a.ln2)
		m.linearOrH(guOut, a.ln2, lin[modGateUp], a.h[modGateUp], moduleSeed(stepSeed, li, modGateUp))
	}
	chk("gate_up_proj", a.gateUp)
	if st != nil {
		m.stashed[li].gateUp = stash(modGateUp, a.gateUp)
	}
	ahead(modGateUp)
	downSeed := moduleSeed(stepSeed, li, modDown)
	if addInto {
		// out holds res1: out += down_proj(act).
		if !adder.SwiGLULinearAddForward(out, a.act, a.gateUp, lin[modDown], a.h[modDown], downSeed) {
			adder.SwiGLULinearForward(bf.tmp, a.act, a.gateUp, lin[modDown], a.h[modDown], downSeed)
			b.Add(out, out, bf.tmp)
		}
		ahead(modDown)
		return
	}
	if f, ok := b.(SwiGLULinearForwarder); ok && m.fc == nil && a.h[modDown] != nil {
		// act and down_proj in one (out nil: only its adapter's h).
		var o Tensor
		if out != nil {
			o = bf.tmp
		}
		f.SwiGLULinearForward(o, a.act, a.gateUp, lin[modDown], a.h[modDown], downSeed)
	} else {
		b.SwiGLUForward(a.act, a.gateUp)
		chk("swiglu", a.act)
		hf, hOnly := b.(LoRAHForwarder)
		switch {
		case out == nil && a.h[modDown] == nil:
		case out == nil && hOnly:
			hf.LoRAHForward(a.h[modDown], a.act, lin[modDown], downSeed)
		default:
			b.LinearForward(bf.tmp, a.act, lin[modDown], a.h[modDown], downSeed)
			chk("down_proj", bf.tmp)
		}
	}
	if out != nil {
		ahead(modDown)
		b.Add(out, a.res1, bf.tmp)
		chk("output", out)
	}
}

// linearOrH is LinearForward(out, x, l, h, seed), or with out nil (a
// stashed output) only the adapter's h, where l has an adapter.
func (m *Model) linearOrH(out, x Tensor, l *Linear, h Tensor, seed uint64) {
	switch {
	case out != nil:
		m.B.LinearForward(out, x, l, h, seed)
	case h != nil:
		m.B.(LoRAHForwarder).LoRAHForward(h, x, l, seed)
	}
}

// layerForwardKeeping is layerForward for a layer whose backward comes
// next (checkpointing's recompute, the last layer's training forward): a
// LoRAInputKeeper backend keeps what that backward needs again.
// The layer whose qkv_proj comes next is the one below.
func (m *Model) layerForwardKeeping(li int, a *layerActs, x, out Tensor, bf *buffers, stepSeed uint64) {
	k, ok := m.B.(LoRAInputKeeper)
	if ok {
		k.KeepLoRAInputs(true)
		defer k.KeepLoRAInputs(false) // also when an op panics (out of memory)
	}
	m.layerForward(li, li-1, a, x, out, bf, true, stepSeed)
}

// allLinears is every layer's linears, layer by layer, in module order.
func (m *Model) allLinears() []*Linear {
	ls := make([]*Linear, 0, numModules*len(m.Layers))
	for i := range m.Layers {
		for _, l := range m.Layers[i].linears() {
			ls = append(ls, l)
		}
	}
	return ls
}

// prefetch hints the linears the model uses next to a WeightPrefetcher
// backend (the dequantization cache slots they take hold weights already
// done with).
func (m *Model) prefetch(ls ...*Linear) {
	if pf, ok := m.B.(WeightPrefetcher); ok {
		pf.PrefetchLinears(ls...)
	}
}

// body uploads the batch and runs embeddings, the layers and the final
// norm into bf.lnf.
func (m *Model) body(batch *Batch, train bool, stepSeed uint64) *buffers {
	b := m.B
	if pk, ok := b.(LoRAPacker); ok && len(m.loraParams) > 0 {
		pk.PackLoRA(m.allLinears())
	}
	bf := m.ensureBuffers(batch.B, batch.S, train)
	m.stashed = m.stashed[:0]
	if st, ok := b.(ActivationStasher); ok && train && bf.ckpt {
		m.stashed = append(m.stashed, make([]stashedOutputs, len(m.Layers))...) // (after the first step: no allocation)
		st.SetStashBudget(max(m.CheckpointKeepBytes, 0))
	}
	b.UploadInt32(bf.ids, batch.InputIDs)
	b.UploadInt32(bf.pos, batch.PositionIDs)
	b.EmbeddingForward(bf.inputs[0], bf.ids, m.Embed)
	if k, ok := b.(LoRAInputForwardKeeper); ok && train && !bf.ckpt {
		// Every layer's backward follows this forward: keep their LoRA
		// inputs' rounded copies (checkpointing keeps each recompute's).
		k.KeepLoRAInputsForward(true)
		defer k.KeepLoRAInputsForward(false) // also when an op panics (out of memory)
	}
	x := bf.inputs[0]
	for li := range m.Layers {
		var out Tensor
		if train {
			out = bf.inputs[li+1]
		} else {
			out = bf.inputs[(li+1)%2]
		}
		a := &bf.acts[min(li, len(bf.acts)-1)]
		if train && bf.ckpt && li == len(m.Layers)-1 {
			// Checkpointing's backward starts with this layer, from these
			// activations.
			m.layerForwardKeeping(li, a, x, out, bf, stepSeed)
		} else {
			m.layerForward(li, li+1, a, x, out, bf, train, stepSeed)
		}
		x = out
	}
	b.RMSNormForward(bf.lnf, bf.rstd, x, m.FinalNorm, m.Cfg.RMSNormEps)
	return bf
}

// Forward runs the model on a batch and returns the mean cross-entropy over
// the shifted, non-ignored labels, how many targets there were and how many
// the argmax got right. With train, it keeps what Backward needs (LoRA
// dropout is on, seeded per module by DeriveSeed(stepSeed, layer, module))
// and computes the loss gradient at the last hidden state already. A batch
// without any target returns loss 0.
func (m *Model) Forward(batch *Batch, train bool, stepSeed uint64) (loss float64, ntokens int, correct int, err error) {
	m.pending = nil
	if err := m.validate(batch, true); err != nil {
		return 0, 0, 0, err
	}
	if train && len(m.loraParams) == 0 {
		return 0, 0, 0, errors.New("forward: training needs a LoRA adapter (the base model is frozen)")
	}
	targets := batch.Targets()
	for _, t := range targets {
		if t != IgnoreIndex {
			ntokens++
		}
	}
	m.fc = m.newFiniteCheck(batch)
	defer func() { m.fc = nil }()
	bf := m.body(batch, train, stepSeed)
	m.fc.check("final norm", bf.lnf)
	m.B.UploadInt32(bf.targets, targets)
	var dlnf Tensor
	var gradScale float32
	if train {
		dlnf = bf.dlnf
		m.B.Zero(dlnf)
		n := ntokens
		if m.NumItemsInBatch > 0 {
			n = m.NumItemsInBatch
		}
		if n > 0 {
			gradScale = 1 / float32(n)
		}
	}
	sum, correct := m.B.CrossEntropy(dlnf, bf.lnf, m.LMHead, bf.targets, gradScale)
	if ntokens > 0 {
		loss = sum / float64(ntokens)
	}
	m.fc.check("d loss / d final norm", dlnf)
	if m.fc != nil && m.fc.err != nil {
		return 0, 0, 0, fmt.Errorf("forward: %w", m.fc.err)
	}
	if train {
		m.pending = &pendingBackward{stepSeed: stepSeed, batch: batch}
	}
	return loss, ntokens, correct, nil
}

// Backward accumulates the LoRA gradients of the loss of the last training
// Forward (its mean, or sum / NumItemsInBatch) into each adapter's GradA
// and GradB. Call ZeroGrads before the first micro-batch of a step.
func (m *Model) Backward() error {
	if m.pending == nil {
		return errors.New("backward: no training forward to differentiate (call Forward with train=true first, once per Backward)")
	}
	seed := m.pending.stepSeed
	m.fc = m.newFiniteCheck(m.pending.batch)
	defer func() { m.fc = nil }()
	m.pending = nil
	b, c, bf := m.B, m.Cfg, m.bufs[1]
	H, K, D := c.NumHeads, c.NumKVHeads, c.HeadDim()
	L := len(m.Layers)
	// Through the final norm: dres = d loss / d(last layer's output).
	b.Zero(bf.dres)
	b.RMSNormBackward(bf.dres, bf.dlnf, bf.inputs[L], m.FinalNorm, bf.rstd)
	grads, batchGrads := b.(LoRAGradBatcher)
	for li := L - 1; li >= 0; li-- {
		l := &m.Layers[li]
		x := bf.inputs[li]
		var a *layerActs
		if bf.ckpt {
			// Checkpointing recomputes the layer's activations from its
			// input, except the last layer's: the forward ran it last, so
			// they are still in acts[0] (issue 8: 1/32 of the recompute).
			a = &bf.acts[0]
			if li != L-1 {
				m.layerForwardKeeping(li, a, x, nil, bf, seed)
			}
		} else {
			a = &bf.acts[li]
		}
		lin := l.linears()
		s := func(mod int) uint64 { return moduleSeed(seed, li, mod) }
		// Once a module's backward is queued, the layer below's weight of
		// it can take its place (its recompute or backward comes next).
		pre := func(mod int) {
			if li > 0 {
				m.prefetch(m.Layers[li-1].linears()[mod])
			}
		}
		// The recompute of the layer below takes a stashed output back into
		// the same buffer (acts[0]) once this layer's backward no longer
		// reads it; the stash hears two layers ahead which outputs come
		// back next.
		if bf.ckpt && len(m.stashed) == L {
			for k := li - 1; k >= max(li-2, 0); k-- {
				if m.stashed[k].qkv {
					m.B.(ActivationStasher).PrefetchStash(stashKey(k, modQKV))
				}
				if m.stashed[k].gateUp {
					m.B.(ActivationStasher).PrefetchStash(stashKey(k, modGateUp))
				}
			}
		}
		unstash := func(mod int, t Tensor) {
			if !bf.ckpt || li == 0 || li-1 >= len(m.stashed) {
				return
			}
			if k := m.stashed[li-1]; (mod == modQKV && k.qkv) || (mod == modGateUp && k.gateUp) {
				m.B.(ActivationStasher).Unstash(stashKey(li-1, mod), t)
			}
		}
		// out = res1 + down(act): the residual passes dres through, so
		// dres becomes d res1 in place once down_proj's backward has read
		// it (and d x in place after o_proj's and qkv_proj's).
		b.Zero(bf.dact)
		chk := func(what string, t Tensor) {
			if m.fc != nil {
				m.fc.check(fmt.Sprintf("backward, layer %d: %s", li, what), t)
			}
		}
		chk("d output", bf.dres)
		// The layer's LoRA weight gradients may wait for the window's end
		// (LoRAGradBatcher: computed together there).
		if batchGrads {
			grads.BeginLoRAGrads()
		}
		b.LinearBackward(bf.dact, bf.dres, a.act, lin[modDown], a.h[modDown], s(modDown))
		pre(modDown)
		chk("d swiglu", bf.dact)
		b.Zero(bf.dln)
		if f, ok := b.(SwiGLULinearBackwarder); ok && m.fc == nil {
			f.SwiGLULinearBackward(bf.dln, nil, bf.dact, a.gateUp, a.ln2, lin[modGateUp], a.h[modGateUp], s(modGateUp))
		} else {
			dgu := bf.dgu
			if dgu == nil { // a finiteness check reads it: the fused backward's buffers have none
				dgu = b.Alloc(bf.T, 2*c.IntermediateSize)
			}
			b.Zero(dgu)
			b.SwiGLUBackward(dgu, bf.dact, a.gateUp)
			chk("d gate_up_proj", dgu)
			b.LinearBackward(bf.dln, dgu, a.ln2, lin[modGateUp], a.h[modGateUp], s(modGateUp))
			if dgu != bf.dgu {
				b.Free(dgu)
			}
		}
		pre(modGateUp)
		unstash(modGateUp, a.gateUp) // its last reader in this layer is queued
		chk("d post_attention_layernorm", bf.dln)
		b.RMSNormBackward(bf.dres, bf.dln, a.res1, l.PostAttnNorm, a.rstd2)
		chk("d residual", bf.dres)
		// res1 = x + o_proj(att)
		b.Zero(bf.datt)
		b.LinearBackward(bf.datt, bf.dres, a.att, lin[modO], a.h[modO], s(modO))
		pre(modO)
		chk("d attention", bf.datt)
		b.Zero(bf.dqkv)
		if a.ropeFused {
			b.(RoPEAttentioner).AttentionBackwardRoPE(bf.dqkv, bf.datt, a.att, a.lse, a.qkv, bf.pos, bf.B, bf.S, H, K, D,
				c.SlidingWindow, c.RotaryDim(), c.RopeTheta)
		} else {
			b.AttentionBackward(bf.dqkv, bf.datt, a.att, a.lse, a.qkv, bf.pos, bf.B, bf.S, H, K, D, c.SlidingWindow)
			chk("d qkv_proj (before rope)", bf.dqkv)
			b.RoPEBackward(bf.dqkv, bf.pos, H, K, D, c.RotaryDim(), c.RopeTheta)
		}
		unstash(modQKV, a.qkv)
		if li == 0 {
			// The embeddings are frozen: only the adapter's gradients.
			b.LinearBackward(nil, bf.dqkv, a.ln1, lin[modQKV], a.h[modQKV], s(modQKV))
			if batchGrads {
				grads.FlushLoRAGrads()
			}
			break
		}
		b.Zero(bf.dln)
		b.LinearBackward(bf.dln, bf.dqkv, a.ln1, lin[modQKV], a.h[modQKV], s(modQKV))
		if batchGrads {
			grads.FlushLoRAGrads()
		}
		pre(modQKV) // checkpointing's recompute has already asked for it
		b.RMSNormBackward(bf.dres, bf.dln, x, l.InputNorm, a.rstd1)
	}
	if m.fc != nil && m.fc.err != nil {
		return fmt.Errorf("backward: %w", m.fc.err)
	}
	return nil
}

// Logits returns the lm_head logits [T,V] of a batch (no dropout; labels
// are not needed).
func (m *Model) Logits(batch *Batch) ([]float32, error) {
	m.pending = nil
	if err := m.validate(batch, false); err != nil {
		return nil, err
	}
	bf := m.body(batch, false, 0)
	out := m.B.Alloc(bf.T, m.Cfg.VocabSize)
	defer m.B.Free(out)
	m.B.Logits(out, bf.lnf, m.LMHead)
	return m.B.Download(out), nil
}
