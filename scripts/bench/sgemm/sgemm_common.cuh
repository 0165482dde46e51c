// What sgemm_sweep.cu and sgemm_enum.cu share (issue 8, v25): the float32
// base GEMMs of the checkpointed Phi-3-mini step, their operands (drawn
// once, the same in both programs), the float64 reference of 64 entries
// and the error against it, and the cuBLASLt descriptors (the attribute
// helpers are ../cublaslt_attrs.cuh, shared with the bfloat16 programs).
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <string>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#include <cublas_v2.h>
#include <cublasLt.h>
#include "../cublaslt_attrs.cuh"
#define CK(x) do { auto e = (x); if (e != 0) { printf("%s:%d %s = %d\n", __FILE__, __LINE__, #x, (int)e); exit(1);} } while (0)

// Row-major C[M,N] = A[M,K] . W^T (tn: W stored [N,K], the forwards) or
// A[M,K] . W (nn: W stored [K,N], the dx products); calls a step.
struct Shape { const char* name; bool tn; int M, N, K; int calls; };
static const Shape kShapes[8] = {
  {"fwd qkv", true, 1024, 9216, 3072, 63}, {"fwd o", true, 1024, 3072, 3072, 63},
  {"fwd gate_up", true, 1024, 16384, 3072, 63}, {"fwd down", true, 1024, 3072, 8192, 32},
  {"dx qkv", false, 1024, 3072, 9216, 31}, {"dx o", false, 1024, 3072, 3072, 32},
  {"dx gate_up", false, 1024, 3072, 16384, 32}, {"dx down", false, 1024, 8192, 3072, 32},
};

// Gemm is a shape in cuBLAS's column-major view: C^T[N,M] = op(W) . A^T.
struct Gemm {
  int m, n, k, lda, ldb, ldc;
  cublasOperation_t opA;
  explicit Gemm(const Shape& s) : m(s.N), n(s.M), k(s.K), lda(s.tn ? s.K : s.N), ldb(s.K), ldc(s.N),
                                  opA(s.tn ? CUBLAS_OP_T : CUBLAS_OP_N) {}
};

// Operands: A [1024, 16384] and W [16384 x 8192] float32, arbitrary values
// of the step's scale, on the host (for the reference) and the device.
struct Operands {
  std::vector<float> ha, hw;
  float *A = nullptr, *W = nullptr;
  Operands() : ha((size_t)1024 * 16384), hw((size_t)16384 * 8192) {
    for (size_t i = 0; i < ha.size(); i++) ha[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
    for (size_t i = 0; i < hw.size(); i++) hw[i] = ((float)((i * 40503u + 7) % 2001) / 1000.0f - 1.0f) * 0.02f;
    CK(cudaMalloc(&A, ha.size() * 4)); CK(cudaMalloc(&W, hw.size() * 4));
    CK(cudaMemcpy(A, ha.data(), ha.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(W, hw.data(), hw.size() * 4, cudaMemcpyHostToDevice));
  }
};

// Reference: 64 entries of s's product in float64 and their sum |a w|;
// err is an output's largest error against them, relative to sum |a w|.
struct Reference {
  const Shape& s;
  std::vector<double> mag, ex;
  Reference(const Shape& s_, const Operands& o) : s(s_), mag(64), ex(64) {
    for (int q = 0; q < 64; q++) {
      size_t row = (q * 977) % s.M, col = (q * 4099) % s.N;
      double sa = 0, sx = 0;
      for (int kk = 0; kk < s.K; kk++) {
        double a = o.ha[row * s.K + kk], w = s.tn ? o.hw[col * s.K + kk] : o.hw[(size_t)kk * s.N + col];
        sa += fabs(a * w), sx += a * w;
      }
      mag[q] = sa, ex[q] = sx;
    }
  }
  double err(const std::vector<float>& c) const {
    double e = 0;
    for (int q = 0; q < 64; q++) {
      size_t row = (q * 977) % s.M, col = (q * 4099) % s.N;
      e = std::max(e, fabs((double)c[row * s.N + col] - ex[q]) / mag[q]);
    }
    return e;
  }
};

// LtShape is a Gemm's cuBLASLt descriptor (compute type ctype, float32
// scale) and float32 layouts.
struct LtShape {
  cublasLtMatmulDesc_t d;
  cublasLtMatrixLayout_t la, lb, lc;
  LtShape(const Gemm& g, cublasComputeType_t ctype) {
    CK(cublasLtMatmulDescCreate(&d, ctype, CUDA_R_32F));
    CK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &g.opA, sizeof(g.opA)));
    const bool tn = g.opA == CUBLAS_OP_T;
    CK(cublasLtMatrixLayoutCreate(&la, CUDA_R_32F, tn ? g.k : g.m, tn ? g.m : g.k, g.lda));
    CK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_32F, g.k, g.n, g.ldb));
    CK(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, g.m, g.n, g.ldc));
  }
};
