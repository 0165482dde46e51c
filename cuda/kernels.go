//go:build cuda

package cuda

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"path"
	"strconv"
	"strings"
	"unsafe"

	"gorgonia.org/cu"
)

// The kernels' PTX, compiled from kernels/*.cu by `make ptx` (nvcc
// -arch=compute_80 -fmad=false) and committed, so building the plugin needs
// no CUDA compiler; the driver JIT-compiles it for the GPU at hand.
//
//go:embed kernels/*.ptx
var ptxFiles embed.FS

// The same modules as machine code, where the build made it
// (scripts/cuda-sass.sh, kernels/sass/README.md): loading a cubin of the
// GPU's architecture spares the driver's JIT compilation (~20 s on a
// machine's first run, cached after). -fmad=false's PTX has no contractible
// multiply-add left, so ptxas's code computes the same bits as the JIT's.
//
//go:embed kernels/sass
var sassFiles embed.FS

// jitOnly loads the PTX even where a cubin fits (OLLAMA_TUNE_CUDA_JIT=1,
// the A/B).
var jitOnly = os.Getenv("OLLAMA_TUNE_CUDA_JIT") == "1"

// sassFor returns the embedded cubin of the PTX src for a GPU of compute
// capability major.minor (pickSASS) and its architecture, or nil.
func sassFor(module, src string, major, minor int) (cubin []byte, arch int) {
	if jitOnly {
		return nil, 0
	}
	entries, _ := sassFiles.ReadDir("kernels/sass")
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	name, arch := pickSASS(names, module, src, major, minor)
	if name == "" {
		return nil, 0
	}
	b, err := sassFiles.ReadFile(path.Join("kernels/sass", name))
	if err != nil || len(b) == 0 {
		return nil, 0
	}
	return b, arch
}

// pickSASS picks, of the cubin file names, the one for module built from
// this very PTX (src's sha256 in the name: <module>.sm_<arch>.<16 hex
// digits>.cubin) whose architecture is the highest of the GPU's major
// version not above its minor ("" for none).
func pickSASS(names []string, module, src string, major, minor int) (name string, arch int) {
	sum := sha256.Sum256([]byte(src))
	suffix := "." + hex.EncodeToString(sum[:])[:16] + ".cubin"
	for _, n := range names {
		rest, ok := strings.CutPrefix(n, module+".sm_")
		if !ok {
			continue
		}
		archStr, ok := strings.CutSuffix(rest, suffix)
		a, err := strconv.Atoi(archStr)
		if !ok || err != nil || a/10 != major || a%10 > minor || a <= arch {
			continue
		}
		name, arch = n, a
	}
	return name, arch
}

// loadKernels loads every embedded module and indexes its kernels by name:
// the cubin for this GPU where the build made one (sassFor), else the PTX.
func (b *Backend) loadKernels() error {
	entries, err := ptxFiles.ReadDir("kernels")
	if err != nil {
		return err
	}
	for _, e := range entries {
		name := path.Join("kernels", e.Name())
		src, err := ptxFiles.ReadFile(name)
		if err != nil {
			return err
		}
		var mod cu.Module
		loaded := false
		if cubin, arch := sassFor(strings.TrimSuffix(e.Name(), ".ptx"), string(src), b.info.ComputeMajor, b.info.Minor); cubin != nil {
			// A cubin the driver refuses (it should not) leaves the PTX.
			if mod, err = cu.LoadData(string(cubin)); err == nil {
				loaded = true
				b.sassArch = arch
			}
		}
		if !loaded {
			if mod, err = cu.LoadData(string(src)); err != nil {
				return fmt.Errorf("load %s: %w (a driver too old for PTX ISA 7.8 fails here; update the NVIDIA driver)", name, err)
			}
			b.jitModules++
		}
		b.mods = append(b.mods, mod)
		for _, fn := range ptxEntries(string(src)) {
			f, err := mod.Function(fn)
			if err != nil {
				return fmt.Errorf("%s: kernel %s: %w", name, fn, err)
			}
			b.fns[fn] = f
		}
	}
	return nil
}

// ptxEntries lists the kernels (.entry) a PTX module defines.
func ptxEntries(ptx string) []string {
	var names []string
	for line := range strings.SplitSeq(ptx, "\n") {
		line = strings.TrimSpace(line)
		rest, ok := strings.CutPrefix(line, ".visible .entry ")
		if !ok {
			continue
		}
		if i := strings.IndexByte(rest, '('); i >= 0 {
			rest = rest[:i]
		}
		names = append(names, strings.TrimSpace(rest))
	}
	return names
}

// Kernel arguments: every one is 8 bytes (see kernels/common.cuh).
func ptrArg(p cu.DevicePtr) uint64 { return uint64(p) }
func intArg(n int) uint64          { return uint64(int64(n)) }
func f32Arg(x float32) uint64      { return math.Float64bits(float64(x)) }
func f64Arg(x float64) uint64      { return math.Float64bits(x) }
func boolArg(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}

// tptr is a tensor's device address as a kernel argument (0 for nil).
func tptr(t *Tensor) uint64 {
	if t == nil {
		return 0
	}
	return uint64(t.ptr)
}

// launch runs kernel name on a grid of blocks of threads with smem bytes of
// dynamic shared memory.
func (b *Backend) launch(op, name string, grid [3]int, threads, smem int, args ...uint64) {
	b.launchAs(op, name, name, grid, threads, smem, args...)
}

// launchAs is launch with the name the profiler records the launch under.
func (b *Backend) launchAs(op, name, span string, grid [3]int, threads, smem int, args ...uint64) {
	b.launchOn(b.stream, b.prof != nil, op, name, span, grid, threads, smem, args...)
}

// launchOn launches kernel name on stream s (profiled when prof).
func (b *Backend) launchOn(s cu.Stream, prof bool, op, name, span string, grid [3]int, threads, smem int, args ...uint64) {
	f, ok := b.fns[name]
	if !ok {
		panic(&Error{Op: op, Err: fmt.Errorf("kernel %s is not in the embedded PTX (run make ptx)", name)})
	}
	if grid[0] == 0 || grid[1] == 0 || grid[2] == 0 {
		return
	}
	params := make([]unsafe.Pointer, len(args))
	for k := range args {
		params[k] = unsafe.Pointer(&args[k])
	}
	var e0 int
	if prof {
		e0 = b.prof.mark(s)
	}
	if err := f.Launch(grid[0], grid[1], grid[2], threads, 1, 1, smem, s, params); err != nil {
		panic(&Error{Op: op, Err: oom(fmt.Errorf("launch %s grid %v x %d threads: %w", name, grid, threads, err))})
	}
	if prof {
		b.prof.spans = append(b.prof.spans, profSpan{name: span, start: e0, end: b.prof.mark(s)})
	}
}

// launchN runs a grid-stride kernel over n items, 256 threads a block.
func (b *Backend) launchN(op, name string, n int64, args ...uint64) {
	if n <= 0 {
		return
	}
	blocks := min((n+255)/256, 1<<20)
	b.launch(op, name, [3]int{int(blocks), 1, 1}, 256, 0, args...)
}

func grid1(n int) [3]int { return [3]int{n, 1, 1} }
