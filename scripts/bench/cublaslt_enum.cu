// cuBLASLt's whole configuration space for the base GEMMs of the
// checkpointed step (issue 8, v20-v21): cublaslt_sweep.cu times the
// heuristic's 8 answers, within 2% of cublasGemmEx's pick at every shape;
// this one enumerates the Hopper algorithm ids cuBLASLt has for bf16 in,
// fp32 compute (58, 66, 67; the others ran at most 390 TFLOP/s, v20's
// calls 10-11), every tile, stage count and custom option each lists and
// six cluster shapes, without split-K, plus the heuristic's answers with
// their tile and cluster varied, and times those cublasLtMatmulAlgoCheck
// accepts against cublasGemmEx (warm: the same operands every run). Bits
// compared with cublasGemmEx's. The 16 fastest with gemmEx's bits are then
// timed again with the operands rotating through four copies past the L2
// cache (cold), as the step reads weights just dequantized: the warm
// ranking's gains did not reach the step (v21), the cold ranking gave
// cuda/cublaslt.go's ltPins. Attributes are set at their own width
// (setattr): at 4 bytes the Hopper kernels refuse every configuration.
// On a GPU machine (shapes by name, below; default the four N = 3072 ones):
//   nvcc -O2 -std=c++17 -arch=sm_90 scripts/bench/cublaslt_enum.cu -o /tmp/enum -lcublasLt -lcublas && /tmp/enum [--sustained] fwd_qkv dx_down
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <algorithm>
#include <string>
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cublasLt.h>
#include <cuda_bf16.h>
#include "cublaslt_attrs.cuh"
#define CK(x) do { auto e = (x); if (e != 0) { printf("%s:%d %s = %d\n", __FILE__, __LINE__, #x, (int)e); exit(1);} } while (0)
// Shape: the row-major step GEMM C[M,N] = A[M,K] . op(B) (tn: B stored
// [N,K], the forwards; else [K,N], the dx products), ldw the weight's row
// stride (0: its width; the folded linears' weights are K + 8 wide), half a
// bfloat16 C.
struct Shape { const char* name; bool tn; int M, N, K; int calls; bool half; int ldw; };


