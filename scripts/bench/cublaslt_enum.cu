// cuBLASLt's whole configuration space for the N = 3072 base GEMMs of the
// checkpointed step (issue 8, v20): cublaslt_sweep.cu times the
// heuristic's 8 answers, within 2% of cublasGemmEx's pick at every shape;
// this one enumerates every algorithm id cuBLASLt has for bf16 in, fp32
// compute, and every tile (and cluster shape) it allows for each, without
// split-K, and times those cublasLtMatmulAlgoCheck accepts, against
// cublasGemmEx: the o_proj GEMMs (96 tiles of 128 x 256 on 132 SMs) run at
// ~555 TFLOP/s in the step against 730 for gate_up's. Bits compared with
// cublasGemmEx's. On a GPU machine:
//   nvcc -O2 -std=c++17 -arch=sm_90 scripts/bench/cublaslt_enum.cu -o /tmp/enum -lcublasLt -lcublas && /tmp/enum
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cublasLt.h>
#include <cuda_bf16.h>
#define CK(x) do { auto e = (x); if (e != 0) { printf("%s:%d %s = %d\n", __FILE__, __LINE__, #x, (int)e); exit(1);} } while (0)
struct Shape { const char* name; bool tn; int M, N, K; int calls; bool half; };

// caps reads a capability array of uint32 (empty: none or unreadable).
static std::vector<unsigned> caps(const cublasLtMatmulAlgo_t& a, cublasLtMatmulAlgoCapAttributes_t w) {
  size_t n = 0;
  if (cublasLtMatmulAlgoCapGetAttribute(&a, w, nullptr, 0, &n) != 0 || n == 0) return {};
  std::vector<unsigned> v(n / 4);
  if (cublasLtMatmulAlgoCapGetAttribute(&a, w, v.data(), n, &n) != 0) return {};
  return v;
}

