// Helpers shared by the kernels. Every kernel argument is 8 bytes wide
// (gorgonia.org/cu's Launch copies 8 bytes per argument): integers arrive as
// long long, float32 scalars as double (the widening is exact, and the
// kernel narrows them back), seeds as unsigned long long.
//
// The PTX is compiled with -fmad=false: the CPU reference (Go, amd64 v1)
// never fuses a multiply and an add, so neither do we, except where the
// reference itself asks for a fused multiply-add (fmaf in the optimizer).
#pragma once

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned short bf16_t;  // raw bfloat16 bits

// f32_to_bf16 rounds to the nearest bfloat16, ties to even, keeping NaN
// quiet (finetune.RoundBF16).
__device__ __forceinline__ bf16_t f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u | 0x00400000u) >> 16);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

__device__ __forceinline__ float bf16_to_f32(bf16_t h) { return __uint_as_float(((unsigned int)h) << 16); }

// rms_rstd is RMSNorm's 1/sqrt(float32(mean(x^2)) + eps) from ss, the
// float64 sum of the C squares (the CPU reference's math), and rms_scale4
// its output w * (x * rstd) for four values: rmsnorm_fwd's and the fused
// lora_rows_norm_bf16's, one definition for the same bits.
__device__ __forceinline__ float rms_rstd(double ss, i64 C, float eps) {
    return (float)(1.0 / sqrt((double)__fadd_rn((float)(ss / (double)C), eps)));
}
__device__ __forceinline__ float4 rms_scale4(float4 x, float4 w, float r) {
    return make_float4(__fmul_rn(w.x, __fmul_rn(x.x, r)), __fmul_rn(w.y, __fmul_rn(x.y, r)), __fmul_rn(w.z, __fmul_rn(x.z, r)),
                       __fmul_rn(w.w, __fmul_rn(x.w, r)));
}

// bf16x2_rn packs a and b rounded to bfloat16 in one instruction, a in the
// low half (the lower address): round to nearest even, subnormals kept,
// overflow to infinity, as f32_to_bf16 does, except that a NaN comes out
// as the canonical 0x7fff (f32_to_bf16 keeps its quieted payload).
__device__ __forceinline__ unsigned int bf16x2_rn(float a, float b) {
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
    return r;
}

// bf16x4_to_f32 is the four bfloat16 values of q (the first in the low
// half of q.x) as float32, exactly.
__device__ __forceinline__ float4 bf16x4_to_f32(uint2 q) {
    return make_float4(__uint_as_float(q.x << 16), __uint_as_float(q.x & 0xffff0000u), __uint_as_float(q.y << 16),
                       __uint_as_float(q.y & 0xffff0000u));
}

// Block-wide reductions over blockDim.x threads (a multiple of 32, at most
// 1024). Every thread gets the result. scratch holds 32 values.
__device__ __forceinline__ double block_sum_double(double v, double* scratch) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < nw ? scratch[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) scratch[0] = v;
    }
    __syncthreads();
    double r = scratch[0];
    __syncthreads();
    return r;
}

// block_max_float: the maximum; order does not matter for max, so the
// result is the exact maximum whatever the reduction tree. NaN operands are
// ignored (fmaxf).
__device__ __forceinline__ float block_max_float(float v, float* scratch) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < nw ? scratch[lane] : -__int_as_float(0x7f800000);
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0) scratch[0] = v;
    }
    __syncthreads();
    float r = scratch[0];
    __syncthreads();
    return r;
}

// NF4 code values (bitsandbytes get_4bit_type("nf4"), finetune/nf4.Codebook).
__device__ __constant__ float NF4_CODE[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

// nf4_absmax is the absmax of 64-block b: plain, or with double
// quantization code*scale rounded to float32, then + offset rounded again
// (nf4.Quantized.BlockAbsmax).
__device__ __forceinline__ float nf4_absmax(i64 b, const float* absmax, const unsigned char* acodes,
                                            const float* ascales, const float* smap, float offset) {
    if (acodes == 0) return absmax[b];
    float a = __fmul_rn(smap[acodes[b]], ascales[b / 256]);
    return __fadd_rn(a, offset);
}

// nf4_value is element i of an NF4 weight: Codebook[code] * absmax.
__device__ __forceinline__ float nf4_value(i64 i, const unsigned char* codes, const float* absmax,
                                           const unsigned char* acodes, const float* ascales,
                                           const float* smap, float offset) {
    unsigned char c = codes[i >> 1];
    if ((i & 1) == 0) c >>= 4;
    return __fmul_rn(NF4_CODE[c & 0x0f], nf4_absmax(i >> 6, absmax, acodes, ascales, smap, offset));
}

// quantize_dynamic is bitsandbytes' dQuantize<0> (nf4.QuantizeDynamic): a
// binary search over the sorted 256-entry code, then the nearer end,
// comparing with the float32 midpoint.
__device__ __forceinline__ unsigned char quantize_dynamic(const float* code, float x) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = -1.0f, upper = 1.0f;
    float val = code[pivot];
    for (int i = 64; i > 0; i >>= 1) {
        if (x > val) {
            lower_pivot = pivot;
            lower = val;
            pivot += i;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= i;
        }
        val = code[pivot];
    }
    if (upper_pivot == 255) upper = code[upper_pivot];
    if (lower_pivot == 0) lower = code[lower_pivot];
    if (x > val) {
        if (x > __fmul_rn(__fadd_rn(upper, val), 0.5f)) return (unsigned char)upper_pivot;
        return (unsigned char)pivot;
    }
    if (x < __fmul_rn(__fadd_rn(lower, val), 0.5f)) return (unsigned char)lower_pivot;
    return (unsigned char)pivot;
}

// grid-stride loop over [0, n).
#define FOR_N(i, n) for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)
