// cuBLASLt's configuration space for the checkpointed step's base GEMMs
// under float32 compute (issue 8, v25): sgemm_sweep.cu found the
// heuristic's few answers (3-8 a shape) within 1-2% of cublasSgemm's pick
// under IEEE float32, and fwd qkv (1024 x 9216 x 3072, 63 calls a step) at
// 39.5 TFLOP/s against 47-51 for the other shapes (its tiles' waves, by
// the arithmetic). This one enumerates every algorithm id cuBLASLt lists
// for float32 operands and output (IEEE, or with --tf32 TF32 compute),
// every tile and stage count each lists, split-K 1, 2, 3 and 4 (with the
// reduction schemes each takes) and CTA swizzling 0 and 1, times those
// cublasLtMatmulAlgoCheck accepts (one run, then 3 warm runs where that
// one is within 1.5x; the fastest 8 again, 10 runs; at most 30 s a shape) against cublasSgemm (the backend's call), and says which give
// cublasSgemm's bits and their error against a float64 dot product
// relative to sum |a w| (64 entries). On a GPU machine:
//   nvcc -O2 -std=c++17 -arch=sm_90 scripts/bench/sgemm/sgemm_enum.cu -o /tmp/senum -lcublasLt -lcublas && /tmp/senum [--tf32] [shape ...]
#include <chrono>
#include "sgemm_common.cuh"