int main() {
  Shape shapes[] = {
    {"fwd o", true, 1024, 3072, 3080, 63, false}, {"dx o", false, 1024, 3072, 3072, 32, false},
    {"fwd down", true, 1024, 3072, 8200, 32, false}, {"dx qkv", false, 1024, 3072, 9216, 31, false},
  };
  size_t maxe = (size_t)9216 * 8200;
  __nv_bfloat16 *A, *B; float *C, *C0; void* ws; size_t wsz = 32 << 20;
  size_t cbytes = (size_t)1024 * 3072 * 4;
  CK(cudaMalloc(&A, maxe * 2)); CK(cudaMalloc(&B, maxe * 2)); CK(cudaMalloc(&C, cbytes));
  CK(cudaMalloc(&C0, cbytes)); CK(cudaMalloc(&ws, wsz));
  std::vector<__nv_bfloat16> h(maxe);
  for (size_t i = 0; i < maxe; i++) h[i] = __float2bfloat16((float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f);
  CK(cudaMemcpy(A, h.data(), maxe * 2, cudaMemcpyHostToDevice)); CK(cudaMemcpy(B, h.data(), maxe * 2, cudaMemcpyHostToDevice));
  cublasHandle_t hb; CK(cublasCreate(&hb)); cublasLtHandle_t lt; CK(cublasLtCreate(&lt));
  printf("cuBLASLt %zu\n", cublasLtGetVersion());
  cudaStream_t st; CK(cudaStreamCreate(&st)); CK(cublasSetStream(hb, st));
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  int reps = 3; float alpha = 1, beta = 0;
  std::vector<unsigned char> hc0(cbytes), hc1(cbytes);
  for (auto& s : shapes) {
    int m = s.N, n = s.M, k = s.K;
    cublasOperation_t opA = s.tn ? CUBLAS_OP_T : CUBLAS_OP_N;
    int lda = s.tn ? k : m, ldb = k, ldc = m;
    cudaDataType_t ct = s.half ? CUDA_R_16BF : CUDA_R_32F;
    size_t outb = (size_t)m * n * (s.half ? 2 : 4);
    auto timeit = [&](auto fn) { fn(); cudaEventRecord(e0, st); for (int i = 0; i < reps; i++) fn(); cudaEventRecord(e1, st); cudaEventSynchronize(e1); float ms; cudaEventElapsedTime(&ms, e0, e1); return ms * 1000 / reps; };
    auto gemmex = [&](void* out) { CK(cublasGemmEx(hb, opA, CUBLAS_OP_N, m, n, k, &alpha, B, CUDA_R_16BF, lda, A, CUDA_R_16BF, ldb, &beta, out, ct, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)); };
    reps = 20;
    float tdef = timeit([&] { gemmex(C); });
    reps = 3;
    gemmex(C0); CK(cudaStreamSynchronize(st)); CK(cudaMemcpy(hc0.data(), C0, outb, cudaMemcpyDeviceToHost));
    cublasLtMatmulDesc_t d; CK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(opA)));
    cublasLtMatrixLayout_t la, lb, lc;
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.tn ? k : m, s.tn ? m : k, lda));
    CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, n, ldb));
    CK(cublasLtMatrixLayoutCreate(&lc, ct, m, n, ldc));
    double fl = 2.0 * s.M * s.N * s.K;
    int ids[256], nids = 0;
    CK(cublasLtMatmulAlgoGetIds(lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, ct, ct, 256, ids, &nids));
    printf("%-9s %5dx%5dx%5d calls %2d: gemmEx %6.1f us (%3.0f TF); %d algorithm ids\n", s.name, s.M, s.N, s.K, s.calls, tdef, fl / tdef / 1e6, nids);
    struct R { float t; bool same; int id; unsigned tile, stage, cluster; cublasLtMatmulAlgo_t algo; };
    std::vector<R> rs;
    int tried = 0, ok = 0;
    for (int a = 0; a < nids; a++) {
      cublasLtMatmulAlgo_t algo;
      if (cublasLtMatmulAlgoInit(lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, ct, ct, ids[a], &algo) != 0) continue;
      auto tiles = caps(algo, CUBLASLT_ALGO_CAP_TILE_IDS);
      if (tiles.empty()) tiles.push_back(0);
      // cublasLtClusterShape_t: auto, 1x1x1, 2x1x1, 1x2x1 (no capability
      // attribute lists them; cublasLtMatmulAlgoCheck refuses the others).
      const std::vector<unsigned> clusters{0, 2, 3, 5};
      auto stages = caps(algo, CUBLASLT_ALGO_CAP_STAGES_IDS);
      if (stages.empty()) stages.push_back(0);
      for (unsigned tile : tiles)
        for (unsigned stage : stages)
        for (unsigned cluster : clusters) {
          cublasLtMatmulAlgo_t x = algo;
          int splitk = 1;
          cublasLtMatmulAlgoConfigSetAttribute(&x, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof(tile));
          cublasLtMatmulAlgoConfigSetAttribute(&x, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stage, sizeof(stage));
          cublasLtMatmulAlgoConfigSetAttribute(&x, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof(splitk));
#if CUBLAS_VER_MAJOR >= 12
          cublasLtMatmulAlgoConfigSetAttribute(&x, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof(cluster));
#endif
          cublasLtMatmulHeuristicResult_t chk;
          tried++;
          if (cublasLtMatmulAlgoCheck(lt, d, la, lb, lc, lc, &x, &chk) != 0 || chk.workspaceSize > wsz) continue;
          auto run = [&](void* out) { return cublasLtMatmul(lt, d, &alpha, B, la, A, lb, &beta, out, lc, out, lc, &x, ws, wsz, st); };
          if (run(C) != 0) continue;
          ok++;
          float t = timeit([&] { run(C); });
          run(C); CK(cudaStreamSynchronize(st)); CK(cudaMemcpy(hc1.data(), C, outb, cudaMemcpyDeviceToHost));
          rs.push_back({t, memcmp(hc0.data(), hc1.data(), outb) == 0, ids[a], tile, stage, cluster, x});
        }
    }
    // A quick pass (3 runs each), then the 16 fastest again (20 runs).
    {
      std::vector<int> ran;
      for (auto& r : rs) if (std::find(ran.begin(), ran.end(), r.id) == ran.end()) ran.push_back(r.id);
      printf("  algorithm ids:");
      for (int a = 0; a < nids; a++) printf(" %d%s", ids[a], std::find(ran.begin(), ran.end(), ids[a]) != ran.end() ? "*" : "");
      printf("  (* ran)\n");
    }
    std::sort(rs.begin(), rs.end(), [](const R& a, const R& b) { return a.t < b.t; });
    reps = 20;
    for (size_t i = 0; i < rs.size() && i < 16; i++)
      rs[i].t = timeit([&] { CK(cublasLtMatmul(lt, d, &alpha, B, la, A, lb, &beta, C, lc, C, lc, &rs[i].algo, ws, wsz, st)); });
    std::sort(rs.begin(), rs.begin() + std::min<size_t>(rs.size(), 16), [](const R& a, const R& b) { return a.t < b.t; });
    printf("  %d configurations tried, %d ran; the fastest:\n", tried, ok);
    for (size_t i = 0; i < rs.size() && i < 8; i++)
      printf("  %6.1f us (%3.0f TF, %3.0f%% of gemmEx) %s id %d tile %u stages %u cluster %u\n", rs[i].t, fl / rs[i].t / 1e6, 100 * rs[i].t / tdef,
             rs[i].same ? "same-bits " : "other-bits", rs[i].id, rs[i].tile, rs[i].stage, rs[i].cluster);
    for (auto& r : rs)
      if (r.same) { printf("  fastest with gemmEx's bits (timed 3 times unless among the 16): %6.1f us (%.0f%% of gemmEx) id %d tile %u cluster %u\n", r.t, 100 * r.t / tdef, r.id, r.tile, r.cluster); break; }
  }
}
