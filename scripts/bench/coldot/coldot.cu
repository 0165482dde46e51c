// coldot: the float32 LoRA weight gradients' column products alone (issue 8,
// v24). cuda/kernels/lora_dot.cuh's lora_coldot_t (a thread's loads of
// NB tokens issued together; with dropout and K % 4 == 0, the hashes shared
// by the four lanes of a group) against v23's lora_coldot_partial (8 loads
// at a time, a hash a value) and lora_coldot_finish, at the shapes of a
// Phi-3-mini step (T 1,024 tokens, rank 8, 32-token chunks): each layer's
// GradB of qkv_proj, o_proj, gate_up_proj and down_proj (dout, no dropout)
// and GradA of the same (x, dropout 0.05). Every variant's partial sums and
// final G are compared with v23's bit for bit. Inputs rotate over enough
// buffers to leave the L2 cache.
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -fmad=false -o /tmp/coldot coldot.cu && /tmp/coldot
// (on the GPU machine: this repository's CUDA 11.8 toolchain has no host
// compiler here).
#include <cstdio>
#include <cstring>
#include <vector>

#include "../../../cuda/kernels/lora_dot.cuh"

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

// v23's kernels, as they were.
__global__ void old_partial(float* part, const float* a, const float* x, i64 T, i64 K, i64 r, i64 tc, u64 seed, double p_d,
                            u64 thr, double ks_d) {
    __shared__ float as[64 * 16];
    const float p = (float)p_d, ks = (float)ks_d;
    const i64 c = blockIdx.y, t0 = c * tc, t1 = min(T, t0 + tc);
    const int nt = (int)(t1 - t0), rr = (int)r;
    for (int e = threadIdx.x; e < nt * rr; e += blockDim.x) as[e] = a[t0 * r + e];
    __syncthreads();
    const i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (k >= K) return;
    float acc[16];
#pragma unroll
    for (int j = 0; j < 16; j++) acc[j] = 0.0f;
    for (int tb = 0; tb < nt; tb += 8) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            i64 t = t0 + tb + u;
            v[u] = tb + u < nt ? lora_drop(x[t * K + k], seed, t * K + k, p, thr, ks) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            if (tb + u >= nt) break;
            const float* at = as + (tb + u) * rr;
#pragma unroll
            for (int j = 0; j < 16; j++)
                if (j < rr) acc[j] = __fadd_rn(acc[j], __fmul_rn(at[j], v[u]));
        }
    }
#pragma unroll
    for (int j = 0; j < 16; j++)
        if (j < rr) part[(c * r + j) * K + k] = acc[j];
}

__global__ void old_finish(float* G, const float* part, i64 nchunks, i64 K, i64 r, i64 gsj, i64 gsk, double scale_d) {
    float scale = (float)scale_d;
    i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    i64 j = blockIdx.y;
    if (k >= K) return;
    float s = 0.0f;
    for (i64 c = 0; c < nchunks; c++) s = __fadd_rn(s, part[(c * r + j) * K + k]);
    float* g = G + j * gsj + k * gsk;
    *g = __fadd_rn(*g, __fmul_rn(scale, s));
}

template <bool S, int NB>
__global__ void new_partial(float* part, const float* a, const float* x, i64 T, i64 K, i64 r, i64 tc, u64 seed, double p,
                            u64 thr, double ks) {
    lora_coldot_t<8, S, NB>(part, a, x, T, K, r, tc, seed, p, thr, ks);
}

__global__ void new_finish(float* G, const float* part, i64 nchunks, i64 K, i64 r, i64 gsj, i64 gsk, double scale) {
    lora_coldot_finish_t(G, part, nchunks, K, r, gsj, gsk, scale, 1);
}

typedef void (*partialFn)(float*, const float*, const float*, i64, i64, i64, i64, u64, double, u64, double);

struct Variant {
    const char* name;
    partialFn plain, shared;
    int threads;
};

