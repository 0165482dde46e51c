// cuBLASLt algorithm sweep for the checkpointed step's base GEMMs under
// float32 compute (issue 8, v25): float32 operands and output, IEEE
// float32 compute (the seed's bnb_4bit_compute_dtype) or, with --tf32,
// TF32 compute (training.tf32), against cublasSgemm's pick at the same
// shapes (the backend's call; "gemmEx" below). For each shape: the heuristic's top N
// timed (warm: the same operands every run), with whether its output has
// cublasSgemm's bits, whether two runs of it agree, and its largest error
// against a float64 dot product, relative to sum |a w| (64 entries; the
// same for cublasSgemm). Like cublaslt_sweep.cu (the bfloat16 one, v8/v19/v21).
// On a GPU machine:
//   nvcc -O2 -std=c++17 -arch=sm_90 scripts/bench/sgemm/sgemm_sweep.cu -o /tmp/sgemm -lcublasLt -lcublas && /tmp/sgemm [--tf32] [N]
#include "sgemm_common.cuh"

int main(int argc, char** argv) {
  bool tf32 = false;
  int want = 24;
  for (int i = 1; i < argc; i++) {
    if (std::string(argv[i]) == "--tf32") tf32 = true; else want = atoi(argv[i]);
  }
  size_t cbytes = (size_t)1024 * 16384 * 4;
  Operands op;
  float *A = op.A, *W = op.W, *C, *C0, *C1; void* ws; size_t wsz = 32 << 20;
  CK(cudaMalloc(&C, cbytes)); CK(cudaMalloc(&C0, cbytes)); CK(cudaMalloc(&C1, cbytes)); CK(cudaMalloc(&ws, wsz));
  cublasHandle_t hb; CK(cublasCreate(&hb)); cublasLtHandle_t lt; CK(cublasLtCreate(&lt));
  CK(cublasSetMathMode(hb, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  int blasVersion = 0; CK(cublasGetVersion(hb, &blasVersion));
  printf("cuBLAS %d, cuBLASLt %zu, %s compute\n", blasVersion, cublasLtGetVersion(), tf32 ? "TF32" : "IEEE float32");
  cudaStream_t st; CK(cudaStreamCreate(&st)); CK(cublasSetStream(hb, st));
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  const int reps = tf32 ? 20 : 8; float alpha = 1, beta = 0;
  cublasComputeType_t ctype = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  double tot_def = 0, tot_best = 0, tot_best_same = 0;
  std::vector<float> hc0(cbytes / 4), hc1(cbytes / 4), hc2(cbytes / 4);
  for (auto& s : kShapes) {
    const Gemm gm(s);
    const int m = gm.m, n = gm.n, k = gm.k, lda = gm.lda, ldb = gm.ldb, ldc = gm.ldc;
    const cublasOperation_t opA = gm.opA;
    size_t outn = (size_t)m * n;
    auto timeit = [&](auto fn) { for (int i = 0; i < 2; i++) fn(); cudaEventRecord(e0, st); for (int i = 0; i < reps; i++) fn(); cudaEventRecord(e1, st); cudaEventSynchronize(e1); float ms; cudaEventElapsedTime(&ms, e0, e1); return ms * 1000 / reps; };
    // the backend's call (cuda/cublas.go): cublasSgemm, TF32 through the handle's math mode
    auto gemmex = [&](float* out) { CK(cublasSgemm(hb, opA, CUBLAS_OP_N, m, n, k, &alpha, W, lda, A, ldb, &beta, out, ldc)); };
    float tdef = timeit([&] { gemmex(C); });
    gemmex(C0); CK(cudaStreamSynchronize(st)); CK(cudaMemcpy(hc0.data(), C0, outn * 4, cudaMemcpyDeviceToHost));
    const Reference ref(s, op);
    auto err = [&](const std::vector<float>& c) { return ref.err(c); };
    const LtShape ls(gm, ctype);
    const auto d = ls.d; const auto la = ls.la, lb = ls.lb, lc = ls.lc;
    cublasLtMatmulPreference_t pref; CK(cublasLtMatmulPreferenceCreate(&pref));
    CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof(wsz)));
    std::vector<cublasLtMatmulHeuristicResult_t> res(want); int nres = 0;
    CK(cublasLtMatmulAlgoGetHeuristic(lt, d, la, lb, lc, lc, pref, want, res.data(), &nres));
    double fl = 2.0 * s.M * s.N * s.K;
    printf("%-11s %5dx%5dx%5d calls %2d: gemmEx %8.1f us (%4.1f TF) err %.1e, %d algorithms\n", s.name, s.M, s.N, s.K, s.calls,
           tdef, fl / tdef / 1e6, err(hc0), nres);
    float best = 1e9, bestSame = 1e9;
    for (int i = 0; i < nres; i++) {
      auto run = [&](float* out) { CK(cublasLtMatmul(lt, d, &alpha, W, la, A, lb, &beta, out, lc, out, lc, &res[i].algo, ws, wsz, st)); };
      float t = timeit([&] { run(C); });
      run(C1); CK(cudaStreamSynchronize(st)); CK(cudaMemcpy(hc1.data(), C1, outn * 4, cudaMemcpyDeviceToHost));
      bool same = memcmp(hc0.data(), hc1.data(), outn * 4) == 0;
      run(C); CK(cudaStreamSynchronize(st)); CK(cudaMemcpy(hc2.data(), C, outn * 4, cudaMemcpyDeviceToHost));
      bool det = memcmp(hc1.data(), hc2.data(), outn * 4) == 0;
      const auto& a = res[i].algo;
      best = std::min(best, t);
      if (same) bestSame = std::min(bestSame, t);
      printf("  lt[%2d] %8.1f us (%4.1f TF) %s%s err %.1e id %lld tile %lld stages %lld splitK %lld red %lld swz %lld custom %lld cluster %lld ws %zu\n",
             i, t, fl / t / 1e6, same ? "same-bits " : "other-bits", det ? "" : " NONDETERMINISTIC", err(hc1),
             attr(a, CUBLASLT_ALGO_CONFIG_ID), attr(a, CUBLASLT_ALGO_CONFIG_TILE_ID), attr(a, CUBLASLT_ALGO_CONFIG_STAGES_ID),
             attr(a, CUBLASLT_ALGO_CONFIG_SPLITK_NUM), attr(a, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
             attr(a, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING), attr(a, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION),
             attr(a, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID), res[i].workspaceSize);
    }
    printf("  best %8.1f us (%.0f%% of gemmEx), best with gemmEx's bits %8.1f\n", best, 100 * best / tdef, bestSame);
    tot_def += tdef * s.calls; tot_best += std::min(tdef, best) * s.calls; tot_best_same += std::min(tdef, bestSame) * s.calls;
  }
  printf("per step: gemmEx %.2f ms, best %.2f ms, best with the same bits %.2f ms\n", tot_def / 1000, tot_best / 1000, tot_best_same / 1000);
}
