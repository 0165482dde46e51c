// Experiment (issue 8): NF4 dequantization fused into a Hopper wgmma GEMM,
// timed against what the CUDA backend does today (nf4_dequant_ld_bf16_w into
// a bfloat16 slot, then cuBLAS) at the step's forward shapes.
//
// The fused kernel computes the forward linear Y[T, N] = X[T, K+R] . [W | F]^T
// where W [N, K] is NF4 with double quantization (finetune/nf4's layout:
// element i in byte i/2, the even element in the high nibble; 64-blocks
// along rows; absmax = smap[acode] * ascale[b/256] + offset) and F [N, R]
// the folded LoRA columns (float32, rounded to bfloat16 on the fly).
//
// It works on the transpose, Y^T = W . X^T, so that W is wgmma's A operand
// and comes from registers: each consumer thread dequantizes exactly the
// A-fragment values it feeds the tensor cores (no bfloat16 weight ever
// reaches memory, shared or global). X is B, K-major, loaded by the bulk
// tensor copy engine (TMA, 128-byte swizzle) into a 4-stage ring.
//
// CTA: 3 warpgroups. WG0 is the producer (one thread issues the TMA
// loads); WG1 and WG2 each own 64 rows of W (features) and all BT tokens
// of the tile: wgmma m64n{BT}k16, float32 accumulators in registers.
//
// PIPE = 1 keeps one wgmma group in flight while the next k-tile is
// dequantized; PIPE = 0 waits for each group (the other consumer
// warpgroup's group fills the tensor cores meanwhile). (CTA pairs sharing
// X by multicast, and 128-token tiles, were measured and removed: git
// history at 428ff1f.)
//
// Result (BENCHMARKS.md, "v14"; raw in
// scripts/bench/results/2026-11-28-nf4gemm.txt): the same bits as
// dequantization + cuBLAS at all four shapes, but 1.44-1.83x cuBLAS's time
// on the H100; without the dequantization 1.15x for gate_up and cuBLAS's
// rate per multiprocessor for down. The dequantization in the same warps
// as the register-A wgmmas does not overlap them (+25-38%); neither A
// through shared memory (VAR_SS), a warpgroup of its own for the
// dequantization (VAR_WS, nf4_gemm_ws) nor the next tile's dequantization
// between this tile's wgmma issues (VAR_IL) did better. VAR_* macros build the
// diagnostic variants of the raw file (compile with -DVAR_...).
//
// Build and run on the GPU machine (CUDA 12 or later): run.sh, or
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -fmad=false \
//        -o nf4gemm nf4gemm.cu -lcublas -lcuda
#include <cublas_v2.h>
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../../cuda/kernels/nf4.cu"  // nf4_dequant_ld_bf16_w, the backend's dequantization
#include "wgmma_rs.inc"

#define CK(x)                                                                                    \
    do {                                                                                         \
        cudaError_t e_ = (x);                                                                    \
        if (e_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)
#define CB(x)                                                                 \
    do {                                                                      \
        cublasStatus_t s_ = (x);                                              \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                    \
            fprintf(stderr, "%s:%d %s: cublas %d\n", __FILE__, __LINE__, #x, (int)s_); \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

// ---------------------------------------------------------------- device helpers
__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void mbar_init(uint64_t* bar, int count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint64_t* bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(smem_u32(bar)) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t* bar, uint32_t parity) {
    uint32_t done;
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(smem_u32(bar)), "r"(parity)
            : "memory");
    } while (!done);
}
__device__ __forceinline__ void tma_load_2d(void* dst, const CUtensorMap* map, uint64_t* bar, int c0, int c1) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], [%2];" ::"r"(
            smem_u32(dst)),
        "l"((uint64_t)map), "r"(smem_u32(bar)), "r"(c0), "r"(c1)
        : "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// fence_regs pins registers across a point: the compiler must keep each
// value in its register until here. wgmma reads its A registers and
// accumulators asynchronously, which the compiler does not know; without
// this it reuses an in-flight A register and ptxas then serializes every
// wgmma (a wait after each).
template <int N>
__device__ __forceinline__ void fence_regs(unsigned* r) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void keep_regs(const unsigned* r) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" ::"r"(r[i]) : "memory");
}
template <int N>
__device__ __forceinline__ void fence_acc(float* r) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// The descriptor of a K-major, 128-byte-swizzled bfloat16 tile in shared
// memory (rows of 64 values, 8-row atoms 1024 bytes apart).
__device__ __forceinline__ unsigned long long desc_sw128(uint32_t addr) {
    unsigned long long d = 0;
    d |= (unsigned long long)((addr & 0x3FFFF) >> 4);
    d |= (unsigned long long)1 << 16;              // leading byte offset (unused with this swizzle)
    d |= (unsigned long long)(1024 >> 4) << 32;    // stride byte offset: 8 rows of 128 bytes
    d |= (unsigned long long)1 << 62;              // 128-byte swizzle
    return d;
}

