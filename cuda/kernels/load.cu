// Weights made on the device: the random weights of a synthetic model
// (finetune.RandomWeights' values, drawn here instead of on the host) and
// the dtype conversions of raw checkpoint bytes uploaded as stored.
#include <cuda_fp16.h>

#include "common.cuh"
#include "rng.cuh"

// fill_normal_bf16: out[i] = bfloat16(std * Normal(seed, i)), where Normal
// is finetune.Normal (Box-Muller over two 53-bit uniforms, in float64,
// rounded to float32) and the product is one float32 multiply, as
// finetune's fillRandom computes it. The float64 log and cos may differ
// from Go's in the last bit, which survives the rounding to float32 and
// then to bfloat16 only rarely.
extern "C" __global__ void fill_normal_bf16(bf16_t* out, i64 n, u64 seed, double std_d) {
    float std = (float)std_d;
    FOR_N(i, n) {
        u64 k = (u64)i;
        double u1 = (double)(mix64(seed ^ mix64(2 * k)) >> 11) * (1.0 / 9007199254740992.0);
        double u2 = (double)(mix64(seed ^ mix64(2 * k + 1)) >> 11) * (1.0 / 9007199254740992.0);
        if (u1 < 1e-300) u1 = 1e-300;
        float z = (float)(sqrt(-2.0 * log(u1)) * cos((2.0 * 3.141592653589793) * u2));
        out[i] = f32_to_bf16(__fmul_rn(std, z));
    }
}

extern "C" __global__ void f16_to_f32_kernel(float* out, const __half* in, i64 n) {
    FOR_N(i, n) out[i] = __half2float(in[i]);
}

extern "C" __global__ void f16_to_bf16_kernel(bf16_t* out, const __half* in, i64 n) {
    FOR_N(i, n) out[i] = f32_to_bf16(__half2float(in[i]));
}

// bf16_to_f16_kernel: a bfloat16 checkpoint under float16 compute (through
// float32, exactly, then rounded to half as finetune.RoundF16 does).
extern "C" __global__ void bf16_to_f16_kernel(__half* out, const bf16_t* in, i64 n) {
    FOR_N(i, n) out[i] = __float2half_rn(bf16_to_f32(in[i]));
}
