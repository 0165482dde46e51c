// cuBLASLt algorithm attributes read and set at their own widths, shared by
// the GEMM configuration programs (cublaslt_sweep.cu and cublaslt_enum.cu
// for bfloat16, sgemm/ for float32). Each attribute has its own width (2, 4
// or 8 bytes), which a first call with no buffer reports; set at 4 bytes,
// the Hopper kernels refuse every configuration (v20).
#pragma once
#include <cstring>
#include <vector>
#include <cublasLt.h>

// scalar reads one attribute of an algorithm through get (-1: unreadable).
template <typename Attr, typename Get>
static long long scalar(const cublasLtMatmulAlgo_t& a, Attr w, Get get) {
  size_t n = 0;
  if (get(&a, w, nullptr, 0, &n) != 0 || n == 0 || n > 8) return -1;
  unsigned char buf[8] = {0};
  if (get(&a, w, buf, n, &n) != 0) return -1;
  long long v = 0;
  memcpy(&v, buf, n);  // little-endian: the low bytes
  return v;
}
// attr: a configuration attribute; capv: a scalar capability.
static inline long long attr(const cublasLtMatmulAlgo_t& a, cublasLtMatmulAlgoConfigAttributes_t w) {
  return scalar(a, w, cublasLtMatmulAlgoConfigGetAttribute);
}
static inline long long capv(const cublasLtMatmulAlgo_t& a, cublasLtMatmulAlgoCapAttributes_t w) {
  return scalar(a, w, cublasLtMatmulAlgoCapGetAttribute);
}

// caps reads a capability array of uint32 (empty: none or unreadable).
static inline std::vector<unsigned> caps(const cublasLtMatmulAlgo_t& a, cublasLtMatmulAlgoCapAttributes_t w) {
  size_t n = 0;
  if (cublasLtMatmulAlgoCapGetAttribute(&a, w, nullptr, 0, &n) != 0 || n == 0) return {};
  std::vector<unsigned> v(n / 4);
  if (cublasLtMatmulAlgoCapGetAttribute(&a, w, v.data(), n, &n) != 0) return {};
  return v;
}

// setattr sets a configuration attribute at its own width; false when
// refused.
static inline bool setattr(cublasLtMatmulAlgo_t* a, cublasLtMatmulAlgoConfigAttributes_t w, long long v) {
  size_t n = 0;
  if (cublasLtMatmulAlgoConfigGetAttribute(a, w, nullptr, 0, &n) != 0 || n == 0 || n > 8) return false;
  unsigned char buf[8];
  memcpy(buf, &v, 8);  // little-endian: the low bytes
  return cublasLtMatmulAlgoConfigSetAttribute(a, w, buf, n) == 0;
}