// nf4_table: the bfloat16 values bf16(code[i] * a), i = 0..15, as two byte
// tables (L: low bytes, H: high bytes; byte i of the 16-byte table in
// register i/4, byte i%4), the form nf4_lookup4 reads with prmt.
__device__ __forceinline__ void nf4_table(float a, unsigned L[4], unsigned H[4]) {
    unsigned e[8];
#pragma unroll
    for (int p = 0; p < 8; p++) e[p] = bf16x2_rn(__fmul_rn(NF4_CODE[2 * p], a), __fmul_rn(NF4_CODE[2 * p + 1], a));
#pragma unroll
    for (int q = 0; q < 4; q++) {
        L[q] = __byte_perm(e[2 * q], e[2 * q + 1], 0x6420);
        H[q] = __byte_perm(e[2 * q], e[2 * q + 1], 0x7531);
    }
}
// nf4_expand2: two code bytes (the low 16 bits of s: byte 0 then byte 1)
// into two bfloat16 pairs, each pair (even element, odd element) = (high
// nibble, low nibble) of its byte, the even one in the low half.
__device__ __forceinline__ void nf4_expand2(unsigned s, const unsigned L[4], const unsigned H[4], unsigned& o0,
                                            unsigned& o1) {
    const unsigned s3 = s & 0x7777u;
    const unsigned m = __byte_perm(0x0000FF00u, 0u, (s >> 3) & 0x1111u);  // 0xFF where the index is >= 8
    const unsigned lo = (__byte_perm(L[0], L[1], s3) & ~m) | (__byte_perm(L[2], L[3], s3) & m);
    const unsigned hi = (__byte_perm(H[0], H[1], s3) & ~m) | (__byte_perm(H[2], H[3], s3) & m);
    // lo/hi bytes: [T(n0), T(h0), T(n1), T(h1)] (n: low nibble, h: high)
    o0 = __byte_perm(lo, hi, 0x4051);
    o1 = __byte_perm(lo, hi, 0x6273);
}
// A row's 64-block for this k-tile: the 8 bfloat16 pairs this lane feeds
// the tensor cores, R[j] = elements 8j + 2c, 8j + 2c + 1 (c = lane % 4):
// byte c of each of the block's eight 4-byte words.
// nf4_table_quad: nf4_table split over the four lanes of a quad, which
// share the row: lane c makes entries 4c..4c+3 (cq: their code values)
// and the quad exchanges the byte tables (4x fewer conversions).
__device__ __forceinline__ void nf4_table_quad(float a, const float cq[4], unsigned L[4], unsigned H[4]) {
    const unsigned e0 = bf16x2_rn(__fmul_rn(cq[0], a), __fmul_rn(cq[1], a));
    const unsigned e1 = bf16x2_rn(__fmul_rn(cq[2], a), __fmul_rn(cq[3], a));
    const unsigned l = __byte_perm(e0, e1, 0x6420), h = __byte_perm(e0, e1, 0x7531);
    const int base = (threadIdx.x & 31) & ~3;
#pragma unroll
    for (int q = 0; q < 4; q++) {
        L[q] = __shfl_sync(0xffffffffu, l, base + q);
        H[q] = __shfl_sync(0xffffffffu, h, base + q);
    }
}
__device__ __forceinline__ void nf4_row_frag(uint4 q0, uint4 q1, unsigned sel, float a, const float cq[4], unsigned R[8]) {
    unsigned L[4], H[4];
#ifdef VAR_FULLTABLE
    nf4_table(a, L, H);
#else
    nf4_table_quad(a, cq, L, H);
#endif
    const unsigned g0 = __byte_perm(__byte_perm(q0.x, q0.y, sel), __byte_perm(q0.z, q0.w, sel), 0x5410);
    const unsigned g1 = __byte_perm(__byte_perm(q1.x, q1.y, sel), __byte_perm(q1.z, q1.w, sel), 0x5410);
    nf4_expand2(g0, L, H, R[0], R[1]);
    nf4_expand2(g0 >> 16, L, H, R[2], R[3]);
    nf4_expand2(g1, L, H, R[4], R[5]);
    nf4_expand2(g1 >> 16, L, H, R[6], R[7]);
}

constexpr int BK = 64, STAGES = 4, WROWS = 128;

struct NF4Args {
    const unsigned char* codes;  // [N*K/2]
    const unsigned char* acodes; // [N*K/64]
    const float* ascales;        // [ceil(N*K/64/256)]
    const float* smap;           // [256]
    float offset;
    const float* fold;  // [N, R] float32 or null
    int R;              // fold columns (<= 16)
    int T, N, K;        // tokens, features, NF4 inner size (multiple of 64)
    void* y;            // [T, ldy] float32 or bfloat16
    int ldy;
    int beta;  // float32 output only: 1 adds into y
    // Timing diagnostics (wrong results): 0 normal, 1 no dequantization
    // (the code words fed as values), 2 a constant absmax, 3 no X loads
    // (the producer idles, consumers read whatever the ring holds), 4 both 1 and 3.
    int mode;
};

// store_acc writes a consumer's accumulators: d[4j + 2i + e] is feature
// na + 8i, token t0 + 8j + 2c + e (r = lane / 4, c = lane % 4).
template <int BT, bool OUT_BF16>
__device__ __forceinline__ void store_acc(const NF4Args& p, const float* d, int na, int t0, int r, int c) {
    if constexpr (OUT_BF16) {
        // Straight from the registers: lanes r and r^1 (l and l^4) hold
        // neighbouring features of the same tokens; one shuffle gives the
        // even lane the pair (n, n+1) of token 2c and the odd lane that of
        // token 2c+1, each one 4-byte store.
        unsigned short* y = reinterpret_cast<unsigned short*>(p.y);
        const bool odd = r & 1;
#pragma unroll
        for (int j = 0; j < BT / 8; j++)
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const float v0 = d[4 * j + 2 * i], v1 = d[4 * j + 2 * i + 1];
                const float got = __shfl_xor_sync(0xffffffffu, odd ? v0 : v1, 4);
                const int t = t0 + 8 * j + 2 * c + (odd ? 1 : 0);
                const int n = na + 8 * i - (odd ? 1 : 0);
                const unsigned pr = odd ? bf16x2_rn(got, v1) : bf16x2_rn(v0, got);
                if (t < p.T) *reinterpret_cast<unsigned*>(y + (size_t)t * p.ldy + n) = pr;
            }
    } else {
        float* y = reinterpret_cast<float*>(p.y);
#pragma unroll
        for (int j = 0; j < BT / 8; j++)
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int t = t0 + 8 * j + 2 * c + e;
                    if (t < p.T) {
                        float* o = y + (size_t)t * p.ldy + na + 8 * i;
                        *o = p.beta ? __fadd_rn(*o, d[4 * j + 2 * i + e]) : d[4 * j + 2 * i + e];
                    }
                }
    }
}

