//go:build cuda

package cuda

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"strings"
	"testing"
	"unsafe"

	"gorgonia.org/cu"
)

// BenchmarkPTXLoad times loading each embedded PTX module (the driver's JIT
// compilation for the card: run with CUDA_CACHE_DISABLE=1 to time the
// compilation a machine's first run pays, without it the cache's load).
func BenchmarkPTXLoad(b *testing.B) {
	entries, err := ptxFiles.ReadDir("kernels")
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range entries {
		src, err := ptxFiles.ReadFile(path.Join("kernels", e.Name()))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(e.Name(), func(b *testing.B) { benchModuleLoad(b, src) })
	}
}

// benchModuleLoad times loading and unloading the module image.
func benchModuleLoad(b *testing.B, image []byte) {
	defer gpu.enter("benchModuleLoad")() // this goroutine's thread
	for range b.N {
		mod, err := cu.LoadData(string(image))
		if err != nil {
			b.Fatal(err)
		}
		if err := mod.Unload(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSASSLoad times loading each module's cubin for this GPU where
// the build embedded one (kernels/sass): no JIT compilation.
func BenchmarkSASSLoad(b *testing.B) {
	entries, err := ptxFiles.ReadDir("kernels")
	if err != nil {
		b.Fatal(err)
	}
	info := gpu.Info()
	for _, e := range entries {
		src, err := ptxFiles.ReadFile(path.Join("kernels", e.Name()))
		if err != nil {
			b.Fatal(err)
		}
		cubin, _ := sassFor(strings.TrimSuffix(e.Name(), ".ptx"), string(src), info.ComputeMajor, info.Minor)
		if cubin == nil {
			continue
		}
		b.Run(e.Name(), func(b *testing.B) { benchModuleLoad(b, cubin) })
	}
}

// pickSASS takes the cubin of this PTX's hash, of the GPU's major version
// and the highest minor not above the GPU's; another hash (stale), module
// or major never.
func TestPickSASS(t *testing.T) {
	sum := sha256.Sum256([]byte("ptx"))
	h := hex.EncodeToString(sum[:])[:16]
	names := []string{"README.md", "lora.sm_80." + h + ".cubin", "lora.sm_86." + h + ".cubin", "lora.sm_90.0123456789abcdef.cubin",
		"lora2.sm_90." + h + ".cubin", "lora.sm_90." + h + ".cubin.tmp", "lora.sm_x." + h + ".cubin"}
	for _, c := range []struct {
		major, minor int
		want         string
	}{{8, 0, "lora.sm_80." + h + ".cubin"}, {8, 6, "lora.sm_86." + h + ".cubin"}, {8, 9, "lora.sm_86." + h + ".cubin"},
		{9, 0, ""}, {7, 5, ""}, {10, 0, ""}} {
		if got, _ := pickSASS(names, "lora", "ptx", c.major, c.minor); got != c.want {
			t.Errorf("sm_%d%d: %q, want %q", c.major, c.minor, got, c.want)
		}
	}
}

// Where the build embedded cubins for this GPU, every module is loaded
// from one (KernelCode), and a kernel of a cubin computes the bits of the
// same kernel JIT-compiled from its PTX (swiglu_fwd_v4: expf, division).
func TestSASSMatchesJIT(t *testing.T) {
	info := gpu.Info()
	src, err := ptxFiles.ReadFile("kernels/elementwise.ptx")
	if err != nil {
		t.Fatal(err)
	}
	cubin, arch := sassFor("elementwise", string(src), info.ComputeMajor, info.Minor)
	if cubin == nil {
		t.Skipf("no cubin for sm_%d%d embedded (scripts/cuda-sass.sh was not run before the build); kernels: %s", info.ComputeMajor, info.Minor, gpu.KernelCode())
	}
	if want := fmt.Sprintf("sm_%d machine code", arch); gpu.KernelCode() != want || gpu.jitModules != 0 {
		t.Errorf("kernels: %s, want %s", gpu.KernelCode(), want)
	}
	const T, I = 37, 1028
	gu := randn(T*2*I, 81, 3)
	run := func(image string) []float32 {
		defer gpu.enter("test")()
		mod, err := cu.LoadData(image)
		if err != nil {
			t.Fatal(err)
		}
		defer mod.Unload()
		fn, err := mod.Function("swiglu_fwd_v4")
		if err != nil {
			t.Fatal(err)
		}
		in, out := gpu.alloc(kindF32, []int{T, 2 * I}, "test"), gpu.alloc(kindF32, []int{T, I}, "test")
		defer gpu.rawFree(in.ptr, in.bytes())
		defer gpu.rawFree(out.ptr, out.bytes())
		gpu.upload("test", in.ptr, unsafe.Pointer(&gu[0]), in.bytes())
		args := []uint64{ptrArg(out.ptr), ptrArg(in.ptr), intArg(T), intArg(I)}
		params := make([]unsafe.Pointer, len(args))
		for k := range args {
			params[k] = unsafe.Pointer(&args[k])
		}
		check("test", fn.Launch((I/4+255)/256, T, 1, 256, 1, 1, 0, gpu.stream, params))
		res := make([]float32, T*I)
		gpu.download("test", unsafe.Pointer(&res[0]), out.ptr, out.bytes())
		return res
	}
	checkBits(t, "swiglu_fwd_v4, cubin against JIT", run(string(cubin)), run(string(src)))
}
