// loragrad: the LoRA weight gradients of one Phi-3-mini layer's backward
// (issue 8, v18), timed as the CUDA backend issues them (8 cublasGemmEx
// calls, cuda/lora_bf16.go's linearBackwardBF16: GradB [out,r] += s dh^T . h
// then GradA [r,in] += s g^T . x for each of qkv, o, gate_up, down) against
// cublasGemmGroupedBatchedEx (cuBLAS >= 12.5): one call a module (its two
// products as two groups) and one call for the layer's eight; and
// cublasGemmBatchedEx over the products that share a shape (GradA of qkv,
// o and gate_up; GradB of o and down), which the backend adopted
// (cuda/loragrads.go). bfloat16
// operands, float32 gradients (beta 1), T = 1024 tokens, r = 8.
// "warm": the same operands every time (they stay in the L2 cache, as dh
// does in the step); "cold": three operand sets in turn (~0.35 GB).
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/loragrad loragrad.cu -lcublas && /tmp/loragrad
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cstdio>
#include <vector>
#include <algorithm>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); exit(1); } } while (0)
#define CB(x) do { cublasStatus_t s = (x); if (s != CUBLAS_STATUS_SUCCESS) { printf("%s: status %d\n", #x, (int)s); return -1.0f; } } while (0)

const int T = 1024, R = 8, SETS = 3;
struct Mod { const char* name; int out, in; };
const Mod mods[4] = {{"qkv", 9216, 3072}, {"o", 3072, 3072}, {"gate_up", 16384, 3072}, {"down", 3072, 8192}};

struct Set { __nv_bfloat16 *dh[4], *x[4], *h[4], *g[4]; };
float *gB[4], *gA[4];
Set sets[SETS];

// The backend's two GEMMs of module m, column-major: GradB^T [r,out]? No: it
// passes row-major shapes to a wrapper; here the column-major equivalents:
//   GradB (row-major [out,r]) = col-major [r,out] = h^T(col [r,T]) . dh(col [out,T])^T
//   GradA (row-major [r,in]) = col-major [in,r] = x(col [in,T]) . g(col [r,T])^T
struct G { cublasOperation_t ta, tb; int m, n, k; const void *A, *B; int lda, ldb; void* C; int ldc; };
G gradB(const Set& s, int m) { return {CUBLAS_OP_N, CUBLAS_OP_T, R, mods[m].out, T, s.h[m], s.dh[m], R, mods[m].out, gB[m], R}; }
G gradA(const Set& s, int m) { return {CUBLAS_OP_N, CUBLAS_OP_T, mods[m].in, R, T, s.x[m], s.g[m], mods[m].in, R, gA[m], mods[m].in}; }

cublasHandle_t H;
void** dptrs;  // device pointer arrays for the grouped calls: [call][A|B|C][8]

