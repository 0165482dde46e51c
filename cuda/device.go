//go:build cuda

// Package cuda is the GPU implementation of finetune.Backend on
// gorgonia.org/cu (the CUDA driver API), with kernels written in CUDA C
// (kernels/*.cu, compiled to the committed PTX that is embedded here) and
// matrix products in cuBLAS, opened with dlopen.
//
// Every file carries the cuda build tag: gorgonia.org/cu's package init
// exits the process when there is no GPU, so only the CUDA trainer may
// import this package. The kernels mirror the CPU reference
// (finetune/cpu_*.go) operation by operation, so each op is tested against
// it; correctness first, speed is issue 8.
//
// Threads. A CUDA context is current per OS thread, and goroutines move
// between threads: every method locks its goroutine to its thread and makes
// the backend's context current for the duration of the call.
//
// Errors. The Backend interface's ops return no errors (they are internal
// to the model). A failing op panics with a *Error, which wraps
// ErrOutOfMemory when the GPU ran out of memory; Recover turns such a panic
// back into an error at the trainer's boundary.
package cuda

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/nf4"
)

// ErrOutOfMemory is wrapped by the error of any allocation the GPU could
// not satisfy (and of a kernel launch or cuBLAS call that ran out of
// memory). It wraps finetune.ErrOutOfMemory, so the trainer recognises a
// GPU out-of-memory: auto_find_batch_size halves the micro-batch, and the
// plugin reports its out_of_memory failure.
var ErrOutOfMemory error = gpuOOM{}

// gpuOOM is ErrOutOfMemory: "out of GPU memory", which is (errors.Is)
// finetune.ErrOutOfMemory too.
type gpuOOM struct{}

func (gpuOOM) Error() string        { return "out of GPU memory" }
func (gpuOOM) Is(target error) bool { return target == finetune.ErrOutOfMemory }

// Error is a failed CUDA operation.
type Error struct {
	Op  string // the backend method or step, e.g. "Alloc [1024 3072]"
	Err error
}

