// Float32 compute, the seed's bnb_4bit_compute_dtype, runs its base GEMMs
// on the CUDA cores (cuBLAS's CUBLAS_COMPUTE_32F, as transformers' default
// with allow_tf32 off): 0.502 s a checkpointed step on an H200, 452 ms of
// it GEMMs (v22). This experiment (issue 8, v22) asks what the tensor
// cores could give at float32's accuracy: each operand split into a TF32
// head and a remainder (x = hi + lo, hi = x rounded to TF32, lo exact in
// float32), three TF32 GEMMs (lo.hi + hi.lo + hi.hi, small terms first;
// the lo.lo term is below float32's rounding) against one float32 GEMM,
// and one plain TF32 GEMM for scale. It times each at the step's shapes
// and measures each one's error against a float64 dot product of the same
// float32 operands, as a fraction of sum |x w| (the float32 GEMM's own
// error is the yardstick).
// On a GPU machine:
//   nvcc -O2 -std=c++17 -arch=sm_90 scripts/bench/tf32x3/tf32x3.cu -o /tmp/tf32x3 -lcublas && /tmp/tf32x3
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#include <cublas_v2.h>
#define CK(x) do { auto e = (x); if (e != 0) { printf("%s:%d %s = %d\n", __FILE__, __LINE__, #x, (int)e); exit(1);} } while (0)

// split: hi = x rounded to TF32 (cvt.rna), lo = x - hi (exact).
__global__ void split(const float* x, float* hi, float* lo, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float v = x[i];
    unsigned h;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(h) : "f"(v));
    float hf = __uint_as_float(h);
    hi[i] = hf;
    lo[i] = v - hf;
  }
}

// Shape: the row-major step GEMM C[M,N] = X[M,K] . op(W): forward W is
// [N,K] (C = X W^T), dx W is [K,N]... stored as the step stores it.
struct Shape { const char* name; bool fwd; int M, N, K; int calls; };

static unsigned long long rng = 88172645463325252ull;
static double urand() { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (rng >> 11) * (1.0 / 9007199254740992.0); }
static double nrand() { double u = urand() + 1e-300, v = urand(); return sqrt(-2 * log(u)) * cos(6.283185307179586 * v); }

