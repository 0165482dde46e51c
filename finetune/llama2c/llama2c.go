// Package llama2c reads checkpoints in llama2.c's format (Karpathy's
// run.c, "legacy" version 0 export) and converts them to Hugging Face
// Phi3ForCausalLM checkpoints, so that a real pretrained model such as
// stories260K can test the engine end to end without a network.
//
// The format: a header of 7 little-endian int32 (dim, hidden_dim, n_layers,
// n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size means the
// classifier is not shared with the token embedding), then float32 weights
// in this order, every matrix row-major [out, in]:
//
//	token_embedding [V, C]
//	rms_att [L, C]
//	wq [L, H*D, C]   wk [L, K*D, C]   wv [L, K*D, C]   wo [L, C, H*D]
//	rms_ffn [L, C]
//	w1 [L, I, C] (gate)   w2 [L, C, I] (down)   w3 [L, I, C] (up)
//	rms_final [C]
//	freq_cis_real [seq_len, D/2]   freq_cis_imag [seq_len, D/2]
//	wcls [V, C] (only when the classifier is not shared)
//
// with C = dim, I = hidden_dim, H/K = query/KV heads and D = C/H.
//
// Llama 2 is Phi-3 without the fusions, so the conversion concatenates
// wq/wk/wv into qkv_proj and w1/w3 into gate_up_proj. The one real change is
// RoPE: run.c rotates interleaved pairs (2i, 2i+1) of each head, Hugging
// Face's rotate_half rotates (i, i+D/2); both use frequency theta^(-2i/D)
// for pair i. So the rows of wq and wk are permuted within each head
// (2i -> i, 2i+1 -> i+D/2), which makes every rotated q.k dot product, and
// so the whole network, the same function.
package llama2c

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
)

// HeaderBytes is the size of the legacy header: 7 int32.
const HeaderBytes = 7 * 4

// magicV1 starts llama2.c's newer exports (version 1 and 2): "ak42" as a
// little-endian uint32. Those carry a 256-byte header and other layouts.
const magicV1 = 0x616b3432

// maxDim bounds every header field so that size arithmetic cannot overflow
// and a random file is rejected quickly.
const maxDim = 1 << 20

// Config is the checkpoint's header.
type Config struct {
	Dim              int  // C, the model width
	HiddenDim        int  // I, the SwiGLU width
	NumLayers        int  // L
	NumHeads         int  // H
	NumKVHeads       int  // K
	VocabSize        int  // V (always positive here)
	SeqLen           int  // the context the model was trained for
	SharedClassifier bool // true when vocab_size was positive: wcls = token_embedding
}

// HeadDim is D = dim / n_heads.
func (c Config) HeadDim() int { return c.Dim / c.NumHeads }

// KVDim is the width of k and v: n_kv_heads * head_dim.
func (c Config) KVDim() int { return c.NumKVHeads * c.HeadDim() }

// Layer holds one transformer block's weights, each row-major [out, in].
type Layer struct {
	RMSAtt []float32 // [C]
	WQ     []float32 // [H*D, C], llama2.c's interleaved RoPE row order
	WK     []float32 // [K*D, C], same
	WV     []float32 // [K*D, C]
	WO     []float32 // [C, H*D]
	RMSFFN []float32 // [C]
	W1     []float32 // [I, C], gate
	W2     []float32 // [C, I], down
	W3     []float32 // [I, C], up
}

// Model is a llama2.c checkpoint in memory.
type Model struct {
	Config         Config
	TokenEmbedding []float32 // [V, C]
	Layers         []Layer
	RMSFinal       []float32 // [C]
	// FreqCisReal/Imag are the RoPE tables the file carries (cos and sin of
	// pos * theta^(-2i/D)), [SeqLen, D/2]. run.c ignores them in newer
	// versions; they document the rotation the model was trained with.
	FreqCisReal, FreqCisImag []float32
	// Classifier is the output projection [V, C]; it aliases TokenEmbedding
	// when the classifier is shared.
	Classifier []float32
}

// floatCount is how many float32 the header implies after it.
func (c Config) floatCount() int64 {
	C, I, L := int64(c.Dim), int64(c.HiddenDim), int64(c.NumLayers)
	V, S, D, KV := int64(c.VocabSize), int64(c.SeqLen), int64(c.HeadDim()), int64(c.KVDim())
	n := V*C + // token_embedding
		L*C + // rms_att
		L*C*C + 2*L*KV*C + L*C*C + // wq, wk, wv, wo
		L*C + // rms_ffn
		3*L*I*C + // w1, w2, w3
		C + // rms_final
		2*S*(D/2) // freq_cis_real, freq_cis_imag
	if !c.SharedClassifier {
		n += V * C
	}
	return n
}

