// cuBLASLt algorithm sweep for the checkpointed step's base GEMMs (bf16 in, fp32 out,
// fp32 compute), against cublasGemmEx's pick (BENCHMARKS.md, v8). On a GPU machine:
//   nvcc -O2 -std=c++17 -arch=sm_90 scripts/bench/cublaslt_sweep.cu -o /tmp/sweep -lcublasLt -lcublas && /tmp/sweep
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cublasLt.h>
#include <cuda_bf16.h>
#define CK(x) do { auto e = (x); if (e != 0) { printf("%s:%d %s = %d\n", __FILE__, __LINE__, #x, (int)e); exit(1);} } while (0)
struct Shape { const char* name; bool tn; int M, N, K; int calls; };
int main() {
  Shape shapes[] = {
    {"fwd qkv", true, 1024, 9216, 3080, 63}, {"fwd o", true, 1024, 3072, 3080, 63},
    {"fwd gate_up", true, 1024, 16384, 3080, 63}, {"fwd down", true, 1024, 3072, 8200, 63},
    {"dx qkv", false, 1024, 3072, 9216, 31}, {"dx o", false, 1024, 3072, 3072, 32},
    {"dx gate_up", false, 1024, 3072, 16384, 32}, {"dx down", false, 1024, 8192, 3072, 32},
  };
  size_t maxe = (size_t)16384 * 8200;
  __nv_bfloat16 *A, *B; float* C; void* ws; size_t wsz = 64 << 20;
  CK(cudaMalloc(&A, maxe * 2)); CK(cudaMalloc(&B, maxe * 2)); CK(cudaMalloc(&C, (size_t)1024 * 16384 * 4)); CK(cudaMalloc(&ws, wsz));
  std::vector<__nv_bfloat16> h(maxe);
  for (size_t i = 0; i < maxe; i++) h[i] = __float2bfloat16((float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f);
  CK(cudaMemcpy(A, h.data(), maxe * 2, cudaMemcpyHostToDevice)); CK(cudaMemcpy(B, h.data(), maxe * 2, cudaMemcpyHostToDevice));
  cublasHandle_t hb; CK(cublasCreate(&hb)); cublasLtHandle_t lt; CK(cublasLtCreate(&lt));
  cudaStream_t st; CK(cudaStreamCreate(&st)); CK(cublasSetStream(hb, st));
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  const int reps = 20; float alpha = 1, beta = 0;
  double tot_def = 0, tot_best = 0;
  for (auto& s : shapes) {
    // Row-major y[M,N] = x[M,K] . W[N,K]^T (tn) or dy[M,K].W[K,N] (nn), as column-major C^T[N,M].
    int m = s.N, n = s.M, k = s.K;
    cublasOperation_t opA = s.tn ? CUBLAS_OP_T : CUBLAS_OP_N;
    int lda = s.tn ? k : m, ldb = k, ldc = m;
    auto timeit = [&](auto fn) { for (int i = 0; i < 3; i++) fn(); cudaEventRecord(e0, st); for (int i = 0; i < reps; i++) fn(); cudaEventRecord(e1, st); cudaEventSynchronize(e1); float ms; cudaEventElapsedTime(&ms, e0, e1); return ms * 1000 / reps; };
    float tdef = timeit([&] { CK(cublasGemmEx(hb, opA, CUBLAS_OP_N, m, n, k, &alpha, B, CUDA_R_16BF, lda, A, CUDA_R_16BF, ldb, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)); });
    cublasLtMatmulDesc_t d; CK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA)));
    cublasLtMatrixLayout_t la, lb, lc;
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.tn ? k : m, s.tn ? m : k, lda));
    CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, n, ldb));
    CK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, m, n, ldc));
    cublasLtMatmulPreference_t pref; CK(cublasLtMatmulPreferenceCreate(&pref));
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof(wsz)));
    cublasLtMatmulHeuristicResult_t res[32]; int nres = 0;
    CK(cublasLtMatmulAlgoGetHeuristic(lt, d, la, lb, lc, lc, pref, 32, res, &nres));
    float best = 1e9; int bi = -1; std::vector<float> ts;
    for (int i = 0; i < nres; i++) {
      float t = timeit([&] { CK(cublasLtMatmul(lt, d, &alpha, B, la, A, lb, &beta, C, lc, C, lc, &res[i].algo, ws, wsz, st)); });
      ts.push_back(t); if (t < best) { best = t; bi = i; }
    }
    // SM count target (leave SMs for a side stream)
    float tsm[3] = {0, 0, 0}; int sms[3] = {124, 116, 100};
    for (int q = 0; q < 3; q++) {
      int smc = sms[q];
      if (cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &smc, sizeof(smc)) != 0) break;
      cublasLtMatmulHeuristicResult_t r1; int n1 = 0;
      CK(cublasLtMatmulAlgoGetHeuristic(lt, d, la, lb, lc, lc, pref, 1, &r1, &n1));
      tsm[q] = timeit([&] { CK(cublasLtMatmul(lt, d, &alpha, B, la, A, lb, &beta, C, lc, C, lc, &r1.algo, ws, wsz, st)); });
    }
    double fl = 2.0 * s.M * s.N * s.K;
    printf("%-12s %5dx%5dx%5d calls %2d: gemmEx %6.1f us (%3.0f TF)  lt[0] %6.1f  best lt[%d] %6.1f us (%3.0f TF) of %d; sm124 %6.1f sm116 %6.1f sm100 %6.1f\n",
           s.name, s.M, s.N, s.K, s.calls, tdef, fl / tdef / 1e6, ts.empty() ? 0 : ts[0], bi, best, fl / best / 1e6, nres, tsm[0], tsm[1], tsm[2]);
    tot_def += tdef * s.calls; tot_best += std::min(tdef, best) * s.calls;
  }
  printf("per step: gemmEx %.2f ms, best %.2f ms\n", tot_def / 1000, tot_best / 1000);
}
