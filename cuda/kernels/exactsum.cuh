// The exact mean of float32 values that the NF4 double-quantization offset
// uses (finetune/nf4.Mean). It depends on nothing else, so the same code
// also compiles for the host (g++), where it was checked against nf4.Mean.
#pragma once

typedef unsigned long long u64;
typedef long long i64;

// exact_mean_bins turns exact_sum_bins' bins (nf4.cu) into nf4.Mean's
// result: the bins are added as one 384-bit integer U (in units of 2^-149),
// U is rounded to the nearest float64 (ties to even: the top 64 bits with
// every lower bit folded into the last one, converted with rounding), then
// divided by n and rounded to float32. NaN for a non-finite value (bin 255)
// or a negative bin. Host-compilable, so the test can check it on the CPU.
#ifdef __CUDA_ARCH__
__device__ __forceinline__ float exact_nan() { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ int exact_clz64(u64 x) { return __clzll((long long)x); }
__device__ __forceinline__ double exact_u64_to_double(u64 x) { return __ull2double_rn(x); }
#define EXACT_HD __device__
#else
#include <math.h>
static inline float exact_nan() { return NAN; }
static inline int exact_clz64(u64 x) { return __builtin_clzll(x); }
static inline double exact_u64_to_double(u64 x) { return (double)x; }
#define EXACT_HD static inline
#endif

EXACT_HD float exact_mean_bins(const u64* bins, i64 n) {
    const float nan = exact_nan();
    if (bins[255] != 0 || n <= 0) return nan;
    u64 limb[6] = {0, 0, 0, 0, 0, 0};
    for (int e = 1; e < 255; e++) {
        long long v = (long long)bins[e];
        if (v < 0) return nan;
        if (v == 0) continue;
        int s = e - 1, li = s >> 6, sh = s & 63;
        u64 parts[2] = {(u64)v << sh, sh ? (u64)v >> (64 - sh) : 0};
        for (int p = 0; p < 2; p++) {
            u64 add = parts[p];
            for (int k = li + p; k < 6 && add != 0; k++) {
                u64 old = limb[k];
                limb[k] = old + add;
                add = limb[k] < old ? 1 : 0;
            }
        }
    }
    int top = -1;
    for (int k = 5; k >= 0; k--) {
        if (limb[k] != 0) {
            top = 64 * k + 63 - exact_clz64(limb[k]);
            break;
        }
    }
    if (top < 0) return 0.0f;
    double s;
    if (top < 64) {
        s = exact_u64_to_double(limb[0]);
    } else {
        int low = top - 63, li = low >> 6, sh = low & 63;
        u64 w = limb[li] >> sh;
        if (sh != 0) w |= limb[li + 1] << (64 - sh);
        bool sticky = (limb[li] & ((1ull << sh) - 1)) != 0;
        for (int k = 0; k < li; k++) sticky = sticky || limb[k] != 0;
        if (sticky) w |= 1;
        s = ldexp(exact_u64_to_double(w), low);
    }
    return (float)(ldexp(s, -149) / (double)n);
}

