// Helpers shared by attention.cu and attention_tc.cu: cp.async copies and
// the rule of which keys a query sees.
#pragma once
#include "common.cuh"

// cp.async helpers (sm_80): a 4- or 16-byte copy from global to shared memory
// that bypasses the registers; commit closes a group, wait<n> waits until at most
// n groups are in flight (a __syncthreads must follow before other threads
// read the data).
__device__ __forceinline__ void cp_async4(float* dst, const float* src) {
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async16(float* dst, const float* src) {
    unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int n>
__device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(n) : "memory");
}
// end of cp.async helpers

// at_lo is the first key query i of a row may see.
__device__ __forceinline__ int at_lo(int i, const int* pos_row, i64 window) {
    int lo = max(0, i - pos_row[i]);
    if (window > 0) lo = max(lo, (int)(i - window + 1));
    return lo;
}

// at_di_put ends at_di_lse: the warp's sums of its lanes' partial di of
// rows i0..i0+7 (a butterfly), written with lse_row's by lane rr.
__device__ __forceinline__ void at_di_put(float* di_s, float* lse_s, const float di[8], const float* lse_row, int i0,
                                          int S, int lane) {
#pragma unroll
    for (int rr = 0; rr < 8; rr++) {
        float x = di[rr];
        for (int o = 16; o > 0; o >>= 1) x = __fadd_rn(x, __shfl_xor_sync(0xffffffffu, x, o));
        const int i = i0 + rr;
        if (lane == rr) {
            di_s[i] = x;
            lse_s[i] = i < S ? lse_row[i] : 0.0f;
        }
    }
}

// at_di_lse: for the warp's rows i0..i0+7 (< S), di_s[i] = rowsum(dO * O)
// (float32 fmaf over d, lanes over d: D <= 128, then the warp's sum) and
// lse_s[i] = lse_row[i] (0 past S). dO and O point at the head's columns
// of row 0, rows HD apart. Every load is issued before the sums need it.
__device__ __forceinline__ void at_di_lse(float* di_s, float* lse_s, const float* dO, const float* O, i64 HD,
                                          const float* lse_row, int i0, int S, int D, int lane) {
    float di[8];
#pragma unroll
    for (int rr = 0; rr < 8; rr++) di[rr] = 0.0f;
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const int d = lane + 32 * k;
#pragma unroll
        for (int rr = 0; rr < 8; rr++) {
            const int i = i0 + rr;
            if (i < S && d < D) di[rr] = fmaf(dO[i * HD + d], O[i * HD + d], di[rr]);
        }
    }
    at_di_put(di_s, lse_s, di, lse_row, i0, S, lane);
}
