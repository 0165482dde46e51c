// rowdot: the float32 LoRA row products alone (issue 8, v24).
// cuda/kernels/lora_dot.cuh's lora_rowdot_t<R, ROWS, AHEAD, VECW> (a block of 256
// threads for ROWS rows; each thread's loads of AHEAD steps of k issued
// together) at the shapes of a Phi-3-mini step (T 1,024 tokens, rank 8, and
// rank 16 for lora_rowdot16; the argument 8 or 16 picks one):
// h = dropout(x) . A^T for qkv_proj, o_proj, gate_up_proj (K 3,072) and
// down_proj (K 8,192), dropout 0.05, twice a layer (the forward and
// checkpointing's recompute), and g = dout . B for the four (K 9,216,
// 3,072, 16,384, 3,072), once. Every variant's y is compared with the
// first variant (ROWS 4, AHEAD 1; rank 16: v23's) bit for bit: a thread's k order, the
// shuffles and the warps' order do not depend on ROWS or AHEAD. The
// cp.async variants (lora_rowdot_pipe_t, below) copy the steps ahead into
// shared memory instead of registers. Inputs
// rotate over enough buffers to leave the L2 cache.
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -fmad=false -o /tmp/rowdot rowdot.cu && /tmp/rowdot [8|16]
// (on the GPU machine: this repository's CUDA 11.8 toolchain has no host
// compiler here).
#include <cstdio>
#include <cstring>
#include <vector>

#include "../../../cuda/kernels/lora_dot.cuh"

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

// rowdot runs lora_rowdot_t with float4 loads of W where the shape allows
// them (B^T at full rank), as the trainer's host code picks the _v kernels.
template <int ROWS, int AHEAD, int MINB, int R = 8>
__global__ void __launch_bounds__(256, MINB) rowdot(float* y, const float* x, const float* W, i64 T, i64 K, i64 r, i64 wsj,
                                                    i64 wsi, u64 seed, double p, u64 thr, double ks) {
    if (wsj == 1 && wsi == R && r == R)
        lora_rowdot_t<R, ROWS, AHEAD, true>(y, x, W, T, K, r, wsj, wsi, seed, p, thr, ks);
    else
        lora_rowdot_t<R, ROWS, AHEAD, false>(y, x, W, T, K, r, wsj, wsi, seed, p, thr, ks);
}

// lora_cp4 copies one float from global to shared memory without the
// registers (cp.async, sm_80), or writes a zero where !ok (the copy's
// source size 0: src is then not read); lora_cp_commit closes a group,
// lora_cp_wait<n> waits until at most n of the thread's groups are in
// flight. A thread that reads only what it copied needs no barrier.
__device__ __forceinline__ void lora_cp4(float* dst, const float* src, bool ok) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(ok ? 4 : 0) : "memory");
}
__device__ __forceinline__ void lora_cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int n>
__device__ __forceinline__ void lora_cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(n) : "memory");
}

