//go:build cuda

package cuda

// Building a model with its weights made on the GPU. finetune.NewModel
// takes every weight as float32 values on the host, which for Phi-3-mini
// means converting 3.8 billion values on the CPU and uploading 15 GB
// (tens of seconds). The two loaders here keep NewModel (names, shapes,
// adapters, the order of everything) but hand the matrices over as they
// are stored: LoadModel uploads a checkpoint's bf16 (or f16, f32) bytes
// straight from the memory map and converts or quantizes them on the GPU;
// RandomModel draws finetune.RandomWeights' values on the GPU itself.
//
// How: NewModel asks its getter for a weight, then immediately passes the
// values to the backend's NF4Weight or DenseWeight. The getter here returns
// a placeholder slice of the right length (never read, never written) and
// notes where the real values are; deviceWeights, the backend NewModel
// runs on, takes them from there. Norm weights (a few thousand values)
// take the ordinary path.

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"strings"
	"time"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
)

// weightSource is where the next matrix NewModel asks for comes from.
type weightSource struct {
	name    string
	out, in int
	// A checkpoint's bytes as stored (host memory, usually memory-mapped).
	raw   []byte
	dtype srcKind
	// Or random values drawn on the device: bfloat16(std * Normal(seed, i)).
	random bool
	seed   uint64
	std    float32
}

// deviceWeights is the finetune.Backend NewModel runs on while a loader
// builds a model: the Backend, with NF4Weight and DenseWeight taking their
// values from the pending weightSource instead of the placeholder.
type deviceWeights struct {
	*Backend
	next        *weightSource
	placeholder []float32
	// stager: the pinned buffers, taken at the first checkpoint bytes to
	// upload (random weights need none); nil after that: pageable uploads.
	stager      *hostStager
	stagerTaken bool

	// Per quantized weight k: its double-quantization offset (float32 at
	// state + 4k) and non-finite flag (int32 at state + 4*slots + 4k),
	// downloaded once at the end.
	state   cu.DevicePtr
	slots   int
	pending []pendingWeight
}

type pendingWeight struct {
	name string
	w    *weight
}

var _ finetune.Backend = (*deviceWeights)(nil)

// take returns the pending source for a [out, in] weight, or nil when the
// values in data are real (a norm weight, or a fallback through the host).
func (d *deviceWeights) take(data []float32, out, in int) (*weightSource, error) {
	src := d.next
	d.next = nil
	if src == nil {
		if len(data) > 0 && len(d.placeholder) > 0 && &data[0] == &d.placeholder[0] {
			return nil, errors.New("cuda loader: a placeholder reached the backend without its source (finetune.NewModel changed the order of its calls?)")
		}
		return nil, nil
	}
	if src.out != out || src.in != in {
		return nil, fmt.Errorf("cuda loader: weight %q is [%d, %d], but the backend was asked for [%d, %d]", src.name, src.out, src.in, out, in)
	}
	return src, nil
}

// stage puts a source's values in the sUpload scratch.
func (d *deviceWeights) stage(op string, src *weightSource) (cu.DevicePtr, srcKind) {
	b := d.Backend
	n := int64(src.out) * int64(src.in)
	if src.random {
		p := b.scratchBuf(sUpload, 2*n, op)
		b.launchN(op, "fill_normal_bf16", n, ptrArg(p), uint64(n), src.seed, f32Arg(src.std))
		return p, srcBF16
	}
	if int64(len(src.raw)) != n*src.dtype.size() {
		panic(&Error{Op: op, Err: fmt.Errorf("weight %q: %d bytes for [%d, %d] %v", src.name, len(src.raw), src.out, src.in, src.dtype)})
	}
	p := b.scratchBuf(sUpload, int64(len(src.raw)), op)
	if !d.stagerTaken {
		d.stager, d.stagerTaken = b.takeStager(), true
	}
	if d.stager != nil {
		if err := d.stager.upload(b.stream, p, src.raw); err != nil {
			panic(&Error{Op: op, Err: fmt.Errorf("weight %q: %w", src.name, err)})
		}
	} else {
		b.upload(op, p, unsafe.Pointer(&src.raw[0]), int64(len(src.raw)))
	}
	return p, src.dtype
}

