package finetune

import (
	"errors"
	"fmt"
	"math"
	"slices"
)

// GenerateOptions controls (*Model).Generate.
type GenerateOptions struct {
	MaxNewTokens int
	// Temperature 0 is greedy decoding (argmax, first maximum on ties);
	// > 0 samples from softmax(logits / Temperature).
	Temperature float32
	// TopP in (0, 1) keeps the smallest set of most likely tokens whose
	// probability reaches TopP (transformers' TopPLogitsWarper); 0 or 1
	// keeps all.
	TopP float32
	// Seed makes sampling reproducible: token n is drawn with
	// Uniform(Seed, n).
	Seed uint64
	// StopIDs end generation (the stop token is not returned); nil means
	// the config's eos_token_id list.
	StopIDs []int32
	// IgnoreEOS generates MaxNewTokens tokens whatever comes out.
	IgnoreEOS bool
}

// Generate continues prompt with up to MaxNewTokens tokens using a KV
// cache (Backend.AttentionCached), and returns the new tokens. The model's
// adapters are applied (without dropout).
func (m *Model) Generate(prompt []int32, opts GenerateOptions) ([]int32, error) {
	c := m.Cfg
	if len(prompt) == 0 {
		return nil, errors.New("generate: the prompt is empty")
	}
	for k, id := range prompt {
		if id < 0 || int(id) >= c.VocabSize {
			return nil, fmt.Errorf("generate: prompt token %d at position %d is outside the vocabulary [0, %d)", id, k, c.VocabSize)
		}
	}
	if opts.MaxNewTokens < 0 {
		return nil, fmt.Errorf("generate: max new tokens is %d; it must be >= 0", opts.MaxNewTokens)
	}
	if opts.Temperature < 0 || math.IsNaN(float64(opts.Temperature)) {
		return nil, fmt.Errorf("generate: temperature is %g; it must be >= 0 (0 = greedy)", opts.Temperature)
	}
	if opts.TopP < 0 || opts.TopP > 1 {
		return nil, fmt.Errorf("generate: top_p is %g; it must be in [0, 1]", opts.TopP)
	}
	if opts.MaxNewTokens == 0 {
		return nil, nil
	}
	stop := opts.StopIDs
	if stop == nil {
		for _, id := range c.EOSTokenIDs {
			stop = append(stop, int32(id))
		}
	}
	g := m.newGenerator(len(prompt) + opts.MaxNewTokens)
	defer g.free()
	// Prefill all prompt tokens but the last, then feed one token at a time.
	if len(prompt) > 1 {
		g.step(prompt[:len(prompt)-1], false)
	}
	var out []int32
	next := prompt[len(prompt)-1]
	for n := 0; n < opts.MaxNewTokens; n++ {
		logits := g.step([]int32{next}, true)
		next = sampleToken(logits, opts.Temperature, opts.TopP, opts.Seed, uint64(n))
		if !opts.IgnoreEOS && slices.Contains(stop, next) {
			break
		}
		out = append(out, next)
	}
	return out, nil
}

// generator holds one sequence's KV caches.
type generator struct {
	m              *Model
	kCache, vCache []Tensor // per layer [maxSeq, K*D]
	pos            int      // tokens already in the cache
	// The step buffers, sized for T tokens: every one-token step after the
	// prefill reuses them instead of allocating and freeing a dozen
	// tensors per generated token.
	T    int
	tmp  []Tensor // all of the step buffers, for free
	bufs stepBuffers
}

// stepBuffers are one step's activations (forward ops overwrite them).
type stepBuffers struct {
	ids, pos               Tensor // int32 [T]
	x, ln, tmp, rstd       Tensor // [T,C] x3, [T]
	qkv, att, gu, act      Tensor
	hs                     map[int]Tensor // LoRA's h [T,r] by rank
	last, lnLast, rstdLast Tensor         // the last token's row [1,C] (T > 1), its norm, [1]
	logits                 Tensor         // [1,V]
}

func (m *Model) newGenerator(maxSeq int) *generator {
	c := m.Cfg
	g := &generator{m: m}
	for range m.Layers {
		g.kCache = append(g.kCache, m.B.Alloc(maxSeq, c.NumKVHeads*c.HeadDim()))
		g.vCache = append(g.vCache, m.B.Alloc(maxSeq, c.NumKVHeads*c.HeadDim()))
	}
	return g
}

func (g *generator) free() {
	for k := range g.kCache {
		g.m.B.Free(g.kCache[k])
		g.m.B.Free(g.vCache[k])
	}
	g.freeStep()
}

func (g *generator) freeStep() {
	for _, t := range g.tmp {
		g.m.B.Free(t)
	}
	g.tmp, g.T, g.bufs = g.tmp[:0], 0, stepBuffers{}
}

func (g *generator) alloc(shape ...int) Tensor {
	t := g.m.B.Alloc(shape...)
	g.tmp = append(g.tmp, t)
	return t
}

