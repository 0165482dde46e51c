// NF4 quantization (bitsandbytes' kQuantizeBlockwise<T, 64, 2, 0, NF4> and
// its double quantization) and dequantization, the CUDA twin of
// finetune/nf4: the same float32 operations in the same order, so the codes
// are identical to the CPU's byte for byte.
#include "common.cuh"

// nf4_quantize_value is dQuantizeNF4: the tree of strict comparisons over
// the midpoints between neighbouring code values. A value exactly on a
// threshold goes to the lower code; NaN lands on code 0.
__device__ __forceinline__ unsigned char nf4_quantize_value(float x) {
    if (x > 0.03979014977812767f) {
        if (x > 0.3893125355243683f) {
            if (x > 0.6427869200706482f) {
                if (x > 0.8614784181118011f) return 0b1111;
                return 0b1110;
            }
            if (x > 0.5016634166240692f) return 0b1101;
            return 0b1100;
        }
        if (x > 0.2035212516784668f) {
            if (x > 0.2920137718319893f) return 0b1011;
            return 0b1010;
        }
        if (x > 0.1202552504837513f) return 0b1001;
        return 0b1000;
    }
    if (x > -0.33967943489551544f) {
        if (x > -0.13791173323988914f) {
            if (x > -0.045525018125772476f) return 0b0111;
            return 0b0110;
        }
        if (x > -0.23460740596055984f) return 0b0101;
        return 0b0100;
    }
    if (x > -0.6106329262256622f) {
        if (x > -0.4599952697753906f) return 0b0011;
        return 0b0010;
    }
    if (x > -0.8480964004993439f) return 0b0001;
    return 0b0000;
}

// nf4_quantize: one thread per 64-block of w [n]: absmax over the valid
// values, its float32 reciprocal, x * reciprocal into the NF4 tree, two
// codes a byte (first in the high nibble). A partial last block pads with 0.
extern "C" __global__ void nf4_quantize(const float* w, i64 n, unsigned char* codes, float* absmax) {
    i64 nb = (n + 63) / 64;
    FOR_N(b, nb) {
        i64 lo = b * 64, hi = min(lo + 64, n);
        float amax = 0.0f;
        for (i64 i = lo; i < hi; i++) {
            float a = fabsf(w[i]);
            if (a > amax) amax = a;
        }
        absmax[b] = amax;
        float r = __fdiv_rn(1.0f, amax);  // +Inf for an all-zero block: 0*Inf = NaN -> code 0
        for (i64 i = lo; i < hi; i += 2) {
            unsigned char h = nf4_quantize_value(__fmul_rn(w[i], r));
            float pad = i + 1 < hi ? w[i + 1] : 0.0f;
            codes[i / 2] = (unsigned char)(h << 4 | nf4_quantize_value(__fmul_rn(pad, r)));
        }
    }
}

// quantize_blockwise8: bitsandbytes' quantize_blockwise (General8bit) of
// x - offset in blocks of 256 with the given dynamic code, one thread block
// of 256 threads per block: absmax, the float32 reciprocal, the nearest
// code. NF4's double quantization runs it on the absmax values.
extern "C" __global__ void quantize_blockwise8(const float* x, i64 n, double offset_d, const float* code,
                                               unsigned char* codes, float* absmax) {
    __shared__ float red[32];
    float offset = (float)offset_d;
    i64 i = blockIdx.x * (i64)256 + threadIdx.x;
    float v = 0.0f;
    if (i < n) v = __fsub_rn(x[i], offset);
    float amax = block_max_float(i < n ? fabsf(v) : 0.0f, red);
    if (threadIdx.x == 0) absmax[blockIdx.x] = amax;
    float r = __fdiv_rn(1.0f, amax);
    if (i < n) codes[i] = quantize_dynamic(code, __fmul_rn(v, r));
}

// nf4_dequant_f32 / _bf16: out[i] = Codebook[code_i] * absmax (rounded to
// bfloat16 for the second).
extern "C" __global__ void nf4_dequant_f32(float* out, i64 n, const unsigned char* codes, const float* absmax,
                                           const unsigned char* acodes, const float* ascales, const float* smap,
                                           double offset) {
    FOR_N(i, n) out[i] = nf4_value(i, codes, absmax, acodes, ascales, smap, (float)offset);
}

extern "C" __global__ void nf4_dequant_bf16(bf16_t* out, i64 n, const unsigned char* codes, const float* absmax,
                                            const unsigned char* acodes, const float* ascales, const float* smap,
                                            double offset) {
    FOR_N(i, n) out[i] = f32_to_bf16(nf4_value(i, codes, absmax, acodes, ascales, smap, (float)offset));
}

extern "C" __global__ void f32_to_bf16_kernel(bf16_t* out, const float* in, i64 n) {
    FOR_N(i, n) out[i] = f32_to_bf16(in[i]);
}

extern "C" __global__ void bf16_to_f32_kernel(float* out, const bf16_t* in, i64 n) {
    FOR_N(i, n) out[i] = bf16_to_f32(in[i]);
}

// Embedding lookups: out [T,C] = table[ids[t], :], from a dense float32,
// a dense bfloat16 or an NF4 table. An id outside [0, V) gives NaN (the
// model validates ids before they get here).
extern "C" __global__ void embedding_f32(float* out, const int* ids, const float* table, i64 T, i64 C, i64 V) {
    FOR_N(k, T * C) {
        i64 t = k / C, c = k % C;
        int id = ids[t];
        out[k] = (id >= 0 && id < V) ? table[(i64)id * C + c] : __int_as_float(0x7fc00000);
    }
}

extern "C" __global__ void embedding_bf16(float* out, const int* ids, const bf16_t* table, i64 T, i64 C, i64 V) {
    FOR_N(k, T * C) {
        i64 t = k / C, c = k % C;
        int id = ids[t];
        out[k] = (id >= 0 && id < V) ? bf16_to_f32(table[(i64)id * C + c]) : __int_as_float(0x7fc00000);
    }
}

extern "C" __global__ void embedding_nf4(float* out, const int* ids, i64 T, i64 C, i64 V, const unsigned char* codes,
                                         const float* absmax, const unsigned char* acodes, const float* ascales,
                                         const float* smap, double offset, i64 round_bf16) {
    FOR_N(k, T * C) {
        i64 t = k / C, c = k % C;
        int id = ids[t];
        float v = __int_as_float(0x7fc00000);
        if (id >= 0 && id < V) {
            v = nf4_value((i64)id * C + c, codes, absmax, acodes, ascales, smap, (float)offset);
            if (round_bf16) v = bf16_to_f32(f32_to_bf16(v));
        }
        out[k] = v;
    }
}
