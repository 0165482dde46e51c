package finetune

import (
	"fmt"
	"math"
	"runtime"
	"sync"

	"github.com/ollama-tune/ollama-tune/finetune/nf4"
	"github.com/ollama-tune/ollama-tune/internal/parallel"
)

// The CPU backend is the readable reference every other backend is tested
// against, written in the style of llm.c's train_gpt2.c: one forward and one
// backward function per op (cpu_*.go), shapes in comments, plain loops. Only
// the matrix multiplications are parallel (goroutines over rows, see
// cpu_matmul.go); every output element is always computed by one goroutine
// in one fixed order, so results do not depend on the number of threads and
// recomputing a layer (gradient checkpointing) reproduces it bit for bit.
//
// Numerics. Activations, LoRA weights, gradients and optimizer state are
// float32 on the CPU whatever the compute dtype. With CPUOptions.ComputeDType
// set to BF16 or F16 the backend emulates, and only emulates, the rounding of
// the frozen base weights to that dtype:
//   - dense weights (embeddings, lm_head, un-quantized linears) are rounded
//     once, when DenseWeight uploads them;
//   - NF4 weights are dequantized to float32 (absmax x code, with the
//     double-quantized absmax restored first) and each value is then rounded
//     to the compute dtype before it enters the matmul, which is what
//     bitsandbytes does (dequantize_4bit to the compute dtype, then a
//     regular matmul).
//
// Rounding is IEEE round-to-nearest-even (f16 with subnormals and overflow
// to infinity). The matmuls themselves, their accumulation, activations and
// LoRA stay float32, so an emulated run isolates the effect of low-precision
// weights, not of low-precision arithmetic.

// CPUOptions configures a CPUBackend.
type CPUOptions struct {
	// ComputeDType is F32 (default), BF16 or F16; see the package comment
	// above for what is emulated.
	ComputeDType DType
	// Threads is the number of goroutines for the matmuls; 0 means
	// runtime.NumCPU().
	Threads int
}

// CPUBackend implements Backend with plain Go on float32 slices.
type CPUBackend struct {
	dtype   DType
	threads int
	round   func(float32) float32 // nil for F32
	stash   cpuStash              // ActivationStasher (cpu_stash.go)
}

var _ Backend = (*CPUBackend)(nil)

// NewCPUBackend returns a CPU backend. An unsupported compute dtype falls
// back to F32 (use CheckCPUOptions to report it as an error).
func NewCPUBackend(opts CPUOptions) *CPUBackend {
	b := &CPUBackend{dtype: opts.ComputeDType, threads: opts.Threads}
	if b.threads <= 0 {
		b.threads = runtime.NumCPU()
	}
	switch b.dtype {
	case BF16:
		b.round = RoundBF16
	case F16:
		b.round = RoundF16
	default:
		b.dtype = F32
	}
	return b
}

// CheckCPUOptions reports options NewCPUBackend cannot honour.
func CheckCPUOptions(opts CPUOptions) error {
	switch opts.ComputeDType {
	case F32, BF16, F16:
	default:
		return fmt.Errorf("cpu backend: compute dtype %v is not supported; use float32, bfloat16 or float16", opts.ComputeDType)
	}
	if opts.Threads < 0 {
		return fmt.Errorf("cpu backend: threads is %d; it must be >= 0 (0 = all CPUs)", opts.Threads)
	}
	return nil
}

func (b *CPUBackend) Name() string        { return "cpu" }
func (b *CPUBackend) ComputeDType() DType { return b.dtype }
func (b *CPUBackend) Sync() error         { return nil }
func (b *CPUBackend) Close() error        { return nil }

// ---------------------------------------------------------------------------
// Tensors

// cpuTensor holds exactly one of f (float32), i (int32) or u (uint8).
type cpuTensor struct {
	shape []int
	f     []float32
	i     []int32
	u     []uint8
}

func (t *cpuTensor) Shape() []int { return append([]int(nil), t.shape...) }
func (t *cpuTensor) Numel() int {
	switch {
	case t.i != nil:
		return len(t.i)
	case t.u != nil:
		return len(t.u)
	}
	return len(t.f)
}

// f32 returns a float tensor's data. The ops are internal to the model, so
// a wrong tensor kind is a programming error, reported by a panic with the
// op's name.
func f32(t Tensor) []float32 {
	if t == nil {
		return nil
	}
	ct, ok := t.(*cpuTensor)
	if !ok || (ct.f == nil && ct.Numel() != 0) {
		panic(fmt.Sprintf("cpu backend: expected a float32 cpu tensor, got %T", t))
	}
	return ct.f
}

func i32(t Tensor) []int32 {
	ct, ok := t.(*cpuTensor)
	if !ok || (ct.i == nil && ct.Numel() != 0) {
		panic(fmt.Sprintf("cpu backend: expected an int32 cpu tensor, got %T", t))
	}
	return ct.i
}