func (d *deviceWeights) NF4Weight(data []float32, out, in int, doubleQuant bool) (w finetune.Weight, err error) {
	src, err := d.take(data, out, in)
	if err != nil {
		return nil, err
	}
	if src == nil {
		return d.Backend.NF4Weight(data, out, in, doubleQuant)
	}
	if len(d.pending) == d.slots {
		return nil, fmt.Errorf("cuda loader: more than the %d quantized weights planned for", d.slots)
	}
	defer Recover(&err)
	defer d.enter("NF4Weight")()
	const op = "NF4Weight"
	p, kind := d.stage(op, src)
	k := cu.DevicePtr(4 * len(d.pending))
	cw := d.nf4FromDevice(op, p, kind, out, in, doubleQuant, d.state+k, d.state+cu.DevicePtr(4*d.slots)+k)
	d.pending = append(d.pending, pendingWeight{name: src.name, w: cw})
	return cw, nil
}

func (d *deviceWeights) DenseWeight(data []float32, out, in int) (w finetune.Weight, err error) {
	src, err := d.take(data, out, in)
	if err != nil {
		return nil, err
	}
	if src == nil {
		return d.Backend.DenseWeight(data, out, in)
	}
	defer Recover(&err)
	defer d.enter("DenseWeight")()
	const op = "DenseWeight"
	p, kind := d.stage(op, src)
	return d.denseFromDevice(op, p, kind, out, in), nil
}