// Usage: enum [shape ...] with shape one of the names below, spaces
// written "_" (fwd_gate_up) (default: the four N = 3072 shapes of call 14).
int main(int argc, char** argv) {
  Shape all[] = {
    {"fwd o", true, 1024, 3072, 3080, 63, false, 0}, {"dx o", false, 1024, 3072, 3072, 32, false, 3080},
    {"fwd down", true, 1024, 3072, 8200, 32, false, 0}, {"dx qkv", false, 1024, 3072, 9216, 31, false, 3080},
    {"fwd gate_up", true, 1024, 16384, 3080, 63, true, 0}, {"fwd qkv", true, 1024, 9216, 3080, 63, true, 0},
    {"dx gate_up", false, 1024, 3072, 16384, 32, false, 3080}, {"dx down", false, 1024, 8192, 3072, 32, false, 8200},
  };
  std::vector<Shape> shapes;
  bool sustained = false;  // --sustained: rank the cold winners at the power cap too
  if (argc > 1 && std::string(argv[1]) == "--sustained") sustained = true, argc--, argv++;
  if (argc < 2) shapes.assign(all, all + 4);
  for (int i = 1; i < argc; i++) {
    bool found = false;
    for (auto& s : all) {
      std::string name(s.name);
      std::replace(name.begin(), name.end(), ' ', '_');
      if (name == argv[i]) shapes.push_back(s), found = true;
    }
    if (!found) { printf("unknown shape %s\n", argv[i]); return 2; }
  }
  size_t maxe = (size_t)16384 * 8200;
  __nv_bfloat16 *A, *B; float *C, *C0; void* ws; size_t wsz = 32 << 20;
  size_t cbytes = (size_t)1024 * 16384 * 4;
  // NS copies of the same operands: the last pass rotates through them,
  // past the 50 MB L2, as the step reads weights just dequantized (v21:
  // the warm-cache winners gained less in the step than here).
  const int NS = 4;
  CK(cudaMalloc(&A, NS * maxe * 2)); CK(cudaMalloc(&B, NS * maxe * 2)); CK(cudaMalloc(&C, cbytes));
  CK(cudaMalloc(&C0, cbytes)); CK(cudaMalloc(&ws, wsz));
  std::vector<__nv_bfloat16> h(maxe);
  for (size_t i = 0; i < maxe; i++) h[i] = __float2bfloat16((float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f);
  for (int i = 0; i < NS; i++) {
    CK(cudaMemcpy(A + i * maxe, h.data(), maxe * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(B + i * maxe, h.data(), maxe * 2, cudaMemcpyHostToDevice));
  }
  cublasHandle_t hb; CK(cublasCreate(&hb)); cublasLtHandle_t lt; CK(cublasLtCreate(&lt));
  printf("cuBLASLt %zu\n", cublasLtGetVersion());
  cudaStream_t st; CK(cudaStreamCreate(&st)); CK(cublasSetStream(hb, st));
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  int reps = 3; float alpha = 1, beta = 0;
  std::vector<unsigned char> hc0(cbytes), hc1(cbytes);
  for (auto& s : shapes) {
    int m = s.N, n = s.M, k = s.K;
    cublasOperation_t opA = s.tn ? CUBLAS_OP_T : CUBLAS_OP_N;
    int lda = s.tn ? k : (s.ldw ? s.ldw : m), ldb = k, ldc = m;
    cudaDataType_t ct = s.half ? CUDA_R_16BF : CUDA_R_32F;
    size_t outb = (size_t)m * n * (s.half ? 2 : 4);
    auto timeit = [&](auto fn) { fn(); cudaEventRecord(e0, st); for (int i = 0; i < reps; i++) fn(); cudaEventRecord(e1, st); cudaEventSynchronize(e1); float ms; cudaEventElapsedTime(&ms, e0, e1); return ms * 1000 / reps; };
    // timecold: fn(set) over the NS operand sets in turn.
    auto timecold = [&](auto fn) { fn(0); cudaEventRecord(e0, st); for (int i = 0; i < reps; i++) fn(i % NS); cudaEventRecord(e1, st); cudaEventSynchronize(e1); float ms; cudaEventElapsedTime(&ms, e0, e1); return ms * 1000 / reps; };
    auto gemmexSet = [&](void* out, int set) { CK(cublasGemmEx(hb, opA, CUBLAS_OP_N, m, n, k, &alpha, B + set * maxe, CUDA_R_16BF, lda, A + set * maxe, CUDA_R_16BF, ldb, &beta, out, ct, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)); };
    auto gemmex = [&](void* out) { gemmexSet(out, 0); };
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
    // The heuristic's answers, read once: their tiles and stage counts join
    // the enumeration (the Hopper answers, v19's id 66, carry tile ids past
    // the capability list and stages 35), and their algo structs are
    // varied too (Hopper kernels may need opaque state that
    // cublasLtMatmulAlgoInit does not give).
    std::vector<cublasLtMatmulAlgo_t> hal;
    std::vector<unsigned> htiles, hstages;
    {
      cublasLtMatmulPreference_t pref; CK(cublasLtMatmulPreferenceCreate(&pref));
      CK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof(wsz)));
      cublasLtMatmulHeuristicResult_t hr[32]; int nh = 0;
      CK(cublasLtMatmulAlgoGetHeuristic(lt, d, la, lb, lc, lc, pref, 32, hr, &nh));
      for (int i = 0; i < nh; i++) {
        hal.push_back(hr[i].algo);
        unsigned v = 0; size_t n = 0;
        if (cublasLtMatmulAlgoConfigGetAttribute(&hr[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &v, sizeof(v), &n) == 0) htiles.push_back(v);
        v = 0;
        if (cublasLtMatmulAlgoConfigGetAttribute(&hr[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &v, sizeof(v), &n) == 0) hstages.push_back(v);
      }
      cublasLtMatmulPreferenceDestroy(pref);
    }
    int ids[256], nids = 0;
    CK(cublasLtMatmulAlgoGetIds(lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, ct, ct, 256, ids, &nids));
    printf("%-9s %5dx%5dx%5d calls %2d: gemmEx %6.1f us (%3.0f TF); %d algorithm ids\n", s.name, s.M, s.N, s.K, s.calls, tdef, fl / tdef / 1e6, nids);
    struct R { float t; bool same; int id; unsigned tile, stage; int custom; unsigned cluster; cublasLtMatmulAlgo_t algo; };
    std::vector<R> rs;
    // tryConfig checks configuration x, and if cuBLASLt takes it, times it
    // (a quick pass: 3 runs) and compares its output with gemmEx's.
    auto tryConfig = [&](const cublasLtMatmulAlgo_t& x, int id, unsigned tile, unsigned stage, int custom, unsigned cluster,
                         int& tried, int& ran) {
      cublasLtMatmulHeuristicResult_t chk;
      tried++;
      if (cublasLtMatmulAlgoCheck(lt, d, la, lb, lc, lc, &x, &chk) != 0 || chk.workspaceSize > wsz) return;
      auto run = [&](void* out) { return cublasLtMatmul(lt, d, &alpha, B, la, A, lb, &beta, out, lc, out, lc, &x, ws, wsz, st); };
      if (run(C) != 0) return;
      ran++;
      float t = timeit([&] { run(C); });
      if (t > 1.05f * tdef) return;  // only the candidates are compared (and listed)
      run(C); CK(cudaStreamSynchronize(st)); CK(cudaMemcpy(hc1.data(), C, outb, cudaMemcpyDeviceToHost));
      rs.push_back({t, memcmp(hc0.data(), hc1.data(), outb) == 0, id, tile, stage, custom, cluster, x});
    };
    // cublasLtClusterShape_t: auto, 1x1x1, 2x1x1, 1x2x1, 4x2x1, 2x4x1 (no
    // capability attribute lists them; cublasLtMatmulAlgoCheck refuses
    // what an algorithm cannot take).
    const std::vector<unsigned> clusters{0, 2, 3, 5, 7, 9};
    std::vector<unsigned> alltiles;  // ids 66's and 67's, for the heuristic's structs
    int tried = 0, ok = 0;
    for (int a = 0; a < nids; a++) {
      cublasLtMatmulAlgo_t algo;
      if (ids[a] < 58) continue;  // ids 5-42: calls 10-11 (pre-Hopper; at most 390 TFLOP/s)
      if (cublasLtMatmulAlgoInit(lt, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, ct, ct, ids[a], &algo) != 0) continue;
      auto tiles = caps(algo, CUBLASLT_ALGO_CAP_TILE_IDS);
      if (ids[a] == 66 || ids[a] == 67)
        for (auto t : tiles) if (std::find(alltiles.begin(), alltiles.end(), t) == alltiles.end()) alltiles.push_back(t);
      if (tiles.empty()) tiles.push_back(0);
      auto stages = caps(algo, CUBLASLT_ALGO_CAP_STAGES_IDS);
      if (stages.empty()) stages.push_back(0);
      for (auto& t : htiles) if (std::find(tiles.begin(), tiles.end(), t) == tiles.end()) tiles.push_back(t);
      for (auto& t : hstages) if (std::find(stages.begin(), stages.end(), t) == stages.end()) stages.push_back(t);
      int cmax = 0;
      { size_t n = 0; cublasLtMatmulAlgoCapGetAttribute(&algo, CUBLASLT_ALGO_CAP_CUSTOM_OPTION_MAX, &cmax, sizeof(cmax), &n); }
      cmax = std::min(cmax, 15);
      printf("  id %d: %zu tiles, %zu stage counts, custom options 0..%d\n", ids[a], tiles.size(), stages.size(), cmax);
      for (unsigned tile : tiles)
        for (unsigned stage : stages)
          for (int custom = 0; custom <= cmax; custom++)
            for (unsigned cluster : clusters) {
              cublasLtMatmulAlgo_t x = algo;
              if (setattr(&x, CUBLASLT_ALGO_CONFIG_TILE_ID, tile) && setattr(&x, CUBLASLT_ALGO_CONFIG_STAGES_ID, stage) &&
                  setattr(&x, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, custom) && setattr(&x, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, 1) &&
                  setattr(&x, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, cluster))
                tryConfig(x, ids[a], tile, stage, custom, cluster, tried, ok);
            }
    }
    // The heuristic's structs, each with its tile and cluster shape varied.
    int htried = 0, hran = 0;
    for (size_t hi = 0; hi < hal.size(); hi++)
      for (unsigned tile : alltiles)
        for (unsigned cluster : clusters) {
          cublasLtMatmulAlgo_t x = hal[hi];
          if (!setattr(&x, CUBLASLT_ALGO_CONFIG_TILE_ID, tile) || !setattr(&x, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, cluster)) continue;
          int custom = -1; size_t n = 0;
          cublasLtMatmulAlgoConfigGetAttribute(&x, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, &custom, sizeof(custom), &n);
          tryConfig(x, 1000 + (int)hi, tile, 0, custom, cluster, htried, hran);
        }
    printf("  the heuristic's %zu answers x %zu tiles x 6 cluster shapes: %d tried, %d ran (ids 1000 + the answer's rank)\n",
           hal.size(), alltiles.size(), htried, hran);
    {
      std::vector<int> ran;
      for (auto& r : rs) if (std::find(ran.begin(), ran.end(), r.id) == ran.end()) ran.push_back(r.id);
      printf("  algorithm ids:");
      for (int a = 0; a < nids; a++) printf(" %d%s", ids[a], std::find(ran.begin(), ran.end(), ids[a]) != ran.end() ? "*" : "");
      printf("  (* ran)\n");
    }
    // The 16 fastest of the quick pass again, 20 runs each (warm), then
    // the 16 fastest with gemmEx's bits, and gemmEx, over the NS operand
    // sets in turn (cold: the pins' ranking, v21).
    std::sort(rs.begin(), rs.end(), [](const R& a, const R& b) { return a.t < b.t; });
    reps = 20;
    for (size_t i = 0; i < rs.size() && i < 16; i++)
      rs[i].t = timeit([&] { CK(cublasLtMatmul(lt, d, &alpha, B, la, A, lb, &beta, C, lc, C, lc, &rs[i].algo, ws, wsz, st)); });
    std::sort(rs.begin(), rs.begin() + std::min<size_t>(rs.size(), 16), [](const R& a, const R& b) { return a.t < b.t; });
    printf("  %d configurations tried, %d ran; the fastest:\n", tried, ok);
    for (size_t i = 0; i < rs.size() && i < 8; i++)
      printf("  %6.1f us (%3.0f TF, %3.0f%% of gemmEx) %s id %d tile %u stages %u custom %d cluster %u\n", rs[i].t, fl / rs[i].t / 1e6, 100 * rs[i].t / tdef,
             rs[i].same ? "same-bits " : "other-bits", rs[i].id, rs[i].tile, rs[i].stage, rs[i].custom, rs[i].cluster);
    for (auto& r : rs)
      if (r.same) { printf("  fastest with gemmEx's bits (timed 3 times unless among the 16): %6.1f us (%.0f%% of gemmEx) id %d tile %u cluster %u\n", r.t, 100 * r.t / tdef, r.id, r.tile, r.cluster); break; }
    std::vector<R> same;
    for (auto& r : rs) if (r.same && r.id < 1000 && same.size() < 16) same.push_back(r);  // ids < 1000: reproducible from cublasLtMatmulAlgoInit
    reps = 40;
    float tcold = timecold([&](int set) { gemmexSet(C, set); });
    for (auto& r : same)
      r.t = timecold([&](int set) { CK(cublasLtMatmul(lt, d, &alpha, B + set * maxe, la, A + set * maxe, lb, &beta, C, lc, C, lc, &r.algo, ws, wsz, st)); });
    std::sort(same.begin(), same.end(), [](const R& a, const R& b) { return a.t < b.t; });
    printf("  cold (operands rotating over %d sets): gemmEx %6.1f us; with gemmEx's bits, from cublasLtMatmulAlgoInit:\n", NS, tcold);
    for (size_t i = 0; i < same.size() && i < 6; i++)
      printf("    %6.1f us (%3.0f%% of gemmEx) id %d tile %u stages %u custom %d cluster %u\n", same[i].t, 100 * same[i].t / tcold,
             same[i].id, same[i].tile, same[i].stage, same[i].custom, same[i].cluster);
    if (!sustained) continue;
    // Sustained (v22): in the step the H200 runs at its 700 W power cap
    // (1.45-1.73 GHz of 1.98), so a configuration's energy, not its time
    // at full clock, decides. gemmEx and the six fastest cold ones run
    // back to back (operands rotating) for ~150 ms each, in three rounds,
    // after 1.5 s of gemmEx to bring the GPU to its cap.
    std::vector<R> cand(same.begin(), same.begin() + std::min<size_t>(same.size(), 6));
    std::vector<double> tot(cand.size() + 1, 0);
    std::vector<long> cnt(cand.size() + 1, 0);
    auto runc = [&](size_t c, int set) {
      if (c == 0) gemmexSet(C, set);
      else CK(cublasLtMatmul(lt, d, &alpha, B + set * maxe, la, A + set * maxe, lb, &beta, C, lc, C, lc, &cand[c - 1].algo, ws, wsz, st));
    };
    reps = std::max(1, (int)(1.5e6 / tcold));
    timecold([&](int set) { runc(0, set); });
    for (int round = 0; round < 3; round++)
      for (size_t c = 0; c <= cand.size(); c++) {
        reps = std::max(1, (int)(150e3 / tcold));
        tot[c] += timecold([&](int set) { runc(c, set); }) * reps;
        cnt[c] += reps;
      }
    double g = tot[0] / cnt[0];
    printf("  sustained at the power cap (3 rounds of ~150 ms each): gemmEx %6.1f us (cold at full clock %6.1f)\n", g, tcold);
    for (size_t c = 1; c <= cand.size(); c++)
      printf("    %6.1f us (%3.0f%% of gemmEx; cold %6.1f) id %d tile %u stages %u custom %d cluster %u\n", tot[c] / cnt[c],
             100 * tot[c] / cnt[c] / g, cand[c - 1].t, cand[c - 1].id, cand[c - 1].tile, cand[c - 1].stage, cand[c - 1].custom, cand[c - 1].cluster);
  }
}
