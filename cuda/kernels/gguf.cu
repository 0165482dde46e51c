// GGUF blocks dequantized on the device (quantization.keep_gguf): the CUDA
// twin of finetune/gguf's ports of ggml-quants.c's dequantize_row_*, with
// the same float32 operations in the same order (every product rounded
// before it is added, as the PTX is built with -fmad=false and the
// intrinsics below say anyway), so the float32 values are the CPU's bit for
// bit.
//
// One launch per part of a matrix (a GGUF tensor's rows): out points at the
// part's first output row of the [out, in] matrix, src at its blocks. A
// part of llama's q or k (heads > 0) has its rows permuted by llama.cpp;
// output row r (Hugging Face order) reads stored row gguf_src_row(r), as
// finetune.GGUFMatrix.DequantizeRows does. The output is float32, or
// rounded to bfloat16 or float16 (out_kind 0, 1, 2: the backend's compute
// type, finetune.RoundBF16 / RoundF16).
//
// The block types expand 8 consecutive values a thread (one 16-byte store
// of 16-bit values, two of float32): every block size (32, 256) is a
// multiple of 8 and rows are whole blocks, so a thread's values share a
// row and a block, and in the k-quants a scale. Bytes are read one at a
// time: blocks of 18, 22 or 34 bytes leave the 16- and 32-bit fields
// unaligned. The host keeps rows*in/8 (rows*in for the float types) below
// 2^31, so the index arithmetic is 32-bit.
#include <cuda_fp16.h>

#include "common.cuh"

typedef unsigned char u8;

// h2f: the little-endian IEEE half at p, widened exactly (as
// ggml_compute_fp16_to_fp32 is for every finite half).
__device__ __forceinline__ float h2f(const u8* p) {
    return __half2float(__ushort_as_half((unsigned short)(p[0] | (p[1] << 8))));
}

__device__ __forceinline__ unsigned int le32(const u8* p) {
    return (unsigned int)p[0] | ((unsigned int)p[1] << 8) | ((unsigned int)p[2] << 16) | ((unsigned int)p[3] << 24);
}

// gguf_src_row: the stored row of output row r of a part of rows rows;
// with heads > 0, Hugging Face row h*D + half*D/2 + j is stored as row
// h*D + 2j + half (D = rows/heads).
__device__ __forceinline__ unsigned int gguf_src_row(unsigned int r, unsigned int rows, unsigned int heads) {
    if (heads == 0) return r;
    unsigned int d = rows / heads, hd = d / 2;
    unsigned int h = r / d, rem = r - h * d;
    unsigned int half = rem / hd, j = rem - half * hd;
    return h * d + 2 * j + half;
}

__device__ __forceinline__ unsigned int bf16_pair(float a, float b) {
    return (unsigned int)f32_to_bf16(a) | ((unsigned int)f32_to_bf16(b) << 16);
}

__device__ __forceinline__ unsigned int f16_pair(float a, float b) {
    return (unsigned int)__half_as_ushort(__float2half_rn(a)) | ((unsigned int)__half_as_ushort(__float2half_rn(b)) << 16);
}

// store8 writes v[0..8) at element off of out (off a multiple of 8; out
// 32-byte aligned: cuMemAlloc gives 256, and parts start at whole rows of
// whole blocks).
__device__ __forceinline__ void store8(void* out, i64 off, const float* v, i64 kind) {
    if (kind == 0) {
        float4* o = reinterpret_cast<float4*>(reinterpret_cast<float*>(out) + off);
        o[0] = make_float4(v[0], v[1], v[2], v[3]);
        o[1] = make_float4(v[4], v[5], v[6], v[7]);
        return;
    }
    uint4 u;
    if (kind == 1) {
        u = make_uint4(bf16_pair(v[0], v[1]), bf16_pair(v[2], v[3]), bf16_pair(v[4], v[5]), bf16_pair(v[6], v[7]));
    } else {
        u = make_uint4(f16_pair(v[0], v[1]), f16_pair(v[2], v[3]), f16_pair(v[4], v[5]), f16_pair(v[6], v[7]));
    }
    *reinterpret_cast<uint4*>(reinterpret_cast<unsigned short*>(out) + off) = u;
}

// Each block type: QK values in TS bytes; dq writes values j0..j0+7 of the
// block at b (j0 a multiple of 8). The comments give the C code's
// expression for one value.