int single(const G& g) {
    const float alpha = 0.5f, beta = 1.0f;
    return cublasGemmEx(H, g.ta, g.tb, g.m, g.n, g.k, &alpha, g.A, CUDA_R_16BF, g.lda, g.B, CUDA_R_16BF, g.ldb, &beta, g.C,
                        CUDA_R_32F, g.ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

// grouped runs gs as one call of len(gs) groups of one problem; slot picks
// its pointer arrays (filled once, before timing).
int grouped(const std::vector<G>& gs, int slot, bool fill) {
    const int n = (int)gs.size();
    std::vector<cublasOperation_t> ta(n), tb(n);
    std::vector<int> m(n), nn(n), k(n), lda(n), ldb(n), ldc(n), size(n, 1);
    std::vector<float> alpha(n, 0.5f), beta(n, 1.0f);
    void** P = dptrs + slot * 24;
    if (fill) {
        std::vector<const void*> h(24);
        for (int i = 0; i < n; i++) h[i] = gs[i].A, h[8 + i] = gs[i].B, h[16 + i] = gs[i].C;
        CK(cudaMemcpy(P, h.data(), 24 * sizeof(void*), cudaMemcpyHostToDevice));
    }
    for (int i = 0; i < n; i++)
        ta[i] = gs[i].ta, tb[i] = gs[i].tb, m[i] = gs[i].m, nn[i] = gs[i].n, k[i] = gs[i].k, lda[i] = gs[i].lda,
        ldb[i] = gs[i].ldb, ldc[i] = gs[i].ldc;
    return cublasGemmGroupedBatchedEx(H, ta.data(), tb.data(), m.data(), nn.data(), k.data(), alpha.data(),
                                      (const void* const*)P, CUDA_R_16BF, lda.data(), (const void* const*)(P + 8),
                                      CUDA_R_16BF, ldb.data(), beta.data(), (void* const*)(P + 16), CUDA_R_32F,
                                      ldc.data(), n, size.data(), CUBLAS_COMPUTE_32F);
}

template <class F>
float timeit(F f, int reps) {
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    for (int i = 0; i < 5; i++) if (f(i) != 0) return -1.0f;
    std::vector<float> v;
    for (int r = 0; r < 7; r++) {
        cudaEventRecord(e0);
        for (int i = 0; i < reps; i++) f(i);
        cudaEventRecord(e1);
        cudaEventSynchronize(e1);
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        v.push_back(1000.0f * ms / reps);
    }
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

template <class Tp>
Tp* fill(size_t n) {
    Tp* p;
    CK(cudaMalloc(&p, n * sizeof(Tp)));
    std::vector<Tp> h(n);
    for (size_t i = 0; i < n; i++) h[i] = (Tp)(((i * 2654435761u) % 2001) / 1000.0f - 1.0f);
    CK(cudaMemcpy(p, h.data(), n * sizeof(Tp), cudaMemcpyHostToDevice));
    return p;
}

int main() {
    cublasCreate(&H);
    int ver;
    cublasGetVersion(H, &ver);
    cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("%s, cuBLAS %d\n", prop.name, ver);
    for (int s = 0; s < SETS; s++)
        for (int m = 0; m < 4; m++) {
            sets[s].dh[m] = fill<__nv_bfloat16>((size_t)T * mods[m].out);
            sets[s].x[m] = fill<__nv_bfloat16>((size_t)T * mods[m].in);
            sets[s].h[m] = fill<__nv_bfloat16>((size_t)T * R);
            sets[s].g[m] = fill<__nv_bfloat16>((size_t)T * R);
        }
    for (int m = 0; m < 4; m++) gB[m] = fill<float>((size_t)mods[m].out * R), gA[m] = fill<float>((size_t)R * mods[m].in);
    CK(cudaMalloc(&dptrs, 64 * 24 * sizeof(void*)));  // slots 0..39 grouped, 40 batched
    // slots: set s, module m pairs at 8s + m; set s all eight at 8s + 4
    for (int s = 0; s < SETS; s++) {
        std::vector<G> all;
        for (int m = 0; m < 4; m++) {
            grouped({gradB(sets[s], m), gradA(sets[s], m)}, 8 * s + m, true);
            all.push_back(gradB(sets[s], m)), all.push_back(gradA(sets[s], m));
        }
        if (grouped(all, 8 * s + 4, true) != 0) printf("grouped (all 8): status %d\n", grouped(all, 8 * s + 4, false));
    }
    CK(cudaDeviceSynchronize());
    for (int cold = 0; cold < 2; cold++) {
        auto S = [&](int i) -> const Set& { return sets[cold ? i % SETS : 0]; };
        auto slot = [&](int i) { return cold ? i % SETS : 0; };
        printf("== %s operands\n", cold ? "cold (3 sets in turn)" : "warm (one set)");
        float sum = 0;
        for (int m = 0; m < 4; m++) {
            float b = timeit([&](int i) { return single(gradB(S(i), m)); }, 50);
            float a = timeit([&](int i) { return single(gradA(S(i), m)); }, 50);
            float p = timeit([&](int i) { return single(gradB(S(i), m)) | single(gradA(S(i), m)); }, 50);
            float gp = timeit([&](int i) { return grouped({gradB(S(i), m), gradA(S(i), m)}, 8 * slot(i) + m, false); }, 50);
            printf("%-8s GradB %5dx8x1024 %6.2f us  GradA 8x%dx1024 %6.2f us  both (2 calls) %6.2f us  grouped (1 call) %6.2f us\n",
                   mods[m].name, mods[m].out, b, mods[m].in, a, p, gp);
            sum += p;
        }
        float l8 = timeit([&](int i) { int r = 0; for (int m = 0; m < 4; m++) r |= single(gradB(S(i), m)) | single(gradA(S(i), m)); return r; }, 30);
        float g4 = timeit([&](int i) { int r = 0; for (int m = 0; m < 4; m++) r |= grouped({gradB(S(i), m), gradA(S(i), m)}, 8 * slot(i) + m, false); return r; }, 30);
        std::vector<G> all[SETS];
        for (int s = 0; s < SETS; s++) for (int m = 0; m < 4; m++) all[s].push_back(gradB(sets[s], m)), all[s].push_back(gradA(sets[s], m));
        float g1 = timeit([&](int i) { return grouped(all[slot(i)], 8 * slot(i) + 4, false); }, 30);
        printf("layer: 8 calls %.2f us (pairs summed %.2f), 4 grouped pairs %.2f us, 1 grouped call %.2f us\n", l8, sum, g4, g1);
    }
    // cublasGemmBatchedEx over the products that share a shape (v18, call 8):
    // GradA of qkv, o and gate_up ([8, 3072] over 1,024 tokens), GradB of o
    // and down ([3072, 8]); warm operands. Same bits as the single calls?
    {
        const float alpha = 0.5f, beta = 1.0f;
        void** P = dptrs + 40 * 24;
        const int am[3] = {0, 1, 2}, bm[2] = {1, 3};
        std::vector<const void*> h(15);
        for (int i = 0; i < 3; i++) h[i] = sets[0].x[am[i]], h[3 + i] = sets[0].g[am[i]], h[6 + i] = gA[am[i]];
        for (int i = 0; i < 2; i++) h[9 + i] = sets[0].h[bm[i]], h[11 + i] = sets[0].dh[bm[i]], h[13 + i] = gB[bm[i]];
        CK(cudaMemcpy(P, h.data(), 15 * sizeof(void*), cudaMemcpyHostToDevice));
        auto batA = [&](int) {
            return (int)cublasGemmBatchedEx(H, CUBLAS_OP_N, CUBLAS_OP_T, 3072, R, T, &alpha, (const void* const*)P, CUDA_R_16BF, 3072,
                                            (const void* const*)(P + 3), CUDA_R_16BF, R, &beta, (void* const*)(P + 6), CUDA_R_32F,
                                            3072, 3, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        };
        auto batB = [&](int) {
            return (int)cublasGemmBatchedEx(H, CUBLAS_OP_N, CUBLAS_OP_T, R, 3072, T, &alpha, (const void* const*)(P + 9), CUDA_R_16BF, R,
                                            (const void* const*)(P + 11), CUDA_R_16BF, 3072, &beta, (void* const*)(P + 13), CUDA_R_32F,
                                            R, 2, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        };
        float a3 = timeit([&](int) { return single(gradA(sets[0], 0)) | single(gradA(sets[0], 1)) | single(gradA(sets[0], 2)); }, 50);
        float ab = timeit(batA, 50);
        float b2 = timeit([&](int) { return single(gradB(sets[0], 1)) | single(gradB(sets[0], 3)); }, 50);
        float bb = timeit(batB, 50);
        printf("batched: GradA x3 %.2f us as 3 calls, %.2f us as 1 (status %d); GradB x2 %.2f us as 2 calls, %.2f us as 1 (status %d)\n",
               a3, ab, batA(0), b2, bb, batB(0));
        // bits: zero, run singles, download; zero, run batched, download
        auto zero = [&]() {
            for (int m = 0; m < 4; m++) {
                CK(cudaMemset(gA[m], 0, (size_t)R * mods[m].in * 4));
                CK(cudaMemset(gB[m], 0, (size_t)mods[m].out * R * 4));
            }
        };
        auto grab = [&]() {
            std::vector<float> v;
            for (int i = 0; i < 3; i++) {
                std::vector<float> a((size_t)R * 3072);
                CK(cudaMemcpy(a.data(), gA[am[i]], a.size() * 4, cudaMemcpyDeviceToHost));
                v.insert(v.end(), a.begin(), a.end());
            }
            for (int i = 0; i < 2; i++) {
                std::vector<float> b((size_t)R * 3072);
                CK(cudaMemcpy(b.data(), gB[bm[i]], b.size() * 4, cudaMemcpyDeviceToHost));
                v.insert(v.end(), b.begin(), b.end());
            }
            return v;
        };
        zero();
        for (int i = 0; i < 3; i++) single(gradA(sets[0], am[i]));
        for (int i = 0; i < 2; i++) single(gradB(sets[0], bm[i]));
        CK(cudaDeviceSynchronize());
        std::vector<float> s1 = grab();
        zero();
        batA(0), batB(0);
        CK(cudaDeviceSynchronize());
        std::vector<float> s2 = grab();
        size_t nd = 0;
        for (size_t i = 0; i < s1.size(); i++) nd += s1[i] != s2[i];
        printf("batched vs single calls: %zu of %zu values differ\n", nd, s1.size());
    }
    // Same results? GradB/GradA after one single pass vs one grouped pass from the same start.
    std::vector<float> ref, got;
    for (int pass = 0; pass < 2; pass++) {
        for (int m = 0; m < 4; m++) {
            std::vector<float> z((size_t)mods[m].out * R, 0.0f), za((size_t)R * mods[m].in, 0.0f);
            CK(cudaMemcpy(gB[m], z.data(), z.size() * 4, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(gA[m], za.data(), za.size() * 4, cudaMemcpyHostToDevice));
            if (pass == 0) single(gradB(sets[0], m)), single(gradA(sets[0], m));
            else grouped({gradB(sets[0], m), gradA(sets[0], m)}, m, false);
        }
        CK(cudaDeviceSynchronize());
        std::vector<float>& dst = pass == 0 ? ref : got;
        for (int m = 0; m < 4; m++) {
            std::vector<float> b((size_t)mods[m].out * R), a((size_t)R * mods[m].in);
            CK(cudaMemcpy(b.data(), gB[m], b.size() * 4, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(a.data(), gA[m], a.size() * 4, cudaMemcpyDeviceToHost));
            dst.insert(dst.end(), b.begin(), b.end()), dst.insert(dst.end(), a.begin(), a.end());
        }
    }
    size_t diff = 0;
    double maxd = 0;
    for (size_t i = 0; i < ref.size(); i++) if (ref[i] != got[i]) diff++, maxd = std::max(maxd, (double)fabsf(ref[i] - got[i]));
    printf("grouped vs single: %zu of %zu values differ (max |d| %g)\n", diff, ref.size(), maxd);
    return 0;
}