int main(int argc, char** argv) {
  const Shape* all = kShapes;
  bool tf32 = false;
  std::vector<Shape> shapes;
  for (int i = 1; i < argc; i++) {
    std::string a(argv[i]);
    if (a == "--tf32") { tf32 = true; continue; }
    bool found = false;
    for (int j = 0; j < 8; j++) {
      const Shape& s = all[j];
      std::string name(s.name);
      std::replace(name.begin(), name.end(), ' ', '_');
      if (name == a) shapes.push_back(s), found = true;
    }
    if (!found) { printf("unknown shape %s\n", argv[i]); return 2; }
  }
  if (shapes.empty()) shapes.assign(all, all + 8);
  size_t cbytes = (size_t)1024 * 16384 * 4;
  Operands op;
  float *A = op.A, *W = op.W, *C, *C0; void* ws; size_t wsz = 64 << 20;
  CK(cudaMalloc(&C, cbytes)); CK(cudaMalloc(&C0, cbytes)); CK(cudaMalloc(&ws, wsz));
  cublasHandle_t hb; CK(cublasCreate(&hb)); cublasLtHandle_t lt; CK(cublasLtCreate(&lt));
  CK(cublasSetMathMode(hb, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  printf("cuBLASLt %zu, %s compute\n", cublasLtGetVersion(), tf32 ? "TF32" : "IEEE float32");
  cudaStream_t st; CK(cudaStreamCreate(&st)); CK(cublasSetStream(hb, st));
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  int reps = 3; float alpha = 1, beta = 0;
  cublasComputeType_t ctype = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  std::vector<float> hc0(cbytes / 4), hc1(cbytes / 4);
  double tot_def = 0, tot_best = 0, tot_same = 0;
  for (auto& s : shapes) {
    const Gemm gm(s);
    const int m = gm.m, n = gm.n, k = gm.k, lda = gm.lda, ldb = gm.ldb, ldc = gm.ldc;
    const cublasOperation_t opA = gm.opA;
    size_t outn = (size_t)m * n;
    auto timeit = [&](auto fn) { fn(); cudaEventRecord(e0, st); for (int i = 0; i < reps; i++) fn(); cudaEventRecord(e1, st); cudaEventSynchronize(e1); float ms; cudaEventElapsedTime(&ms, e0, e1); return ms * 1000 / reps; };
    auto sgemm = [&](float* out) { CK(cublasSgemm(hb, opA, CUBLAS_OP_N, m, n, k, &alpha, W, lda, A, ldb, &beta, out, ldc)); };
    reps = 10;
    float tdef = timeit([&] { sgemm(C); });
    reps = 3;
    sgemm(C0); CK(cudaStreamSynchronize(st)); CK(cudaMemcpy(hc0.data(), C0, outn * 4, cudaMemcpyDeviceToHost));
    const Reference ref(s, op);
    auto err = [&](const std::vector<float>& c) { return ref.err(c); };
    double edef = err(hc0);
    const LtShape ls(gm, ctype);
    const auto d = ls.d; const auto la = ls.la, lb = ls.lb, lc = ls.lc;
    int ids[256], nids = 0;
    CK(cublasLtMatmulAlgoGetIds(lt, ctype, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, 256, ids, &nids));
    double fl = 2.0 * s.M * s.N * s.K;
    printf("%-11s %5dx%5dx%5d calls %2d: cublasSgemm %8.1f us (%4.1f TF) err %.1e; %d algorithm ids\n", s.name, s.M, s.N, s.K,
           s.calls, tdef, fl / tdef / 1e6, edef, nids);
    struct R { float t; bool same; double e; int id; unsigned tile, stage; int splitk, red, swz; cublasLtMatmulAlgo_t algo; };
    std::vector<R> rs;
    int tried = 0, ran = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (int a = 0; a < nids; a++) {
      if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(30)) { printf("  (30 s spent: ids from %d on skipped)\n", ids[a]); break; }
      cublasLtMatmulAlgo_t algo;
      if (cublasLtMatmulAlgoInit(lt, ctype, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, CUDA_R_32F, ids[a], &algo) != 0) continue;
      auto tiles = caps(algo, CUBLASLT_ALGO_CAP_TILE_IDS);
      if (tiles.empty()) tiles.push_back(0);
      auto stages = caps(algo, CUBLASLT_ALGO_CAP_STAGES_IDS);
      if (stages.empty()) stages.push_back(0);
      long long sk = capv(algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT), redmask = capv(algo, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK),
                swz = capv(algo, CUBLASLT_ALGO_CAP_CTA_SWIZZLING_SUPPORT);
      int before = ran;
      for (unsigned tile : tiles)
        for (unsigned stage : stages)
          for (int splitk : {1, 2, 3, 4}) {
            if (splitk > 1 && sk != 1) continue;
            std::vector<int> reds{0};
            if (splitk > 1) {
              reds.clear();
              for (int r : {1, 2, 4}) if (redmask & r) reds.push_back(r);
            }
            for (int red : reds)
              for (int sw = 0; sw <= (swz == 1 ? 1 : 0); sw++) {
                cublasLtMatmulAlgo_t x = algo;
                if (!setattr(&x, CUBLASLT_ALGO_CONFIG_TILE_ID, tile) || !setattr(&x, CUBLASLT_ALGO_CONFIG_STAGES_ID, stage) ||
                    !setattr(&x, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, splitk) || !setattr(&x, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, red) ||
                    !setattr(&x, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, sw))
                  continue;
                tried++;
                cublasLtMatmulHeuristicResult_t chk;
                if (cublasLtMatmulAlgoCheck(lt, d, la, lb, lc, lc, &x, &chk) != 0 || chk.workspaceSize > wsz) continue;
                auto run = [&](float* out) { return cublasLtMatmul(lt, d, &alpha, W, la, A, lb, &beta, out, lc, out, lc, &x, ws, wsz, st); };
                cudaEventRecord(e0, st);
                if (run(C) != 0) continue;
                cudaEventRecord(e1, st); cudaEventSynchronize(e1);
                float t1; cudaEventElapsedTime(&t1, e0, e1);
                ran++;
                if (t1 * 1000 > 1.5f * tdef) continue;  // one run says it is far off
                float t = timeit([&] { run(C); });
                if (t > 1.03f * tdef) continue;
                run(C); CK(cudaStreamSynchronize(st)); CK(cudaMemcpy(hc1.data(), C, outn * 4, cudaMemcpyDeviceToHost));
                rs.push_back({t, memcmp(hc0.data(), hc1.data(), outn * 4) == 0, err(hc1), ids[a], tile, stage, splitk, red, sw, x});
              }
          }
      if (ran > before) printf("  id %d: %zu tiles, %zu stage counts, split-K %s (reductions %lld), swizzle %s: %d ran\n", ids[a], tiles.size(),
                               stages.size(), sk == 1 ? "yes" : "no", redmask, swz == 1 ? "yes" : "no", ran - before);
    }
    std::sort(rs.begin(), rs.end(), [](const R& a, const R& b) { return a.t < b.t; });
    reps = 10;
    for (size_t i = 0; i < rs.size() && i < 8; i++)
      rs[i].t = timeit([&] { CK(cublasLtMatmul(lt, d, &alpha, W, la, A, lb, &beta, C, lc, C, lc, &rs[i].algo, ws, wsz, st)); });
    tdef = timeit([&] { sgemm(C); });
    std::sort(rs.begin(), rs.begin() + std::min<size_t>(rs.size(), 8), [](const R& a, const R& b) { return a.t < b.t; });
    printf("  %d configurations tried, %d ran; within 3%% of cublasSgemm (%.1f us again):\n", tried, ran, tdef);
    float best = tdef, bestSame = tdef;
    for (size_t i = 0; i < rs.size() && i < 8; i++) {
      printf("  %8.1f us (%4.1f TF, %3.0f%%) %s err %.1e id %d tile %u stages %u split-K %d red %d swizzle %d\n", rs[i].t,
             fl / rs[i].t / 1e6, 100 * rs[i].t / tdef, rs[i].same ? "same-bits " : "other-bits", rs[i].e, rs[i].id, rs[i].tile,
             rs[i].stage, rs[i].splitk, rs[i].red, rs[i].swz);
      best = std::min(best, rs[i].t);
      if (rs[i].same) bestSame = std::min(bestSame, rs[i].t);
    }
    tot_def += tdef * s.calls, tot_best += best * s.calls, tot_same += bestSame * s.calls;
  }
  printf("per step: cublasSgemm %.2f ms, best %.2f ms, best with its bits %.2f ms\n", tot_def / 1000, tot_best / 1000, tot_same / 1000);
}
