//go:build cuda

package cuda

// Skinny bfloat16 GEMMs (kernels/skinny.cu). The LoRA's products have one
// dimension r (8): h = x . A^T and g = dout . B ([T,r] from [T,K]), GradB
// += s dout^T . h ([out,r]) and GradA += s g^T . x ([r,in]). Each reads its
// big operand once, so it is memory-bound, but cuBLAS's kernels for N or M
// = 8 run at a fraction of the bandwidth (~11 us a call where the read
// takes 2-5). gemm() offers every GEMM to trySkinny first; it takes the
// bfloat16 shapes below with r <= 8 and the alignment the kernels' 16-byte
// loads need, and leaves the rest to cuBLAS. The sums are float32 in a
// fixed order (deterministic).
//
// Switches: OLLAMA_TUNE_CUDA_REFERENCE=skinny turns the hook off (cuBLAS
// for all), skinny-rows the rows kernel (h and g, on by default). The tall
// kernel (GradB, GradA) is off by default: on the H100 (2026-11-27) it was
// slower than cuBLAS at 3 of the 5 LoRA shapes and no faster at the other
// two, and the step ran slower with it; OLLAMA_TUNE_CUDA_SKINNY=tall turns
// it on (tests do).
// Measured there, per call alone (cuBLAS -> rows kernel): 1024x8x3072
// 11.5 -> 6.0 us, 1024x8x9216 16.6 -> 12.7, 1024x8x8192 11.6 -> 11.5,
// 1024x8x16384 18.1 -> 18.0; the checkpointed step 0.0773-0.0777 -> 0.0764
// s (median).

import (
	"fmt"

	"gorgonia.org/cu"
)

var (
	skinnyRows = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "skinny") && !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "skinny-rows")
	skinnyTall = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "skinny") && envHas("OLLAMA_TUNE_CUDA_SKINNY", "tall")
)

// skinnyFence picks how a tile's last block learns that the other splits'
// partial sums are visible (sk_splits): 0, thread 0's acq_rel atomic after
// the block's barrier; 1 (OLLAMA_TUNE_CUDA_REFERENCE=skinny-fence), every
// thread's __threadfence first.
var skinnyFence = boolArg(envHas("OLLAMA_TUNE_CUDA_REFERENCE", "skinny-fence"))

// skinnyForce, when > 0, replaces the kernels' choice of k (rows) or t
// (tall) per warp: tests time the alternatives.
var skinnyForce int

// skinnyMaxR is the largest small dimension the kernels take.
const skinnyMaxR = 8

// skinnyWarps is the kernels' warps a block (SK_WARPS).
const skinnyWarps = 4

// skinnyCnt returns room for n zeroed uint32 counters: the backend's
// per-tile arrival counters (zero between launches: the last block of a
// tile resets its own), freed with the backend.
func (b *Backend) skinnyCnt(n int, op string) cu.DevicePtr {
	p, fresh := b.grow(&b.skinnyCounters, 4*int64(n), 4096, "skinny GEMM counters", op)
	if fresh {
		check(op, cu.MemsetD32Async(p, 0, b.skinnyCounters.n/4, b.stream))
	}
	return p
}

func aligned16(p uintptr) bool { return p%16 == 0 }

// skinnyPick returns the largest of sizes (descending) for which tiles *
// ceil(k/size) warps reach 1024 (about 8 a multiprocessor), else the last.
func skinnyPick(tiles, k int, sizes ...int) int {
	for _, s := range sizes {
		if tiles*((k+s-1)/s) >= 1024 {
			return s
		}
	}
	return sizes[len(sizes)-1]
}

// skinnySplit chooses the reduction length a warp covers (skinnyPick over
// sizes, or skinnyForce) for tiles output tiles of tileFloats partial
// values over a reduction of k, and returns it with the number of splits
// (blocks a tile), the partial sums' room in the sReduce scratch (0 for
// one split) and the tiles' arrival counters.
func (b *Backend) skinnySplit(op string, tiles, k, tileFloats int, sizes ...int) (w, splits int, part, cnt cu.DevicePtr) {
	w = skinnyPick(tiles, k, sizes...)
	if skinnyForce > 0 {
		w = skinnyForce
	}
	splits = (k + skinnyWarps*w - 1) / (skinnyWarps * w)
	if splits > 1 {
		part = b.scratchBuf(sReduce, 4*int64(splits)*int64(tiles)*int64(tileFloats), op)
	}
	return w, splits, part, b.skinnyCnt(tiles, op)
}