// stepBuffers returns the buffers of a T-token step, allocated on the
// first step of that size.
func (g *generator) stepBuffers(T int) *stepBuffers {
	if g.T == T {
		return &g.bufs
	}
	g.freeStep()
	m, b, c := g.m, g.m.B, g.m.Cfg
	C, I, H, D := c.HiddenSize, c.IntermediateSize, c.NumHeads, c.HeadDim()
	s := &g.bufs
	s.ids, s.pos = b.AllocInt32(T), b.AllocInt32(T)
	g.tmp = append(g.tmp, s.ids, s.pos)
	s.x, s.ln, s.tmp, s.rstd = g.alloc(T, C), g.alloc(T, C), g.alloc(T, C), g.alloc(T)
	s.qkv, s.att = g.alloc(T, c.QKVOut()), g.alloc(T, H*D)
	s.gu, s.act = g.alloc(T, 2*I), g.alloc(T, I)
	s.hs = map[int]Tensor{}
	for li := range m.Layers {
		for _, l := range m.Layers[li].linears() {
			if r := loraRank(l); r > 0 && s.hs[r] == nil {
				s.hs[r] = g.alloc(T, r)
			}
		}
	}
	if T > 1 {
		s.last = g.alloc(1, C)
	}
	s.lnLast, s.rstdLast = g.alloc(1, C), g.alloc(1)
	s.logits = g.alloc(1, c.VocabSize)
	g.T = T
	return s
}

// step runs tokens (at positions pos..pos+T-1) through the model, appends
// their keys and values to the caches and, with wantLogits, returns the
// last token's logits [V].
func (g *generator) step(tokens []int32, wantLogits bool) []float32 {
	m, b, c := g.m, g.m.B, g.m.Cfg
	T, H, K, D := len(tokens), c.NumHeads, c.NumKVHeads, c.HeadDim()
	s := g.stepBuffers(T)
	p := make([]int32, T)
	for k := range p {
		p[k] = int32(g.pos + k)
	}
	b.UploadInt32(s.ids, tokens)
	b.UploadInt32(s.pos, p)
	x, ln, tmp, rstd := s.x, s.ln, s.tmp, s.rstd
	h := func(l *Linear) Tensor { return s.hs[loraRank(l)] }
	b.EmbeddingForward(x, s.ids, m.Embed)
	for li := range m.Layers {
		l := &m.Layers[li]
		lin := l.linears()
		for k := range lin {
			lin[k] = noDropout(lin[k], false)
		}
		b.RMSNormForward(ln, rstd, x, l.InputNorm, c.RMSNormEps)
		b.LinearForward(s.qkv, ln, lin[modQKV], h(lin[modQKV]), 0)
		b.RoPEForward(s.qkv, s.pos, H, K, D, c.RotaryDim(), c.RopeTheta)
		b.AttentionCached(s.att, s.qkv, g.kCache[li], g.vCache[li], g.pos, H, K, D, c.SlidingWindow)
		b.LinearForward(tmp, s.att, lin[modO], h(lin[modO]), 0)
		b.Add(x, x, tmp)
		b.RMSNormForward(ln, rstd, x, l.PostAttnNorm, c.RMSNormEps)
		b.LinearForward(s.gu, ln, lin[modGateUp], h(lin[modGateUp]), 0)
		b.SwiGLUForward(s.act, s.gu)
		b.LinearForward(tmp, s.act, lin[modDown], h(lin[modDown]), 0)
		b.Add(x, x, tmp)
	}
	g.pos += T
	if !wantLogits {
		return nil
	}
	// Only the last token's logits are needed: feed its row alone.
	last := x
	if T > 1 {
		last = s.last
		b.Upload(last, b.Download(x)[(T-1)*c.HiddenSize:])
	}
	b.RMSNormForward(s.lnLast, s.rstdLast, last, m.FinalNorm, c.RMSNormEps)
	b.Logits(s.logits, s.lnLast, m.LMHead)
	return b.Download(s.logits)
}

// sampleToken picks the next token from logits [V]: argmax when
// temperature is 0, else a draw from the temperature-scaled softmax after
// top-p filtering, with u = Uniform(seed, n).
func sampleToken(logits []float32, temperature, topP float32, seed, n uint64) int32 {
	if temperature == 0 {
		best := 0
		for v, l := range logits {
			if l > logits[best] {
				best = v
			}
		}
		return int32(best)
	}
	// Probabilities in float64, sorted by decreasing probability (ties by
	// token id, so the order is deterministic).
	mx := math.Inf(-1)
	for _, l := range logits {
		mx = max(mx, float64(l/temperature))
	}
	prob := make([]float64, len(logits))
	var sum float64
	for v, l := range logits {
		prob[v] = math.Exp(float64(l/temperature) - mx)
		sum += prob[v]
	}
	order := make([]int, len(logits))
	for v := range order {
		order[v] = v
	}
	slices.SortStableFunc(order, func(a, b int) int {
		switch {
		case prob[a] > prob[b]:
			return -1
		case prob[a] < prob[b]:
			return 1
		}
		return 0
	})
	keep := len(order)
	if topP > 0 && topP < 1 {
		// TopPLogitsWarper: drop the tokens whose ascending cumulative
		// probability is <= 1 - top_p, always keeping the most likely.
		var cum float64
		drop := 0
		for k := len(order) - 1; k > 0; k-- {
			cum += prob[order[k]] / sum
			if cum > 1-float64(topP) {
				break
			}
			drop++
		}
		keep = len(order) - drop
	}
	var kept float64
	for _, v := range order[:keep] {
		kept += prob[v]
	}
	u := float64(Uniform(seed, n)) * kept
	var cum float64
	for _, v := range order[:keep] {
		cum += prob[v]
		if u < cum {
			return int32(v)
		}
	}
	return int32(order[keep-1])
}