// Q4_0 {fp16 d; u8 qs[16]}: y[j] = ((qs[j] & 15) - 8)*d, y[j+16] = ((qs[j] >> 4) - 8)*d.
struct BlockQ4_0 {
    static const int QK = 32, TS = 18;
    static __device__ __forceinline__ void dq(const u8* b, int j0, float* v) {
        float d = h2f(b);
        const u8* qs = b + 2;
        for (int k = 0; k < 8; k++) {
            int j = j0 + k;
            int x = j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4);
            v[k] = __fmul_rn((float)(x - 8), d);
        }
    }
};

// Q4_1 {fp16 d, m; u8 qs[16]}: y = q*d + m.
struct BlockQ4_1 {
    static const int QK = 32, TS = 20;
    static __device__ __forceinline__ void dq(const u8* b, int j0, float* v) {
        float d = h2f(b), m = h2f(b + 2);
        const u8* qs = b + 4;
        for (int k = 0; k < 8; k++) {
            int j = j0 + k;
            int x = j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4);
            v[k] = __fadd_rn(__fmul_rn((float)x, d), m);
        }
    }
};

// Q5_0 {fp16 d; u8 qh[4]; u8 qs[16]}: the fifth bit of value j is bit j
// of qh (a little-endian u32); y = (q - 16)*d.
struct BlockQ5_0 {
    static const int QK = 32, TS = 22;
    static __device__ __forceinline__ void dq(const u8* b, int j0, float* v) {
        float d = h2f(b);
        unsigned int qh = le32(b + 2);
        const u8* qs = b + 6;
        for (int k = 0; k < 8; k++) {
            int j = j0 + k;
            int x = (j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4)) | (int)(((qh >> j) & 1u) << 4);
            v[k] = __fmul_rn((float)(x - 16), d);
        }
    }
};

// Q5_1 {fp16 d, m; u8 qh[4]; u8 qs[16]}: y = q*d + m.
struct BlockQ5_1 {
    static const int QK = 32, TS = 24;
    static __device__ __forceinline__ void dq(const u8* b, int j0, float* v) {
        float d = h2f(b), m = h2f(b + 2);
        unsigned int qh = le32(b + 4);
        const u8* qs = b + 8;
        for (int k = 0; k < 8; k++) {
            int j = j0 + k;
            int x = (j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4)) | (int)(((qh >> j) & 1u) << 4);
            v[k] = __fadd_rn(__fmul_rn((float)x, d), m);
        }
    }
};

// Q8_0 {fp16 d; i8 qs[32]}: y = q*d.
struct BlockQ8_0 {
    static const int QK = 32, TS = 34;
    static __device__ __forceinline__ void dq(const u8* b, int j0, float* v) {
        float d = h2f(b);
        for (int k = 0; k < 8; k++) v[k] = __fmul_rn((float)(signed char)b[2 + j0 + k], d);
    }
};

// Q2_K {u8 scales[16]; u8 qs[64]; fp16 d, dmin}: value j = n*128 + s*32 +
// w (n < 2, s < 4, w < 32) is 2 bits at shift 2s of qs[n*32 + w], in
// group n*8 + 2s + w/16: y = (d*(sc & 15))*q - dmin*(sc >> 4).
struct BlockQ2_K {
    static const int QK = 256, TS = 84;
    static __device__ __forceinline__ void dq(const u8* b, int j0, float* v) {
        float d = h2f(b + 80), dmin = h2f(b + 82);
        int n = j0 >> 7, s = (j0 >> 5) & 3, w0 = j0 & 31;
        int sc = b[n * 8 + 2 * s + (w0 >> 4)];
        float dl = __fmul_rn(d, (float)(sc & 15)), ml = __fmul_rn(dmin, (float)(sc >> 4));
        const u8* q = b + 16 + n * 32 + w0;
        for (int k = 0; k < 8; k++) v[k] = __fsub_rn(__fmul_rn(dl, (float)((q[k] >> (2 * s)) & 3)), ml);
    }
};

