// Float32 GEMMs emulated on the bfloat16 tensor cores (issue 8, v23).
//
// Float32 compute, the seed's bnb_4bit_compute_dtype, spends 452 of its
// 502 ms a step in IEEE float32 GEMMs on the CUDA cores (v22). v22's
// tf32x3 experiment found 3xTF32 2.2x faster but 5-10x float32's error:
// TF32's remainder, rounded to TF32 again, loses bits. bfloat16 splits
// exactly: x = x0 + x1 + x2 with each xi a bfloat16 (8 significant bits
// each, 24 in all: every normal float32), and a bfloat16 product is exact
// in the tensor cores' float32 accumulator. So
//   x.w = sum over i, j of xi.wj
// with the terms below float32's rounding (i + j > 2: x1.w2, x2.w1, x2.w2,
// each at most 2^-24 of |x w|) dropped (bf16x6) or kept (bf16x9, what
// cuBLAS's CUBLAS_COMPUTE_32F_EMULATED_16BFX9 does on Blackwell).
//
// The GEMMs: the weight's three planes stacked along K, W' = [w0; w1; w2]
// (K' = 3K), so one GEMM takes x0 against all three ([x0 x0 x0] . W'),
// one x1 against w0 and w1 ([x1 x1] . W'[:2K]) and one x2 against w0 (x2 .
// W'[:K]): 6K of bfloat16 work in three GEMMs, the smallest terms first,
// beta 1 after the first. bf16x9 is three GEMMs of 3K. The weights'
// planes would be written by the NF4 dequantization itself (6 bytes an
// element instead of float32's 4); the activations' planes cost a split
// pass a GEMM (timed here).
//
// It prints, at the step's shapes: each method's time a GEMM and its
// error against a float64 dot product of the same float32 operands, as a
// fraction of sum |x w| (IEEE float32's own error is the yardstick), and
// the step's float32 GEMM time each way. It also asks cuBLAS for its own
// BF16x9 emulation (compute type 78, CUDA >= 12.9), which may decline on
// Hopper.
// On a GPU machine:
//   nvcc -O2 -std=c++17 -arch=sm_90 scripts/bench/f32emu/f32emu.cu -o /tmp/f32emu -lcublas && /tmp/f32emu
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include <algorithm>
#include <chrono>
#include <string>
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#define CK(x) do { auto e = (x); if (e != 0) { printf("%s:%d %s = %d\n", __FILE__, __LINE__, #x, (int)e); exit(1);} } while (0)

// split3 writes x's three bfloat16 planes, exactly: x0 = bf16(x),
// x1 = bf16(x - x0), x2 = bf16(x - x0 - x1) (each difference exact in
// float32). Plane p of element (r, c) of a [R, C] row-major x goes to
// out[r * ldo + p * C + c] when stack is "along columns" (the row's K
// splits side by side: K' = 3K for a [M, K] activation or a [N, K]
// forward weight), or out[(p * R + r) * C + c] "along rows" (a [K, N] dx
// weight: the planes one under another). reps[p] says how many copies of
// plane p an activation needs side by side (x0 thrice...), see main.
__device__ __forceinline__ void split3v(float v, __nv_bfloat16& a, __nv_bfloat16& b, __nv_bfloat16& c) {
  a = __float2bfloat16_rn(v);
  float r = v - __bfloat162float(a);
  b = __float2bfloat16_rn(r);
  r -= __bfloat162float(b);
  c = __float2bfloat16_rn(r);
}

// Weight planes, forward layout: w [N, K] -> out [N, 3K] = [w0 w1 w2] per row.
__global__ void splitWCols(const float* w, __nv_bfloat16* out, int N, int K) {
  size_t n = (size_t)N * K;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / K, c = i % K;
    __nv_bfloat16 a, b, d;
    split3v(w[i], a, b, d);
    __nv_bfloat16* o = out + r * 3 * K + c;
    o[0] = a, o[K] = b, o[2 * (size_t)K] = d;
  }
}

// Weight planes, dx layout: w [K, N] -> out [3K, N] = [w0; w1; w2].
__global__ void splitWRows(const float* w, __nv_bfloat16* out, int K, int N) {
  size_t n = (size_t)N * K;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    __nv_bfloat16 a, b, d;
    split3v(w[i], a, b, d);
    out[i] = a, out[n + i] = b, out[2 * n + i] = d;
  }
}

// Activation planes: x [M, K] -> A0 [M, 3K] = [x0 x0 x0], A1 [M, 2K] =
// [x1 x1], A2 [M, K] = x2 (bf16x6); with nine, A1 [M, 3K] and A2 [M, 3K].
__global__ void splitX(const float* x, __nv_bfloat16* a0, __nv_bfloat16* a1, __nv_bfloat16* a2, int M, int K, int r1, int r2) {
  size_t n = (size_t)M * K;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    size_t r = i / K, c = i % K;
    __nv_bfloat16 a, b, d;
    split3v(x[i], a, b, d);
    for (int p = 0; p < 3; p++) a0[r * 3 * K + p * (size_t)K + c] = a;
    for (int p = 0; p < r1; p++) a1[r * r1 * K + p * (size_t)K + c] = b;
    for (int p = 0; p < r2; p++) a2[r * r2 * K + p * (size_t)K + c] = d;
  }
}