// build runs NewModel over d, then finishes the quantized weights: one
// download of every offset and non-finite flag.
func (d *deviceWeights) build(what string, cfg *finetune.Config, get func(string) ([]float32, []int, error), opts finetune.ModelOptions) (m *finetune.Model, err error) {
	b := d.Backend
	maxN := 0
	for _, s := range finetune.Phi3Tensors(cfg) {
		if len(s.Shape) == 2 {
			maxN = max(maxN, s.Shape[0]*s.Shape[1])
		}
	}
	// Never touched: the pages stay unmapped.
	d.placeholder = make([]float32, maxN)
	d.slots = 4*cfg.NumLayers + 2
	b.loadTimes = ""
	err = func() (err error) {
		defer Recover(&err)
		defer b.enter("load")()
		if d.state, err = b.rawAlloc(int64(8*d.slots), "the loader's state"); err != nil {
			return err
		}
		if err := cu.MemsetD8Async(d.state, 0, int64(8*d.slots), b.stream); err != nil {
			return err
		}
		return nil
	}()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer d.release()
	t0 := time.Now()
	m, err = finetune.NewModel(d, cfg, get, opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	m.B = b
	t1 := time.Now()
	if err := d.finish(); err != nil {
		m.Free()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if s := d.stager; s != nil {
		b.loadTimes = fmt.Sprintf("%.2f GB through %d x %d MiB of pinned memory: host copies %.3f s (%.1f GB/s), waits for the GPU %.3f s, the rest of the build %.3f s, then the GPU's last work %.3f s",
			float64(s.bytes)/1e9, len(s.bufs), stagerChunk>>20, s.copied.Seconds(), float64(s.bytes)/1e9/max(s.copied.Seconds(), 1e-9), s.waited.Seconds(),
			(t1.Sub(t0) - s.copied - s.waited).Seconds(), time.Since(t1).Seconds())
		if a := b.stagerAhead; a != nil && a.s == s {
			b.loadTimes += fmt.Sprintf("; the pinned memory made beside the job's preparation in %.3f s (the load waited %.3f s for it)", a.took.Seconds(), a.waited.Seconds())
		}
	}
	return m, nil
}

// LoadTimes says where the last LoadModel's time went ("" before one).
func (b *Backend) LoadTimes() string { return b.loadTimes }

// finish downloads the offsets and flags of the quantized weights.
func (d *deviceWeights) finish() (err error) {
	if len(d.pending) == 0 {
		return nil
	}
	defer Recover(&err)
	defer d.enter("load")()
	vals := make([]uint32, 2*d.slots)
	d.download("load", unsafe.Pointer(&vals[0]), d.state, int64(8*d.slots))
	for k, p := range d.pending {
		if vals[d.slots+k] != 0 {
			return fmt.Errorf("weight %q has NaN or infinite values; NF4 needs finite weights (is the checkpoint corrupted?)", p.name)
		}
		if p.w.q.double {
			p.w.q.offset = math.Float32frombits(vals[k])
		}
	}
	return nil
}

// release frees the loader's state and staging buffers.
func (d *deviceWeights) release() {
	b := d.Backend
	defer b.enter("load")()
	if d.stager != nil {
		d.stager.free()
		d.stager = nil
	}
	if d.state != 0 {
		b.rawFree(d.state, int64(8*d.slots))
		d.state = 0
	}
	// The staging scratch is as large as the largest weight.
	for _, r := range []scratchRole{sUpload, sAbsmax, sBins} {
		if s := &b.scratch[r]; s.ptr != 0 {
			b.rawFree(s.ptr, s.n)
			*s = buffer{}
		}
	}
}

// LoadModel builds a model from a checkpoint as finetune.LoadModel does,
// with the same result (NF4 codes and offsets, dense weights bit for bit),
// but uploads the matrices in their stored dtype (bf16, f16 or f32) and
// converts or quantizes them on the GPU. Weights a checkpoint stores split
// (q/k/v, gate/up) are fused on the host, as finetune does.
func (b *Backend) LoadModel(ck *finetune.Checkpoint, opts finetune.ModelOptions) (*finetune.Model, error) {
	d := &deviceWeights{Backend: b}
	st := ck.Tensors()
	get := func(name string) ([]float32, []int, error) {
		dt, shape, ok := st.Info(name)
		if !ok || len(shape) != 2 {
			return ck.Float32(name) // norms, fused parts, tied lm_head
		}
		var kind srcKind
		switch dt {
		case safetensors.BF16:
			kind = srcBF16
		case safetensors.F16:
			kind = srcF16
		case safetensors.F32:
			kind = srcF32
		default:
			return ck.Float32(name) // reports the dtype error
		}
		t, err := st.Tensor(name)
		if err != nil {
			return nil, nil, err
		}
		d.next = &weightSource{name: name, out: shape[0], in: shape[1], raw: t.Data, dtype: kind}
		return d.placeholder[:shape[0]*shape[1]], shape, nil
	}
	return d.build("load model "+ck.Dir, ck.Config, get, opts)
}

// RandomModel builds the model finetune.NewModel(b, cfg,
// finetune.RandomWeights(cfg, seed), opts) would, with the matrices drawn
// on the GPU in bfloat16 (finetune's values rounded to bfloat16, as
// finetune.WriteRandomCheckpoint stores them in bf16), for benchmarks and
// tests at full size. Norm weights come from the host.
func (b *Backend) RandomModel(cfg *finetune.Config, seed uint64, opts finetune.ModelOptions) (*finetune.Model, error) {
	d := &deviceWeights{Backend: b}
	host := finetune.RandomWeights(cfg, seed)
	shapes := map[string][]int{}
	for _, s := range finetune.Phi3Tensors(cfg) {
		shapes[s.Name] = s.Shape
	}
	get := func(name string) ([]float32, []int, error) {
		shape, ok := shapes[name]
		if !ok || len(shape) != 2 || isNormWeight(name) {
			return host(name)
		}
		d.next = &weightSource{name: name, out: shape[0], in: shape[1], random: true, seed: weightSeed(seed, name), std: 0.02}
		return d.placeholder[:shape[0]*shape[1]], shape, nil
	}
	return d.build("random model", cfg, get, opts)
}

// weightSeed and isNormWeight are finetune's (tinyckpt.go): each tensor's
// stream is keyed by its name; matrices are N(0, 0.02).
func weightSeed(seed uint64, name string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return finetune.DeriveSeed(seed, h.Sum64())
}

func isNormWeight(name string) bool {
	return strings.HasSuffix(name, "layernorm.weight") || name == "model.norm.weight"
}