func (e *Error) Error() string { return "cuda: " + e.Op + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Recover turns a panic carrying a *Error (a failed op) into *errp; other
// panics continue. Use it as `defer cuda.Recover(&err)` around model code.
func Recover(errp *error) {
	if p := recover(); p != nil {
		if e, ok := p.(*Error); ok {
			*errp = e
			return
		}
		panic(p)
	}
}

// Options configures a Backend.
type Options struct {
	// Device is the GPU ordinal (0 = the first).
	Device int
	// ComputeDType is F32 (default), BF16 or F16. With BF16 (F16) the
	// frozen base weights are stored (dense) or dequantized (NF4) in
	// bfloat16 (float16) and the base and lm_head matrix products take
	// bfloat16 (float16) inputs with float32 accumulation and output, and
	// so, under BF16, do attention's products over rows of at most 64
	// tokens (attention_tc.cu; its softmax stays float32); activations,
	// LoRA, gradients and optimizer state stay float32. Under
	// F16 an activation beyond float16's range (65504) becomes infinite in
	// the product's input, as in bitsandbytes with float16 compute.
	ComputeDType finetune.DType
	// ReferenceKernels turns off the fused fast paths (LoRA products with
	// their dropout, attention over rows of at most 64 tokens) and runs the
	// original one-op-at-a-time kernels, for A/B benchmarks and tests. The
	// environment variable OLLAMA_TUNE_CUDA_REFERENCE=1 does the same;
	// =lora or =attention turns off one of them.
	ReferenceKernels bool
	// DequantCache is how many weight shapes keep their last dequantized
	// values on the GPU (see matrix): 0 means 4, one decoder layer's worth;
	// a negative value turns the cache off (one shared buffer, the least
	// memory).
	DequantCache int
	// MemoryLimit, when > 0, caps the bytes the backend holds (tensors,
	// weights, scratch: what Allocated counts): an allocation beyond it
	// fails with ErrOutOfMemory as if the GPU were full, to share a GPU or
	// to test the out-of-memory path (auto_find_batch_size) on a large one.
	MemoryLimit int64
	// TF32 runs the float32 GEMMs on TF32 tensor cores (cuBLAS's
	// CUBLAS_TF32_TENSOR_OP_MATH; training.tf32, SetTF32): inputs rounded
	// to TF32, float32 sums. Off, the default, keeps them IEEE float32.
	TF32 bool
	// noStagerAhead: New does not start making the first load's pinned
	// buffers (a backend that loads nothing: RehearseStep's).
	noStagerAhead bool
}

// minDriver is the oldest driver API version that JIT-compiles our PTX
// (ISA 7.8, from CUDA 11.8).
const minDriver = 11080

// minCompute is the oldest compute capability the PTX targets (compute_80).
const minCompute = 80

// Backend runs the finetune ops on one GPU.
type Backend struct {
	opts   Options
	dtype  finetune.DType
	half   halfKind // the 16-bit type of dtype, or halfNone
	dev    cu.Device
	ctx    cu.CUContext
	stream cu.Stream
	blas   *cublas
	lt     *cublasLt  // nil: every GEMM through gemmEx (cublaslt.go)
	waits  *waitTimer // OLLAMA_TUNE_CUDA_WAITS=1: the main stream's stalls on the prefetch stream (waits.go)
	mods   []cu.Module
	fns    map[string]cu.Function
	// smemOptIn is the dynamic shared memory each kernel has opted in to
	// above 48 KiB (allowSmem).
	smemOptIn map[string]int
	// sassArch is the architecture of the cubins loaded (kernels.go:
	// sassFor; 0: none), jitModules how many modules were loaded as PTX.
	sassArch, jitModules int
	// Kept LoRA inputs (keep.go).
	keepLoRA bool
	kept     []keptInput
	// keepAsked: the model asked to keep (KeepLoRAInputs), so a backward
	// follows the forward ops now running (skipByproduct).
	keepAsked bool
	// keepFwd: the model asked to keep through a whole forward
	// (KeepLoRAInputsForward; skipByproduct).
	keepFwd bool
	// loraGrads: the LoRA weight-gradient products a layer's backward holds
	// back (finetune.LoRAGradBatcher, loragrads.go).
	loraGrads loraGradBatch

	info DeviceInfo

	smap, umap cu.DevicePtr // bitsandbytes' signed and unsigned dynamic maps [256]float32
	scratch    [numScratch]buffer

	grads *gradTable  // ClipGradNorm's table of the last gradients
	adam8 *adam8Table // AdamW8bitMulti's table of the last parameters
	// skinnyCounters are the skinny GEMMs' arrival counters (skinny.go).
	skinnyCounters buffer
	prof           *profiler // non-nil between StartProfile and StopProfile
	profPool       *profiler // the last profile's events, for the next

	fastLoRA, fastAttn bool // fused fast paths on (see Options.ReferenceKernels)
	tcLoRA             bool // LoRA products as bfloat16 GEMMs under BF16 (lora_bf16.go)

	dequant      []*dequantSlot // the dequantization cache (backend.go)
	dequantMax   int
	dequantClock uint64
	// deqKeepBudget and deqKeepUsed: bytes of kept dequantizations
	// allowed and held (KeepDequantized).
	deqKeepBudget, deqKeepUsed int64
	deqKept                    []*weight  // those with a kept dequantization
	dequantRuns                int        // dequantizations queued (tests)
	side                       sideStream // PrefetchLinears' stream (prefetch.go)
	stash                      stash      // ActivationStasher (stash.go)

	rmsBwd string // RMSNormBackward's kernel (elementwise.go: rmsBwdKernel)
	rmsFwd string // RMSNormForward's kernel suffix (rmsFwdSuffix)
	gen    uint64 // the last write generation handed out (Tensor.gen)
	// packs are the packed bfloat16 LoRA matrices by their float32
	// matrix's address, packTab the last PackLoRA table (lorapack.go).
	packs   map[cu.DevicePtr]*loraPack
	packTab *packTable
	ropeCS  ropeCache // RoPE's cos/sin table of the last positions (elementwise.go)

	live, peak int64   // bytes held by tensors, weights and scratch
	mem        *memMap // OLLAMA_TUNE_CUDA_MEMMAP (memmap.go), nil without
	closed     bool
	openTimes  string // OpenTimes
	loadTimes  string // LoadTimes
	// stagerAhead: the first load's pinned buffers, made from New on
	// (pinned.go)
	stagerAhead *stagerAhead
}

var (
	_ finetune.Backend     = (*Backend)(nil)
	_ finetune.ModelLoader = (*Backend)(nil)
	_ finetune.GradClipper = (*Backend)(nil)
)

// DeviceInfo describes the GPU a Backend runs on.
type DeviceInfo struct {
	Name                 string
	Ordinal              int
	TotalMemory          int64
	ComputeMajor, Minor  int
	DriverVersion        int // e.g. 13000 for CUDA 13.0
	CublasVersion        int
	CublasLibrary        string
	CublasLtPins         string // whether the pinned cuBLASLt configurations are on, and why not (cublaslt.go)
	Multiprocessors      int
	MaxSharedMemPerBlock int
}

// Detail is a one-line summary ("sm_90, driver CUDA 13.0, 132 SMs").
func (d DeviceInfo) Detail() string {
	return fmt.Sprintf("sm_%d%d, driver CUDA %d.%d, %d SMs", d.ComputeMajor, d.Minor, d.DriverVersion/1000, d.DriverVersion%1000/10, d.Multiprocessors)
}

// New opens GPU opts.Device: its primary context, a stream, cuBLAS on that
// stream and the kernels. It fails with a message that says what to do
// when the driver is too old, the GPU too old, the ordinal out of range or
// cuBLAS missing.
func New(opts Options) (b *Backend, err error) {
	switch opts.ComputeDType {
	case finetune.F32, finetune.BF16, finetune.F16:
	default:
		return nil, fmt.Errorf("cuda backend: compute dtype %v is not supported; use float32, bfloat16 or float16", opts.ComputeDType)
	}
	if v := cu.Version(); v < minDriver {
		return nil, fmt.Errorf("cuda backend: the NVIDIA driver supports CUDA %d.%d; ollama-tune needs a driver for CUDA 11.8 or newer (update the driver, or use device: cpu)", v/1000, v%1000/10)
	}
	n, err := cu.NumDevices()
	if err != nil {
		return nil, fmt.Errorf("cuda backend: count devices: %w", err)
	}
	if n == 0 {
		return nil, errors.New("cuda backend: no CUDA GPU found; use device: cpu")
	}
	if opts.Device < 0 || opts.Device >= n {
		return nil, fmt.Errorf("cuda backend: GPU %d does not exist (this machine has %d, numbered from 0)", opts.Device, n)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	b = &Backend{opts: opts, dtype: opts.ComputeDType, half: halfOf(opts.ComputeDType), fns: map[string]cu.Function{}}
	b.fastLoRA, b.fastAttn = fastPaths(opts)
	b.tcLoRA = b.fastLoRA && !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "lora-tc")
	b.rmsBwd, b.rmsFwd = rmsBwdKernel(), rmsFwdSuffix()
	if os.Getenv("OLLAMA_TUNE_CUDA_MEMMAP") != "" {
		b.mem = newMemMap()
	}
	switch {
	case opts.DequantCache == 0:
		b.dequantMax = 4
	case opts.DequantCache > 0:
		b.dequantMax = opts.DequantCache
	}
	if b.dev, err = cu.GetDevice(opts.Device); err != nil {
		return nil, fmt.Errorf("cuda backend: GPU %d: %w", opts.Device, err)
	}
	if err := b.readInfo(); err != nil {
		return nil, err
	}
	if cc := b.info.ComputeMajor*10 + b.info.Minor; cc < minCompute {
		return nil, fmt.Errorf("cuda backend: %s has compute capability %d.%d; ollama-tune's kernels need 8.0 or newer (Ampere, Ada, Hopper); use device: cpu",
			b.info.Name, b.info.ComputeMajor, b.info.Minor)
	}
	t0 := time.Now()
	if b.ctx, err = b.dev.RetainPrimaryCtx(); err != nil {
		return nil, fmt.Errorf("cuda backend: %s: create context: %w", b.info.Name, err)
	}
	handOffPreload(opts.Device)
	defer func() {
		if err != nil {
			b.release()
		}
	}()
	t1 := time.Now()
	if err := cu.SetCurrentContext(b.ctx); err != nil {
		return nil, fmt.Errorf("cuda backend: %s: set context: %w", b.info.Name, err)
	}
	if b.stream, err = makeStream("main"); err != nil {
		return nil, fmt.Errorf("cuda backend: %s: create stream: %w", b.info.Name, err)
	}
	if b.info.CublasLibrary, err = loadCublas(); err != nil {
		return nil, fmt.Errorf("cuda backend: %w", err)
	}
	t2 := time.Now()
	if b.blas, err = newCublas(uintptr(unsafe.Pointer(b.stream.C())), opts.TF32); err != nil {
		return nil, fmt.Errorf("cuda backend: %w", err)
	}
	b.info.CublasVersion = b.blas.version
	b.lt, b.info.CublasLtPins = newCublasLt(uintptr(unsafe.Pointer(b.stream.C())), b.info.ComputeMajor, b.info.Minor)
	b.waits = newWaitTimer()
	t3 := time.Now()
	if err := b.loadKernels(); err != nil {
		return nil, fmt.Errorf("cuda backend: %s: %w", b.info.Name, err)
	}
	if err := b.uploadTables(); err != nil {
		return nil, fmt.Errorf("cuda backend: %s: %w", b.info.Name, err)
	}
	if !opts.noStagerAhead {
		b.startStager()
	}
	b.openTimes = fmt.Sprintf("context %.3f s, cuBLAS library %.3f s, cuBLAS handle %.3f s, kernels %.3f s",
		t1.Sub(t0).Seconds(), t2.Sub(t1).Seconds(), t3.Sub(t2).Seconds(), time.Since(t3).Seconds())
	return b, nil
}

// OpenTimes says what New's steps took: the context (retained, or made
// when no one held it), the cuBLAS library's dlopen, its handle, and the
// kernels' modules.
func (b *Backend) OpenTimes() string { return b.openTimes }

func (b *Backend) readInfo() error {
	var err error
	d := &b.info
	d.Ordinal = b.opts.Device
	d.DriverVersion = cu.Version()
	if d.Name, err = b.dev.Name(); err != nil {
		return fmt.Errorf("cuda backend: GPU %d: name: %w", b.opts.Device, err)
	}
	if d.TotalMemory, err = b.dev.TotalMem(); err != nil {
		return fmt.Errorf("cuda backend: %s: total memory: %w", d.Name, err)
	}
	attrs := []struct {
		a cu.DeviceAttribute
		v *int
	}{
		{cu.ComputeCapabilityMajor, &d.ComputeMajor},
		{cu.ComputeCapabilityMinor, &d.Minor},
		{cu.MultiprocessorCount, &d.Multiprocessors},
		{cu.MaxSharedMemoryPerBlock, &d.MaxSharedMemPerBlock},
	}
	for _, a := range attrs {
		if *a.v, err = b.dev.Attribute(a.a); err != nil {
			return fmt.Errorf("cuda backend: %s: attribute %v: %w", d.Name, a.a, err)
		}
	}
	return nil
}

func (b *Backend) uploadTables() error {
	sm, um := nf4.DynamicMap(true), nf4.DynamicMap(false)
	var err error
	if b.smap, err = b.rawAlloc(4*256, "signed dynamic map"); err != nil {
		return err
	}
	if b.umap, err = b.rawAlloc(4*256, "unsigned dynamic map"); err != nil {
		return err
	}
	if err := cu.MemcpyHtoDAsync(b.smap, unsafe.Pointer(&sm[0]), 4*256, b.stream); err != nil {
		return fmt.Errorf("upload dynamic map: %w", err)
	}
	if err := cu.MemcpyHtoDAsync(b.umap, unsafe.Pointer(&um[0]), 4*256, b.stream); err != nil {
		return fmt.Errorf("upload dynamic map: %w", err)
	}
	return b.stream.Synchronize()
}

// fastPaths says which fused fast paths opts and the environment leave on.
func fastPaths(opts Options) (lora, attn bool) {
	if opts.ReferenceKernels {
		return false, false
	}
	lora, attn = true, true
	for _, v := range strings.Split(os.Getenv("OLLAMA_TUNE_CUDA_REFERENCE"), ",") {
		switch strings.TrimSpace(v) {
		case "1", "all":
			lora, attn = false, false
		case "lora":
			lora = false
		case "attention":
			attn = false
		}
	}
	return lora, attn
}

// envHas says whether the comma-separated list in the environment
// variable name holds v. OLLAMA_TUNE_CUDA_REFERENCE=lora-tc keeps the fused
// float32 LoRA kernels under BF16 compute (the tensor-core path's A/B).
func envHas(name, v string) bool {
	for _, f := range strings.Split(os.Getenv(name), ",") {
		if strings.TrimSpace(f) == v {
			return true
		}
	}
	return false
}

// TensorCoreLoRA reports whether LoRA's products run as bfloat16 GEMMs
// under BF16 compute (else the fused float32 kernels).
func (b *Backend) TensorCoreLoRA() bool { return b.tcLoRA && b.half == halfBF16 }

// FastKernels reports whether any fused fast path is on.
func (b *Backend) FastKernels() bool { return b.fastLoRA || b.fastAttn }

// FastPaths reports which fused fast paths are on.
func (b *Backend) FastPaths() (lora, attention bool) { return b.fastLoRA, b.fastAttn }

// Info describes the backend's GPU.
func (b *Backend) Info() DeviceInfo { return b.info }

// KernelCode says how the kernels were loaded: machine code built for
// sm_XY (kernels/sass), or PTX the driver JIT-compiled (and how many
// modules).
func (b *Backend) KernelCode() string {
	switch {
	case b.jitModules == 0 && b.sassArch > 0:
		return fmt.Sprintf("sm_%d machine code", b.sassArch)
	case b.sassArch > 0:
		return fmt.Sprintf("sm_%d machine code, %d modules PTX (JIT)", b.sassArch, b.jitModules)
	}
	return "PTX (JIT)"
}

func (b *Backend) Name() string                 { return "cuda" }
func (b *Backend) ComputeDType() finetune.DType { return b.dtype }

// enter locks the goroutine to its thread and makes the context current;
// the returned function undoes the lock. Use: defer b.enter(op)().
func (b *Backend) enter(op string) func() {
	runtime.LockOSThread()
	if b.closed {
		runtime.UnlockOSThread()
		panic(&Error{Op: op, Err: errors.New("the backend is closed")})
	}
	if err := cu.SetCurrentContext(b.ctx); err != nil {
		runtime.UnlockOSThread()
		panic(&Error{Op: op, Err: fmt.Errorf("set context: %w", err)})
	}
	return runtime.UnlockOSThread
}

// check panics with a *Error for a failed driver or cuBLAS call; an
// out-of-memory result wraps ErrOutOfMemory.
func check(op string, err error) {
	if err != nil {
		panic(&Error{Op: op, Err: oom(err)})
	}
}

// oom wraps ErrOutOfMemory into a driver error that is CUDA_ERROR_OUT_OF_MEMORY.
func oom(err error) error {
	if errors.Is(err, cu.OutOfMemory) && !errors.Is(err, ErrOutOfMemory) {
		return fmt.Errorf("%w (%w)", err, ErrOutOfMemory)
	}
	return err
}

// Sync waits for the queued work and reports an asynchronous failure.
func (b *Backend) Sync() (err error) {
	defer Recover(&err)
	defer b.enter("Sync")()
	if err := b.stream.Synchronize(); err != nil {
		return &Error{Op: "Sync", Err: err}
	}
	return nil
}

// Close frees the scratch buffers, the stream and cuBLAS, and releases the
// context. Tensors and weights the caller still holds become invalid.
func (b *Backend) Close() error {
	if b.closed {
		return nil
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cu.SetCurrentContext(b.ctx); err != nil {
		return &Error{Op: "Close", Err: err}
	}
	err := b.stream.Synchronize()
	b.release()
	b.closed = true
	if err != nil {
		return &Error{Op: "Close", Err: err}
	}
	return nil
}

// release frees what New created (with the context current).
func (b *Backend) release() {
	b.freeStagerAhead()
	if b.grads != nil {
		cu.MemFree(b.grads.mem)
		b.grads = nil
	}
	if b.adam8 != nil {
		cu.MemFree(b.adam8.mem)
		b.adam8 = nil
	}
	for _, p := range b.packs {
		cu.MemFree(p.ptr)
	}
	b.packs = nil
	if b.packTab != nil {
		cu.MemFree(b.packTab.mem)
		b.packTab = nil
	}
	if b.skinnyCounters.ptr != 0 {
		cu.MemFree(b.skinnyCounters.ptr)
		b.skinnyCounters = buffer{}
	}
	for _, p := range []**profiler{&b.prof, &b.profPool} {
		if *p != nil {
			(*p).destroy()
			*p = nil
		}
	}
	for _, s := range b.dequant {
		b.dropSlot(s)
		cu.MemFree(s.ptr)
	}
	b.dequant = nil
	b.releaseSide()
	b.releaseStash()
	b.freeLoRAGrads(func(p cu.DevicePtr, _ int64) { cu.MemFree(p) })
	if b.ropeCS.buf.ptr != 0 {
		cu.MemFree(b.ropeCS.buf.ptr)
		b.ropeCS = ropeCache{}
	}
	for k := range b.scratch {
		if b.scratch[k].ptr != 0 {
			cu.MemFree(b.scratch[k].ptr)
			b.scratch[k] = buffer{}
		}
	}
	for _, p := range []*cu.DevicePtr{&b.smap, &b.umap} {
		if *p != 0 {
			cu.MemFree(*p)
			*p = 0
		}
	}
	b.lt.destroy()
	b.lt = nil
	if b.waits != nil {
		b.waits.destroy()
		b.waits = nil
	}
	b.blas.destroy()
	b.blas = nil
	for _, m := range b.mods {
		m.Unload()
	}
	b.mods = nil
	if b.stream.C() != nil {
		b.stream.Destroy()
	}
	if b.ctx != (cu.CUContext{}) {
		b.dev.ReleasePrimaryCtx()
		b.ctx = cu.CUContext{}
	}
}

// ---------------------------------------------------------------------------
// Memory

var _ finetune.TF32Setter = (*Backend)(nil)

// SetTF32 (finetune.TF32Setter, training.tf32) switches the float32 GEMMs
// to TF32 tensor cores or back to IEEE float32 (cuBLAS's math mode on the
// backend's handle; the step rehearsal's backend takes the setting too).
// The bfloat16 and float16 GEMMs, and the pinned cuBLASLt ones (bfloat16),
// are the same either way.
func (b *Backend) SetTF32(on bool) error {
	defer b.enter("SetTF32")()
	if err := b.blas.setTF32(on); err != nil {
		return &Error{Op: "SetTF32", Err: err}
	}
	b.opts.TF32 = on
	return nil
}

var _ finetune.MemoryReporter = (*Backend)(nil)

// MemInfo (finetune.MemoryReporter) returns the GPU's free and total
// memory (cuMemGetInfo).
func (b *Backend) MemInfo() (free, total int64, err error) {
	defer Recover(&err)
	defer b.enter("MemInfo")()
	return cu.MemInfo()
}

// Allocated returns the bytes this backend holds now and at most so far
// (tensors, weights, scratch; not cuBLAS's workspace or the context).
func (b *Backend) Allocated() (now, peak int64) { return b.live, b.peak }

// ResetPeak starts Allocated's peak again from what is held now (a
// benchmark measures training apart from loading).
func (b *Backend) ResetPeak() {
	b.peak = b.live
	if b.mem != nil {
		b.mem.snapshot()
	}
}

// rawAlloc allocates n bytes (n > 0), mapping out-of-memory to
// ErrOutOfMemory with the sizes that explain it.
func (b *Backend) rawAlloc(n int64, what string) (cu.DevicePtr, error) {
	if lim := b.opts.MemoryLimit; lim > 0 && b.live+n > lim {
		return 0, fmt.Errorf("allocate %s for %s (this backend holds %s of its %s limit, Options.MemoryLimit): %w; use a smaller batch size or sequence length, or gradient checkpointing",
			fmtBytes(n), what, fmtBytes(b.live), fmtBytes(lim), ErrOutOfMemory)
	}
	p, err := cu.MemAlloc(n)
	if err != nil {
		if errors.Is(err, cu.OutOfMemory) {
			free, total, _ := cu.MemInfo()
			return 0, fmt.Errorf("allocate %s for %s (%s free of %s; this backend holds %s): %w; use a smaller batch size or sequence length, gradient checkpointing, or device: cpu",
				fmtBytes(n), what, fmtBytes(free), fmtBytes(total), fmtBytes(b.live), ErrOutOfMemory)
		}
		return 0, fmt.Errorf("allocate %s for %s: %w", fmtBytes(n), what, err)
	}
	b.live += n
	if b.mem != nil {
		b.mem.alloc(p, n, what, b.live > b.peak)
	}
	b.peak = max(b.peak, b.live)
	return p, nil
}

// rawFree frees p (n bytes) once the queued work that may use it is done.
func (b *Backend) rawFree(p cu.DevicePtr, n int64) {
	if p == 0 {
		return
	}
	b.stream.Synchronize()
	if b.side.ok {
		b.side.s.Synchronize() // a prefetch may still read a weight or write a slot
	}
	b.syncStash() // a stash copy may still read or write it
	cu.MemFree(p)
	b.live -= n
	if b.mem != nil {
		b.mem.free(p)
	}
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// elemKind is what a Tensor holds.
type elemKind int

const (
	kindF32 elemKind = iota
	kindI32
	kindU8
)

func (k elemKind) size() int64 {
	if k == kindU8 {
		return 1
	}
	return 4
}

func (k elemKind) String() string {
	return [...]string{"float32", "int32", "uint8"}[k]
}

// Tensor is a dense row-major array in GPU memory.
type Tensor struct {
	ptr   cu.DevicePtr
	shape []int
	n     int
	kind  elemKind

	// zero, when not nil, is the backend of a pending Zero: the memory
	// holds garbage that stands for zeros until tensor() materialises them
	// (one memset) or an op that opts in (takeZero) overwrites it.
	zero *Backend
	// gen is a write generation, unique over the backend's life, handed out
	// by touch at every write the host side makes (alloc, upload, Zero,
	// Copy): (ptr, gen) names the tensor's contents for caches keyed on an
	// int32 tensor (RoPE's table of the positions). No kernel writes a
	// Tensor of int32; one that does must call touch.
	gen uint64
	// host is the values of the last UploadInt32, kept while gen is
	// unchanged (small int32 tensors only), so CrossEntropy can read the
	// targets without a round trip.
	host []int32
	// mayHalf: allocated by AllocHalf (finetune.HalfAllocator), so an op
	// that writes it whole may store it in bfloat16 instead, for the ops
	// that read it so (issue 8, v9: under BF16 compute gate_up_proj's
	// output, read by the SwiGLU row kernels, and qkv_proj's, read by the
	// RoPE-fused attention kernels). half, when not nil, is the
	// backend of such a write: the first 2n bytes hold the values in
	// bfloat16 until tensor() (or Download, Copy, Ptr) widens them in
	// place to float32, the values the bfloat16 ones stand for, so an op
	// that knows nothing of it reads them right (accTensor widens an
	// output that is accumulated into). Only halfInput reads it unwidened
	// (and unwrapRaw for an argument check); unwrap refuses it (its callers
	// accumulate into or overwrite part of their tensor).
	mayHalf bool
	half    *Backend
	// skip: marked by finetune.ByproductSkipper, so an op that writes the
	// tensor only as a by-product of its own work may leave it unwritten
	// (skipByproduct); unwritten says one did. Reading an unwritten tensor
	// panics (readable) until an op overwrites it (outTensor) or the host
	// writes it (touch).
	skip, unwritten bool
	// view: made by View; its memory belongs to the viewed tensor.
	view bool
	// busy: the stash's copy from (Stash) or into (Unstash) the tensor may
	// still run on the stash stream; the tensor's next use on the main
	// stream waits for it first (unwrapRaw, Ptr; stash.go).
	busy *stashEntry
}

func (t *Tensor) Shape() []int { return append([]int(nil), t.shape...) }
func (t *Tensor) Numel() int   { return t.n }

// Ptr is the tensor's device address (0 for an empty or freed tensor),
// with a pending Zero materialised and bfloat16 values widened (the caller
// may read it directly).
func (t *Tensor) Ptr() cu.DevicePtr {
	b := t.half
	if b == nil {
		b = t.zero
	}
	t.readable("Ptr")
	if t.busy != nil {
		defer t.busy.b.enter("Ptr")()
		t.waitStash("Ptr")
	}
	if b != nil {
		defer b.enter("Ptr")()
		if t.half != nil {
			b.widen(t, "Ptr")
		}
		if t.zero != nil {
			b.fillZero(t, "Ptr")
		}
	}
	return t.ptr
}

func (t *Tensor) bytes() int64 { return int64(t.n) * t.kind.size() }

// touch gives t a new write generation and drops its host copy.
func (b *Backend) touch(t *Tensor) {
	b.gen++
	t.gen = b.gen
	b.packStale(t.ptr)
	t.host = nil
	t.unwritten = false
}

// fillZero materialises t's pending Zero: one memset, queued now.
func (b *Backend) fillZero(t *Tensor, op string) {
	t.zero = nil
	if t.n > 0 && t.ptr != 0 {
		b.span("memset", func() { check(op, cu.MemsetD8Async(t.ptr, 0, t.bytes(), b.stream)) })
	}
}

// unwrap is tensor without materialising a pending Zero (nor widening a
// bfloat16 tensor: it refuses one, see Tensor.half).
func unwrap(t finetune.Tensor, want elemKind, op string) *Tensor {
	ct := unwrapRaw(t, want, op)
	if ct != nil && ct.half != nil {
		panic(&Error{Op: op, Err: fmt.Errorf("a %v tensor held in bfloat16 reached an op that cannot widen it", ct.shape)})
	}
	ct.readable(op)
	return ct
}

// unwrapRaw is unwrap for the accessors that deal with Tensor.half.
func unwrapRaw(t finetune.Tensor, want elemKind, op string) *Tensor {
	if t == nil {
		return nil
	}
	ct, ok := t.(*Tensor)
	if !ok {
		panic(&Error{Op: op, Err: fmt.Errorf("expected a cuda tensor, got %T", t)})
	}
	if ct.kind != want {
		panic(&Error{Op: op, Err: fmt.Errorf("expected a %v tensor, got %v %v", want, ct.kind, ct.shape)})
	}
	ct.waitStash(op)
	return ct
}

// waitStash makes the main stream wait for a stash copy that may still
// read or write t (Tensor.busy).
func (t *Tensor) waitStash(op string) {
	if t.busy != nil {
		t.busy.wait(op)
		t.busy = nil
	}
}

// tensor unwraps a finetune.Tensor of this backend (nil stays nil). It is
// the universal accessor: a pending Zero is materialised here (a memset
// queued before the op's own work), and a tensor held in bfloat16 widened
// to float32, so an op that knows nothing of lazy zeroing or of Tensor.half
// reads and accumulates into real values. Call it within enter.
func tensor(t finetune.Tensor, want elemKind, op string) *Tensor {
	ct := unwrapRaw(t, want, op)
	ct.readable(op)
	if ct != nil && ct.half != nil {
		ct.half.widen(ct, op)
	}
	if ct != nil && ct.zero != nil {
		ct.zero.fillZero(ct, op)
	}
	return ct
}

// halfInput unwraps an input an op can read in bfloat16: the tensor and
// whether it holds bfloat16 (Tensor.half). Call it within enter.
func halfInput(t finetune.Tensor, op string) (*Tensor, bool) {
	ct := unwrapRaw(t, kindF32, op)
	if ct == nil || ct.half == nil || ct.zero != nil {
		return tensor(t, kindF32, op), false
	}
	ct.readable(op)
	return ct, true
}

// readable panics when t's values were left unwritten (Tensor.unwritten):
// an op read what no op wrote, which would otherwise be garbage.
func (t *Tensor) readable(op string) {
	if t != nil && t.unwritten {
		panic(&Error{Op: op, Err: fmt.Errorf("read a %v tensor that a fused op left unwritten: it was marked by SkipByproduct, "+
			"so no op may read it (finetune.ByproductSkipper)", t.shape)})
	}
}

// widen turns t's bfloat16 values into float32 in place (Tensor.half):
// the 2n bytes go to a scratch buffer, then bf16_to_f32_kernel writes them
// back widened.
func (b *Backend) widen(t *Tensor, op string) {
	t.half = nil
	if t.n == 0 || t.ptr == 0 {
		return
	}
	tmp := b.scratchBuf(sWiden, 2*int64(t.n), op)
	b.span("memcpy", func() { check(op, cu.MemcpyDtoDAsync(tmp, t.ptr, 2*int64(t.n), b.stream)) })
	b.launchN(op, "bf16_to_f32_kernel", int64(t.n), ptrArg(t.ptr), ptrArg(tmp), intArg(t.n))
}

// Lazy zeroing. The model zeroes a gradient buffer and then accumulates
// into it (finetune's Backward convention); Zero only marks the tensor,
// and an op that writes EVERY element of an output it would accumulate
// into can opt in: it unwraps the output with accTensor (or unwrap, then
// takeZero), gets beta 0 when a Zero is pending, and then writes
// out = result instead of out = out + result (a GEMM: beta 0 instead of 1,
// which cuBLAS never reads C for). That saves the memset and the read of
// the zeros. Rules for an op that opts in:
//   - unwrap its INPUTS with tensor() first, and the output last: if the
//     output aliases an input, the input's tensor() has materialised the
//     zeros already and takeZero returns 1;
//   - call takeZero after the op's argument checks, right before the work
//     is queued, and honour beta for every element of the output; an op
//     that writes only part of the output must use tensor() instead.

// takeZero returns 0 and clears t's pending Zero if it has one (the op
// must then overwrite every element of t), else 1 (accumulate).
func (b *Backend) takeZero(t *Tensor) (beta float32) {
	if t == nil || t.zero == nil {
		return 1
	}
	t.zero = nil
	return 0
}

// accTensor unwraps an accumulating output: the tensor and takeZero's beta
// (values held in bfloat16 widened first: Tensor.half). See the rules
// above: unwrap the op's inputs first.
func (b *Backend) accTensor(t finetune.Tensor, want elemKind, op string) (*Tensor, float32) {
	ct := unwrapRaw(t, want, op)
	ct.readable(op)
	if ct != nil && ct.half != nil {
		ct.half.widen(ct, op)
	}
	return ct, b.takeZero(ct)
}

// outTensor unwraps an output the op overwrites entirely (a forward op's
// out): a pending Zero is dropped unmaterialised. Unwrap the inputs first.
func outTensor(t finetune.Tensor, want elemKind, op string) *Tensor {
	ct := unwrapRaw(t, want, op)
	if ct != nil {
		ct.zero, ct.half, ct.unwritten = nil, nil, false
	}
	return ct
}

func (b *Backend) alloc(kind elemKind, shape []int, op string) *Tensor {
	n := 1
	for _, s := range shape {
		if s < 0 {
			panic(&Error{Op: op, Err: fmt.Errorf("negative dimension in shape %v", shape)})
		}
		n *= s
	}
	t := &Tensor{shape: append([]int(nil), shape...), n: n, kind: kind}
	if n == 0 {
		return t
	}
	p, err := b.rawAlloc(t.bytes(), fmt.Sprintf("a %v tensor %v", kind, shape))
	check(op, err)
	t.ptr = p
	b.touch(t)
	check(op, cu.MemsetD8Async(p, 0, t.bytes(), b.stream))
	return t
}

// TryAlloc is Alloc that returns an out-of-memory error instead of
// panicking, for callers that want to size buffers by trying.
func (b *Backend) TryAlloc(shape ...int) (t finetune.Tensor, err error) {
	defer Recover(&err)
	return b.Alloc(shape...), nil
}

func (b *Backend) Alloc(shape ...int) finetune.Tensor {
	defer b.enter("Alloc")()
	return b.alloc(kindF32, shape, "Alloc")
}

var _ finetune.HalfAllocator = (*Backend)(nil)

// AllocHalf (finetune.HalfAllocator) is Alloc for an activation that an op
// may store in bfloat16 (Tensor.mayHalf).
func (b *Backend) AllocHalf(shape ...int) finetune.Tensor {
	defer b.enter("AllocHalf")()
	t := b.alloc(kindF32, shape, "AllocHalf")
	t.mayHalf = true
	return t
}

var _ finetune.Viewer = (*Backend)(nil)

// View (finetune.Viewer) is a Tensor over t's first values: t's address,
// kind and AllocHalf mark, its own shape and pending states (none: its
// values are t's memory as it is). Free of a view frees nothing.
func (b *Backend) View(t finetune.Tensor, shape ...int) finetune.Tensor {
	defer b.enter("View")()
	ct, ok := t.(*Tensor)
	if !ok {
		panic(&Error{Op: "View", Err: fmt.Errorf("expected a cuda tensor, got %T", t)})
	}
	ct.waitStash("View")
	n := 1
	for _, s := range shape {
		if s < 0 {
			panic(&Error{Op: "View", Err: fmt.Errorf("negative dimension in shape %v", shape)})
		}
		n *= s
	}
	if n > ct.n {
		panic(&Error{Op: "View", Err: fmt.Errorf("a view of %v (%d values) over a %v tensor of %d", shape, n, ct.kind, ct.n)})
	}
	v := &Tensor{ptr: ct.ptr, shape: append([]int(nil), shape...), n: n, kind: ct.kind, mayHalf: ct.mayHalf, view: true}
	if n == 0 {
		v.ptr = 0
	}
	b.touch(v)
	return v
}

func (b *Backend) AllocInt32(n int) finetune.Tensor {
	defer b.enter("AllocInt32")()
	return b.alloc(kindI32, []int{n}, "AllocInt32")
}

func (b *Backend) AllocBytes(n int) finetune.Tensor {
	defer b.enter("AllocBytes")()
	return b.alloc(kindU8, []int{n}, "AllocBytes")
}

func (b *Backend) upload(op string, dst cu.DevicePtr, src unsafe.Pointer, n int64) {
	if n == 0 {
		return
	}
	check(op, cu.MemcpyHtoDAsync(dst, src, n, b.stream))
}

// uploadAll overwrites all of d with n host values at src (the Upload
// ops): no pending Zero left, a new write generation.
func (b *Backend) uploadAll(op string, d *Tensor, src unsafe.Pointer, n int) {
	if n != d.n {
		panic(&Error{Op: op, Err: fmt.Errorf("%d values into a tensor of %d", n, d.n)})
	}
	d.zero, d.half = nil, nil // overwritten entirely
	b.touch(d)
	b.upload(op, d.ptr, src, d.bytes())
}

func (b *Backend) Upload(dst finetune.Tensor, src []float32) {
	defer b.enter("Upload")()
	b.uploadAll("Upload", unwrapRaw(dst, kindF32, "Upload"), unsafe.Pointer(unsafe.SliceData(src)), len(src))
}

func (b *Backend) UploadInt32(dst finetune.Tensor, src []int32) {
	defer b.enter("UploadInt32")()
	d := unwrap(dst, kindI32, "UploadInt32")
	b.uploadAll("UploadInt32", d, unsafe.Pointer(unsafe.SliceData(src)), len(src))
	if d.n <= maxHostCopy {
		d.host = append(d.host[:0:0], src...)
	}
}

// maxHostCopy bounds the int32 tensors whose uploaded values are kept on
// the host (Tensor.host): a batch's targets, positions and ids.
const maxHostCopy = 1 << 16

// download copies n bytes from p into dst and waits for them.
func (b *Backend) download(op string, dst unsafe.Pointer, p cu.DevicePtr, n int64) {
	if n == 0 {
		return
	}
	check(op, cu.MemcpyDtoHAsync(dst, p, n, b.stream))
	check(op, b.stream.Synchronize())
}

// Download returns a float32 copy of a tensor (int32 and uint8 tensors are
// converted value by value, like the CPU backend). It synchronises.
func (b *Backend) Download(src finetune.Tensor) []float32 {
	defer b.enter("Download")()
	s, ok := src.(*Tensor)
	if !ok {
		panic(&Error{Op: "Download", Err: fmt.Errorf("expected a cuda tensor, got %T", src)})
	}
	s.readable("Download")
	s.waitStash("Download")
	if s.half != nil {
		b.widen(s, "Download")
	}
	if s.zero != nil {
		b.fillZero(s, "Download")
	}
	out := make([]float32, s.n)
	if s.n == 0 {
		check("Download", b.stream.Synchronize())
		return out
	}
	switch s.kind {
	case kindF32:
		b.download("Download", unsafe.Pointer(&out[0]), s.ptr, s.bytes())
	case kindI32:
		v := make([]int32, s.n)
		b.download("Download", unsafe.Pointer(&v[0]), s.ptr, s.bytes())
		for k, x := range v {
			out[k] = float32(x)
		}
	case kindU8:
		v := make([]uint8, s.n)
		b.download("Download", unsafe.Pointer(&v[0]), s.ptr, s.bytes())
		for k, x := range v {
			out[k] = float32(x)
		}
	}
	return out
}

// DownloadBytes returns a uint8 tensor's bytes (8-bit optimizer state).
func (b *Backend) DownloadBytes(src finetune.Tensor) []byte {
	defer b.enter("DownloadBytes")()
	s := tensor(src, kindU8, "DownloadBytes")
	out := make([]byte, s.n)
	if s.n > 0 {
		b.download("DownloadBytes", unsafe.Pointer(&out[0]), s.ptr, s.bytes())
	}
	return out
}

// UploadBytes fills a uint8 tensor.
func (b *Backend) UploadBytes(dst finetune.Tensor, src []byte) {
	defer b.enter("UploadBytes")()
	b.uploadAll("UploadBytes", unwrap(dst, kindU8, "UploadBytes"), unsafe.Pointer(unsafe.SliceData(src)), len(src))
}

// Zero marks t as zero: no GPU work yet. The zeros are materialised (one
// memset) by the first op that reads t through tensor(), or never, when
// the first op to touch t opts in with takeZero and overwrites it (see
// lazy zeroing above).
func (b *Backend) Zero(t finetune.Tensor) {
	defer b.enter("Zero")()
	ct, ok := t.(*Tensor)
	if !ok {
		panic(&Error{Op: "Zero", Err: fmt.Errorf("expected a cuda tensor, got %T", t)})
	}
	ct.waitStash("Zero")
	b.touch(ct)
	ct.half = nil
	if ct.n > 0 && ct.ptr != 0 {
		ct.zero = b
	}
}

func (b *Backend) Copy(dst, src finetune.Tensor) {
	defer b.enter("Copy")()
	d, ok1 := dst.(*Tensor)
	s, ok2 := src.(*Tensor)
	if !ok1 || !ok2 {
		panic(&Error{Op: "Copy", Err: fmt.Errorf("expected cuda tensors, got %T and %T", dst, src)})
	}
	if d.n != s.n || d.kind != s.kind {
		panic(&Error{Op: "Copy", Err: fmt.Errorf("copy of %d %v into %d %v", s.n, s.kind, d.n, d.kind)})
	}
	s.readable("Copy")
	s.waitStash("Copy")
	d.waitStash("Copy")
	if s.half != nil {
		b.widen(s, "Copy")
	}
	b.touch(d)
	if s.zero != nil {
		// A copy of zeros is a pending Zero too (d == s stays pending).
		d.half = nil
		if d.n > 0 {
			d.zero = b
		}
		return
	}
	d.zero, d.half = nil, nil // overwritten entirely
	if d.n > 0 && d != s {
		b.span("memcpy", func() { check("Copy", cu.MemcpyDtoDAsync(d.ptr, s.ptr, d.bytes(), b.stream)) })
	}
}

// Free releases a tensor's memory (after the queued work that uses it).
func (b *Backend) Free(t finetune.Tensor) {
	ct, ok := t.(*Tensor)
	if !ok || ct == nil || ct.ptr == 0 || b.closed {
		return
	}
	if ct.view { // its memory is the viewed tensor's
		ct.ptr, ct.n, ct.zero, ct.half = 0, 0, nil, nil
		return
	}
	defer b.enter("Free")()
	b.dropPack(ct.ptr)
	b.rawFree(ct.ptr, ct.bytes()) // after the stash's copies too
	ct.ptr, ct.n, ct.zero, ct.half, ct.busy = 0, 0, nil, nil, nil
	b.touch(ct)
}

// ---------------------------------------------------------------------------
// Scratch buffers: grow-only device buffers, one per role, reused by every
// op (the stream runs ops in order, so one op's scratch is free when the
// next starts).

type scratchRole int

const (
	sWeight    scratchRole = iota // a dequantized or converted weight
	sAct                          // bfloat16 copy of a GEMM's activation input
	sUpload                       // float32 staging of uploaded weights
	sDrop                         // dropout(x) for LoRA
	sLoRAG                        // LoRA backward's dout . B
	sLoRATmp                      // LoRA backward's masked input gradient
	sAbsmax                       // NF4 absmax before double quantization
	sCEIdx                        // cross-entropy: token indices, targets
	sCEX                          // cross-entropy: gathered rows of x
	sCELogits                     // cross-entropy: a chunk of logits
	sCEDx                         // cross-entropy: a chunk's input gradient
	sCELoss                       // cross-entropy: per-token losses, hits
	sReduce                       // partial sums
	sAttn                         // attention backward: rowsum(dO*O)
	sNF4Offset                    // NF4Weight's double-quantization offset
	sBins                         // the exact sum's bins (NF4 double quantization)
	sLoRAPart                     // fused LoRA backward: per-chunk column sums
	sLoRAX                        // LoRA under BF16: bfloat16 dropout(x)
	sLoRAHalf                     // LoRA under BF16: bfloat16 A, B, h, dout . B
	sWiden                        // a bfloat16 tensor's values on their way to float32 (Tensor.half)
	sDGateUp                      // SwiGLULinearBackward's d gate_up where the model gives none
	sLtWork                       // a pinned cuBLASLt GEMM's split-K workspace (cublaslt.go)
	numScratch
)

type buffer struct {
	ptr cu.DevicePtr
	n   int64
}

// scratchBuf returns role's buffer with room for n bytes.
func (b *Backend) scratchBuf(role scratchRole, n int64, op string) cu.DevicePtr {
	what := "scratch"
	if b.mem != nil {
		what = fmt.Sprintf("scratch role %d (device.go)", role)
	}
	p, _ := b.grow(&b.scratch[role], n, 256, what, op)
	return p
}

// grow returns s's memory with room for n bytes, replacing it by at least
// max(n, least) new bytes when it is smaller (fresh says so: the contents
// are then undefined).
func (b *Backend) grow(s *buffer, n, least int64, what, op string) (p cu.DevicePtr, fresh bool) {
	if n <= s.n && s.ptr != 0 {
		return s.ptr, false
	}
	if s.ptr != 0 {
		b.rawFree(s.ptr, s.n)
		*s = buffer{}
	}
	n = max(n, least)
	p, err := b.rawAlloc(n, what)
	check(op, err)
	*s = buffer{ptr: p, n: n}
	return p, true
}

// FreeScratch releases the scratch buffers, the dequantization cache and
// the kept dequantizations (they grow back on demand).
func (b *Backend) FreeScratch() {
	defer b.enter("FreeScratch")()
	b.freeKeptBeyond(0)
	b.freeDequantCache()
	b.freeRopeCache()
	b.freeKept()
	b.freePacks()
	b.freeLoRAGrads(b.rawFree)
	for k := range b.scratch {
		if b.scratch[k].ptr != 0 {
			b.rawFree(b.scratch[k].ptr, b.scratch[k].n)
			b.scratch[k] = buffer{}
		}
	}
}

// ListDevices describes every GPU, with its free memory (read through its
// primary context), without loading kernels or cuBLAS.
func ListDevices() ([]DeviceInfo, []int64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	n, err := cu.NumDevices()
	if err != nil {
		return nil, nil, fmt.Errorf("cuda: count devices: %w", err)
	}
	var infos []DeviceInfo
	var free []int64
	for i := 0; i < n; i++ {
		b := &Backend{opts: Options{Device: i}}
		if b.dev, err = cu.GetDevice(i); err != nil {
			return nil, nil, fmt.Errorf("cuda: GPU %d: %w", i, err)
		}
		if err := b.readInfo(); err != nil {
			return nil, nil, err
		}
		var f int64
		if ctx, err := b.dev.RetainPrimaryCtx(); err == nil {
			if cu.SetCurrentContext(ctx) == nil {
				f, _, _ = cu.MemInfo()
			}
			b.dev.ReleasePrimaryCtx()
		}
		infos = append(infos, b.info)
		free = append(free, f)
	}
	return infos, free, nil
}

// NewFactory returns a function that opens a Backend on GPU device for a
// compute dtype: the shape of the trainer's backend factory.
func NewFactory(device int) func(compute finetune.DType) (finetune.Backend, error) {
	return func(compute finetune.DType) (finetune.Backend, error) {
		b, err := New(Options{Device: device, ComputeDType: compute})
		if err != nil {
			return nil, err
		}
		return b, nil
	}
}