__global__ void burn(float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = x[i] * 0.999f + 0.001f;
}

struct Shape { const char* name; bool fwd; int M, N, K; int calls; };

static unsigned long long rng = 88172645463325252ull;
static double urand() { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (rng >> 11) * (1.0 / 9007199254740992.0); }
static double nrand() { double u = urand() + 1e-300, v = urand(); return sqrt(-2 * log(u)) * cos(6.283185307179586 * v); }

int main(int argc, char** argv) {
  bool sustained = argc > 1 && std::string(argv[1]) == "--sustained";
  const float nf4[16] = {-1.0f, -0.6961928f, -0.5250731f, -0.3949175f, -0.2844414f, -0.1847734f, -0.0910500f, 0.0f,
                         0.0795803f, 0.1609302f, 0.2461123f, 0.3379152f, 0.4407098f, 0.5626170f, 0.7229568f, 1.0f};
  // The checkpointed step's float32 GEMM calls (v22's tf32x3 counts; the
  // qkv and o dx like down's).
  Shape shapes[] = {
    {"fwd gate_up", true, 1024, 16384, 3072, 63}, {"fwd qkv", true, 1024, 9216, 3072, 63},
    {"fwd o", true, 1024, 3072, 3072, 63}, {"fwd down", true, 1024, 3072, 8192, 32},
    {"dx gate_up", false, 1024, 3072, 16384, 32}, {"dx down", false, 1024, 8192, 3072, 32},
    {"dx qkv", false, 1024, 3072, 9216, 31}, {"dx o", false, 1024, 3072, 3072, 32},
  };
  size_t maxw = (size_t)16384 * 3072, maxx = (size_t)1024 * 16384, maxc = (size_t)1024 * 16384;
  std::vector<float> hw(maxw), hx(maxx);
  for (size_t i = 0; i < maxw; i += 64) {
    // absmax itself a float32 with a full significand (double quant's
    // absmax is code * absmax2 + offset, rounded to float32)
    float a = 0.01f + 0.04f * (float)urand();
    for (size_t j = i; j < i + 64 && j < maxw; j++) hw[j] = nf4[(int)(urand() * 16) & 15] * a;
  }
  for (auto& v : hx) v = (float)nrand();
  float *W, *X, *C;
  __nv_bfloat16 *Wp, *A0, *A1, *A2;
  CK(cudaMalloc(&W, maxw * 4)); CK(cudaMalloc(&X, maxx * 4)); CK(cudaMalloc(&C, maxc * 4));
  CK(cudaMalloc(&Wp, maxw * 6)); CK(cudaMalloc(&A0, maxx * 6)); CK(cudaMalloc(&A1, maxx * 6)); CK(cudaMalloc(&A2, maxx * 6));
  CK(cudaMemcpy(W, hw.data(), maxw * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(X, hx.data(), maxx * 4, cudaMemcpyHostToDevice));
  cublasHandle_t h; CK(cublasCreate(&h));
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  if (sustained) { // bring the board to its power cap first (v22), on real operands
    splitWCols<<<4096, 256>>>(W, Wp, 16384, 3072);
    splitX<<<2048, 256>>>(X, A0, A1, A2, 1024, 3072, 3, 3);
    auto t0 = std::chrono::steady_clock::now();
    float alpha = 1, beta = 0;
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < 1.5) {
      for (int i = 0; i < 20; i++)
        CK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, 16384, 1024, 3072, &alpha, Wp, CUDA_R_16BF, 3072, A0, CUDA_R_16BF, 3072, &beta, C,
                        CUDA_R_32F, 16384, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      CK(cudaDeviceSynchronize());
    }
  }
  auto timeit = [&](auto fn, int reps) {
    fn(); cudaEventRecord(e0); for (int i = 0; i < reps; i++) fn(); cudaEventRecord(e1); cudaEventSynchronize(e1);
    float ms; cudaEventElapsedTime(&ms, e0, e1); return ms * 1000 / reps;
  };
  printf("%s\n", sustained ? "sustained (after 1.5 s of GEMMs)" : "cold start (full clock)");
  printf("%-11s %5s %5s %5s | %8s %8s %8s %8s %8s %8s | %9s %9s %9s %9s %9s\n", "GEMM", "M", "N", "K", "fp32 us", "tf32 us", "bf16x6",
         "bf16x9", "split X", "cublas9", "err fp32", "err tf32", "err x6", "err x9", "err cbl9");
  double step[6] = {};
  bool cublasEmu = true;
  for (auto& s : shapes) {
    int M = s.M, N = s.N, K = s.K;
    // Column-major view: C^T [N, M] = op(W) . X^T. Forward: W [N, K]
    // row-major, op T, ld K (planes: ld 3K). dx: W [K, N] row-major, op N,
    // ld N (planes: rows 0..3K).
    cublasOperation_t opW = s.fwd ? CUBLAS_OP_T : CUBLAS_OP_N;
    int ldw = s.fwd ? K : N, ldwp = s.fwd ? 3 * K : N;
    auto gemm = [&](cublasComputeType_t ct) {
      float alpha = 1, beta = 0;
      return cublasGemmEx(h, opW, CUBLAS_OP_N, N, M, K, &alpha, W, CUDA_R_32F, ldw, X, CUDA_R_32F, K, &beta, C, CUDA_R_32F, N, ct, CUBLAS_GEMM_DEFAULT);
    };
    // One bf16 GEMM of the planes: kk of W' (kk in K, 2K, 3K) against an
    // activation plane set of ld lda.
    auto gp = [&](const __nv_bfloat16* a, int kk, float beta) {
      float alpha = 1;
      CK(cublasGemmEx(h, opW, CUBLAS_OP_N, N, M, kk, &alpha, Wp, CUDA_R_16BF, ldwp, a, CUDA_R_16BF, kk, &beta, C, CUDA_R_32F, N,
                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    };
    auto g32 = [&] { CK(gemm(CUBLAS_COMPUTE_32F)); };
    auto gtf = [&] { CK(gemm(CUBLAS_COMPUTE_32F_FAST_TF32)); };
    auto sx6 = [&] { splitX<<<2048, 256>>>(X, A0, A1, A2, M, K, 2, 1); };
    auto sx9 = [&] { splitX<<<2048, 256>>>(X, A0, A1, A2, M, K, 3, 3); };
    auto g6 = [&] { gp(A2, K, 0); gp(A1, 2 * K, 1); gp(A0, 3 * K, 1); };
    auto g9 = [&] { gp(A2, 3 * K, 0); gp(A1, 3 * K, 1); gp(A0, 3 * K, 1); };
    if (s.fwd) splitWCols<<<4096, 256>>>(W, Wp, N, K); else splitWRows<<<4096, 256>>>(W, Wp, K, N);
    CK(cudaDeviceSynchronize());
    float t32 = timeit(g32, 5), ttf = timeit(gtf, 20);
    sx6(); float t6 = timeit(g6, 10), ts = timeit(sx6, 20);
    sx9(); float t9 = timeit(g9, 10);
    float tc = -1;
    auto gc = [&] { CK(gemm((cublasComputeType_t)78)); };
    if (cublasEmu) {
      int st = gemm((cublasComputeType_t)78);
      if (st != 0) { printf("cuBLAS CUBLAS_COMPUTE_32F_EMULATED_16BFX9: status %d (declined)\n", st); cublasEmu = false; }
      else { CK(cudaDeviceSynchronize()); tc = timeit(gc, 10); }
    }
    std::vector<float> hc((size_t)M * N);
    double err[5][2] = {};
    for (int mode = 0; mode < 5; mode++) {
      if (mode == 4 && !cublasEmu) break;
      if (mode == 0) g32(); else if (mode == 1) gtf(); else if (mode == 2) { sx6(); g6(); } else if (mode == 3) { sx9(); g9(); } else gc();
      CK(cudaMemcpy(hc.data(), C, (size_t)M * N * 4, cudaMemcpyDeviceToHost));
      unsigned long long save = rng;
      rng = 1234567;
      for (int t = 0; t < 512; t++) {
        int i = (int)(urand() * M) % M, j = (int)(urand() * N) % N;
        double ref = 0, mag = 0;
        for (int k = 0; k < K; k++) {
          double w = s.fwd ? hw[(size_t)j * K + k] : hw[(size_t)k * N + j];
          double p = (double)hx[(size_t)i * K + k] * w;
          ref += p, mag += fabs(p);
        }
        double e = fabs((double)hc[(size_t)i * N + j] - ref) / mag;
        err[mode][0] = std::max(err[mode][0], e), err[mode][1] += e / 512;
      }
      rng = save;
    }
    printf("%-11s %5d %5d %5d | %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f | %9.2e %9.2e %9.2e %9.2e %9.2e max\n", s.name, M, N, K, t32, ttf, t6, t9, ts,
           tc, err[0][0], err[1][0], err[2][0], err[3][0], err[4][0]);
    printf("%-11s %5s %5s %5s | %8s %8s %8s %8s %8s %8s | %9.2e %9.2e %9.2e %9.2e %9.2e mean\n", "", "", "", "", "", "", "", "", "", "",
           err[0][1], err[1][1], err[2][1], err[3][1], err[4][1]);
    step[0] += s.calls * t32, step[1] += s.calls * ttf, step[2] += s.calls * (t6 + ts), step[3] += s.calls * (t9 + ts), step[4] += s.calls * tc;
  }
  printf("the step's float32 GEMMs (calls as above): IEEE %.1f ms, TF32 %.1f ms, bf16x6 %.1f ms, bf16x9 %.1f ms (each with its activation splits; "
         "the weights' planes from the dequantization), cuBLAS BF16x9 %.1f ms\n",
         step[0] / 1000, step[1] / 1000, step[2] / 1000, step[3] / 1000, cublasEmu ? step[4] / 1000 : -1.0);
}