// lora_rowdot_pipe_t (tried in v24, not kept: 9.43-14.4 ms a step against
// AHEAD 2's 9.15; faster only for g, by 0.4 ms a step) is lora_rowdot_t (AHEAD 1) with each step's values
// of x (and of W, WPIPE) copied STAGES - 1 steps ahead into shared memory
// by cp.async instead of loaded into registers (blockDim.x must be 256;
// without WPIPE, W, which stays in L2, is loaded as it is needed): each thread copies
// exactly the x and W values it adds later, so the copies need no
// barrier, and the steps in flight cost shared memory, not registers.
// The same sums in the same order as lora_rowdot_t's, so the same bits.
template <int R, int ROWS, int STAGES, bool WPIPE>
__device__ __forceinline__ void lora_rowdot_pipe_t(float* y, const float* x, const float* W, i64 T, i64 K, i64 r,
                                                   i64 wsj, i64 wsi, u64 seed, double p_d, u64 thr, double ks_d) {
    static_assert(ROWS <= 4, "lora_rowdot_pipe_t: at most four rows a block");
    constexpr int NT = 256;
    __shared__ float xs[STAGES][ROWS][NT];
    __shared__ float ws[WPIPE ? STAGES : 1][WPIPE ? R : 1][NT];
    const float p = (float)p_d, ks = (float)ks_d;
    const i64 t0 = blockIdx.x * (i64)ROWS;
    const int i = threadIdx.x, lane = i & 31, warp = i >> 5;
    const bool shared = p > 0.0f && (K & 3) == 0;
    const unsigned int Ku = (unsigned int)K, wsju = (unsigned int)wsj;
    const float* xt = x + t0 * K;
    // The warp's steps: while any of its lanes has a k (the shuffles need
    // all 32 lanes); a lane's k past K copies zeros and adds nothing.
    const i64 nsteps = (K - warp * 32 + NT - 1) / NT;
    auto issue = [&](i64 m) {
        const int st = (int)(m % STAGES);
        const i64 k = m * NT + i;
        const bool in = m < nsteps && k < K;
#pragma unroll
        for (int q = 0; q < ROWS; q++) lora_cp4(&xs[st][q][i], in && t0 + q < T ? xt + q * Ku + k : x, in && t0 + q < T);
        if (WPIPE) {
#pragma unroll
            for (int j = 0; j < R; j++) lora_cp4(&ws[st][j][i], in && j < r ? W + j * wsju + k * wsi : W, in && j < r);
        }
        lora_cp_commit();
    };
    float acc[ROWS][R];
#pragma unroll
    for (int q = 0; q < ROWS; q++)
#pragma unroll
        for (int j = 0; j < R; j++) acc[q][j] = 0.0f;
#pragma unroll
    for (int m = 0; m < STAGES - 1; m++) issue(m);
    for (i64 m = 0; m < nsteps; m++) {
        issue(m + STAGES - 1);  // (empty groups past the end keep the count)
        lora_cp_wait<STAGES - 1>();
        const int st = (int)(m % STAGES);
        const i64 k = m * NT + i;
        const bool in = k < K;
        float v[ROWS], w[R];
#pragma unroll
        for (int q = 0; q < ROWS; q++) v[q] = xs[st][q][i];
#pragma unroll
        for (int j = 0; j < R; j++) w[j] = WPIPE ? ws[st][j][i] : (in && j < r ? W[j * wsju + k * wsi] : 0.0f);
        if (shared) {
            const u64 hm = dropout_hash(seed, (u64)(t0 * K + k) + ((lane & 3) % ROWS) * Ku);
#pragma unroll
            for (int q = 0; q < ROWS; q++) {
                const u64 h = __shfl_sync(0xffffffffu, hm, (lane & ~3) | q);
                v[q] = dropout_field(h, (u64)k) >= thr ? __fmul_rn(v[q], ks) : 0.0f;
            }
        } else if (p > 0.0f) {
#pragma unroll
            for (int q = 0; q < ROWS; q++) v[q] = lora_drop(v[q], seed, t0 * K + k + q * Ku, p, thr, ks);
        }
        if (in) {
#pragma unroll
            for (int q = 0; q < ROWS; q++)
                if (t0 + q < T) {
#pragma unroll
                    for (int j = 0; j < R; j++) acc[q][j] = __fadd_rn(acc[q][j], __fmul_rn(v[q], w[j]));
                }
        }
    }
    lora_cp_wait<0>();
    lora_rowdot_sum<R, ROWS>(acc, y, t0, T, r);
}

template <int ROWS, int STAGES, bool WPIPE>
__global__ void __launch_bounds__(256) rowdot_pipe(float* y, const float* x, const float* W, i64 T, i64 K, i64 r,
                                                   i64 wsj, i64 wsi, u64 seed, double p, u64 thr, double ks) {
    lora_rowdot_pipe_t<8, ROWS, STAGES, WPIPE>(y, x, W, T, K, r, wsj, wsi, seed, p, thr, ks);
}

typedef void (*rowdotFn)(float*, const float*, const float*, i64, i64, i64, i64, i64, u64, double, u64, double);

struct Variant {
    const char* name;
    rowdotFn f;
    int rows;
};

