//go:build cuda

package cuda

// Each op against the CPU reference (finetune.NewCPUBackend) on fresh
// random inputs of odd sizes. Forward outputs start poisoned with NaN, so
// an element the kernel forgets to write fails the test; accumulating
// outputs start from the same random values on both sides. fp32 must agree
// to relative L2 error 1e-5, bf16 to 1e-2; NF4 codes and the optimizers,
// which the kernels mirror operation by operation, must agree bit for bit.
//
// These tests need a GPU: build them here with scripts/test-gpu.sh and run
// the binary on the GPU machine.

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"unsafe"

	"gorgonia.org/cu"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/nf4"
	"github.com/ollama-tune/ollama-tune/finetune/optim"
	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
	"github.com/ollama-tune/ollama-tune/finetune/testutil/golden"
	"github.com/ollama-tune/ollama-tune/finetune/testutil/tinymodel"
)

const (
	tolF32  = 1e-5
	tolBF16 = 1e-2
	tolF16  = 1e-2
)

var (
	gpu    *Backend // float32 compute
	gpuB16 *Backend // bfloat16 compute
	gpuF16 *Backend // float16 compute
	cpu    = finetune.NewCPUBackend(finetune.CPUOptions{})
	cpuB16 = finetune.NewCPUBackend(finetune.CPUOptions{ComputeDType: finetune.BF16})
	cpuF16 = finetune.NewCPUBackend(finetune.CPUOptions{ComputeDType: finetune.F16})
)

// dtypeCase is one compute dtype: the GPU backend, its CPU reference (which
// emulates the 16-bit weights) and the per-op tolerance.
type dtypeCase struct {
	name string
	g    *Backend
	c    finetune.Backend
	tol  float64
}

func dtypeCases() []dtypeCase {
	return []dtypeCase{{"f32", gpu, cpu, tolF32}, {"bf16", gpuB16, cpuB16, tolBF16}, {"f16", gpuF16, cpuF16, tolF16}}
}

// caseOf is the dtypeCase of a 16-bit type (halfNone: float32).
func caseOf(h halfKind) dtypeCase { return dtypeCases()[h] }

func TestMain(m *testing.M) {
	var err error
	if gpu, err = New(Options{}); err != nil {
		fmt.Fprintln(os.Stderr, "cuda tests:", err)
		os.Exit(1)
	}
	if gpuB16, err = New(Options{ComputeDType: finetune.BF16}); err != nil {
		fmt.Fprintln(os.Stderr, "cuda tests:", err)
		os.Exit(1)
	}
	if gpuF16, err = New(Options{ComputeDType: finetune.F16}); err != nil {
		fmt.Fprintln(os.Stderr, "cuda tests:", err)
		os.Exit(1)
	}
	info := gpu.Info()
	fmt.Printf("cuda tests on %s (%s, %s, cuBLAS %d from %s, kernels: %s, cuBLASLt pins: %s)\n", info.Name, fmtBytes(info.TotalMemory), info.Detail(), info.CublasVersion,
		info.CublasLibrary, gpu.KernelCode(), info.CublasLtPins)
	code := m.Run()
	gpuF16.Close()
	gpuB16.Close()
	gpu.Close()
	os.Exit(code)
}

// randn returns n values scale * N(0,1) drawn with seed.
func randn(n int, seed uint64, scale float32) []float32 {
	x := make([]float32, n)
	for k := range x {
		x[k] = scale * finetune.Normal(seed, uint64(k))
	}
	return x
}