func u8(t Tensor) []uint8 {
	ct, ok := t.(*cpuTensor)
	if !ok || (ct.u == nil && ct.Numel() != 0) {
		panic(fmt.Sprintf("cpu backend: expected a uint8 cpu tensor, got %T", t))
	}
	return ct.u
}

// NewCPUTensor wraps data (not copied) as a float32 tensor of the given
// shape, for tests and host-side code that already has the values.
func NewCPUTensor(data []float32, shape ...int) Tensor {
	return &cpuTensor{shape: append([]int(nil), shape...), f: data}
}

func numel(shape []int) int {
	n := 1
	for _, s := range shape {
		n *= s
	}
	return n
}

func (b *CPUBackend) Alloc(shape ...int) Tensor {
	return &cpuTensor{shape: append([]int(nil), shape...), f: make([]float32, numel(shape))}
}

func (b *CPUBackend) AllocInt32(n int) Tensor {
	return &cpuTensor{shape: []int{n}, i: make([]int32, n)}
}

func (b *CPUBackend) AllocBytes(n int) Tensor {
	return &cpuTensor{shape: []int{n}, u: make([]uint8, n)}
}

func (b *CPUBackend) Upload(dst Tensor, src []float32) {
	d := f32(dst)
	if len(d) != len(src) {
		panic(fmt.Sprintf("cpu backend: upload of %d values into a tensor of %d", len(src), len(d)))
	}
	copy(d, src)
}

func (b *CPUBackend) UploadInt32(dst Tensor, src []int32) {
	d := i32(dst)
	if len(d) != len(src) {
		panic(fmt.Sprintf("cpu backend: upload of %d int32 values into a tensor of %d", len(src), len(d)))
	}
	copy(d, src)
}

// Download returns a copy of a float32 tensor (uint8 and int32 tensors are
// converted value by value, for tests of optimizer state).
func (b *CPUBackend) Download(src Tensor) []float32 {
	ct := src.(*cpuTensor)
	switch {
	case ct.i != nil:
		out := make([]float32, len(ct.i))
		for k, v := range ct.i {
			out[k] = float32(v)
		}
		return out
	case ct.u != nil:
		out := make([]float32, len(ct.u))
		for k, v := range ct.u {
			out[k] = float32(v)
		}
		return out
	}
	return append([]float32(nil), ct.f...)
}

func (b *CPUBackend) Zero(t Tensor) {
	ct := t.(*cpuTensor)
	clear(ct.f)
	clear(ct.i)
	clear(ct.u)
}

func (b *CPUBackend) Copy(dst, src Tensor) {
	d, s := dst.(*cpuTensor), src.(*cpuTensor)
	if d.Numel() != s.Numel() {
		panic(fmt.Sprintf("cpu backend: copy of %d elements into %d", s.Numel(), d.Numel()))
	}
	copy(d.f, s.f)
	copy(d.i, s.i)
	copy(d.u, s.u)
}

func (b *CPUBackend) Free(t Tensor) {
	if ct, ok := t.(*cpuTensor); ok {
		ct.f, ct.i, ct.u = nil, nil, nil
	}
}

var _ Viewer = (*CPUBackend)(nil)

// View (Viewer) shares t's first values: a slice of t's slice.
func (b *CPUBackend) View(t Tensor, shape ...int) Tensor {
	ct := t.(*cpuTensor)
	n := numel(shape)
	if n > ct.Numel() {
		panic(fmt.Sprintf("cpu backend: a view of %v (%d values) over a tensor of %d", shape, n, ct.Numel()))
	}
	v := &cpuTensor{shape: append([]int(nil), shape...)}
	switch {
	case ct.f != nil:
		v.f = ct.f[:n:n]
	case ct.i != nil:
		v.i = ct.i[:n:n]
	case ct.u != nil:
		v.u = ct.u[:n:n]
	}
	return v
}

// ---------------------------------------------------------------------------
// Frozen weights

// cpuWeight is a frozen [out, in] matrix: dense float32 (already rounded to
// the compute dtype), or NF4 codes or GGUF blocks (cpu_gguf.go) dequantized
// a tile of rows at a time.
type cpuWeight struct {
	out, in int
	dense   []float32
	q       *nf4.Quantized
	g       *GGUFMatrix
	round   func(float32) float32 // applied to dequantized NF4 and GGUF values
}

func (w *cpuWeight) Out() int { return w.out }
func (w *cpuWeight) In() int  { return w.in }

func (w *cpuWeight) Bytes() int64 {
	if w.g != nil {
		return w.g.Bytes()
	}
	if w.q != nil {
		return w.q.PackedBytes()
	}
	return int64(len(w.dense)) * 4
}

// rows returns rows [row0, row0+n) as a [n, in] slice: a view of a dense
// weight, or the NF4 codes dequantized (and rounded to the compute dtype)
// into scratch, which must hold n*in values.
func (w *cpuWeight) rows(scratch []float32, row0, n int) []float32 {
	if w.dense != nil {
		return w.dense[row0*w.in : (row0+n)*w.in]
	}
	dst := scratch[:n*w.in]
	if w.g != nil {
		w.g.DequantizeRows(dst, row0, n)
	} else {
		w.q.DequantizeRows(dst, row0, n)
	}
	if w.round != nil {
		for k, v := range dst {
			dst[k] = w.round(v)
		}
	}
	return dst
}

