// The float32 LoRA products of float32 and float16 compute's fast path
// (cuda/linear.go's loraRowdot and loraColdot), a module of their own: the
// bodies are in lora_dot.cuh, which scripts/bench/rowdot and coldot build
// alone.
#include "lora_dot.cuh"

// lora_rowdot8 / 16 and their _v forms (B^T at full rank: W as float4s).
// lora_rowdot8's at most 128 registers keep two blocks an SM, as
// scripts/bench/rowdot timed them.
extern "C" __global__ void __launch_bounds__(256, 2) lora_rowdot8(float* y, const float* x, const float* W, i64 T, i64 K,
                                                                  i64 r, i64 wsj, i64 wsi, u64 seed, double p, u64 thr,
                                                                  double ks) {
    lora_rowdot_t<8, 4, 2, false>(y, x, W, T, K, r, wsj, wsi, seed, p, thr, ks);
}

extern "C" __global__ void __launch_bounds__(256, 2) lora_rowdot8v(float* y, const float* x, const float* W, i64 T, i64 K,
                                                                   i64 r, i64 wsj, i64 wsi, u64 seed, double p, u64 thr,
                                                                   double ks) {
    lora_rowdot_t<8, 4, 2, true>(y, x, W, T, K, r, wsj, wsi, seed, p, thr, ks);
}

extern "C" __global__ void lora_rowdot16(float* y, const float* x, const float* W, i64 T, i64 K, i64 r, i64 wsj, i64 wsi,
                                         u64 seed, double p, u64 thr, double ks) {
    lora_rowdot_t<16, 2, 1, false>(y, x, W, T, K, r, wsj, wsi, seed, p, thr, ks);
}

extern "C" __global__ void lora_rowdot16v(float* y, const float* x, const float* W, i64 T, i64 K, i64 r, i64 wsj, i64 wsi,
                                          u64 seed, double p, u64 thr, double ks) {
    lora_rowdot_t<16, 2, 1, true>(y, x, W, T, K, r, wsj, wsi, seed, p, thr, ks);
}

extern "C" __global__ void lora_coldot_partial8(float* part, const float* a, const float* x, i64 T, i64 K, i64 r, i64 tc,
                                                u64 seed, double p, u64 thr, double ks) {
    lora_coldot_t<8, false, lora_coldot_nb>(part, a, x, T, K, r, tc, seed, p, thr, ks);
}

extern "C" __global__ void lora_coldot_partial8s(float* part, const float* a, const float* x, i64 T, i64 K, i64 r, i64 tc,
                                                 u64 seed, double p, u64 thr, double ks) {
    lora_coldot_t<8, true, lora_coldot_nb>(part, a, x, T, K, r, tc, seed, p, thr, ks);
}

extern "C" __global__ void lora_coldot_partial16(float* part, const float* a, const float* x, i64 T, i64 K, i64 r, i64 tc,
                                                 u64 seed, double p, u64 thr, double ks) {
    lora_coldot_t<16, false, lora_coldot_nb>(part, a, x, T, K, r, tc, seed, p, thr, ks);
}

extern "C" __global__ void lora_coldot_partial16s(float* part, const float* a, const float* x, i64 T, i64 K, i64 r, i64 tc,
                                                  u64 seed, double p, u64 thr, double ks) {
    lora_coldot_t<16, true, lora_coldot_nb>(part, a, x, T, K, r, tc, seed, p, thr, ks);
}

extern "C" __global__ void lora_coldot_finish(float* G, const float* part, i64 nchunks, i64 K, i64 r, i64 gsj, i64 gsk,
                                              double scale, i64 acc) {
    lora_coldot_finish_t(G, part, nchunks, K, r, gsj, gsk, scale, acc);
}