// x_descs: the descriptors of an X stage's four k16 steps and their
// scale-d flags (0 only for a tile's very first product), made and pinned
// before the wgmma fence: ptxas serializes the wgmmas (C7513) when an
// instruction between the fence and a wgmma defines one of its inputs,
// such as a descriptor computed in place.
__device__ __forceinline__ void x_descs(uint32_t xs, int kt, unsigned long long dk[4], int sc[4]) {
#pragma unroll
    for (int k = 0; k < 4; k++) {
        dk[k] = desc_sw128(xs) + 2 * k;  // + 32 bytes a k-step (the address field is bytes / 16)
        sc[k] = kt > 0 || k > 0;
        asm volatile("" : "+l"(dk[k]), "+r"(sc[k])::"memory");
    }
}

template <int BT, bool OUT_BF16, int PIPE>
__global__ void __launch_bounds__(384, 1) nf4_gemm_fwd(const __grid_constant__ CUtensorMap xmap, NF4Args p) {
    constexpr int XBYTES = BT * BK * 2;  // one stage of X
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char* smem = (unsigned char*)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);
#ifdef VAR_SS
    // The consumers' dequantized A tiles: [warpgroup][buffer][64 rows x 64
    // k] bfloat16, K-major with the 128-byte swizzle (8 KB each).
    unsigned char* abuf = smem + STAGES * XBYTES;
    uint64_t* full = (uint64_t*)(abuf + 4 * 8192);
#else
    uint64_t* full = (uint64_t*)(smem + STAGES * XBYTES);