func cpuW(w Weight) *cpuWeight {
	cw, ok := w.(*cpuWeight)
	if !ok {
		panic(fmt.Sprintf("cpu backend: expected a cpu weight, got %T", w))
	}
	return cw
}

func checkWeightData(data []float32, out, in int) error {
	if out <= 0 || in <= 0 {
		return fmt.Errorf("weight shape [%d, %d]: both dimensions must be positive", out, in)
	}
	if len(data) != out*in {
		return fmt.Errorf("weight shape [%d, %d] needs %d values, got %d", out, in, out*in, len(data))
	}
	return nil
}

func (b *CPUBackend) DenseWeight(data []float32, out, in int) (Weight, error) {
	if err := checkWeightData(data, out, in); err != nil {
		return nil, fmt.Errorf("cpu backend: dense %w", err)
	}
	d := append([]float32(nil), data...)
	if b.round != nil {
		for k, v := range d {
			d[k] = b.round(v)
		}
	}
	return &cpuWeight{out: out, in: in, dense: d}, nil
}

func (b *CPUBackend) NF4Weight(data []float32, out, in int, doubleQuant bool) (Weight, error) {
	if err := checkWeightData(data, out, in); err != nil {
		return nil, fmt.Errorf("cpu backend: nf4 %w", err)
	}
	for k, v := range data {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, fmt.Errorf("cpu backend: nf4 weight [%d, %d]: value %d (row %d, column %d) is %v; NF4 needs finite weights", out, in, k, k/in, k%in, v)
		}
	}
	q := nf4.Quantize(data, out, in, doubleQuant)
	return &cpuWeight{out: out, in: in, q: q, round: b.round}, nil
}

func (b *CPUBackend) DequantizeWeight(w Weight) []float32 {
	cw := cpuW(w)
	out := make([]float32, cw.out*cw.in)
	copy(out, cw.rows(out, 0, cw.out))
	return out
}

func (b *CPUBackend) FreeWeight(w Weight) {
	if cw, ok := w.(*cpuWeight); ok {
		cw.dense, cw.q, cw.g = nil, nil, nil
	}
}

// ---------------------------------------------------------------------------
// Low-precision rounding (emulation of the compute dtype)

// RoundBF16 rounds a float32 to the nearest bfloat16 (ties to even) and
// returns it as a float32, like torch's float32 -> bfloat16 conversion.
func RoundBF16(f float32) float32 {
	u := math.Float32bits(f)
	if u&0x7fffffff > 0x7f800000 { // NaN: keep it quiet, drop the low bits
		return math.Float32frombits((u | 0x00400000) &^ 0xffff)
	}
	u += 0x7fff + (u>>16)&1
	return math.Float32frombits(u &^ 0xffff)
}

// RoundF16 rounds a float32 to the nearest IEEE half (ties to even,
// subnormals kept, overflow to infinity) and returns it as a float32.
func RoundF16(f float32) float32 {
	if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
		return f
	}
	a := math.Abs(float64(f))
	const maxHalf = 65504.0
	// Values at or beyond maxHalf + half an ulp (2^4 = 16 at that binade)
	// round to infinity.
	if a >= maxHalf+16 {
		return float32(math.Copysign(math.Inf(1), float64(f)))
	}
	// The spacing of halves around a: 2^(e-10) for normals (e >= -14),
	// 2^-24 for subnormals.
	var ulp float64
	if a < 0x1p-14 {
		ulp = 0x1p-24
	} else {
		_, e := math.Frexp(a) // a = m * 2^e, m in [0.5, 1)
		ulp = math.Ldexp(1, e-1-10)
	}
	// math.RoundToEven on a/ulp is exact: a is a float32, ulp a power of two.
	r := math.RoundToEven(a/ulp) * ulp
	return float32(math.Copysign(r, float64(f)))
}

// ---------------------------------------------------------------------------
// Parallelism

// parallelFor runs fn over [0, n) on at most b.threads goroutines, in
// ranges that are multiples of grain (except the last) so kernels that
// block rows keep their blocking (parallel.ForWorkers).
func (b *CPUBackend) parallelFor(n, grain int, fn func(lo, hi int)) {
	parallel.ForWorkers(b.threads, n, grain, fn)
}

// scratchPool recycles the per-goroutine buffers NF4 tiles are dequantized
// into, so a training step does not allocate megabytes per matmul.
var scratchPool sync.Pool

func getScratch(n int) *[]float32 {
	if p, ok := scratchPool.Get().(*[]float32); ok && cap(*p) >= n {
		*p = (*p)[:n]
		return p
	}
	s := make([]float32, n)
	return &s
}

func putScratch(p *[]float32) { scratchPool.Put(p) }