// Q3_K {u8 hmask[32]; u8 qs[64]; u8 scales[12]; fp16 d}: as Q2_K, with
// 6-bit scales (offset 32) unpacked from the C code's aux words, and a
// third bit from hmask[w] (bit 4n + s), set meaning "no -4":
// y = (d*(scale - 32))*(q - h).
struct BlockQ3_K {
    static const int QK = 256, TS = 110;
    static __device__ __forceinline__ void dq(const u8* b, int j0, float* v) {
        const unsigned int kmask1 = 0x03030303u, kmask2 = 0x0f0f0f0fu;
        float dall = h2f(b + 108);
        int n = j0 >> 7, s = (j0 >> 5) & 3, w0 = j0 & 31;
        int is = n * 8 + 2 * s + (w0 >> 4);
        unsigned int a0 = le32(b + 96), a1 = le32(b + 100), tmp = le32(b + 104);
        unsigned int aux;
        switch (is >> 2) {
            case 0: aux = (a0 & kmask2) | (((tmp >> 0) & kmask1) << 4); break;
            case 1: aux = (a1 & kmask2) | (((tmp >> 2) & kmask1) << 4); break;
            case 2: aux = ((a0 >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4); break;
            default: aux = ((a1 >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4); break;
        }
        int scale = (int)(signed char)(u8)(aux >> (8 * (is & 3)));
        float dl = __fmul_rn(dall, (float)(scale - 32));
        const u8* hm = b + w0;
        const u8* q = b + 32 + n * 32 + w0;
        unsigned int m = 1u << (4 * n + s);
        for (int k = 0; k < 8; k++) {
            int h = (hm[k] & m) ? 0 : 4;
            v[k] = __fmul_rn(dl, (float)((int)((q[k] >> (2 * s)) & 3) - h));
        }
    }
};

// get_scale_min_k4: the j-th 6-bit scale and min of a Q4_K or Q5_K block's
// 12 packed bytes.
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q4_K {fp16 d, dmin; u8 scales[12]; u8 qs[128]}: value j = c*64 + w
// (c < 4, w < 64) is the low (w < 32) or high nibble of qs[c*32 + w%32],
// in group 2c + w/32: y = (d*sc)*q - dmin*m.
struct BlockQ4_K {
    static const int QK = 256, TS = 144;
    static __device__ __forceinline__ void dq(const u8* b, int j0, float* v) {
        float d = h2f(b), dmin = h2f(b + 2);
        int c = j0 >> 6, w0 = j0 & 63, hi = w0 >> 5;
        int sc, m;
        scale_min_k4(2 * c + hi, b + 4, &sc, &m);
        float d1 = __fmul_rn(d, (float)sc), m1 = __fmul_rn(dmin, (float)m);
        const u8* q = b + 16 + c * 32 + (w0 & 31);
        for (int k = 0; k < 8; k++) {
            int x = hi ? (q[k] >> 4) : (q[k] & 15);
            v[k] = __fsub_rn(__fmul_rn(d1, (float)x), m1);
        }
    }
};

// Q5_K {fp16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: Q4_K plus a
// fifth bit, bit 2c (low nibbles) or 2c+1 (high) of qh[w%32].
struct BlockQ5_K {
    static const int QK = 256, TS = 176;
    static __device__ __forceinline__ void dq(const u8* b, int j0, float* v) {
        float d = h2f(b), dmin = h2f(b + 2);
        int c = j0 >> 6, w0 = j0 & 63, hi = w0 >> 5, l0 = w0 & 31;
        int sc, m;
        scale_min_k4(2 * c + hi, b + 4, &sc, &m);
        float d1 = __fmul_rn(d, (float)sc), m1 = __fmul_rn(dmin, (float)m);
        const u8* qh = b + 16 + l0;
        const u8* ql = b + 48 + c * 32 + l0;
        unsigned int u = 1u << (2 * c + hi);
        for (int k = 0; k < 8; k++) {
            int x = (hi ? (ql[k] >> 4) : (ql[k] & 15)) + ((qh[k] & u) ? 16 : 0);
            v[k] = __fsub_rn(__fmul_rn(d1, (float)x), m1);
        }
    }
};

// Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; fp16 d}: value j = n*128 +
// s*32 + l (n < 2, s < 4, l < 32) is the low (s < 2) or high nibble of
// ql[n*64 + 32*(s&1) + l] with 2 high bits at shift 2s of qh[n*32 + l],
// minus 32, in group n*8 + 2s + l/16: y = (d*scale)*q.
struct BlockQ6_K {
    static const int QK = 256, TS = 210;
    static __device__ __forceinline__ void dq(const u8* b, int j0, float* v) {
        float d = h2f(b + 208);
        int n = j0 >> 7, s = (j0 >> 5) & 3, l0 = j0 & 31;
        float ds = __fmul_rn(d, (float)(signed char)b[192 + n * 8 + 2 * s + (l0 >> 4)]);
        const u8* ql = b + n * 64 + 32 * (s & 1) + l0;
        const u8* qh = b + 128 + n * 32 + l0;
        for (int k = 0; k < 8; k++) {
            int lo = (s >> 1) ? (ql[k] >> 4) : (ql[k] & 15);
            int q = (lo | (((qh[k] >> (2 * s)) & 3) << 4)) - 32;
            v[k] = __fmul_rn(ds, (float)q);
        }
    }
};

// gguf_dequant_blocks: rows*in/8 threads, thread i expanding values
// 8*(i % (in/8)) .. +7 of output row i / (in/8).
template <typename B>
__device__ __forceinline__ void gguf_dequant_blocks(void* out, const u8* src, i64 rows, i64 in, i64 row_bytes, i64 heads,
                                                    i64 kind) {
    unsigned int gpr = (unsigned int)(in >> 3);
    unsigned int n = (unsigned int)rows * gpr;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        unsigned int r = i / gpr, c0 = (i - r * gpr) << 3;
        unsigned int g = gguf_src_row(r, (unsigned int)rows, (unsigned int)heads);
        const u8* blk = src + (i64)g * row_bytes + (i64)(c0 / B::QK) * B::TS;
        float v[8];
        B::dq(blk, (int)(c0 % B::QK), v);
        store8(out, (i64)r * in + c0, v, kind);
    }
}

#define GGUF_BLOCK_KERNEL(name, B)                                                                               \
    extern "C" __global__ void name(void* out, const u8* src, i64 rows, i64 in, i64 row_bytes, i64 heads, i64 kind) { \
        gguf_dequant_blocks<B>(out, src, rows, in, row_bytes, heads, kind);                                      \
    }

GGUF_BLOCK_KERNEL(gguf_dequant_q4_0, BlockQ4_0)
GGUF_BLOCK_KERNEL(gguf_dequant_q4_1, BlockQ4_1)
GGUF_BLOCK_KERNEL(gguf_dequant_q5_0, BlockQ5_0)
GGUF_BLOCK_KERNEL(gguf_dequant_q5_1, BlockQ5_1)
GGUF_BLOCK_KERNEL(gguf_dequant_q8_0, BlockQ8_0)
GGUF_BLOCK_KERNEL(gguf_dequant_q2_k, BlockQ2_K)
GGUF_BLOCK_KERNEL(gguf_dequant_q3_k, BlockQ3_K)
GGUF_BLOCK_KERNEL(gguf_dequant_q4_k, BlockQ4_K)
GGUF_BLOCK_KERNEL(gguf_dequant_q5_k, BlockQ5_K)
GGUF_BLOCK_KERNEL(gguf_dequant_q6_k, BlockQ6_K)

// The float types, one value a thread (rows of any length): F32 as is,
// F16 widened exactly, BF16 shifted into the top half.
struct ElemF32 {
    static const int TS = 4;
    static __device__ __forceinline__ float get(const u8* p) { return __uint_as_float(le32(p)); }
};
struct ElemF16 {
    static const int TS = 2;
    static __device__ __forceinline__ float get(const u8* p) { return h2f(p); }
};
struct ElemBF16 {
    static const int TS = 2;
    static __device__ __forceinline__ float get(const u8* p) {
        return bf16_to_f32((bf16_t)(p[0] | (p[1] << 8)));
    }
};

template <typename E>
__device__ __forceinline__ void gguf_dequant_elems(void* out, const u8* src, i64 rows, i64 in, i64 row_bytes, i64 heads,
                                                   i64 kind) {
    unsigned int w = (unsigned int)in;
    unsigned int n = (unsigned int)rows * w;
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        unsigned int r = i / w, c = i - r * w;
        unsigned int g = gguf_src_row(r, (unsigned int)rows, (unsigned int)heads);
        float x = E::get(src + (i64)g * row_bytes + (i64)c * E::TS);
        if (kind == 0) {
            reinterpret_cast<float*>(out)[i] = x;
        } else if (kind == 1) {
            reinterpret_cast<bf16_t*>(out)[i] = f32_to_bf16(x);
        } else {
            reinterpret_cast<__half*>(out)[i] = __float2half_rn(x);
        }
    }
}

#define GGUF_ELEM_KERNEL(name, E)                                                                                \
    extern "C" __global__ void name(void* out, const u8* src, i64 rows, i64 in, i64 row_bytes, i64 heads, i64 kind) { \
        gguf_dequant_elems<E>(out, src, rows, in, row_bytes, heads, kind);                                       \
    }

GGUF_ELEM_KERNEL(gguf_dequant_f32, ElemF32)
GGUF_ELEM_KERNEL(gguf_dequant_f16, ElemF16)
GGUF_ELEM_KERNEL(gguf_dequant_bf16, ElemBF16)