#endif
    uint64_t* empty = full + STAGES;

    const int ntiles_t = (p.T + BT - 1) / BT;
    const int tt = blockIdx.x % ntiles_t, ft = blockIdx.x / ntiles_t;
    const int t0 = tt * BT, n0 = ft * WROWS;
    const int KT = p.K / BK + (p.R > 0 ? 1 : 0);
    const int wg = threadIdx.x / 128;

    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], 8);  // one arrival per consumer warp
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n");
        if (threadIdx.x == 0 && p.mode < 3) {
            for (int kt = 0; kt < KT; kt++) {
                const int s = kt % STAGES;
                if (kt >= STAGES) mbar_wait(&empty[s], ((kt / STAGES) - 1) & 1);
                mbar_expect_tx(&full[s], XBYTES);
                tma_load_2d(smem + s * XBYTES, &xmap, &full[s], kt * BK, t0);
            }
        }
    } else {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n");

    const int tid = threadIdx.x - 128 * wg, warp = tid >> 5, lane = tid & 31;
    const int r = lane >> 2, c = lane & 3;
    const int na = n0 + (wg - 1) * 64 + warp * 16 + r, nb = na + 8;
    const unsigned sel = (unsigned)c | ((unsigned)(c + 4) << 4);
    const float cq[4] = {NF4_CODE[4 * c], NF4_CODE[4 * c + 1], NF4_CODE[4 * c + 2], NF4_CODE[4 * c + 3]};
    const int KNF = p.K / BK;
    const uint4* qa = reinterpret_cast<const uint4*>(p.codes + (size_t)na * (p.K / 2));
    const uint4* qb = reinterpret_cast<const uint4*>(p.codes + (size_t)nb * (p.K / 2));
    const long long ba = (long long)na * KNF, bb = (long long)nb * KNF;

    float d[BT / 2];
    unsigned A[2][16];
    fence_acc<BT / 2>(d);
    // The double quantization's map in shared memory (after the barriers),
    // so that an absmax is one dependent global load (its code byte,
    // fetched two k-tiles ahead) and one shared one.
    float* smap = reinterpret_cast<float*>(empty + STAGES);
    for (int i = tid + 128 * (wg - 1); i < 256; i += 256) smap[i] = p.smap[i];
    asm volatile("bar.sync 1, 256;\n" ::: "memory");
    auto absmax = [&](unsigned code, long long b) {
        return __fadd_rn(__fmul_rn(smap[code], __ldg(p.ascales + (b >> 8))), p.offset);
    };
    uint4 ca0 = __ldg(qa), ca1 = __ldg(qa + 1), cb0 = __ldg(qb), cb1 = __ldg(qb + 1);
    float aa = absmax(__ldg(p.acodes + ba), ba), ab = absmax(__ldg(p.acodes + bb), bb);
    unsigned ua = __ldg(p.acodes + ba + (KNF > 1)), ub = __ldg(p.acodes + bb + (KNF > 1));

    // load_next loads the codes and absmax of k-tile k (clamped to the
    // last) and the absmax code of k-tile k + 1.
    auto load_next = [&](int k) {
        const int kn = min(k, KNF - 1), k2 = min(k + 1, KNF - 1);
        ca0 = __ldg(qa + 2 * kn);
        ca1 = __ldg(qa + 2 * kn + 1);
        cb0 = __ldg(qb + 2 * kn);
        cb1 = __ldg(qb + 2 * kn + 1);
        aa = absmax(ua, ba + kn);
        ab = absmax(ub, bb + kn);
        ua = __ldg(p.acodes + ba + k2);
        ub = __ldg(p.acodes + bb + k2);
    };
    // wait_x waits for k-tile kt's X stage and returns its address.
    auto wait_x = [&](int kt) {
        const int s = kt % STAGES;
        if (p.mode < 3) mbar_wait(&full[s], (kt / STAGES) & 1);
        return smem_u32(smem + s * XBYTES);
    };

    // One k-tile: its A fragments (registers Af) from the codes loaded one
    // k-tile ahead, the next k-tile's loads, then four wgmmas. The wait
    // leaves this tile's group in flight and retires the previous one,
    // whose stage goes back to the producer.
    auto step = [&](int kt, unsigned* Af, int bi) {
        {
            unsigned Ra[8], Rb[8];
#ifdef VAR_NODEQ
            if (true) {
#else
            if (p.mode == 1 || p.mode == 4) {
#endif
                // Copies (asm movs), not the code registers themselves:
                // a wgmma operand that is also the next tile's load target
                // makes ptxas serialize every wgmma (C7513).
                const unsigned qa8[8] = {ca0.x, ca0.y, ca0.z, ca0.w, ca1.x, ca1.y, ca1.z, ca1.w};
                const unsigned qb8[8] = {cb0.x, cb0.y, cb0.z, cb0.w, cb1.x, cb1.y, cb1.z, cb1.w};
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    asm volatile("mov.b32 %0, %1;" : "=r"(Ra[j]) : "r"(qa8[j]));
                    asm volatile("mov.b32 %0, %1;" : "=r"(Rb[j]) : "r"(qb8[j]));
                }
            } else {
                nf4_row_frag(ca0, ca1, sel, p.mode == 2 ? 0.01f : aa, cq, Ra);
                nf4_row_frag(cb0, cb1, sel, p.mode == 2 ? 0.01f : ab, cq, Rb);
            }
#pragma unroll
            for (int s = 0; s < 4; s++) {
                Af[4 * s + 0] = Ra[2 * s];
                Af[4 * s + 1] = Rb[2 * s];
                Af[4 * s + 2] = Ra[2 * s + 1];
                Af[4 * s + 3] = Rb[2 * s + 1];
            }
        }
#ifndef VAR_NOLOAD
        load_next(kt + 1);  // the last tile reloads itself (unused)
#endif
        const uint32_t xs = wait_x(kt);
        unsigned long long dk[4];
        int sc[4];
        x_descs(xs, kt, dk, sc);
#ifdef VAR_SS
        // A through shared memory: this thread's fragment values (rows r and
        // r + 8 of the warp's 16, 4 bytes at k = 8j + 2c) into the swizzled
        // tile, then the proxy fence and the warpgroup's barrier; buffer bi
        // was last read by the wgmmas of k-tile kt - 2, retired by now.
        unsigned char* at = abuf + ((wg - 1) * 2 + bi) * 8192;
        {
            const int ra = warp * 16 + r;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const unsigned va = Af[4 * (j >> 1) + 2 * (j & 1)], vb = Af[4 * (j >> 1) + 2 * (j & 1) + 1];
                *reinterpret_cast<unsigned*>(at + ra * 128 + ((j ^ (ra & 7)) << 4) + 4 * c) = va;
                *reinterpret_cast<unsigned*>(at + (ra + 8) * 128 + ((j ^ (ra & 7)) << 4) + 4 * c) = vb;
            }
        }
        asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
        asm volatile("bar.sync %0, 128;\n" ::"r"(4 + wg) : "memory");
        unsigned long long ak[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            ak[k] = desc_sw128(smem_u32(at)) + 2 * k;
            asm volatile("" : "+l"(ak[k])::"memory");
        }
#endif
#ifndef VAR_SS
        fence_regs<16>(Af);
#endif
        wgmma_fence();
#pragma unroll
        for (int k = 0; k < 4; k++) {
#ifdef VAR_SS
            wgmma_ss_n256(d, ak[k], dk[k], sc[k]);
#elif defined(VAR_NOMMA)
            asm volatile("" ::"r"(Af[4 * k]), "r"(Af[4 * k + 1]), "r"(Af[4 * k + 2]), "r"(Af[4 * k + 3]), "l"(dk[k]), "r"(sc[k]));
#else
            wgmma_rs_n256(d, Af + 4 * k, dk[k], sc[k]);
#endif
        }
        wgmma_commit();
        if constexpr (PIPE == 1) {
            wgmma_wait<1>();
#ifndef VAR_SS
            keep_regs<16>(A[0]);  // both buffers live: the one just issued is still read
            keep_regs<16>(A[1]);
            keep_regs<8>(reinterpret_cast<const unsigned*>(dk));
#endif
        } else {
            wgmma_wait<0>();
        }
        if (kt > 0 && lane == 0) {
            mbar_arrive(&empty[(kt - 1) % STAGES]);
        }
    };
