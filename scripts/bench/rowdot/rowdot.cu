// rowdot: the float32 LoRA row products alone (issue 8, v24).
// cuda/kernels/lora_dot.cuh's lora_rowdot_t<R, ROWS, AHEAD> (a block of 256
// threads for ROWS rows; each thread's loads of AHEAD steps of k issued
// together) at the shapes of a Phi-3-mini step (T 1,024 tokens, rank 8):
// h = dropout(x) . A^T for qkv_proj, o_proj, gate_up_proj (K 3,072) and
// down_proj (K 8,192), dropout 0.05, twice a layer (the forward and
// checkpointing's recompute), and g = dout . B for the four (K 9,216,
// 3,072, 16,384, 3,072), once. Every variant's y is compared with the
// trainer's (ROWS 4, AHEAD 1) bit for bit: a thread's k order, the
// shuffles and the warps' order do not depend on ROWS or AHEAD. Inputs
// rotate over enough buffers to leave the L2 cache.
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -fmad=false -o /tmp/rowdot rowdot.cu && /tmp/rowdot
// (on the GPU machine: this repository's CUDA 11.8 toolchain has no host
// compiler here).
#include <cstdio>
#include <cstring>
#include <vector>

#include "../../../cuda/kernels/lora_dot.cuh"

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

template <int ROWS, int AHEAD, int MINB>
__global__ void __launch_bounds__(256, MINB) rowdot(float* y, const float* x, const float* W, i64 T, i64 K, i64 r, i64 wsj,
                                                    i64 wsi, u64 seed, double p, u64 thr, double ks) {
    lora_rowdot_t<8, ROWS, AHEAD>(y, x, W, T, K, r, wsj, wsi, seed, p, thr, ks);
}

typedef void (*rowdotFn)(float*, const float*, const float*, i64, i64, i64, i64, i64, u64, double, u64, double);

struct Variant {
    const char* name;
    rowdotFn f;
    int rows;
};

int main() {
    const int T = 1024, r = 8, reps = 50;
    const double p = 0.05, ks = 1.0 / (1.0 - 0.05f);
    const u64 thr = 3277, seed = 0x5eed;  // ceil(0.05 * 2^16)
    struct Shape { const char* name; int K; bool h; int calls; } shapes[] = {
        {"h qkv_proj", 3072, true, 2}, {"h o_proj", 3072, true, 2}, {"h gate_up_proj", 3072, true, 2},
        {"h down_proj", 8192, true, 2}, {"g qkv_proj", 9216, false, 1}, {"g o_proj", 3072, false, 1},
        {"g gate_up_proj", 16384, false, 1}, {"g down_proj", 3072, false, 1},
    };
    Variant vs[] = {
        {"ROWS 4, AHEAD 1 (v23)", rowdot<4, 1, 1>, 4},
        {"ROWS 4, AHEAD 1, 3 blocks", rowdot<4, 1, 3>, 4},
        {"ROWS 4, AHEAD 2", rowdot<4, 2, 1>, 4},
        {"ROWS 2, AHEAD 1", rowdot<2, 1, 1>, 2},
        {"ROWS 2, AHEAD 2", rowdot<2, 2, 1>, 2},
        {"ROWS 2, AHEAD 2, 4 blocks", rowdot<2, 2, 4>, 2},
        {"ROWS 2, AHEAD 4", rowdot<2, 4, 1>, 2},
        {"ROWS 1, AHEAD 4", rowdot<1, 4, 1>, 1},
        {"ROWS 4, AHEAD 1, 4 blocks", rowdot<4, 1, 4>, 4},
        {"ROWS 2, AHEAD 1, 4 blocks", rowdot<2, 1, 4>, 2},
        {"ROWS 8, AHEAD 1", rowdot<8, 1, 1>, 8},
    };
    const int nv = sizeof(vs) / sizeof(vs[0]);
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
    printf("us a call (T %d, r %d), bits against ROWS 4, AHEAD 1\n", T, r);
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
    printf("a step's 384 calls (32 layers x the 8 above, h twice):\n");
    for (int vi = 0; vi < nv; vi++) printf("  %-28s %6.2f ms\n", vs[vi].name, step[vi] / 1000);
    return 0;
}
