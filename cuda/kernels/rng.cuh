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

// dropout_group_hash / dropout_hash / dropout_field / dropout_keep are
// finetune.DropoutKeep (the single definition, documented there): one hash
// per aligned group of four indices, h = mix64(seed + (index / 4) *
// 0x9E3779B97F4A7C15) (SplitMix64's output for the state seed + (index/4)
// steps), and index's 16-bit field (h >> (16 * (index % 4))) & 0xFFFF, kept
// iff field / 2^16 >= p, i.e. iff field >= ceil(p * 2^16)
// (finetune.DropoutThreshold; the fused kernels take that integer
// threshold). A kernel that handles the four values of a group together
// computes the hash once.
__device__ __forceinline__ unsigned long long dropout_group_hash(unsigned long long seed, unsigned long long group) {
    return mix64(seed + group * 0x9E3779B97F4A7C15ULL);
}

__device__ __forceinline__ unsigned long long dropout_hash(unsigned long long seed, unsigned long long index) {
    return dropout_group_hash(seed, index >> 2);
}

__device__ __forceinline__ unsigned int dropout_field(unsigned long long h, unsigned long long index) {
    return (unsigned int)(h >> (16 * (unsigned int)(index & 3))) & 0xFFFFu;
}

__device__ __forceinline__ bool dropout_keep(unsigned long long seed, unsigned long long index, float p) {
    return (float)dropout_field(dropout_hash(seed, index), index) * (1.0f / 65536.0f) >= p;
}