#ifdef VAR_IL
    // The next tile's dequantization interleaved with this tile's wgmma
    // issue (a k16 step's fragments after each wgmma), into a third buffer:
    // B3[(u+1)%3], last read by the group of tile kt-2, retired already.
    // Tests whether the wgmma issue, not the tensor cores, is what the
    // dequantization waits behind. (Diagnostic modes 1 and 4 do not apply.)
    unsigned B3[3][16];
    auto expand_step = [&](unsigned* Af, int s, const unsigned La[4], const unsigned Ha[4], const unsigned Lb[4],
                           const unsigned Hb[4], unsigned g0a, unsigned g1a, unsigned g0b, unsigned g1b) {
        const unsigned ga = (s < 2 ? g0a : g1a) >> (16 * (s & 1)), gb = (s < 2 ? g0b : g1b) >> (16 * (s & 1));
        nf4_expand2(ga, La, Ha, Af[4 * s + 0], Af[4 * s + 2]);
        nf4_expand2(gb, Lb, Hb, Af[4 * s + 1], Af[4 * s + 3]);
    };
    auto gather = [&](uint4 q0, uint4 q1, unsigned& g0, unsigned& g1) {
        g0 = __byte_perm(__byte_perm(q0.x, q0.y, sel), __byte_perm(q0.z, q0.w, sel), 0x5410);
        g1 = __byte_perm(__byte_perm(q1.x, q1.y, sel), __byte_perm(q1.z, q1.w, sel), 0x5410);
    };
    {
        unsigned La[4], Ha[4], Lb[4], Hb[4], g0a, g1a, g0b, g1b;
        nf4_table_quad(aa, cq, La, Ha);
        nf4_table_quad(ab, cq, Lb, Hb);
        gather(ca0, ca1, g0a, g1a);
        gather(cb0, cb1, g0b, g1b);
#pragma unroll
        for (int s = 0; s < 4; s++) expand_step(B3[0], s, La, Ha, Lb, Hb, g0a, g1a, g0b, g1b);
        load_next(1);
    }
    auto istep = [&](int kt, int u) {
        unsigned* cur = B3[u];
        unsigned* nxt = B3[(u + 1) % 3];
        unsigned La[4], Ha[4], Lb[4], Hb[4], g0a, g1a, g0b, g1b;
        nf4_table_quad(aa, cq, La, Ha);  // tile kt + 1
        nf4_table_quad(ab, cq, Lb, Hb);
        gather(ca0, ca1, g0a, g1a);
        gather(cb0, cb1, g0b, g1b);
        load_next(kt + 2);
        const uint32_t xs = wait_x(kt);
        unsigned long long dk[4];
        int sc[4];
        x_descs(xs, kt, dk, sc);
        fence_regs<16>(cur);
        wgmma_fence();
#pragma unroll
        for (int k = 0; k < 4; k++) {
            wgmma_rs_n256(d, cur + 4 * k, dk[k], sc[k]);
            expand_step(nxt, k, La, Ha, Lb, Hb, g0a, g1a, g0b, g1b);
        }
        wgmma_commit();
        wgmma_wait<1>();
        keep_regs<16>(B3[0]);
        keep_regs<16>(B3[1]);
        keep_regs<16>(B3[2]);
        keep_regs<8>(reinterpret_cast<const unsigned*>(dk));
        if (kt > 0 && lane == 0) mbar_arrive(&empty[(kt - 1) % STAGES]);
    };
    int kt = 0;
    for (; kt + 3 <= KNF; kt += 3) {
        istep(kt, 0);
        istep(kt + 1, 1);
        istep(kt + 2, 2);
    }
    if (kt < KNF) istep(kt++, 0);
    if (kt < KNF) istep(kt++, 1);
#else
    int kt = 0;
    for (; kt + 1 < KNF; kt += 2) {
        step(kt, A[0], 0);
        step(kt + 1, A[1], 1);
    }
    if (kt < KNF) step(kt++, A[0], 0);
#endif
    if (p.R > 0) {
        // The folded LoRA columns: k = 2c, 2c+1 (a0, a1) and 2c+8, 2c+9 (a2, a3).
        auto f2 = [&](int n, int k) -> unsigned {
            if (k >= p.R) return 0u;
            const float* f = p.fold + (size_t)n * p.R + k;
            return bf16x2_rn(f[0], k + 1 < p.R ? f[1] : 0.0f);
        };
        wgmma_wait<0>();  // A[0] may still feed the last tile's wgmmas
        unsigned* Af = A[0];
        Af[0] = f2(na, 2 * c);
        Af[1] = f2(nb, 2 * c);
        Af[2] = f2(na, 2 * c + 8);
        Af[3] = f2(nb, 2 * c + 8);
        const uint32_t xs = wait_x(kt);
        wgmma_fence();
        wgmma_rs_n256(d, Af, desc_sw128(xs), 1);
        wgmma_commit();
    }
    wgmma_wait<0>();
    fence_acc<BT / 2>(d);

    store_acc<BT, OUT_BF16>(p, d, na, t0, r, c);
    }  // consumers
}