int main() {
    const int T = 1024, r = 8, tc = 32, nc = T / tc, reps = 50;
    const double p = 0.05, ks = 1.0 / (1.0 - 0.05f);
    const u64 thr = 3277, seed = 0x5eed;  // ceil(0.05 * 2^16)
    struct Shape { const char* name; int K; bool drop; } shapes[] = {
        {"GradB qkv_proj", 9216, false}, {"GradB o_proj", 3072, false}, {"GradB gate_up_proj", 16384, false},
        {"GradB down_proj", 3072, false}, {"GradA qkv_proj", 3072, true}, {"GradA o_proj", 3072, true},
        {"GradA gate_up_proj", 3072, true}, {"GradA down_proj", 8192, true},
    };
    Variant vs[] = {
        {"v23 (8 loads, a hash a value)", old_partial, old_partial, 256},
        {"NB 8", new_partial<false, 8>, new_partial<true, 8>, 256},
        {"NB 16", new_partial<false, 16>, new_partial<true, 16>, 256},
        {"NB 32", new_partial<false, 32>, new_partial<true, 32>, 256},
        {"NB 32, 128 threads", new_partial<false, 32>, new_partial<true, 32>, 128},
        {"NB 16, 128 threads", new_partial<false, 16>, new_partial<true, 16>, 128},
    };
    const int nv = sizeof(vs) / sizeof(vs[0]);
    const size_t maxK = 16384, nbuf = 4;  // 4 x 67 MB: past the 60 MB L2
    float *x[nbuf], *a, *part, *G, *G0;
    for (size_t i = 0; i < nbuf; i++) CK(cudaMalloc(&x[i], 4 * T * maxK));
    CK(cudaMalloc(&a, 4 * T * r));
    CK(cudaMalloc(&part, 4 * nc * r * maxK));
    CK(cudaMalloc(&G, 4 * r * maxK));
    CK(cudaMalloc(&G0, 4 * r * maxK));
    {
        std::vector<float> h(T * maxK);
        unsigned s = 1;
        for (size_t b = 0; b < nbuf; b++) {
            for (auto& v : h) { s = s * 1664525u + 1013904223u; v = ((int)(s >> 9) - (1 << 22)) * (1.0f / (1 << 22)); }
            CK(cudaMemcpy(x[b], h.data(), 4 * h.size(), cudaMemcpyHostToDevice));
        }
        std::vector<float> ha(T * r);
        for (auto& v : ha) { s = s * 1664525u + 1013904223u; v = ((int)(s >> 9) - (1 << 22)) * (0.25f / (1 << 22)); }
        CK(cudaMemcpy(a, ha.data(), 4 * ha.size(), cudaMemcpyHostToDevice));
        CK(cudaMemset(G0, 0, 4 * r * maxK));
    }
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    // usPerCall times reps calls of launch(i) (i picks the input buffer).
    auto usPerCall = [&](auto launch) {
        cudaEventRecord(e0);
        for (int i = 0; i < reps; i++) launch(i);
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        return 1000.0 * ms / reps;
    };
    std::vector<double> stepPartial(nv, 0), stepFinish(2, 0);
    printf("us a call (T %d, r %d, %d-token chunks; partial, then finish v23 / new), bits against v23\n", T, r, tc);
    for (auto& sh : shapes) {
        const int K = sh.K;
        const double pp = sh.drop ? p : 0.0;
        const bool canShare = sh.drop && K % 4 == 0;
        std::vector<float> ref(nc * r * K), got(nc * r * K), refG(r * K), gotG(r * K);
        printf("%-20s K %5d %s\n", sh.name, K, sh.drop ? "dropout 0.05" : "no dropout");
        for (int vi = 0; vi < nv; vi++) {
            const Variant& v = vs[vi];
            partialFn f = canShare ? v.shared : v.plain;
            dim3 grid((K + v.threads - 1) / v.threads, nc);
            f<<<grid, v.threads>>>(part, a, x[0], T, K, r, tc, seed, pp, thr, ks);
            CK(cudaGetLastError());
            CK(cudaMemcpy(vi == 0 ? ref.data() : got.data(), part, 4 * ref.size(), cudaMemcpyDeviceToHost));
            bool same = vi == 0 || memcmp(ref.data(), got.data(), 4 * ref.size()) == 0;
            const double us = usPerCall([&](int i) {
                f<<<grid, v.threads>>>(part, a, x[i % nbuf], T, K, r, tc, seed, pp, thr, ks);
            });
            stepPartial[vi] += 32 * us;
            printf("  %-30s %7.2f us  %5.2f TB/s  %s\n", v.name, us, 4.0 * T * K / us / 1e6, same ? "same bits" : "DIFFERENT BITS");
        }
        // finish: v23's and the new one, from the same partial sums
        for (int fi = 0; fi < 2; fi++) {
            new_partial<false, 32><<<dim3((K + 255) / 256, nc), 256>>>(part, a, x[0], T, K, r, tc, seed, 0.0, thr, ks);
            CK(cudaMemcpy(G, G0, 4 * r * K, cudaMemcpyDeviceToDevice));
            dim3 grid((K + 255) / 256, r);
            if (fi == 0) old_finish<<<grid, 256>>>(G, part, nc, K, r, K, 1, 2.0);
            else new_finish<<<grid, 256>>>(G, part, nc, K, r, K, 1, 2.0);
            CK(cudaGetLastError());
            CK(cudaMemcpy(fi == 0 ? refG.data() : gotG.data(), G, 4 * r * K, cudaMemcpyDeviceToHost));
            const double us = usPerCall([&](int) {
                if (fi == 0) old_finish<<<grid, 256>>>(G, part, nc, K, r, K, 1, 2.0);
                else new_finish<<<grid, 256>>>(G, part, nc, K, r, K, 1, 2.0);
            });
            stepFinish[fi] += 32 * us;
            printf("  finish %-23s %7.2f us  %s\n", fi == 0 ? "v23" : "new", us,
                   fi == 0 || memcmp(refG.data(), gotG.data(), 4 * refG.size()) == 0 ? "same bits" : "DIFFERENT BITS");
        }
    }
    printf("a step's 256 calls (32 layers x the 8 above):\n");
    for (int vi = 0; vi < nv; vi++) printf("  partial %-30s %6.2f ms\n", vs[vi].name, stepPartial[vi] / 1000);
    printf("  finish v23 %6.2f ms, new %6.2f ms\n", stepFinish[0] / 1000, stepFinish[1] / 1000);
    return 0;
}