int main() {
  // NF4's code book (bitsandbytes): the weights are code * absmax per 64.
  const float nf4[16] = {-1.0f, -0.6961928f, -0.5250731f, -0.3949175f, -0.2844414f, -0.1847734f, -0.0910500f, 0.0f,
                         0.0795803f, 0.1609302f, 0.2461123f, 0.3379152f, 0.4407098f, 0.5626170f, 0.7229568f, 1.0f};
  Shape shapes[] = {
    {"fwd gate_up", true, 1024, 16384, 3072, 63}, {"fwd qkv", true, 1024, 9216, 3072, 63},
    {"fwd o", true, 1024, 3072, 3072, 63}, {"fwd down", true, 1024, 3072, 8192, 32},
    {"dx gate_up", false, 1024, 3072, 16384, 32}, {"dx down", false, 1024, 8192, 3072, 32},
  };
  size_t maxw = (size_t)16384 * 3072, maxx = (size_t)1024 * 16384, maxc = (size_t)1024 * 16384;
  std::vector<float> hw(maxw), hx(maxx);
  for (size_t i = 0; i < maxw; i += 64) {
    float a = 0.01f + 0.04f * (float)urand();
    for (size_t j = i; j < i + 64 && j < maxw; j++) hw[j] = nf4[(int)(urand() * 16) & 15] * a;
  }
  for (auto& v : hx) v = (float)nrand();
  float *W, *X, *C, *Wh, *Wl, *Xh, *Xl;
  CK(cudaMalloc(&W, maxw * 4)); CK(cudaMalloc(&X, maxx * 4)); CK(cudaMalloc(&C, maxc * 4));
  CK(cudaMalloc(&Wh, maxw * 4)); CK(cudaMalloc(&Wl, maxw * 4)); CK(cudaMalloc(&Xh, maxx * 4)); CK(cudaMalloc(&Xl, maxx * 4));
  CK(cudaMemcpy(W, hw.data(), maxw * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(X, hx.data(), maxx * 4, cudaMemcpyHostToDevice));
  cublasHandle_t h; CK(cublasCreate(&h));
  cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
  auto timeit = [&](auto fn, int reps) {
    fn(); cudaEventRecord(e0); for (int i = 0; i < reps; i++) fn(); cudaEventRecord(e1); cudaEventSynchronize(e1);
    float ms; cudaEventElapsedTime(&ms, e0, e1); return ms * 1000 / reps;
  };
  printf("%-11s %5s %5s %5s | %8s %8s %8s %8s %8s | %9s %9s %9s %9s\n", "GEMM", "M", "N", "K", "fp32 us", "tf32 us", "3xtf32", "split X", "split W",
         "err fp32", "err tf32", "err 3x", "(max/mean)");
  double step32 = 0, step3 = 0, stepSplit = 0;
  for (auto& s : shapes) {
    int M = s.M, N = s.N, K = s.K;
    // Column-major view: C^T [N, M] = op(W) [N, K] . X^T [K, M] for the
    // forwards (W stored [N, K]: op T, ld K); the dx products read W stored
    // [N_out = K, N] ... i.e. C [M, N] = X [M, K] . W [K, N]: op N, ld N.
    cublasOperation_t opW = s.fwd ? CUBLAS_OP_T : CUBLAS_OP_N;
    int ldw = s.fwd ? K : N;
    size_t nw = (size_t)N * K, nx = (size_t)M * K;
    auto gemm = [&](const float* w, const float* x, float beta, cublasComputeType_t ct) {
      float alpha = 1;
      CK(cublasGemmEx(h, opW, CUBLAS_OP_N, N, M, K, &alpha, w, CUDA_R_32F, ldw, x, CUDA_R_32F, K, &beta, C, CUDA_R_32F, N, ct, CUBLAS_GEMM_DEFAULT));
    };
    auto g32 = [&] { gemm(W, X, 0, CUBLAS_COMPUTE_32F); };
    auto gtf = [&] { gemm(W, X, 0, CUBLAS_COMPUTE_32F_FAST_TF32); };
    auto g3 = [&] {
      gemm(Wh, Xl, 0, CUBLAS_COMPUTE_32F_FAST_TF32);
      gemm(Wl, Xh, 1, CUBLAS_COMPUTE_32F_FAST_TF32);
      gemm(Wh, Xh, 1, CUBLAS_COMPUTE_32F_FAST_TF32);
    };
    auto sx = [&] { split<<<1024, 256>>>(X, Xh, Xl, nx); };
    auto sw = [&] { split<<<2048, 256>>>(W, Wh, Wl, nw); };
    sx(); sw(); CK(cudaDeviceSynchronize());
    float t32 = timeit(g32, 10), ttf = timeit(gtf, 20), t3 = timeit(g3, 10), tsx = timeit(sx, 20), tsw = timeit(sw, 20);
    // Errors on 512 sampled outputs against float64 sums of the float32
    // operands, relative to sum |x w|.
    std::vector<float> hc((size_t)M * N);
    double err[3][2] = {};
    for (int mode = 0; mode < 3; mode++) {
      if (mode == 0) g32(); else if (mode == 1) gtf(); else g3();
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
    printf("%-11s %5d %5d %5d | %8.1f %8.1f %8.1f %8.1f %8.1f | %9.2e %9.2e %9.2e max\n", s.name, M, N, K, t32, ttf, t3, tsx, tsw, err[0][0], err[1][0], err[2][0]);
    printf("%-11s %5s %5s %5s | %8s %8s %8s %8s %8s | %9.2e %9.2e %9.2e mean\n", "", "", "", "", "", "", "", "", "", err[0][1], err[1][1], err[2][1]);
    step32 += s.calls * t32, step3 += s.calls * t3, stepSplit += s.calls * tsx;
  }
  printf("these shapes' calls in a checkpointed step: float32 %.1f ms, 3xTF32 %.1f ms + %.1f ms of activation splits (the weights' split would be the dequantization's)\n",
         step32 / 1000, step3 / 1000, stepSplit / 1000);
}