// nf4_gemm_ws: the same product with the dequantization on its own warps
// (warp-specialized). WG0 dequantizes: thread t owns weight row n0 + t and
// writes its 64-block of each k-tile, eight 16-byte chunks, into an A ring
// in shared memory (K-major, 128-byte swizzle; 4 stages of 128 rows x 64),
// and thread 0 also issues the X tile's TMA. WG1 and WG2 only wait and
// issue wgmmas with both operands from shared memory. The fold's columns
// are a last k-tile whose A holds bf16(F) in its first R columns. Built
// with -DVAR_WS (the harness then times it as "fused"). Measured slower
// than nf4_gemm_fwd (calls 18-19): one warpgroup does not keep up.
template <bool OUT_BF16>
__global__ void __launch_bounds__(384, 1) nf4_gemm_ws(const __grid_constant__ CUtensorMap xmap, NF4Args p) {
    constexpr int BT = 256, XBYTES = BT * BK * 2, ABYTES = WROWS * BK * 2;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    unsigned char* smem = (unsigned char*)(((uintptr_t)smem_raw + 1023) & ~(uintptr_t)1023);
    unsigned char* xring = smem;
    unsigned char* aring = smem + STAGES * XBYTES;
    uint64_t* full = (uint64_t*)(aring + STAGES * ABYTES);
    uint64_t* empty = full + STAGES;
    float* smap = reinterpret_cast<float*>(empty + STAGES);

    const int ntiles_t = (p.T + BT - 1) / BT;
    const int tt = blockIdx.x % ntiles_t, ft = blockIdx.x / ntiles_t;
    const int t0 = tt * BT, n0 = ft * WROWS;
    const int KNF = p.K / BK, KT = KNF + (p.R > 0 ? 1 : 0);
    const int wg = threadIdx.x / 128, tid = threadIdx.x & 127;

    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; s++) {
            mbar_init(&full[s], 1 + 128);  // the TMA's expect_tx + each dequantizing thread
            mbar_init(&empty[s], 8);       // each consumer warp
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    for (int i = threadIdx.x; i < 256; i += 384) smap[i] = p.smap[i];
    __syncthreads();

    if (wg == 0) {
        asm volatile("setmaxnreg.dec.sync.aligned.u32 96;\n");
        const int row = tid;
        const uint4* q = reinterpret_cast<const uint4*>(p.codes + (size_t)(n0 + row) * (p.K / 2));
        const long long b0 = (long long)(n0 + row) * KNF;
        uint4 c0 = __ldg(q), c1 = __ldg(q + 1);
        unsigned ac = __ldg(p.acodes + b0);
        for (int kt = 0; kt < KT; kt++) {
            const int s = kt % STAGES;
            if (kt >= STAGES) mbar_wait(&empty[s], ((kt / STAGES) - 1) & 1);
            if (tid == 0 && p.mode < 3) {
                mbar_expect_tx(&full[s], XBYTES);
                tma_load_2d(xring + s * XBYTES, &xmap, &full[s], kt * BK, t0);
            } else if (tid == 0) {
                mbar_arrive(&full[s]);
            }
            unsigned char* at = aring + s * ABYTES + row * 128;
            if (kt < KNF) {
                const float a = __fadd_rn(__fmul_rn(smap[ac], __ldg(p.ascales + ((b0 + kt) >> 8))), p.offset);
                const unsigned w[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
                if (kt + 1 < KNF) {
                    c0 = __ldg(q + 2 * (kt + 1));
                    c1 = __ldg(q + 2 * (kt + 1) + 1);
                    ac = __ldg(p.acodes + b0 + kt + 1);
                }
                if (p.mode == 1 || p.mode == 4) {
#pragma unroll
                    for (int j = 0; j < 8; j++)
                        *reinterpret_cast<uint4*>(at + ((j ^ (row & 7)) << 4)) = make_uint4(w[j], w[j], w[j], w[j]);
                } else {
                    unsigned L[4], H[4];
                    nf4_table(a, L, H);
#pragma unroll
                    for (int j = 0; j < 8; j++) {
                        uint4 o;
                        nf4_expand2(w[j], L, H, o.x, o.y);
                        nf4_expand2(w[j] >> 16, L, H, o.z, o.w);
                        *reinterpret_cast<uint4*>(at + ((j ^ (row & 7)) << 4)) = o;
                    }
                }
            } else {
                const float* f = p.fold + (size_t)(n0 + row) * p.R;
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    float v[8];
#pragma unroll
                    for (int e = 0; e < 8; e++) v[e] = 8 * j + e < p.R ? f[8 * j + e] : 0.0f;
                    *reinterpret_cast<uint4*>(at + ((j ^ (row & 7)) << 4)) =
                        make_uint4(bf16x2_rn(v[0], v[1]), bf16x2_rn(v[2], v[3]), bf16x2_rn(v[4], v[5]), bf16x2_rn(v[6], v[7]));
                }
            }
            asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
            mbar_arrive(&full[s]);
        }
        return;
    }
    asm volatile("setmaxnreg.inc.sync.aligned.u32 200;\n");  // (200 - 168) x 256 <= (168 - 96) x 128 registers freed
    const int warp = tid >> 5, lane = tid & 31, r = lane >> 2, c = lane & 3;
    const int na = n0 + (wg - 1) * 64 + warp * 16 + r;
    float d[BT / 2];
    fence_acc<BT / 2>(d);
    for (int kt = 0; kt < KT; kt++) {
        const int s = kt % STAGES;
        mbar_wait(&full[s], (kt / STAGES) & 1);
        const uint32_t xs = smem_u32(xring + s * XBYTES), as = smem_u32(aring + s * ABYTES + (wg - 1) * 64 * 128);
        unsigned long long da[4], db[4];
        int sc[4];
#pragma unroll
        for (int k = 0; k < 4; k++) {
            da[k] = desc_sw128(as) + 2 * k;
            db[k] = desc_sw128(xs) + 2 * k;
            sc[k] = kt > 0 || k > 0;
            asm volatile("" : "+l"(da[k]), "+l"(db[k]), "+r"(sc[k])::"memory");
        }
        wgmma_fence();
#pragma unroll
        for (int k = 0; k < 4; k++) wgmma_ss_n256(d, da[k], db[k], sc[k]);
        wgmma_commit();
        wgmma_wait<1>();
        if (kt > 0 && lane == 0) mbar_arrive(&empty[(kt - 1) % STAGES]);
    }
    wgmma_wait<0>();
    fence_acc<BT / 2>(d);
    store_acc<BT, OUT_BF16>(p, d, na, t0, r, c);
}