// ParseHeader decodes and validates the 28-byte header.
func ParseHeader(b []byte) (Config, error) {
	if len(b) < HeaderBytes {
		return Config{}, fmt.Errorf("header is %d bytes; a llama2.c checkpoint starts with %d (7 int32)", len(b), HeaderBytes)
	}
	if binary.LittleEndian.Uint32(b) == magicV1 {
		v := int32(binary.LittleEndian.Uint32(b[4:]))
		return Config{}, fmt.Errorf("this is a llama2.c export of version %d (magic \"ak42\"); only the legacy version 0 layout (7 int32 header, fp32 weights) is supported: re-export with llama2.c's export.py --version 0", v)
	}
	var h [7]int32
	for i := range h {
		h[i] = int32(binary.LittleEndian.Uint32(b[4*i:]))
	}
	c := Config{Dim: int(h[0]), HiddenDim: int(h[1]), NumLayers: int(h[2]), NumHeads: int(h[3]),
		NumKVHeads: int(h[4]), VocabSize: int(h[5]), SeqLen: int(h[6]), SharedClassifier: h[5] > 0}
	if c.VocabSize < 0 {
		c.VocabSize = -c.VocabSize
	}
	fields := []struct {
		name string
		v    int
	}{{"dim", c.Dim}, {"hidden_dim", c.HiddenDim}, {"n_layers", c.NumLayers}, {"n_heads", c.NumHeads},
		{"n_kv_heads", c.NumKVHeads}, {"vocab_size", c.VocabSize}, {"seq_len", c.SeqLen}}
	for _, f := range fields {
		if f.v <= 0 || f.v > maxDim {
			return Config{}, fmt.Errorf("header field %s is %d; it must be in 1..%d (is this a llama2.c checkpoint?)", f.name, f.v, maxDim)
		}
	}
	if c.Dim%c.NumHeads != 0 {
		return Config{}, fmt.Errorf("header: dim %d is not a multiple of n_heads %d", c.Dim, c.NumHeads)
	}
	if c.HeadDim()%2 != 0 {
		return Config{}, fmt.Errorf("header: head size dim/n_heads = %d is odd; RoPE rotates pairs of features", c.HeadDim())
	}
	if c.NumKVHeads > c.NumHeads || c.NumHeads%c.NumKVHeads != 0 {
		return Config{}, fmt.Errorf("header: n_heads %d is not a multiple of n_kv_heads %d", c.NumHeads, c.NumKVHeads)
	}
	return c, nil
}

// Read loads a llama2.c checkpoint. The file must be exactly as long as
// its header implies.
func Read(path string) (*Model, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read llama2.c checkpoint: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read llama2.c checkpoint %s: %w", path, err)
	}
	m, err := decode(bufio.NewReaderSize(f, 1<<20), st.Size())
	if err != nil {
		return nil, fmt.Errorf("read llama2.c checkpoint %s: %w", path, err)
	}
	return m, nil
}

// decode reads a checkpoint of size bytes from r.
func decode(r io.Reader, size int64) (*Model, error) {
	hdr := make([]byte, HeaderBytes)
	if n, err := io.ReadFull(r, hdr); err != nil {
		return nil, fmt.Errorf("header: the file has %d bytes, fewer than the %d-byte header", n, HeaderBytes)
	}
	c, err := ParseHeader(hdr)
	if err != nil {
		return nil, err
	}
	want := HeaderBytes + 4*c.floatCount()
	if size != want {
		what := "truncated"
		if size > want {
			what = "longer than that (wrong header, or not a version 0 export)"
		}
		return nil, fmt.Errorf("header (dim %d, hidden_dim %d, n_layers %d, n_heads %d, n_kv_heads %d, vocab_size %d, seq_len %d, shared classifier %v) implies %d bytes, but the file has %d: it is %s",
			c.Dim, c.HiddenDim, c.NumLayers, c.NumHeads, c.NumKVHeads, c.VocabSize, c.SeqLen, c.SharedClassifier, want, size, what)
	}

	rd := &floatReader{r: r}
	C, I, L, V := c.Dim, c.HiddenDim, c.NumLayers, c.VocabSize
	D, KV, S := c.HeadDim(), c.KVDim(), c.SeqLen
	m := &Model{Config: c, Layers: make([]Layer, L)}
	m.TokenEmbedding = rd.read("token_embedding", V*C)
	perLayer := func(name string, n int, set func(l *Layer, v []float32)) {
		for i := range m.Layers {
			set(&m.Layers[i], rd.read(fmt.Sprintf("%s[%d]", name, i), n))
		}
	}
	perLayer("rms_att", C, func(l *Layer, v []float32) { l.RMSAtt = v })
	perLayer("wq", C*C, func(l *Layer, v []float32) { l.WQ = v })
	perLayer("wk", KV*C, func(l *Layer, v []float32) { l.WK = v })
	perLayer("wv", KV*C, func(l *Layer, v []float32) { l.WV = v })
	perLayer("wo", C*C, func(l *Layer, v []float32) { l.WO = v })
	perLayer("rms_ffn", C, func(l *Layer, v []float32) { l.RMSFFN = v })
	perLayer("w1", I*C, func(l *Layer, v []float32) { l.W1 = v })
	perLayer("w2", C*I, func(l *Layer, v []float32) { l.W2 = v })
	perLayer("w3", I*C, func(l *Layer, v []float32) { l.W3 = v })
	m.RMSFinal = rd.read("rms_final", C)
	m.FreqCisReal = rd.read("freq_cis_real", S*(D/2))
	m.FreqCisImag = rd.read("freq_cis_imag", S*(D/2))
	if c.SharedClassifier {
		m.Classifier = m.TokenEmbedding
	} else {
		m.Classifier = rd.read("wcls", V*C)
	}
	if rd.err != nil {
		return nil, rd.err
	}
	return m, nil
}

// floatReader reads little-endian float32 tensors, remembering the first
// error so the caller checks once.
type floatReader struct {
	r   io.Reader
	buf []byte
	err error
}

func (fr *floatReader) read(name string, n int) []float32 {
	if fr.err != nil {
		return nil
	}
	if cap(fr.buf) < 4*n {
		fr.buf = make([]byte, 4*n)
	}
	b := fr.buf[:4*n]
	if _, err := io.ReadFull(fr.r, b); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			err = errors.New("file ends early")
		}
		fr.err = fmt.Errorf("tensor %s: %w", name, err)
		return nil
	}
	v := make([]float32, n)
	for i := range v {
		x := math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
			fr.err = fmt.Errorf("tensor %s: element %d is %v; the checkpoint is corrupt", name, i, x)
			return nil
		}
		v[i] = x
	}
	return v
}
