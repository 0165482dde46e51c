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
