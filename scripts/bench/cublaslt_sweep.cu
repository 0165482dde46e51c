// cuBLASLt algorithm sweep for the checkpointed step's base GEMMs (bf16 in,
// fp32 compute, the output type the backend uses), against cublasGemmEx's
// pick (BENCHMARKS.md, v8 and v19). For each shape: the heuristic's top 32
// timed, the fastest's configuration printed as the attributes a fixed table
// needs (cuda/cublaslt.go), whether its output has cublasGemmEx's bits and
// whether two runs of it agree. On a GPU machine:
//   nvcc -O2 -std=c++17 -arch=sm_90 scripts/bench/cublaslt_sweep.cu -o /tmp/sweep -lcublasLt -lcublas && /tmp/sweep
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cublasLt.h>
#include <cuda_bf16.h>
#include "cublaslt_attrs.cuh"
#define CK(x) do { auto e = (x); if (e != 0) { printf("%s:%d %s = %d\n", __FILE__, __LINE__, #x, (int)e); exit(1);} } while (0)
struct Shape { const char* name; bool tn; int M, N, K; int calls; bool half; };


int main(int argc, char** argv) {
  int want = argc > 1 ? atoi(argv[1]) : 32;
  Shape shapes[] = {
    {"fwd qkv", true, 1024, 9216, 3080, 63, true}, {"fwd o", true, 1024, 3072, 3080, 63, false},
    {"fwd gate_up", true, 1024, 16384, 3080, 63, true}, {"fwd down", true, 1024, 3072, 8200, 32, false},
    {"dx qkv", false, 1024, 3072, 9216, 31, false}, {"dx o", false, 1024, 3072, 3072, 32, false},
    {"dx gate_up", false, 1024, 3072, 16384, 32, false}, {"dx down", false, 1024, 8192, 3072, 32, false},
  };
  size_t maxe = (size_t)16384 * 8200;
  __nv_bfloat16 *A, *B; float *C, *C0, *C1; void* ws; size_t wsz = 32 << 20;
  size_t cbytes = (size_t)1024 * 16384 * 4;
  CK(cudaMalloc(&A, maxe * 2)); CK(cudaMalloc(&B, maxe * 2)); CK(cudaMalloc(&C, cbytes));
  CK(cudaMalloc(&C0, cbytes)); CK(cudaMalloc(&C1, cbytes)); CK(cudaMalloc(&ws, wsz));
  std::vector<__nv_bfloat16> h(maxe);
  for (size_t i = 0; i < maxe; i++) h[i] = __float2bfloat16((float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f);
  CK(cudaMemcpy(A, h.data(), maxe * 2, cudaMemcpyHostToDevice)); CK(cudaMemcpy(B, h.data(), maxe * 2, cudaMemcpyHostToDevice));
  cublasHandle_t hb; CK(cublasCreate(&hb)); cublasLtHandle_t lt; CK(cublasLtCreate(&lt));
  int blasVersion = 0;
  CK(cublasGetVersion(hb, &blasVersion));
  printf("cuBLAS %d, cuBLASLt %zu\n", blasVersion, cublasLtGetVersion());
  cudaStream_t st; CK(cudaStreamCreate(&st)); CK(cublasSetStream(hb, st));
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  const int reps = 30; float alpha = 1, beta = 0;
  double tot_def = 0, tot_best = 0, tot_best_same = 0;
  std::vector<unsigned char> hc0(cbytes), hc1(cbytes);
  for (auto& s : shapes) {
    // Row-major y[M,N] = x[M,K] . W[N,K]^T (tn) or dy[M,K].W[K,N] (nn), as column-major C^T[N,M].
    int m = s.N, n = s.M, k = s.K;
    cublasOperation_t opA = s.tn ? CUBLAS_OP_T : CUBLAS_OP_N;
    int lda = s.tn ? k : m, ldb = k, ldc = m;
    cudaDataType_t ct = s.half ? CUDA_R_16BF : CUDA_R_32F;
    size_t outb = (size_t)m * n * (s.half ? 2 : 4);
    auto timeit = [&](auto fn) { for (int i = 0; i < 3; i++) fn(); cudaEventRecord(e0, st); for (int i = 0; i < reps; i++) fn(); cudaEventRecord(e1, st); cudaEventSynchronize(e1); float ms; cudaEventElapsedTime(&ms, e0, e1); return ms * 1000 / reps; };
    auto gemmex = [&](void* out) { CK(cublasGemmEx(hb, opA, CUBLAS_OP_N, m, n, k, &alpha, B, CUDA_R_16BF, lda, A, CUDA_R_16BF, ldb, &beta, out, ct, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)); };
    float tdef = timeit([&] { gemmex(C); });
    gemmex(C0); CK(cudaStreamSynchronize(st)); CK(cudaMemcpy(hc0.data(), C0, outb, cudaMemcpyDeviceToHost));
    cublasLtMatmulDesc_t d; CK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA)));
    cublasLtMatrixLayout_t la, lb, lc;
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.tn ? k : m, s.tn ? m : k, lda));
    CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, n, ldb));
    CK(cublasLtMatrixLayoutCreate(&lc, ct, m, n, ldc));
    cublasLtMatmulPreference_t pref; CK(cublasLtMatmulPreferenceCreate(&pref));
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof(wsz)));
    std::vector<cublasLtMatmulHeuristicResult_t> res(want); int nres = 0;
    CK(cublasLtMatmulAlgoGetHeuristic(lt, d, la, lb, lc, lc, pref, want, res.data(), &nres));
    double fl = 2.0 * s.M * s.N * s.K;
    printf("%-12s %5dx%5dx%5d %s calls %2d: gemmEx %6.1f us (%3.0f TF), %d algorithms\n", s.name, s.M, s.N, s.K,
           s.half ? "bf16" : "f32 ", s.calls, tdef, fl / tdef / 1e6, nres);
    float best = 1e9, bestSame = 1e9;
    for (int i = 0; i < nres; i++) {
      auto run = [&](void* out) { CK(cublasLtMatmul(lt, d, &alpha, B, la, A, lb, &beta, out, lc, out, lc, &res[i].algo, ws, wsz, st)); };
      float t = timeit([&] { run(C); });
      run(C1); CK(cudaStreamSynchronize(st)); CK(cudaMemcpy(hc1.data(), C1, outb, cudaMemcpyDeviceToHost));
      bool same = memcmp(hc0.data(), hc1.data(), outb) == 0;
      run(C); CK(cudaStreamSynchronize(st));
      std::vector<unsigned char> hc2(outb); CK(cudaMemcpy(hc2.data(), C, outb, cudaMemcpyDeviceToHost));
      bool det = memcmp(hc1.data(), hc2.data(), outb) == 0;
      const auto& a = res[i].algo;
      if (t < best) best = t;
      if (same && t < bestSame) bestSame = t;
      if (i < 12 || t < tdef * 0.97)
        printf("  lt[%2d] %6.1f us (%3.0f TF) %s%s id %lld tile %lld stages %lld splitK %lld red %lld swz %lld custom %lld inner %lld cluster %lld ws %zu\n",
               i, t, fl / t / 1e6, same ? "same-bits " : "other-bits", det ? "" : " NONDETERMINISTIC",
               attr(a, CUBLASLT_ALGO_CONFIG_ID), attr(a, CUBLASLT_ALGO_CONFIG_TILE_ID), attr(a, CUBLASLT_ALGO_CONFIG_STAGES_ID),
               attr(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM), attr(a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
               attr(a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING), attr(a, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION),
               attr(a, CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID), attr(a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID), res[i].workspaceSize);
    }
    printf("  best %6.1f us (%.0f%% of gemmEx), best with gemmEx's bits %6.1f\n", best, 100 * best / tdef, bestSame);
    tot_def += tdef * s.calls; tot_best += std::min(tdef, best) * s.calls; tot_best_same += std::min(tdef, bestSame) * s.calls;
  }
  printf("per step: gemmEx %.2f ms, best %.2f ms, best with the same bits %.2f ms\n", tot_def / 1000, tot_best / 1000, tot_best_same / 1000);
}