// bench times the variants vs[0..nv) at rank r, bits against vs[0].
static int bench(int r, const Variant* vs, int nv) {
    const int T = 1024, reps = 50;
    const double p = 0.05, ks = 1.0 / (1.0 - 0.05f);
    const u64 thr = 3277, seed = 0x5eed;  // ceil(0.05 * 2^16)
    struct Shape { const char* name; int K; bool h; int calls; } shapes[] = {
        {"h qkv_proj", 3072, true, 2}, {"h o_proj", 3072, true, 2}, {"h gate_up_proj", 3072, true, 2},
        {"h down_proj", 8192, true, 2}, {"g qkv_proj", 9216, false, 1}, {"g o_proj", 3072, false, 1},
        {"g gate_up_proj", 16384, false, 1}, {"g down_proj", 3072, false, 1},
    };
    for (int vi = 0; vi < nv; vi++) {
        cudaFuncAttributes fa;
        cudaFuncGetAttributes(&fa, vs[vi].f);
        int nb = 0;
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&nb, vs[vi].f, 256, 0);
        printf("%-28s %3d registers, %d blocks an SM\n", vs[vi].name, fa.numRegs, nb);
    }
    const size_t maxK = 16384, nbuf = 4;  // 4 x 67 MB: past the 60 MB L2
    float *x[nbuf], *W, *y;
    for (size_t i = 0; i < nbuf; i++) CK(cudaMalloc(&x[i], 4 * T * maxK));
    CK(cudaMalloc(&W, 4 * r * maxK));
    CK(cudaMalloc(&y, 4 * T * r));
    {
        std::vector<float> h(T * maxK);
        unsigned s = 1;
        for (size_t b = 0; b < nbuf; b++) {
            for (auto& v : h) { s = s * 1664525u + 1013904223u; v = ((int)(s >> 9) - (1 << 22)) * (1.0f / (1 << 22)); }
            CK(cudaMemcpy(x[b], h.data(), 4 * h.size(), cudaMemcpyHostToDevice));
        }
        std::vector<float> hw(r * maxK);
        for (auto& v : hw) { s = s * 1664525u + 1013904223u; v = ((int)(s >> 9) - (1 << 22)) * (0.05f / (1 << 22)); }
        CK(cudaMemcpy(W, hw.data(), 4 * hw.size(), cudaMemcpyHostToDevice));
    }
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    std::vector<double> step(nv, 0);
    printf("us a call (T %d, r %d), bits against %s\n", T, r, vs[0].name);
    for (auto& sh : shapes) {
        const int K = sh.K;
        const double pp = sh.h ? p : 0.0;
        const i64 wsj = sh.h ? K : 1, wsi = sh.h ? 1 : r;  // A [r,K], or B [K,r] read as B^T
        std::vector<float> ref(T * r), got(T * r);
        printf("%-16s K %5d %s\n", sh.name, K, sh.h ? "dropout 0.05" : "no dropout");
        for (int vi = 0; vi < nv; vi++) {
            const Variant& v = vs[vi];
            const int grid = (T + v.rows - 1) / v.rows;
            v.f<<<grid, 256>>>(y, x[0], W, T, K, r, wsj, wsi, seed, pp, thr, ks);
            CK(cudaGetLastError());
            CK(cudaMemcpy(vi == 0 ? ref.data() : got.data(), y, 4 * ref.size(), cudaMemcpyDeviceToHost));
            bool same = vi == 0 || memcmp(ref.data(), got.data(), 4 * ref.size()) == 0;
            cudaEventRecord(e0);
            for (int i = 0; i < reps; i++) v.f<<<grid, 256>>>(y, x[i % nbuf], W, T, K, r, wsj, wsi, seed, pp, thr, ks);
            cudaEventRecord(e1);
            CK(cudaEventSynchronize(e1));
            float ms;
            cudaEventElapsedTime(&ms, e0, e1);
            const double us = 1000.0 * ms / reps;
            step[vi] += 32 * sh.calls * us;
            printf("  %-28s %7.2f us  %5.2f TB/s  %s\n", v.name, us, 4.0 * T * K / us / 1e6, same ? "same bits" : "DIFFERENT BITS");
        }
    }
    printf("a step's 384 calls at rank %d (32 layers x the 8 above, h twice):\n", r);
    for (int vi = 0; vi < nv; vi++) printf("  %-28s %6.2f ms\n", vs[vi].name, step[vi] / 1000);
    for (size_t i = 0; i < nbuf; i++) cudaFree(x[i]);
    cudaFree(W);
    cudaFree(y);
    return 0;
}

// rowdot [8|16|all]: rank 8's variants (lora_rowdot8's), rank 16's
// (lora_rowdot16's, v24), or both (the default).
int main(int argc, char** argv) {
    const char* which = argc > 1 ? argv[1] : "all";
    Variant v8[] = {
        {"ROWS 4, AHEAD 1", rowdot<4, 1, 1>, 4},
        {"ROWS 4, AHEAD 2 (the trainer's)", rowdot<4, 2, 1>, 4},
        {"ROWS 4, AHEAD 1, 3 blocks", rowdot<4, 1, 3>, 4},
        {"ROWS 2, AHEAD 2", rowdot<2, 2, 1>, 2},
        {"ROWS 2, AHEAD 2, 4 blocks", rowdot<2, 2, 4>, 2},
        {"ROWS 4, AHEAD 4", rowdot<4, 4, 1>, 4},
        {"cp.async x+W, ROWS 4, 2 stages", rowdot_pipe<4, 2, true>, 4},
        {"cp.async x+W, ROWS 4, 3 stages", rowdot_pipe<4, 3, true>, 4},
        {"cp.async x+W, ROWS 2, 4 stages", rowdot_pipe<2, 4, true>, 2},
        {"cp.async x, ROWS 4, 4 stages", rowdot_pipe<4, 4, false>, 4},
        {"cp.async x, ROWS 4, 8 stages", rowdot_pipe<4, 8, false>, 4},
        {"cp.async x, ROWS 2, 8 stages", rowdot_pipe<2, 8, false>, 2},
    };
    Variant v16[] = {
        {"R 16, ROWS 2, AHEAD 1 (v23's)", rowdot<2, 1, 1, 16>, 2},
        {"R 16, ROWS 2, AHEAD 2", rowdot<2, 2, 1, 16>, 2},
        {"R 16, ROWS 4, AHEAD 1", rowdot<4, 1, 1, 16>, 4},
        {"R 16, ROWS 4, AHEAD 2", rowdot<4, 2, 1, 16>, 4},
    };
    int rc = 0;
    if (strcmp(which, "16") != 0) rc |= bench(8, v8, sizeof(v8) / sizeof(v8[0]));
    if (strcmp(which, "8") != 0) rc |= bench(16, v16, sizeof(v16) / sizeof(v16[0]));
    return rc;
}
