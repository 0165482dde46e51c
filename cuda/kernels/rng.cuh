// Counter-based random numbers, the CUDA twin of finetune/rng.go: every value
// is a pure function of (seed, index), so the CPU and the GPU draw the same
// dropout masks and backward regenerates the forward's mask.
#pragma once

// mix64 is SplitMix64's finaliser (finetune.Mix64).
__device__ __forceinline__ unsigned long long mix64(unsigned long long x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

// uniform01 is finetune.Uniform: the top 24 bits of the hash times 2^-24,
// exact in float32.
__device__ __forceinline__ float uniform01(unsigned long long seed, unsigned long long index) {
    return (float)(mix64(seed ^ mix64(index)) >> 40) * (1.0f / 16777216.0f);
}

// dropout_keep is finetune.DropoutKeep.
__device__ __forceinline__ bool dropout_keep(unsigned long long seed, unsigned long long index, float p) {
    return uniform01(seed, index) >= p;
}