// ---------------------------------------------------------------- host
static CUtensorMap xmap_of(const void* x, int T, int cols, int ldx, int BT) {
    CUtensorMap m;
    cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)T};
    cuuint64_t strides[1] = {(cuuint64_t)ldx * 2};
    cuuint32_t box[2] = {BK, (cuuint32_t)BT};
    cuuint32_t es[2] = {1, 1};
    CUresult r = cuTensorMapEncodeTiled(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void*)x, dims, strides, box, es,
                               CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                               CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) {
        fprintf(stderr, "cuTensorMapEncodeTiled: %d\n", (int)r);
        exit(1);
    }
    return m;
}
template <bool OUT_BF16, int PIPE>
static void launch_fused(const NF4Args& p, const void* x, int ldx, cudaStream_t st) {
    constexpr int BT = 256;
    CUtensorMap m = xmap_of(x, p.T, p.K + p.R, ldx, BT);
    const size_t smem = STAGES * BT * BK * 2 + 2 * STAGES * 8 + 1024 + 1024 + 4 * 8192;
    static bool init = false;
    if (!init) {
        CK(cudaFuncSetAttribute(nf4_gemm_fwd<BT, OUT_BF16, PIPE>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        init = true;
    }
    nf4_gemm_fwd<BT, OUT_BF16, PIPE><<<(p.N / WROWS) * ((p.T + BT - 1) / BT), 384, smem, st>>>(m, p);
    CK(cudaGetLastError());
}

template <bool OUT_BF16>
static void launch_ws(const NF4Args& p, const void* x, int ldx, cudaStream_t st) {
    CUtensorMap m = xmap_of(x, p.T, p.K + p.R, ldx, 256);
    const size_t smem = STAGES * (256 + WROWS) * BK * 2 + 2 * STAGES * 8 + 1024 + 1024;
    static bool init = false;
    if (!init) {
        CK(cudaFuncSetAttribute(nf4_gemm_ws<OUT_BF16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        init = true;
    }
    nf4_gemm_ws<OUT_BF16><<<(p.N / WROWS) * ((p.T + 255) / 256), 384, smem, st>>>(m, p);
    CK(cudaGetLastError());
}

// Reference pieces: F's columns into the slot, like the row kernels do.
__global__ void fold_into(unsigned short* w, int N, int ld, int K, const float* f, int R) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < N * R) {
        int n = i / R, k = i % R;
        w[(size_t)n * ld + K + k] = f32_to_bf16(f[i]);
    }
}
__global__ void zero_cols(unsigned short* w, int N, int ld, int from) {
    int n = blockIdx.x;
    for (int k = from + threadIdx.x; k < ld; k += blockDim.x) w[(size_t)n * ld + k] = 0;
}
__global__ void fill_poison(unsigned* p, size_t n) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i < n) p[i] = 0x7fc07fc0u;  // NaN as float32 and as both bfloat16 halves
}

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd() {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}
static float rndf() { return (rnd() & 0xffffff) / 16777216.0f * 2.0f - 1.0f; }
static unsigned short h_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}
static float h_f32(unsigned short h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

struct Shape {
    const char* name;
    int N, K, R;
    bool bf16out;
};

int main(int argc, char** argv) {
    const int T = 1024;
    int reps = 50;
    const Shape shapes[] = {{"gate_up", 16384, 3072, 8, true},
                            {"qkv", 9216, 3072, 8, true},
                            {"o", 3072, 3072, 8, false},
                            {"down", 3072, 8192, 8, false}};
    cublasHandle_t hb;
    CB(cublasCreate(&hb));
    void* ws;
    CK(cudaMalloc(&ws, 32 << 20));
    CB(cublasSetWorkspace(hb, ws, 32 << 20));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    CB(cublasSetStream(hb, st));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    printf("%-8s %6s %6s | %9s %9s %9s %9s | %8s %8s %8s | %s\n", "shape", "N", "K", "cublas_us", "deq_us", "deq+gemm",
           "fused_us", "TF/s cb", "TF/s fu", "fu/cb", "max|d| rel_l2 (vs cuBLAS on the same bf16 W)");
    for (const Shape& sh : shapes) {
        const int N = sh.N, K = sh.K, R = sh.R, KX = K + R;
        const int ldx = ((KX + 63) / 64) * 64, ldw = ldx;  // the backend's padded rows
        const size_t nblk = (size_t)N * K / 64;
        std::vector<unsigned char> hcodes((size_t)N * K / 2), hac(nblk);
        std::vector<float> hsc((nblk + 255) / 256), hmap(256), hfold((size_t)N * R);
        std::vector<unsigned short> hx((size_t)T * ldx);
        for (auto& v : hcodes) v = (unsigned char)rnd();
        for (auto& v : hac) v = (unsigned char)rnd();
        for (auto& v : hsc) v = 0.02f + 0.01f * rndf();
        for (int i = 0; i < 256; i++) hmap[i] = (i - 127.5f) / 128.0f;
        for (auto& v : hfold) v = 0.05f * rndf();
        for (auto& v : hx) v = h_bf16(rndf());
        const float offset = 0.031f;
        unsigned char *codes, *ac;
        float *sc, *map, *fold, *yf, *yr;
        unsigned short *x, *w;
        CK(cudaMalloc(&codes, hcodes.size()));
        CK(cudaMalloc(&ac, hac.size()));
        CK(cudaMalloc(&sc, hsc.size() * 4));
        CK(cudaMalloc(&map, 1024));
        CK(cudaMalloc(&fold, hfold.size() * 4));
        CK(cudaMalloc(&x, hx.size() * 2));
        CK(cudaMalloc(&w, (size_t)N * ldw * 2));
        CK(cudaMalloc(&yf, (size_t)T * N * 4));
        CK(cudaMalloc(&yr, (size_t)T * N * 4));
        CK(cudaMemcpy(codes, hcodes.data(), hcodes.size(), cudaMemcpyHostToDevice));
        CK(cudaMemcpy(ac, hac.data(), hac.size(), cudaMemcpyHostToDevice));
        CK(cudaMemcpy(sc, hsc.data(), hsc.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(map, hmap.data(), 1024, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(fold, hfold.data(), hfold.size() * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(x, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice));

        // The backend's path: dequantize into the slot (fold columns after K), cuBLAS.
        const long long gpr = K / 8, items = (long long)N * ((gpr + 127) / 128);
        const int dgrid = (int)((items * 32 + 255) / 256);
        auto dequant = [&]() {
            nf4_dequant_ld_bf16_w<<<dgrid, 256, 0, st>>>(w, N, K, ldw, codes, nullptr, ac, sc, map, (double)offset);
        };
        zero_cols<<<N, 64, 0, st>>>(w, N, ldw, K);
        fold_into<<<(N * R + 255) / 256, 256, 0, st>>>(w, N, ldw, K, fold, R);
        dequant();
        CK(cudaGetLastError());
        const float one = 1.0f, zero = 0.0f;
        auto gemm = [&](float* y) {
            // y[T, N] = x[T, KX] . w[N, KX]^T: column-major y^T[N, T] = w . x^T
            CB(cublasGemmEx(hb, CUBLAS_OP_T, CUBLAS_OP_N, N, T, KX, &one, w, CUDA_R_16BF, ldw, x, CUDA_R_16BF, ldx,
                            &zero, y, sh.bf16out ? CUDA_R_16BF : CUDA_R_32F, N, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
        };
        NF4Args p{codes, ac, sc, map, offset, fold, R, T, N, K, yf, N, 0};
        auto fused = [&]() {
#ifdef VAR_WS
            if (sh.bf16out)
                launch_ws<true>(p, x, ldx, st);
            else
                launch_ws<false>(p, x, ldx, st);
#else
            if (sh.bf16out)
                launch_fused<true, 1>(p, x, ldx, st);
            else
                launch_fused<false, 1>(p, x, ldx, st);
#endif
        };
        // correctness: poison, run both, compare
        const size_t ny = (size_t)T * N * (sh.bf16out ? 1 : 2) / 2 + 1;
        fill_poison<<<(ny + 255) / 256, 256, 0, st>>>((unsigned*)yf, (size_t)T * N);
        fill_poison<<<(ny + 255) / 256, 256, 0, st>>>((unsigned*)yr, (size_t)T * N);
        gemm(yr);
        fused();
        CK(cudaStreamSynchronize(st));
        double num = 0, den = 0, maxd = 0;
        long long bad = 0;
        {
            const size_t n = (size_t)T * N;
            if (sh.bf16out) {
                std::vector<unsigned short> a(n), b(n);
                CK(cudaMemcpy(a.data(), yf, n * 2, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(b.data(), yr, n * 2, cudaMemcpyDeviceToHost));
                for (size_t i = 0; i < n; i++) {
                    double u = h_f32(a[i]), v = h_f32(b[i]);
                    if (!std::isfinite(u)) bad++;
                    num += (u - v) * (u - v);
                    den += v * v;
                    maxd = fmax(maxd, fabs(u - v));
                }
            } else {
                std::vector<float> a(n), b(n);
                CK(cudaMemcpy(a.data(), yf, n * 4, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(b.data(), yr, n * 4, cudaMemcpyDeviceToHost));
                for (size_t i = 0; i < n; i++) {
                    double u = a[i], v = b[i];
                    if (!std::isfinite(u)) bad++;
                    num += (u - v) * (u - v);
                    den += v * v;
                    maxd = fmax(maxd, fabs(u - v));
                }
            }
        }
        auto timeit = [&](auto fn) {
            for (int i = 0; i < 5; i++) fn();
            CK(cudaEventRecord(e0, st));
            for (int i = 0; i < reps; i++) fn();
            CK(cudaEventRecord(e1, st));
            CK(cudaEventSynchronize(e1));
            float ms;
            CK(cudaEventElapsedTime(&ms, e0, e1));
            return 1000.0 * ms / reps;
        };
        double tc = timeit([&]() { gemm(yr); });
        double td = timeit([&]() { dequant(); });
        double tdc = timeit([&]() {
            dequant();
            gemm(yr);
        });
        double tf = timeit([&]() { fused(); });
        double tc2 = timeit([&]() { gemm(yr); });
        double tf2 = timeit([&]() { fused(); });
        auto fused0 = [&]() {  // waiting for each wgmma group (PIPE 0)
            if (sh.bf16out)
                launch_fused<true, 0>(p, x, ldx, st);
            else
                launch_fused<false, 0>(p, x, ldx, st);
        };
        double tw0 = timeit([&]() { fused0(); });
        const double flop = 2.0 * T * N * KX;
        printf("%-8s %6d %6d | %9.1f %9.1f %9.1f %9.1f | %8.0f %8.0f %8.2f | %.3g %.3g%s\n", sh.name, N, K,
               fmin(tc, tc2), td, tdc, fmin(tf, tf2), flop / fmin(tc, tc2) / 1e6, flop / fmin(tf, tf2) / 1e6,
               fmin(tf, tf2) / fmin(tc, tc2), maxd, sqrt(num / den), bad ? " NONFINITE" : "");
        p.mode = 1;
        double tm1 = timeit([&]() { fused(); });
        p.mode = 2;
        double tm2 = timeit([&]() { fused(); });
        p.mode = 3;
        double tm3 = timeit([&]() { fused(); }), tm3w = timeit([&]() { fused0(); });
        p.mode = 4;
        double tm4 = timeit([&]() { fused(); }), tm4w = timeit([&]() { fused0(); });
        p.mode = 1;
        double tm1w = timeit([&]() { fused0(); });
        p.mode = 0;
        printf("   (repeat: cublas %.1f / %.1f us, fused %.1f / %.1f us; wait<0> each tile %.1f us; no dequant %.1f us (wait<0> %.1f); constant absmax %.1f us)\n",
               tc, tc2, tf, tf2, tw0, tm1, tm1w, tm2);
        printf("   (no X loads: %.1f us, wait<0> %.1f; no X loads, no dequant: %.1f us, wait<0> %.1f)\n", tm3, tm3w, tm4, tm4w);
        cudaFree(codes), cudaFree(ac), cudaFree(sc), cudaFree(map), cudaFree(fold), cudaFree(x), cudaFree(w),
            cudaFree(yf), cudaFree(yr);
    }
    return 0;
}
