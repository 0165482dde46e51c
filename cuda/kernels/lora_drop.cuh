// LoRA's dropout of a value, the rule every fused LoRA kernel shares
// (lora.cu's notation: xd = dropout(x)).
#pragma once
#include "common.cuh"
#include "rng.cuh"

// lora_keep is lora_drop's keep test (for p > 0; lora_dx4).
__device__ __forceinline__ bool lora_keep(u64 seed, i64 idx, u64 thr) {
    return dropout_field(dropout_hash(seed, (u64)idx), (u64)idx) >= thr;
}

__device__ __forceinline__ float lora_drop(float v, u64 seed, i64 idx, float p, u64 thr, float ks) {
    if (p > 0.0f) return lora_keep(seed, idx, thr) ? __fmul_rn(v, ks) : 0.0f;
    return v;
}

// lora_drop_field is lora_drop given its group's hash h (j = 0..3: the
// j-th value of the group; constant at every call, so dropout_field's
// shift is too).
__device__ __forceinline__ float lora_drop_field(float v, u64 h, int j, unsigned int thr, float ks) {
    return dropout_field(h, (u64)j) >= thr ? __fmul_rn(v, ks) : 0.0f;
}