// profileCalls runs run(3) to warm up, then profiles run(reps): the
// kernels' times (Profile.BusyMs / reps is one call's).
func profileCalls(t *testing.T, b *Backend, run func(n int), reps int) Profile {
	t.Helper()
	run(3)
	b.StartProfile()
	run(reps)
	p, err := b.StopProfile()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// putSpecials writes a NaN and both infinities into rows 3-5 of x [T,K]
// (T >= 6, K >= 10).
func putSpecials(x []float32, K int) {
	x[3*K+5] = float32(math.NaN())
	x[4*K+9] = float32(math.Inf(1))
	x[5*K+1] = float32(math.Inf(-1))
}

// sameBits: the same float32 bits, or both NaN (a NaN's payload is the
// GPU's own).
func sameBits(a, b float32) bool {
	return math.Float32bits(a) == math.Float32bits(b) || a != a && b != b
}

func nanSlice(n int) []float32 {
	x := make([]float32, n)
	for k := range x {
		x[k] = float32(math.NaN())
	}
	return x
}

// The comparisons are golden's, which package finetune's golden test uses
// too: relative L2 error (logged when within tol) and float32 bits.
var (
	relErr    = golden.RelErr
	checkRel  = golden.CheckRel
	checkBits = golden.CheckBits
)

// pair is one tensor on both backends.
type pair struct {
	c, g finetune.Tensor
}

// both allocates shape on cpu and g and fills them with data.
func both(g finetune.Backend, c finetune.Backend, data []float32, shape ...int) pair {
	p := pair{c.Alloc(shape...), g.Alloc(shape...)}
	c.Upload(p.c, data)
	g.Upload(p.g, data)
	return p
}

func bothInt(g, c finetune.Backend, data []int32) pair {
	p := pair{c.AllocInt32(len(data)), g.AllocInt32(len(data))}
	c.UploadInt32(p.c, data)
	g.UploadInt32(p.g, data)
	return p
}

// compare downloads both sides of p and checks them.
func compare(t *testing.T, g, c finetune.Backend, what string, p pair, tol float64) {
	t.Helper()
	checkRel(t, what, g.Download(p.g), c.Download(p.c), tol)
}

// ---------------------------------------------------------------------------

func TestDeviceMemoryOps(t *testing.T) {
	x := randn(1001, 1, 1)
	a := gpu.Alloc(7, 143)
	if got := gpu.Download(a); relErr(got, make([]float32, len(got))) != 0 {
		t.Fatal("Alloc is not zero-filled")
	}
	gpu.Upload(a, x)
	checkBits(t, "upload/download", gpu.Download(a), x)
	c := gpu.Alloc(1001)
	gpu.Copy(c, a)
	checkBits(t, "copy", gpu.Download(c), x)
	gpu.Zero(c)
	checkBits(t, "zero", gpu.Download(c), make([]float32, 1001))
	ids := gpu.AllocInt32(5)
	gpu.UploadInt32(ids, []int32{-3, 0, 7, 1 << 20, -100})
	checkBits(t, "int32", gpu.Download(ids), []float32{-3, 0, 7, 1 << 20, -100})
	by := gpu.AllocBytes(3)
	gpu.UploadBytes(by, []byte{0, 128, 255})
	checkBits(t, "uint8", gpu.Download(by), []float32{0, 128, 255})
	if got := gpu.DownloadBytes(by); string(got) != "\x00\x80\xff" {
		t.Errorf("DownloadBytes: %v, want [0 128 255]", got)
	}
	gpu.Zero(by) // pending until read
	if got := gpu.DownloadBytes(by); string(got) != "\x00\x00\x00" {
		t.Errorf("DownloadBytes of a zeroed tensor: %v", got)
	}
	if s := a.Shape(); len(s) != 2 || s[0] != 7 || s[1] != 143 || a.Numel() != 1001 {
		t.Errorf("shape %v numel %d", s, a.Numel())
	}
	// Lazy zeroing: a Zero is pending until something reads the tensor;
	// every reader sees zeros, whatever the memory held.
	zeros := make([]float32, 1001)
	gpu.Upload(c, x)
	gpu.Zero(c)
	d := gpu.Alloc(1001)
	gpu.Upload(d, x)
	gpu.Copy(d, c) // a copy of a pending Zero
	checkBits(t, "copy of zero", gpu.Download(d), zeros)
	checkBits(t, "zero after copy", gpu.Download(c), zeros)
	gpu.Upload(c, x)
	gpu.Zero(c)
	gpu.Scale(c, 2) // an op that reads through tensor()
	checkBits(t, "scale of zero", gpu.Download(c), zeros)
	gpu.Upload(c, x)
	gpu.Zero(c)
	gpu.Add(d, c, c)
	checkBits(t, "add of zeros", gpu.Download(d), zeros)
	gpu.Upload(c, x)
	gpu.Zero(c)
	gpu.Upload(c, x) // an upload replaces the pending Zero
	checkBits(t, "upload after zero", gpu.Download(c), x)
	gpu.Zero(c)
	if c.(*Tensor).Ptr() == 0 || c.(*Tensor).zero != nil {
		t.Error("Ptr left the Zero pending")
	}
	checkBits(t, "zero via Ptr", gpu.Download(c), zeros)
	gpu.Zero(c)
	gpu.Copy(d, a) // a copy over a tensor replaces whatever it held
	checkBits(t, "copy over", gpu.Download(d), x)
	gpu.Zero(ids)
	checkBits(t, "int32 zero", gpu.Download(ids), make([]float32, 5))
	if ids.(*Tensor).host != nil {
		t.Error("Zero kept the int32 host copy")
	}
	gpu.Zero(c)
	gpu.Free(c) // a pending Zero is dropped
	for _, tt := range []finetune.Tensor{a, d, ids, by} {
		gpu.Free(tt)
	}
	if err := gpu.Sync(); err != nil {
		t.Fatal(err)
	}
}

func TestOutOfMemoryIsAnError(t *testing.T) {
	_, total, err := gpu.MemInfo()
	if err != nil {
		t.Fatal(err)
	}
	_, err = gpu.TryAlloc(int(total/4)+1<<20, 2) // more float32s than the GPU has bytes / 2
	if err == nil {
		t.Fatal("allocating more than the GPU's memory succeeded")
	}
	if !errors.Is(err, ErrOutOfMemory) || !errors.Is(err, finetune.ErrOutOfMemory) {
		t.Fatalf("error %v does not wrap ErrOutOfMemory and finetune.ErrOutOfMemory", err)
	}
	t.Logf("as expected: %v", err)
	// The backend still works afterwards.
	x := gpu.Alloc(3)
	gpu.Upload(x, []float32{1, 2, 3})
	checkBits(t, "after OOM", gpu.Download(x), []float32{1, 2, 3})
	gpu.Free(x)
}

// nf4Host downloads a GPU NF4 weight's storage in finetune/nf4's layout.
func nf4Host(t *testing.T, w finetune.Weight) *nf4.Quantized {
	t.Helper()
	defer gpu.enter("test")()
	cw := w.(*weight)
	q := cw.q
	n := cw.n()
	nb := q.blocks(n)
	out := &nf4.Quantized{Out: cw.out, In: cw.in, DoubleQuant: q.double, Codes: make([]byte, (n+1)/2)}
	gpu.download("test", unsafe.Pointer(&out.Codes[0]), q.codes, (n+1)/2)
	if !q.double {
		out.Absmax = make([]float32, nb)
		gpu.download("test", unsafe.Pointer(&out.Absmax[0]), q.absmax, 4*nb)
		return out
	}
	na := (nb + nf4.AbsmaxBlockSize - 1) / nf4.AbsmaxBlockSize
	out.AbsmaxCodes = make([]byte, nb)
	out.AbsmaxScales = make([]float32, na)
	out.AbsmaxOffset = q.offset
	gpu.download("test", unsafe.Pointer(&out.AbsmaxCodes[0]), q.acodes, nb)
	gpu.download("test", unsafe.Pointer(&out.AbsmaxScales[0]), q.ascales, 4*na)
	return out
}

func TestNF4QuantizeIsBitIdentical(t *testing.T) {
	shapes := [][2]int{{37, 45}, {300, 129}, {1, 1}, {3, 64}, {128, 771}}
	for k, s := range shapes {
		out, in := s[0], s[1]
		data := randn(out*in, uint64(10+k), 0.05)
		// An all-zero block, values exactly on NF4 thresholds (x absmax),
		// and a large outlier.
		if len(data) >= 200 {
			for i := 64; i < 128; i++ {
				data[i] = 0
			}
			data[130] = 1
			data[131] = -0.8480964004993439
			data[132] = 0.03979014977812767
			data[133] = -0.045525018125772476
			data[150] = 40
		}
		for _, dq := range []bool{false, true} {
			name := fmt.Sprintf("[%d,%d] double %v", out, in, dq)
			w, err := gpu.NF4Weight(data, out, in, dq)
			if err != nil {
				t.Fatal(err)
			}
			want := nf4.Quantize(data, out, in, dq)
			got := nf4Host(t, w)
			if string(got.Codes) != string(want.Codes) {
				t.Errorf("%s: codes differ from finetune/nf4", name)
			}
			if dq {
				if got.AbsmaxOffset != want.AbsmaxOffset || string(got.AbsmaxCodes) != string(want.AbsmaxCodes) {
					t.Errorf("%s: double-quant offset %v / codes differ (want %v)", name, got.AbsmaxOffset, want.AbsmaxOffset)
				}
				checkBits(t, name+" absmax scales", got.AbsmaxScales, want.AbsmaxScales)
			} else {
				checkBits(t, name+" absmax", got.Absmax, want.Absmax)
			}
			cw, err := cpu.NF4Weight(data, out, in, dq)
			if err != nil {
				t.Fatal(err)
			}
			checkBits(t, name+" dequantized", gpu.DequantizeWeight(w), cpu.DequantizeWeight(cw))
			// bf16 compute: the dequantized values rounded to bfloat16.
			wb, err := gpuB16.NF4Weight(data, out, in, dq)
			if err != nil {
				t.Fatal(err)
			}
			cb, _ := cpuB16.NF4Weight(data, out, in, dq)
			checkBits(t, name+" dequantized bf16", gpuB16.DequantizeWeight(wb), cpuB16.DequantizeWeight(cb))
			// f16 compute: rounded to IEEE half.
			wh, err := gpuF16.NF4Weight(data, out, in, dq)
			if err != nil {
				t.Fatal(err)
			}
			ch, _ := cpuF16.NF4Weight(data, out, in, dq)
			checkBits(t, name+" dequantized f16", gpuF16.DequantizeWeight(wh), cpuF16.DequantizeWeight(ch))
			gpu.FreeWeight(w)
			gpuB16.FreeWeight(wb)
			gpuF16.FreeWeight(wh)
		}
	}
	if _, err := gpu.NF4Weight([]float32{1, float32(math.Inf(1))}, 1, 2, true); err == nil {
		t.Error("NF4Weight accepted an infinite value")
	}
	if _, err := gpu.NF4Weight([]float32{1, 2, 3}, 2, 2, true); err == nil {
		t.Error("NF4Weight accepted 3 values for [2, 2]")
	}
}

func TestDenseWeight(t *testing.T) {
	data := randn(33*17, 3, 1)
	w, err := gpu.DenseWeight(data, 33, 17)
	if err != nil {
		t.Fatal(err)
	}
	checkBits(t, "dense f32", gpu.DequantizeWeight(w), data)
	wb, err := gpuB16.DenseWeight(data, 33, 17)
	if err != nil {
		t.Fatal(err)
	}
	cb, _ := cpuB16.DenseWeight(data, 33, 17)
	checkBits(t, "dense bf16", gpuB16.DequantizeWeight(wb), cpuB16.DequantizeWeight(cb))
	// float16: subnormals, overflow to infinity and ties included.
	hdata := append(append([]float32(nil), data...), 1e-6, -3e-7, 70000, -65520, 65519, 2049, 2051)
	wh, err := gpuF16.DenseWeight(hdata, 1, len(hdata))
	if err != nil {
		t.Fatal(err)
	}
	ch, _ := cpuF16.DenseWeight(hdata, 1, len(hdata))
	checkBits(t, "dense f16", gpuF16.DequantizeWeight(wh), cpuF16.DequantizeWeight(ch))
	if wh.Bytes() != int64(2*len(hdata)) {
		t.Errorf("f16 Bytes %d", wh.Bytes())
	}
	gpuF16.FreeWeight(wh)
	if w.Bytes() != 33*17*4 || wb.Bytes() != 33*17*2 || w.Out() != 33 || w.In() != 17 {
		t.Errorf("Bytes %d / %d, shape [%d, %d]", w.Bytes(), wb.Bytes(), w.Out(), w.In())
	}
	gpu.FreeWeight(w)
	gpuB16.FreeWeight(wb)
}

// weights returns the same weight on the CPU and the GPU backend.
func weights(t *testing.T, g, c finetune.Backend, data []float32, out, in int, quant bool) (finetune.Weight, finetune.Weight) {
	t.Helper()
	if quant {
		gw, err := g.NF4Weight(data, out, in, true)
		if err != nil {
			t.Fatal(err)
		}
		cw, err := c.NF4Weight(data, out, in, true)
		if err != nil {
			t.Fatal(err)
		}
		return gw, cw
	}
	gw, err := g.DenseWeight(data, out, in)
	if err != nil {
		t.Fatal(err)
	}
	cw, err := c.DenseWeight(data, out, in)
	if err != nil {
		t.Fatal(err)
	}
	return gw, cw
}

func TestEmbedding(t *testing.T) {
	V, C, T := 29, 37, 11
	table := randn(V*C, 4, 1)
	ids := []int32{0, 28, 5, 5, 17, 1, 2, 28, 0, 13, 9}
	for _, quant := range []bool{false, true} {
		for _, dc := range dtypeCases() {
			g, c := dc.g, dc.c
			gw, cw := weights(t, g, c, table, V, C, quant)
			id := bothInt(g, c, ids)
			out := both(g, c, nanSlice(T*C), T, C)
			g.EmbeddingForward(out.g, id.g, gw)
			c.EmbeddingForward(out.c, id.c, cw)
			compare(t, g, c, fmt.Sprintf("embedding nf4 %v %s", quant, dc.name), out, tolF32)
		}
	}
}

func TestRMSNorm(t *testing.T) {
	// 301: the scalar loops; 384 and 4104: 16-byte vectors, 4104 past the
	// 4 vectors a thread kept in registers.
	for _, k := range []struct {
		C   int
		fwd string
	}{{301, ""}, {384, ""}, {4104, ""}, {384, "_nc"}, {4104, "_nc"}} {
		C, T := k.C, 13
		gpu.rmsFwd = k.fwd
		x := both(gpu, cpu, randn(T*C, 5, 2), T, C)
		w := both(gpu, cpu, randn(C, 6, 1), C)
		out := both(gpu, cpu, nanSlice(T*C), T, C)
		rstd := both(gpu, cpu, nanSlice(T), T)
		gpu.RMSNormForward(out.g, rstd.g, x.g, w.g, 1e-5)
		cpu.RMSNormForward(out.c, rstd.c, x.c, w.c, 1e-5)
		compare(t, gpu, cpu, fmt.Sprintf("rmsnorm out%s C%d", k.fwd, C), out, tolF32)
		compare(t, gpu, cpu, fmt.Sprintf("rmsnorm rstd%s C%d", k.fwd, C), rstd, tolF32)
		dout := both(gpu, cpu, randn(T*C, 7, 1), T, C)
		var dx, dz pair
		for _, kernel := range []string{"rmsnorm_bwd", "rmsnorm_bwd_nc"} {
			gpu.rmsBwd = kernel
			dx = both(gpu, cpu, randn(T*C, 8, 1), T, C) // accumulates
			gpu.RMSNormBackward(dx.g, dout.g, x.g, w.g, rstd.g)
			cpu.RMSNormBackward(dx.c, dout.c, x.c, w.c, rstd.c)
			compare(t, gpu, cpu, fmt.Sprintf("%s dx C%d", kernel, C), dx, tolF32)
			// Into a pending Zero over NaN: the kernel must write, not add.
			dz = both(gpu, cpu, nanSlice(T*C), T, C)
			gpu.Zero(dz.g)
			cpu.Zero(dz.c)
			gpu.RMSNormBackward(dz.g, dout.g, x.g, w.g, rstd.g)
			cpu.RMSNormBackward(dz.c, dout.c, x.c, w.c, rstd.c)
			compare(t, gpu, cpu, fmt.Sprintf("%s dx into zero C%d", kernel, C), dz, tolF32)
			if kernel == "rmsnorm_bwd" {
				gpu.Free(dx.g)
				gpu.Free(dz.g)
			}
		}
		gpu.rmsBwd = rmsBwdKernel()

		// The fused residual add: Add then RMSNormForward, bit for bit.
		y := both(gpu, cpu, randn(T*C, 9, 1), T, C)
		sum := both(gpu, cpu, nanSlice(T*C), T, C)
		out2 := both(gpu, cpu, nanSlice(T*C), T, C)
		rstd2 := both(gpu, cpu, nanSlice(T), T)
		gpu.AddRMSNormForward(sum.g, out2.g, rstd2.g, x.g, y.g, w.g, 1e-5)
		cpu.Add(sum.c, x.c, y.c)
		cpu.RMSNormForward(out2.c, rstd2.c, sum.c, w.c, 1e-5)
		compare(t, gpu, cpu, fmt.Sprintf("add+rmsnorm sum%s C%d", k.fwd, C), sum, tolF32)
		compare(t, gpu, cpu, fmt.Sprintf("add+rmsnorm out%s C%d", k.fwd, C), out2, tolF32)
		compare(t, gpu, cpu, fmt.Sprintf("add+rmsnorm rstd%s C%d", k.fwd, C), rstd2, tolF32)
		gpu.Add(out.g, x.g, y.g)
		checkBits(t, "add+rmsnorm sum = Add", gpu.Download(sum.g), gpu.Download(out.g))
		gpu.RMSNormForward(out.g, rstd.g, sum.g, w.g, 1e-5)
		checkBits(t, "add+rmsnorm out = RMSNormForward", gpu.Download(out2.g), gpu.Download(out.g))
		checkBits(t, "add+rmsnorm rstd = RMSNormForward", gpu.Download(rstd2.g), gpu.Download(rstd.g))
		for _, p := range []pair{x, w, out, rstd, dout, dx, dz, y, sum, out2, rstd2} {
			gpu.Free(p.g)
		}
	}
	gpu.rmsFwd = rmsFwdSuffix()
}

func TestRoPE(t *testing.T) {
	H, K, D, T := 6, 2, 24, 19
	pos := []int32{0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 100, 2047, 4095, 7}
	for _, rot := range []int{24, 16} {
		x := randn(T*(H+2*K)*D, 9, 1)
		q := both(gpu, cpu, x, T, (H+2*K)*D)
		p := bothInt(gpu, cpu, pos)
		gpu.RoPEForward(q.g, p.g, H, K, D, rot, 10000)
		cpu.RoPEForward(q.c, p.c, H, K, D, rot, 10000)
		compare(t, gpu, cpu, fmt.Sprintf("rope fwd rot %d", rot), q, tolF32)
		gpu.RoPEBackward(q.g, p.g, H, K, D, rot, 10000)
		cpu.RoPEBackward(q.c, p.c, H, K, D, rot, 10000)
		compare(t, gpu, cpu, fmt.Sprintf("rope bwd rot %d", rot), q, tolF32)
		// Forward then backward is a rotation and its transpose: x again.
		checkRel(t, "rope round trip", gpu.Download(q.g), x, 1e-5)
	}
	// The table is cached per positions tensor: a re-upload of other
	// positions into the same tensor, or the same values in another one,
	// must be seen. rot 18: the scalar rope_apply (half 9).
	x := randn(T*(H+2*K)*D, 10, 1)
	p := bothInt(gpu, cpu, pos)
	for k, rot := range []int{24, 24, 18, 24} {
		if k == 1 {
			shifted := make([]int32, len(pos))
			for i, v := range pos {
				shifted[i] = v + 3
			}
			gpu.UploadInt32(p.g, shifted)
			cpu.UploadInt32(p.c, shifted)
		}
		if k == 3 {
			p = bothInt(gpu, cpu, pos)
		}
		q := both(gpu, cpu, x, T, (H+2*K)*D)
		gpu.RoPEForward(q.g, p.g, H, K, D, rot, 10000)
		cpu.RoPEForward(q.c, p.c, H, K, D, rot, 10000)
		compare(t, gpu, cpu, fmt.Sprintf("rope cache %d rot %d", k, rot), q, tolF32)
	}
}

// packedPos returns position ids for B rows of S tokens packing examples
// of the given lengths (cycled).
var packedPos = tinymodel.PackedPos

// attnModes are the attention kernels under float32 compute: v7's
// float32 tiled ones and the reference ones. (BF16 compute's tensor-core
// kernels: TestAttentionBF16.)
var attnModes = []string{"t64", "reference"}

// setAttnMode selects mode's kernels; the returned func restores the
// previous ones.
func setAttnMode(mode string) func() {
	fast := gpu.fastAttn
	gpu.fastAttn = mode != "reference"
	return func() { gpu.fastAttn = fast }
}

func TestAttention(t *testing.T) {
	for _, mode := range attnModes {
		restore := setAttnMode(mode)
		for _, c := range []struct{ B, S, H, K, D, window int }{
			{3, 37, 6, 2, 24, 0},
			{2, 29, 4, 4, 16, 5},
			{1, 300, 2, 1, 96, 0}, // more keys than a chunk of 256
			{4, 64, 8, 8, 96, 0},  // Phi-3-mini's head shape, a full 64-token row
			{3, 33, 4, 2, 96, 9},  // keys past 32: the second key a lane
			{2, 64, 4, 2, 128, 0}, // the tiled kernels' largest head: two column chunks
			{2, 1, 2, 1, 8, 0},
			{2, 64, 6, 2, 100, 17}, // grouped heads, a window, a head dimension not a multiple of 16
			{1, 50, 3, 1, 40, 0},
			{2, 40, 4, 2, 30, 3}, // a head dimension not a multiple of 4: 4-byte copies
			{2, 65, 2, 1, 32, 0}, // one token past the tiled kernels
		} {
			for _, layout := range []string{"packed", "wrapped", "mid-start"} {
				testAttention(t, mode, layout, c.B, c.S, c.H, c.K, c.D, c.window)
			}
		}
		restore()
	}
}

// attnPos returns position ids for B rows of S tokens: "packed" restarts
// at every example (bfd packing), "wrapped" counts 0..S-1 in every row
// (trl's wrapped packing: one causal row), "mid-start" starts each row in
// the middle of an example (positions 20+r.., then a restart).
func attnPos(layout string, B, S int) []int32 {
	switch layout {
	case "wrapped", "mid-start":
		pos := make([]int32, B*S)
		for r := range B {
			p := 0
			if layout == "mid-start" {
				p = 20 + r
			}
			for s := range S {
				if layout == "mid-start" && s == S/2 {
					p = 0
				}
				pos[r*S+s] = int32(p)
				p++
			}
		}
		return pos
	}
	return packedPos(B, S, []int{11, 5, 40, 3})
}

func testAttention(t *testing.T, mode, layout string, B, S, H, K, D, window int) {
	t.Helper()
	name := fmt.Sprintf("%s %s B%d S%d H%d K%d D%d w%d", mode, layout, B, S, H, K, D, window)
	T, width := B*S, (H+2*K)*D
	pos := bothInt(gpu, cpu, attnPos(layout, B, S))
	qkv := both(gpu, cpu, randn(T*width, 11, 1), T, width)
	out := both(gpu, cpu, nanSlice(T*H*D), T, H*D)
	lse := both(gpu, cpu, nanSlice(H*T), H, T)
	gpu.AttentionForward(out.g, lse.g, qkv.g, pos.g, B, S, H, K, D, window)
	cpu.AttentionForward(out.c, lse.c, qkv.c, pos.c, B, S, H, K, D, window)
	compare(t, gpu, cpu, name+" out", out, tolF32)
	compare(t, gpu, cpu, name+" lse", lse, tolF32)
	dout := both(gpu, cpu, randn(T*H*D, 12, 1), T, H*D)
	dqkv := both(gpu, cpu, randn(T*width, 13, 1), T, width)
	gpu.AttentionBackward(dqkv.g, dout.g, out.g, lse.g, qkv.g, pos.g, B, S, H, K, D, window)
	cpu.AttentionBackward(dqkv.c, dout.c, out.c, lse.c, qkv.c, pos.c, B, S, H, K, D, window)
	compare(t, gpu, cpu, name+" dqkv", dqkv, tolF32)
	// Into a pending Zero (the model's case): the tiled kernel overwrites.
	gpu.Zero(dqkv.g)
	cpu.Zero(dqkv.c)
	gpu.AttentionBackward(dqkv.g, dout.g, out.g, lse.g, qkv.g, pos.g, B, S, H, K, D, window)
	cpu.AttentionBackward(dqkv.c, dout.c, out.c, lse.c, qkv.c, pos.c, B, S, H, K, D, window)
	compare(t, gpu, cpu, name+" dqkv into a zero", dqkv, tolF32)
	for _, p := range []pair{pos, qkv, out, lse, dout, dqkv} {
		gpu.Free(p.g)
	}
}

// BenchmarkAttention times AttentionForward and AttentionBackward at the
// Phi-3-mini training shape (16 rows of 64 tokens, 32 heads of 96): BF16
// compute's tensor-core kernels (into a pending Zero, the model's case),
// with RoPE fused (tc-rope),
// v7's float32 tiled ones and the reference ones.
func BenchmarkAttention(b *testing.B) {
	B, S, H, K, D := 16, 64, 32, 32, 96
	T, width := B*S, (H+2*K)*D
	for _, mode := range []string{"tc", "tc-rope", "t64", "reference"} {
		var g finetune.Backend = gpu
		if strings.HasPrefix(mode, "tc") {
			g = gpuB16
		}
		rope := mode == "tc-rope"
		restore := setAttnMode(mode)
		up := func(data []float32, shape ...int) finetune.Tensor {
			x := g.Alloc(shape...)
			g.Upload(x, data)
			return x
		}
		pos := g.AllocInt32(T)
		g.UploadInt32(pos, packedPos(B, S, []int{64}))
		qkv := up(randn(T*width, 11, 1), T, width)
		out := up(nanSlice(T*H*D), T, H*D)
		lse := up(nanSlice(H*T), H, T)
		dout := up(randn(T*H*D, 12, 1), T, H*D)
		dqkv := up(randn(T*width, 13, 1), T, width)
		b.Run("fwd "+mode, func(b *testing.B) {
			for range b.N {
				if rope {
					gpuB16.AttentionForwardRoPE(out, lse, qkv, pos, B, S, H, K, D, 0, D, 10000)
				} else {
					g.AttentionForward(out, lse, qkv, pos, B, S, H, K, D, 0)
				}
			}
			if err := g.Sync(); err != nil {
				b.Fatal(err)
			}
		})
		b.Run("bwd "+mode, func(b *testing.B) {
			for range b.N {
				g.Zero(dqkv)
				if rope {
					gpuB16.AttentionBackwardRoPE(dqkv, dout, out, lse, qkv, pos, B, S, H, K, D, 0, D, 10000)
				} else {
					g.AttentionBackward(dqkv, dout, out, lse, qkv, pos, B, S, H, K, D, 0)
				}
			}
			if err := g.Sync(); err != nil {
				b.Fatal(err)
			}
		})
		restore()
		for _, x := range []finetune.Tensor{pos, qkv, out, lse, dout, dqkv} {
			g.Free(x)
		}
	}
}

func TestAttentionCached(t *testing.T) {
	H, K, D, maxSeq := 6, 3, 20, 40
	width := (H + 2*K) * D
	for _, window := range []int{0, 7} {
		kc := both(gpu, cpu, nanSlice(maxSeq*K*D), maxSeq, K*D)
		vc := both(gpu, cpu, nanSlice(maxSeq*K*D), maxSeq, K*D)
		start := 0
		for step, T := range []int{13, 1, 1, 5, 1} {
			qkv := both(gpu, cpu, randn(T*width, uint64(20+step), 1), T, width)
			out := both(gpu, cpu, nanSlice(T*H*D), T, H*D)
			gpu.AttentionCached(out.g, qkv.g, kc.g, vc.g, start, H, K, D, window)
			cpu.AttentionCached(out.c, qkv.c, kc.c, vc.c, start, H, K, D, window)
			compare(t, gpu, cpu, fmt.Sprintf("cached w%d step %d", window, step), out, tolF32)
			start += T
		}
	}
}

func TestSwiGLUAddScale(t *testing.T) {
	T, I := 9, 107
	gu := both(gpu, cpu, randn(T*2*I, 14, 3), T, 2*I)
	out := both(gpu, cpu, nanSlice(T*I), T, I)
	gpu.SwiGLUForward(out.g, gu.g)
	cpu.SwiGLUForward(out.c, gu.c)
	compare(t, gpu, cpu, "swiglu fwd", out, tolF32)
	dout := both(gpu, cpu, randn(T*I, 15, 1), T, I)
	dgu := both(gpu, cpu, randn(T*2*I, 16, 1), T, 2*I)
	gpu.SwiGLUBackward(dgu.g, dout.g, gu.g)
	cpu.SwiGLUBackward(dgu.c, dout.c, gu.c)
	compare(t, gpu, cpu, "swiglu bwd", dgu, tolF32)
	// 108: the 16-byte kernels; a pending Zero over NaN: written, not added.
	for _, I := range []int{107, 108} {
		gu := both(gpu, cpu, randn(T*2*I, 24, 6), T, 2*I)
		out := both(gpu, cpu, nanSlice(T*I), T, I)
		gpu.SwiGLUForward(out.g, gu.g)
		cpu.SwiGLUForward(out.c, gu.c)
		compare(t, gpu, cpu, fmt.Sprintf("swiglu fwd I%d", I), out, tolF32)
		dout := both(gpu, cpu, randn(T*I, 25, 1), T, I)
		dgu := both(gpu, cpu, randn(T*2*I, 26, 1), T, 2*I)
		gpu.SwiGLUBackward(dgu.g, dout.g, gu.g)
		cpu.SwiGLUBackward(dgu.c, dout.c, gu.c)
		compare(t, gpu, cpu, fmt.Sprintf("swiglu bwd I%d", I), dgu, tolF32)
		dz := both(gpu, cpu, nanSlice(T*2*I), T, 2*I)
		gpu.Zero(dz.g)
		cpu.Zero(dz.c)
		gpu.SwiGLUBackward(dz.g, dout.g, gu.g)
		cpu.SwiGLUBackward(dz.c, dout.c, gu.c)
		compare(t, gpu, cpu, fmt.Sprintf("swiglu bwd into zero I%d", I), dz, tolF32)
	}

	a := both(gpu, cpu, randn(1234, 17, 1), 1234)
	b := both(gpu, cpu, randn(1234, 18, 1), 1234)
	sum := both(gpu, cpu, nanSlice(1234), 1234)
	gpu.Add(sum.g, a.g, b.g)
	cpu.Add(sum.c, a.c, b.c)
	checkBits(t, "add", gpu.Download(sum.g), cpu.Download(sum.c))
	gpu.Add(a.g, a.g, b.g) // aliasing
	cpu.Add(a.c, a.c, b.c)
	checkBits(t, "add aliased", gpu.Download(a.g), cpu.Download(a.c))
	a4 := both(gpu, cpu, randn(1232, 27, 1), 1232) // add_f32_v4
	b4 := both(gpu, cpu, randn(1232, 28, 1), 1232)
	s4 := both(gpu, cpu, nanSlice(1232), 1232)
	gpu.Add(s4.g, a4.g, b4.g)
	cpu.Add(s4.c, a4.c, b4.c)
	checkBits(t, "add v4", gpu.Download(s4.g), cpu.Download(s4.c))
	gpu.Scale(a.g, 0.37)
	cpu.Scale(a.c, 0.37)
	checkBits(t, "scale", gpu.Download(a.g), cpu.Download(a.c))
	big := randn(300001, 19, 1)
	bg := both(gpu, cpu, big, len(big))
	gs, cs := gpu.SumSquares(bg.g), cpu.SumSquares(bg.c)
	if e := math.Abs(gs-cs) / cs; e > 1e-12 {
		t.Errorf("sum of squares %v, cpu %v (rel %.2g)", gs, cs, e)
	}
}

func TestLinear(t *testing.T) {
	for _, fast := range []bool{true, false} {
		gpu.fastLoRA, gpuB16.fastLoRA, gpuF16.fastLoRA = fast, fast, fast
		t.Run(fmt.Sprintf("fused %v", fast), func(t *testing.T) {
			// T spans several of the fused backward's token chunks and a
			// partial one; r = 12 takes the rank-16 kernels, r = 20 is above
			// the fused kernels' limit.
			// Under BF16 an NF4 weight with in % 8 == 0 folds the
			// up-projection into the base GEMM: [33, 64] with r = 8 (row
			// stride 72) and [37, 40] with r = 20 (60 columns, stride 64).
			// [4104, 4168] x 9 r 5: the row kernels (in, out % 8 == 0, r <=
			// 8) with a partial 32-column chunk, more chunks than warps, a
			// partial block of rows and a rank below 8.
			for _, sz := range []struct{ T, in, out, r int }{{21, 67, 45, 5}, {203, 300, 129, 8}, {45, 70, 61, 12}, {37, 40, 33, 20}, {33, 64, 72, 8},
				{9, 4168, 4104, 5}} {
				testLinear(t, sz.T, sz.in, sz.out, sz.r)
			}
		})
	}
	gpu.fastLoRA, gpuB16.fastLoRA, gpuF16.fastLoRA = true, true, true
	// The row kernels' other entry points (32 or 16 warps a block).
	t.Run(fmt.Sprintf("rows w32 %v", !loraRowsW32), func(t *testing.T) {
		defer func(v bool) { loraRowsW32 = v }(loraRowsW32)
		loraRowsW32 = !loraRowsW32
		for _, sz := range []struct{ T, in, out, r int }{{33, 64, 72, 8}, {9, 4168, 4104, 5}} {
			testLinear(t, sz.T, sz.in, sz.out, sz.r)
		}
	})
	// v6's prep pass + skinny GEMM (OLLAMA_TUNE_CUDA_REFERENCE=lora-rows).
	t.Run("no rows", func(t *testing.T) {
		defer func(v bool) { loraRowsOn = v }(loraRowsOn)
		loraRowsOn = false
		for _, sz := range []struct{ T, in, out, r int }{{33, 64, 72, 8}} {
			testLinear(t, sz.T, sz.in, sz.out, sz.r)
		}
	})
	// v4's unfolded path (OLLAMA_TUNE_CUDA_REFERENCE=lora-fold).
	t.Run("no fold", func(t *testing.T) {
		defer func(v bool) { loraFold = v }(loraFold)
		loraFold = false
		for _, sz := range []struct{ T, in, out, r int }{{37, 40, 33, 20}, {33, 64, 72, 8}} {
			testLinear(t, sz.T, sz.in, sz.out, sz.r)
		}
	})
}

func testLinear(t *testing.T, T, in, out, r int) {
	wdata := randn(out*in, 30, 0.2)
	for _, c := range []struct {
		quant, lora bool
		half        halfKind
		dropout     float32
		nilDx       bool
	}{
		{false, false, halfNone, 0, false},
		{true, false, halfNone, 0, false},
		{true, true, halfNone, 0, false},
		{true, true, halfNone, 0.1, false},
		{false, true, halfNone, 0.25, true},
		{true, true, halfBF16, 0.1, false},
		{false, true, halfBF16, 0, false},
		{true, true, halfBF16, 0.25, true}, // the tensor-core LoRA's backward without dx
		{true, true, halfF16, 0.1, false},
		{false, true, halfF16, 0, false},
		{true, false, halfF16, 0, true},
	} {
		dc := caseOf(c.half)
		name := fmt.Sprintf("[%d,%d]x%d r%d nf4 %v lora %v %s dropout %v nil dx %v", out, in, T, r, c.quant, c.lora, dc.name, c.dropout, c.nilDx)
		g, cb, tol := dc.g, dc.c, dc.tol
		gw, cw := weights(t, g, cb, wdata, out, in, c.quant)
		gl := &finetune.Linear{Name: "test", W: gw}
		cl := &finetune.Linear{Name: "test", W: cw}
		var hs pair
		if c.lora {
			A := both(g, cb, randn(r*in, 31, 0.3), r, in)
			B := both(g, cb, randn(out*r, 32, 0.3), out, r)
			gA := both(g, cb, randn(r*in, 33, 1), r, in)
			gB := both(g, cb, randn(out*r, 34, 1), out, r)
			gl.LoRA = &finetune.LoRA{A: A.g, B: B.g, GradA: gA.g, GradB: gB.g, Scale: 2, Dropout: c.dropout}
			cl.LoRA = &finetune.LoRA{A: A.c, B: B.c, GradA: gA.c, GradB: gB.c, Scale: 2, Dropout: c.dropout}
			hs = both(g, cb, nanSlice(T*r), T, r)
		}
		x := both(g, cb, randn(T*in, 35, 1), T, in)
		y := both(g, cb, nanSlice(T*out), T, out)
		const seed = 0xfeed
		g.LinearForward(y.g, x.g, gl, hs.g, seed)
		cb.LinearForward(y.c, x.c, cl, hs.c, seed)
		compare(t, g, cb, name+" out", y, tol)
		if c.lora {
			compare(t, g, cb, name+" h", hs, tol)
		}
		dout := both(g, cb, randn(T*out, 36, 1), T, out)
		dx := both(g, cb, randn(T*in, 37, 1), T, in)
		if c.nilDx {
			g.LinearBackward(nil, dout.g, x.g, gl, hs.g, seed)
			cb.LinearBackward(nil, dout.c, x.c, cl, hs.c, seed)
		} else {
			g.LinearBackward(dx.g, dout.g, x.g, gl, hs.g, seed)
			cb.LinearBackward(dx.c, dout.c, x.c, cl, hs.c, seed)
			compare(t, g, cb, name+" dx", dx, tol)
		}
		if c.lora {
			checkRel(t, name+" gradA", g.Download(gl.LoRA.GradA), cb.Download(cl.LoRA.GradA), tol)
			checkRel(t, name+" gradB", g.Download(gl.LoRA.GradB), cb.Download(cl.LoRA.GradB), tol)
		}
	}
}

func TestLogitsAndCrossEntropy(t *testing.T) {
	// V 1031: ce_rows' scalar loops; 1032: its 16-byte loads.
	for _, V := range []int{1031, 1032} {
		testLogitsAndCrossEntropy(t, V)
	}
}

func testLogitsAndCrossEntropy(t *testing.T, V int) {
	T, C := 23, 40
	head := randn(V*C, 40, 0.3)
	x := randn(T*C, 41, 1)
	targets := make([]int32, T)
	for k := range targets {
		targets[k] = int32((k * 977) % V)
		if k%4 == 1 {
			targets[k] = finetune.IgnoreIndex
		}
	}
	for _, dc := range dtypeCases() {
		g, cb, tol := dc.g, dc.c, dc.tol
		name := fmt.Sprintf("%s V%d", dc.name, V)
		bf := dc.g != gpu // a 16-bit compute type
		gw, cw := weights(t, g, cb, head, V, C, false)
		xs := both(g, cb, x, T, C)
		lg := both(g, cb, nanSlice(T*V), T, V)
		g.Logits(lg.g, xs.g, gw)
		cb.Logits(lg.c, xs.c, cw)
		compare(t, g, cb, "logits "+name, lg, tol)

		// Make some targets the argmax so "correct" counts something.
		cl := cb.Download(lg.c)
		tg := append([]int32(nil), targets...)
		for k := 0; k < T; k += 3 {
			best := 0
			for v := range V {
				if cl[k*V+v] > cl[k*V+best] {
					best = v
				}
			}
			tg[k] = int32(best)
		}
		tgt := bothInt(g, cb, tg)
		dx := both(g, cb, randn(T*C, 42, 1), T, C)
		gl, gc := g.CrossEntropy(dx.g, xs.g, gw, tgt.g, 0.125)
		cl2, cc := cb.CrossEntropy(dx.c, xs.c, cw, tgt.c, 0.125)
		if e := math.Abs(gl-cl2) / math.Abs(cl2); !(e <= tol) {
			t.Errorf("%s: loss sum %v, cpu %v (rel %.2g)", name, gl, cl2, e)
		}
		if !bf && gc != cc {
			t.Errorf("correct %d, cpu %d", gc, cc)
		}
		compare(t, g, cb, "cross-entropy dx "+name, dx, tol)
		nl, nc := g.CrossEntropy(nil, xs.g, gw, tgt.g, 0)
		if nl != gl || nc != gc {
			t.Errorf("without dx: loss %v correct %d, with dx %v %d", nl, nc, gl, gc)
		}
		// Targets written on the device (no host copy): read back.
		tg2 := g.AllocInt32(T)
		g.Copy(tg2, tgt.g)
		if tg2.(*Tensor).host != nil {
			t.Error("Copy kept a host copy of the targets")
		}
		if nl, nc := g.CrossEntropy(nil, xs.g, gw, tg2, 0); nl != gl || nc != gc {
			t.Errorf("device targets: loss %v correct %d, uploaded %v %d", nl, nc, gl, gc)
		}
		g.Free(tg2)
		all := bothInt(g, cb, []int32{-100, -100})
		two := both(g, cb, randn(2*C, 43, 1), 2, C)
		if l, n := g.CrossEntropy(nil, two.g, gw, all.g, 1); l != 0 || n != 0 {
			t.Errorf("all ignored: loss %v correct %d", l, n)
		}
	}
}

func TestAdamW(t *testing.T) {
	n := 10007
	p := both(gpu, cpu, randn(n, 50, 1), n)
	m := both(gpu, cpu, make([]float32, n), n)
	v := both(gpu, cpu, make([]float32, n), n)
	for step := 1; step <= 4; step++ {
		g := both(gpu, cpu, randn(n, uint64(60+step), 0.1), n)
		for _, hp := range []finetune.AdamParams{
			{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, Step: step},
			{LR: 2e-4, Beta1: 0.3, Beta2: 0.95, Eps: 1e-6, WeightDecay: 0, Step: step}, // lerp from g
		} {
			gpu.AdamW(p.g, g.g, m.g, v.g, hp)
			cpu.AdamW(p.c, g.c, m.c, v.c, hp)
		}
	}
	checkBits(t, "adamw p", gpu.Download(p.g), cpu.Download(p.c))
	checkBits(t, "adamw m", gpu.Download(m.g), cpu.Download(m.c))
	checkBits(t, "adamw v", gpu.Download(v.g), cpu.Download(v.c))
}

// TestBnbAdamW32: bitsandbytes' 32-bit Adam, which the 8-bit optimizers
// use for parameters under 4096 values, bit for bit the CPU's, with and
// without weight decay.
func TestBnbAdamW32(t *testing.T) {
	n := 4095
	p := both(gpu, cpu, randn(n, 51, 1), n)
	m := both(gpu, cpu, make([]float32, n), n)
	v := both(gpu, cpu, make([]float32, n), n)
	for step := 1; step <= 4; step++ {
		g := both(gpu, cpu, randn(n, uint64(90+step), 0.1), n)
		for _, hp := range []finetune.AdamParams{
			{LR: 3e-4, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, Step: step},
			{LR: 2e-3, Beta1: 0.8, Beta2: 0.95, Eps: 1e-6, WeightDecay: 0, Step: step},
		} {
			gpu.BnbAdamW32(p.g, g.g, m.g, v.g, hp)
			cpu.BnbAdamW32(p.c, g.c, m.c, v.c, hp)
		}
	}
	checkBits(t, "bnb adam32 p", gpu.Download(p.g), cpu.Download(p.c))
	checkBits(t, "bnb adam32 m", gpu.Download(m.g), cpu.Download(m.c))
	checkBits(t, "bnb adam32 v", gpu.Download(v.g), cpu.Download(v.c))
	if relErr(cpu.Download(p.c), randn(n, 51, 1)) == 0 {
		t.Error("the parameters did not move")
	}
}

func TestAdamW8bit(t *testing.T) {
	n := 3*256 + 77 // a partial last block
	nb := optim.Blocks8bit(n)
	p := both(gpu, cpu, randn(n, 70, 1), n)
	mk := func() (*finetune.Adam8State, *finetune.Adam8State) {
		gs := &finetune.Adam8State{M: gpu.AllocBytes(n), V: gpu.AllocBytes(n), AbsmaxM: gpu.Alloc(nb), AbsmaxV: gpu.Alloc(nb)}
		cs := &finetune.Adam8State{M: cpu.AllocBytes(n), V: cpu.AllocBytes(n), AbsmaxM: cpu.Alloc(nb), AbsmaxV: cpu.Alloc(nb)}
		return gs, cs
	}
	gs, cs := mk()
	for step := 1; step <= 5; step++ {
		gr := randn(n, uint64(80+step), 0.1)
		if step == 3 {
			gr[5] = float32(math.Inf(1)) // a non-finite gradient resets that value's moments
			gr[300] = float32(math.NaN())
		}
		g := both(gpu, cpu, gr, n)
		hp := finetune.AdamParams{LR: 1e-3, Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: 0.01, Step: step}
		gpu.AdamW8bit(p.g, g.g, gs, hp)
		cpu.AdamW8bit(p.c, g.c, cs, hp)
	}
	checkBits(t, "adamw8bit p", gpu.Download(p.g), cpu.Download(p.c))
	checkBits(t, "adamw8bit m codes", gpu.Download(gs.M), cpu.Download(cs.M))
	checkBits(t, "adamw8bit v codes", gpu.Download(gs.V), cpu.Download(cs.V))
	checkBits(t, "adamw8bit absmax m", gpu.Download(gs.AbsmaxM), cpu.Download(cs.AbsmaxM))
	checkBits(t, "adamw8bit absmax v", gpu.Download(gs.AbsmaxV), cpu.Download(cs.AbsmaxV))
}

func TestDropoutMaskMatchesRNG(t *testing.T) {
	// The kernel's mask is finetune.DropoutKeep: with x = 1 the output is
	// keepScale exactly where the CPU keeps the element.
	n := 4099
	x := make([]float32, n)
	for k := range x {
		x[k] = 1
	}
	xs := gpu.Alloc(n)
	gpu.Upload(xs, x)
	const p, seed = 0.3, 12345
	var got []float32
	func() {
		defer gpu.enter("test")()
		xd := gpu.dropout("test", xs.(*Tensor).ptr, int64(n), p, seed)
		got = make([]float32, n)
		gpu.download("test", unsafe.Pointer(&got[0]), xd, 4*int64(n))
	}()
	want := make([]float32, n)
	for k := range want {
		if finetune.DropoutKeep(seed, uint64(k), p) {
			want[k] = keepScale(p)
		}
	}
	checkBits(t, "dropout mask", got, want)
}

// The fused LoRA kernels test dropout as field >= dropThreshold(p) (the
// 16-bit field of index i in the hash of its group i/4), which must keep
// exactly what finetune.DropoutKeep keeps.
func TestDropThresholdMatchesRNG(t *testing.T) {
	for _, p := range []float32{0, 0.05, 0.1, 0.25, 0.5, 1e-7, 0.3333333, 0.999999, 1} {
		thr := dropThreshold(p)
		for i := uint64(0); i < 200000; i++ {
			const seed = 987654321
			field := finetune.Mix64(seed+(i/4)*0x9E3779B97F4A7C15) >> (16 * (i % 4)) & 0xFFFF
			got := field >= thr
			if want := finetune.DropoutKeep(seed, i, p); got != want {
				t.Fatalf("p %v index %d: threshold test keeps %v, DropoutKeep %v", p, i, got, want)
			}
		}
	}
}

// lora_dx_v4 (four columns, one dropout group, a thread; _r8 for rank 8,
// _r8l its lean form) and lora_dx4 (one column a thread, the fallback) all write dx + scale * (g . A) * mask *
// keep_scale with the mask of finetune.DropoutKeep and the sums in j order,
// bit for bit the host's float32 arithmetic below.
func TestDropoutLoRADx(t *testing.T) {
	for _, c := range []struct {
		T, K, r, tt int
		p           float32
	}{{37, 68, 8, 8, 0.3}, {37, 68, 5, 4, 0.3}, {9, 1028, 8, 8, 0.05}, {21, 64, 3, 12, 0}, {13, 516, 8, 16, 0.5}, {40, 132, 8, loraDxTT, 0.05}} {
		n := c.T * c.K
		dx0, g, a := randn(n, 51, 1), randn(c.T*c.r, 52, 1), randn(c.r*c.K, 53, 1)
		const scale, seed = float32(1.7), uint64(4242)
		ks := keepScale(c.p)
		want := make([]float32, n)
		for tk := 0; tk < c.T; tk++ {
			for k := 0; k < c.K; k++ {
				i := tk*c.K + k
				want[i] = dx0[i]
				if c.p > 0 && !finetune.DropoutKeep(seed, uint64(i), c.p) {
					continue
				}
				var sum float32
				for j := 0; j < c.r; j++ {
					sum = float32(sum + float32(g[tk*c.r+j]*a[j*c.K+k]))
				}
				v := float32(scale * sum)
				if c.p > 0 {
					v = float32(v * ks)
				}
				want[i] = float32(dx0[i] + v)
			}
		}
		kernels := []string{"lora_dx4", "lora_dx_v4"}
		if c.r == 8 {
			kernels = append(kernels, "lora_dx_v4_r8", "lora_dx_v4_r8l") // v11, v19
		}
		for _, kernel := range kernels {
			dxs, gs, as := gpu.Alloc(n), gpu.Alloc(len(g)), gpu.Alloc(len(a))
			gpu.Upload(dxs, dx0)
			gpu.Upload(gs, g)
			gpu.Upload(as, a)
			func() {
				defer gpu.enter("test")()
				grid := [3]int{(c.K + 255) / 256, min((c.T+3)/4, 64), 1}
				threads := 256
				args := []uint64{ptrArg(dxs.(*Tensor).ptr), ptrArg(gs.(*Tensor).ptr), ptrArg(as.(*Tensor).ptr), intArg(c.T),
					intArg(c.K), intArg(c.r), f32Arg(scale), seed, f32Arg(c.p), dropThreshold(c.p), f32Arg(ks)}
				if kernel != "lora_dx4" {
					tt := c.tt
					grid, threads = [3]int{(c.K/4 + 127) / 128, (c.T + tt - 1) / tt, 1}, 128
					args = append(args, intArg(tt))
				}
				gpu.launch("test", kernel, grid, threads, 0, args...)
			}()
			checkBits(t, fmt.Sprintf("%s T%d K%d r%d p%v", kernel, c.T, c.K, c.r, c.p), gpu.Download(dxs), want)
			gpu.Free(dxs)
			gpu.Free(gs)
			gpu.Free(as)
		}
	}
}

// lora_prep_bf16 and _ld (the BF16 LoRA's one pass over x): bf16(x) at a
// row stride, bf16(dropout(x)) exactly as finetune's DropoutKeep, and the
// side jobs, bit for bit; the padding of xh and the columns a job skips
// stay as they were.
func TestDropoutLoRAPrep(t *testing.T) {
	const p, seed = 0.3, 777
	ks := keepScale(p)
	// 64 / 64, 40 / 48 and 24 / 24: eight values a thread (lora_prep_bf16_w8, _ld_w8).
	for _, c := range []struct{ rows, cols, ldx int }{{7, 36, 44}, {9, 37, 37}, {5, 64, 64}, {3, 12, 16}, {6, 40, 48}, {11, 24, 24}} {
		n := c.rows * c.cols
		x := randn(n, 95, 1)
		a := randn(3*5, 96, 1)
		nx, nd, nj := c.rows*c.ldx, n, 3*6+1
		xs, as := gpu.Alloc(n), gpu.Alloc(len(a))
		gpu.Upload(xs, x)
		gpu.Upload(as, a)
		// one buffer: xh, xdh, the job's destination (each 256-aligned)
		off := []int64{0, align256(2 * int64(nx)), 0}
		off[2] = off[1] + align256(2*int64(nd))
		total := off[2] + align256(2*int64(nj))
		var xh, xdh, job []uint16
		func() {
			defer gpu.enter("test")()
			buf, err := gpu.rawAlloc(total, "test")
			if err != nil {
				t.Fatal(err)
			}
			defer gpu.rawFree(buf, total)
			check("test", cu.MemsetD8Async(buf, 0xAB, total, gpu.stream))
			ptr := func(k int) cu.DevicePtr { return buf + cu.DevicePtr(off[k]) }
			gpu.loraPrep("test", ptr(0), ptr(1), xs.(*Tensor).ptr, int64(n), c.cols, c.ldx, p, seed,
				prepJob{dst: ptr(2) + 2, src: as.(*Tensor).ptr, rows: 3, cols: 5, ld: 6, scale: 2})
			xh, xdh, job = make([]uint16, nx), make([]uint16, nd), make([]uint16, nj)
			gpu.download("test", unsafe.Pointer(&xh[0]), ptr(0), 2*int64(nx))
			gpu.download("test", unsafe.Pointer(&xdh[0]), ptr(1), 2*int64(nd))
			gpu.download("test", unsafe.Pointer(&job[0]), ptr(2), 2*int64(nj))
		}()
		gpu.Free(xs)
		gpu.Free(as)
		name := fmt.Sprintf("%d x %d stride %d", c.rows, c.cols, c.ldx)
		for r := 0; r < c.rows; r++ {
			for j := 0; j < c.ldx; j++ {
				want := uint16(0xABAB)
				if j < c.cols {
					want = safetensors.F32ToBF16(x[r*c.cols+j])
				}
				if got := xh[r*c.ldx+j]; got != want {
					t.Fatalf("%s: xh[%d,%d] = %#x, want %#x", name, r, j, got, want)
				}
			}
		}
		for i := range n {
			var v float32
			if finetune.DropoutKeep(seed, uint64(i), p) {
				v = x[i] * ks
			}
			if got, want := xdh[i], safetensors.F32ToBF16(v); got != want {
				t.Fatalf("%s: xdh[%d] = %#x, want %#x", name, i, got, want)
			}
		}
		for k := range nj {
			want := uint16(0xABAB)
			if e := k - 1; e >= 0 && e/6 < 3 && e%6 < 5 {
				want = safetensors.F32ToBF16(2 * a[(e/6)*5+e%6])
			}
			if job[k] != want {
				t.Fatalf("%s: job output %d = %#x, want %#x", name, k, job[k], want)
			}
		}
	}
}

// nf4_dequant_ld_bf16, nf4_dequant_ld_bf16_w and its streaming twin _wcs
// (the folded LoRA's dequantization, rows ld apart; the last two with each
// grid deqLDKernel makes) write what nf4_dequant_bf16 writes, bit for bit,
// with and without double quantization.
func TestNF4DequantStrided(t *testing.T) {
	defer func(v bool, m int, s bool) { deqWarpItems, deqLDMaxBlocks, deqStream = v, m, s }(deqWarpItems, deqLDMaxBlocks, deqStream)
	type strided struct {
		out, in, ld, maxBlocks int
		warpItems, dq          bool
	}
	cases := []strided{
		// 129 groups a row: two blocks of 128 threads (one nearly idle), or
		// two warp items (one of a single group); 64-blocks straddle rows.
		{37, 1032, 1088, 0, false, false}, {37, 1032, 1088, 0, false, true},
		// One item a warp (the default) and persistent warps.
		{37, 1032, 1088, -1, true, false}, {37, 1032, 1088, -1, true, true},
		{37, 1032, 1088, 0, true, false}, {37, 1032, 1088, 0, true, true},
		// Warps striding over many items (grid capped at 2 or 3 blocks).
		{37, 1032, 1088, 3, true, true}, {200, 3072, 3136, 3, true, true},
		{96, 520, 576, 2, true, false}, {33, 8192, 8256, 2, true, true},
	}
	for i := range 2 * len(cases) { // the warp-item cases twice: with the streaming stores (_wcs) too
		c, stream := cases[i%len(cases)], i >= len(cases)
		if stream && !c.warpItems {
			continue
		}
		deqWarpItems, deqLDMaxBlocks, deqStream = c.warpItems, c.maxBlocks, stream
		out, in, ld, dq := c.out, c.in, c.ld, c.dq
		w, err := gpuB16.NF4Weight(randn(out*in, 97, 0.2), out, in, dq)
		if err != nil {
			t.Fatal(err)
		}
		var plain, strided []uint16
		func() {
			defer gpuB16.enter("test")()
			cw := w.(*weight)
			p, _ := gpuB16.matrix(cw, "test")
			plain = make([]uint16, out*in)
			gpuB16.download("test", unsafe.Pointer(&plain[0]), p, 2*int64(out*in))
			ps, _, got := gpuB16.matrixLD(cw, "test", ld)
			if got != ld {
				t.Fatalf("matrixLD used stride %d, want %d", got, ld)
			}
			strided = make([]uint16, out*ld)
			gpuB16.download("test", unsafe.Pointer(&strided[0]), ps, 2*int64(out*ld))
		}()
		gpuB16.FreeWeight(w)
		for r := 0; r < out; r++ {
			for j := 0; j < in; j++ {
				if plain[r*in+j] != strided[r*ld+j] {
					t.Fatalf("%+v (streaming stores %v): [%d,%d] = %#x strided, %#x plain", c, stream, r, j, strided[r*ld+j], plain[r*in+j])
				}
			}
		}
	}
}

// TestNF4DequantLDSpeed times the strided bfloat16 dequantization of
// Phi-3-mini's four NF4 weight shapes (double quantization, the folded
// LoRA's row stride) for each kernel variant. OLLAMA_TUNE_DEQ_BENCH=1 runs it.
func TestNF4DequantLDSpeed(t *testing.T) {
	if os.Getenv("OLLAMA_TUNE_DEQ_BENCH") == "" {
		t.Skip("set OLLAMA_TUNE_DEQ_BENCH=1")
	}
	defer func(v bool, m, d int) { deqWarpItems, deqLDMaxBlocks, gpuB16.dequantMax = v, m, d }(
		deqWarpItems, deqLDMaxBlocks, gpuB16.dequantMax)
	gpuB16.dequantMax = 0 // every call dequantizes
	type variant struct {
		name      string
		warp      bool
		maxBlocks int
	}
	variants := []variant{{"ld (one group a thread)", false, 0}, {"w persistent", true, 0}, {"w one item a warp", true, -1}}
	const reps = 20
	totals := make([]float64, len(variants))
	for _, sh := range [][2]int{{9216, 3072}, {3072, 3072}, {16384, 3072}, {3072, 8192}} {
		out, in := sh[0], sh[1]
		ld := (in + 8 + 63) &^ 63
		tile := randn(in*64, 5, 0.02)
		vals := make([]float32, out*in)
		for k := 0; k < len(vals); k += len(tile) {
			copy(vals[k:], tile)
		}
		w, err := gpuB16.NF4Weight(vals, out, in, true)
		if err != nil {
			t.Fatal(err)
		}
		bytes := float64(out)*float64(in)*2 + float64(out)*float64(in)/2 + float64(out)*float64(in)/64
		for vi, v := range variants {
			deqWarpItems, deqLDMaxBlocks = v.warp, v.maxBlocks
			run := func(n int) {
				defer gpuB16.enter("test")()
				for i := 0; i < n; i++ {
					gpuB16.matrixLD(w.(*weight), "test", ld)
				}
			}
			p := profileCalls(t, gpuB16, run, reps)
			us := 1000 * p.BusyMs / reps
			totals[vi] += 2 * us
			t.Logf("[%5d,%5d] %-24s %7.2f us/call (events), wall %7.2f us/call, %.2f TB/s", out, in, v.name, us, 1000*p.WallMs/reps, bytes/us/1e6)
		}
		// The floor: a memset of the output's bytes (padding included).
		var ptr cu.DevicePtr
		func() {
			defer gpuB16.enter("test")()
			ptr, _, _ = gpuB16.matrixLD(w.(*weight), "test", ld)
		}()
		gpuB16.StartProfile()
		func() {
			defer gpuB16.enter("test")()
			wb := int64(out) * int64(ld) * 2
			for i := 0; i < reps; i++ {
				gpuB16.span("memset", func() { check("test", cu.MemsetD32Async(ptr, 0, wb/4, gpuB16.stream)) })
			}
		}()
		if p, err := gpuB16.StopProfile(); err == nil {
			us := 1000 * p.BusyMs / reps
			t.Logf("[%5d,%5d] %-24s %7.2f us/call (events), %.2f TB/s written", out, in, "memset of the output", us, float64(out)*float64(ld)*2/us/1e6)
		}
		gpuB16.FreeWeight(w)
	}
	for vi, v := range variants {
		t.Logf("%-24s two passes of the four shapes: %7.1f us (x 31 layers %.2f ms)", v.name, totals[vi], totals[vi]*31/1000)
	}
}