// trySkinny runs g with a skinny kernel and returns true, or returns false
// (g is not one of its shapes; cuBLAS runs it).
func (b *Backend) trySkinny(op string, g gemmArgs) bool {
	if g.abType != dataR16BF || g.cHalf || g.M <= 0 || g.N <= 0 || g.K <= 0 || !aligned16(g.A) || !aligned16(g.B) {
		return false
	}
	switch {
	case !g.transA && g.N <= skinnyMaxR && skinnyRows:
		// C[M,N] = A[M,K] . op(B): rows of A against r columns.
		if g.K%8 != 0 || g.lda%8 != 0 || g.ldb%8 != 0 || g.ldc < g.N || g.lda < g.K {
			return false
		}
		wtrans := int64(0)
		if g.transB {
			wtrans = 1
		} else if g.N != 8 { // the kernel loads B's rows of 8 whole
			return false
		}
		tiles := (g.M + 15) / 16
		kw, splits, part, cnt := b.skinnySplit(op, tiles, g.K, 128, 512, 256, 128)
		b.skinnyLaunch(op, "skinny_rows", g, [3]int{tiles, splits, 1}, ptrArg(cu.DevicePtr(g.C)), ptrArg(cu.DevicePtr(g.A)),
			ptrArg(cu.DevicePtr(g.B)), ptrArg(part), ptrArg(cnt), intArg(g.M), intArg(g.K), intArg(g.N), intArg(g.lda),
			intArg(g.ldb), uint64(wtrans), intArg(g.ldc), intArg(kw), f32Arg(g.alpha), f32Arg(g.beta), skinnyFence)
		return true
	case g.transA && !g.transB && (g.N <= skinnyMaxR || g.M <= skinnyMaxR) && skinnyTall:
		// C = A^T . B with A [K,M], B [K,N]: the big operand Y [K, big]
		// against S [K, r]; C(col, j) at C[col*cn + j*cj].
		var y, s uintptr
		var big, r, ldy, lds, cn, cj int
		if g.N <= skinnyMaxR { // GradB [out,r] += s dout^T . h
			y, s, big, r, ldy, lds, cn, cj = g.A, g.B, g.M, g.N, g.lda, g.ldb, g.ldc, 1
			if g.ldc < g.N {
				return false
			}
		} else { // GradA [r,in] += s g^T . x
			y, s, big, r, ldy, lds, cn, cj = g.B, g.A, g.N, g.M, g.ldb, g.lda, 1, g.ldc
			if g.ldc < g.N {
				return false
			}
		}
		if big%8 != 0 || ldy%8 != 0 || ldy < big || lds < r {
			return false
		}
		tiles := (big + 127) / 128
		tw, splits, part, cnt := b.skinnySplit(op, tiles, g.K, 1024, 256, 128, 64, 32)
		b.skinnyLaunch(op, "skinny_tall", g, [3]int{tiles, splits, 1}, ptrArg(cu.DevicePtr(g.C)), ptrArg(cu.DevicePtr(y)),
			ptrArg(cu.DevicePtr(s)), ptrArg(part), ptrArg(cnt), intArg(g.K), intArg(big), intArg(r), intArg(ldy),
			intArg(lds), intArg(cn), intArg(cj), intArg(tw), f32Arg(g.alpha), f32Arg(g.beta), skinnyFence)
		return true
	}
	return false
}

// skinnyLaunch launches kernel name (128 threads a block); the profile
// names it "skinny bf16 MxNxK" after g, like gemm's "gemm bf16 MxNxK".
func (b *Backend) skinnyLaunch(op, name string, g gemmArgs, grid [3]int, args ...uint64) {
	span := name
	if b.prof != nil {
		span = fmt.Sprintf("skinny bf16 %dx%dx%d", g.M, g.N, g.K)
	}
	b.launchAs(op, name, span, grid, 128, 0, args...)
}
