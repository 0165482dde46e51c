// LoRA's low-rank products fused with its dropout, for ranks up to 16 (the
// fast path of LinearForward / LinearBackward). Each kernel reads its large
// operand (x or dout, [T,K]) once and regenerates the dropout mask from
// (seed, index) instead of materialising dropout(x); the sums are float32,
// in a different order than cuBLAS's, so the results agree with the
// one-op-at-a-time path to rounding.
//
// Notation: xd = dropout(x) = keep(seed, t*K+k) ? x * keep_scale : 0 when
// p > 0, else x (dropout_fwd's rule, the same index). keep is
// finetune.DropoutKeep (rng.cuh: the 16-bit field of index i in the hash of
// its group of four, i / 4), tested here as the exactly equivalent integer
// comparison field >= thr with thr = ceil(p * 2^16) (computed on the host:
// finetune.DropoutThreshold), which spares an integer-to-float conversion
// per value. The kernels that take four consecutive values of one group
// (lora_prep_bf16's float4s, lora_dx_v4) hash once per group.
#include "common.cuh"
#include "rng.cuh"
#include "swiglu.cuh"
#include "lora_drop.cuh"

// lora_bf16_pair packs two values rounded to bfloat16, the first in the low
// half (the lower address): f32_to_bf16's bits. The hardware conversion
// (one instruction for the pair, round to nearest even, subnormals kept)
// agrees with it on every value but NaN, whose payload f32_to_bf16 keeps
// and the hardware does not, so a pair holding a NaN goes the slow way
// (v6: the integer rounding was ~7 instructions a value of this
// memory-bound pass).
__device__ __forceinline__ unsigned int lora_bf16_pair(float a, float b) {
    unsigned int r = bf16x2_rn(a, b);
    if (a != a || b != b) r = (unsigned int)f32_to_bf16(a) | ((unsigned int)f32_to_bf16(b) << 16);
    return r;
}

// lora_prep_bf16 / _ld: the bfloat16 GEMM inputs of LoRA under BF16 compute
// (the tensor-core path of LinearForward / LinearBackward) from one read of
// x, with up to two small conversion jobs in the same launch (issue 8, v5:
// v4's per-call casts of A, B, h and dout . B were ~640 launches a step).
//   main: x [n] float32 = rows of cols values; xh[t*ldx + c] = bf16(x[t,c])
//         when xh is not null; xdh[i] = bf16(dropout(x))[i] (contiguous,
//         lora_drop's rule and flat index i = t*cols + c) when xdh is not
//         null. lora_prep_bf16: ldx == cols (xh contiguous too);
//         lora_prep_bf16_ld: cols % 4 == 0 and ldx % 4 == 0.
//   job k (rows_k * cols_k values, dst_k null: none): dst_k[r*ld_k + c] =
//         bf16(scale_k * src_k[r*cols_k + c]) (scale_k 1: exactly bf16(src)).
// The four-value groups of the main part go one a thread (the _w8 entry
// points, v6: eight values, two dropout groups, a thread, for cols % 8 ==
// 0, ldx % 8 == 0 and 16-byte aligned pointers), then the values left one
// a thread, then the jobs' values one a thread. Separate entry points
// rather than a run-time test: the strided index arithmetic costs
// registers, and occupancy sets this memory-bound pass's speed. v6, H100,
// the Phi-3-mini step: 12.2 ms a step (v5) -> 10.0 (one hash a dropout
// group, the hardware bf16 pair conversion) -> 9.6 (_w8).
__device__ __forceinline__ void lora_prep_job(bf16_t* dst, const float* src, i64 rows, i64 cols, i64 ld, float scale,
                                              i64 tid, i64 stride) {
    // 32-bit index arithmetic (the host checks rows * ld < 2^31): a 64-bit
    // division here cost the whole kernel registers, hence occupancy.
    const unsigned int nk = (unsigned int)(rows * cols), cu = (unsigned int)cols, ldu = (unsigned int)ld;
    for (i64 e = tid; e < nk; e += stride) {
        const unsigned int eu = (unsigned int)e, r = eu / cu, c = eu - r * cu;
        dst[r * ldu + c] = f32_to_bf16(__fmul_rn(scale, src[eu]));
    }
}

// lora_prep_drop4 is dropout of the four values of group q (one hash).
__device__ __forceinline__ float4 lora_prep_drop4(float4 v, u64 seed, u64 q, unsigned int thr, float ks) {
    const u64 h = dropout_group_hash(seed, q);
    return make_float4(lora_drop_field(v.x, h, 0, thr, ks), lora_drop_field(v.y, h, 1, thr, ks),
                       lora_drop_field(v.z, h, 2, thr, ks), lora_drop_field(v.w, h, 3, thr, ks));
}

template <bool STRIDED, bool W8>
__device__ __forceinline__ void lora_prep_body(bf16_t* xh, bf16_t* xdh, const float* x, i64 n, i64 cols, i64 ldx, u64 seed,
                                               double p_d, u64 thr, double ks_d, bf16_t* dst0, const float* src0,
                                               i64 rows0, i64 cols0, i64 ld0, double scale0, bf16_t* dst1,
                                               const float* src1, i64 rows1, i64 cols1, i64 ld1, double scale1) {
    const float p = (float)p_d, ks = (float)ks_d;
    const i64 stride = (i64)gridDim.x * blockDim.x;
    const i64 tid = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    const unsigned int t32 = (unsigned int)thr;  // <= 2^16
    // W8 (v6): eight values a thread, two 16-byte loads issued together and
    // 16-byte stores (the host checks cols % 8 == 0, ldx % 8 == 0 and
    // 16-byte aligned pointers): more bytes in flight a thread.
    const i64 groups = W8 ? n >> 3 : n >> 2;
    if (W8)
        for (i64 g = tid; g < groups; g += stride) {
            const float4 v0 = reinterpret_cast<const float4*>(x)[2 * g], v1 = reinterpret_cast<const float4*>(x)[2 * g + 1];
            const i64 i = g << 3;
            if (xh) {
                uint4 o = make_uint4(lora_bf16_pair(v0.x, v0.y), lora_bf16_pair(v0.z, v0.w), lora_bf16_pair(v1.x, v1.y),
                                     lora_bf16_pair(v1.z, v1.w));
                if (STRIDED) {  // 32-bit: the host checks n < 2^31 and rows * ldx < 2^31
                    const unsigned int t = (unsigned int)i / (unsigned int)cols;
                    // one 16-byte store (written plainly, nvcc splits it in four)
                    bf16_t* dst = xh + t * (unsigned int)ldx + ((unsigned int)i - t * (unsigned int)cols);
                    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "r"(o.x), "r"(o.y), "r"(o.z), "r"(o.w)
                                 : "memory");
                } else {
                    reinterpret_cast<uint4*>(xh)[g] = o;
                }
            }
            if (xdh) {
                // values i .. i+7: the dropout groups 2g and 2g+1
                float4 a = v0, b = v1;
                if (p > 0.0f) a = lora_prep_drop4(v0, seed, (u64)(2 * g), t32, ks), b = lora_prep_drop4(v1, seed, (u64)(2 * g + 1), t32, ks);
                reinterpret_cast<uint4*>(xdh)[g] = make_uint4(lora_bf16_pair(a.x, a.y), lora_bf16_pair(a.z, a.w),
                                                              lora_bf16_pair(b.x, b.y), lora_bf16_pair(b.z, b.w));
            }
        }
    else
    for (i64 g = tid; g < groups; g += stride) {
        float4 v = reinterpret_cast<const float4*>(x)[g];
        const i64 i = g << 2;
        if (xh) {
            uint2 o = make_uint2(lora_bf16_pair(v.x, v.y), lora_bf16_pair(v.z, v.w));
            if (STRIDED) {  // 32-bit: the host checks n < 2^31 and rows * ldx < 2^31
                const unsigned int t = (unsigned int)i / (unsigned int)cols;
                *reinterpret_cast<uint2*>(xh + t * (unsigned int)ldx + ((unsigned int)i - t * (unsigned int)cols)) = o;
            } else {
                reinterpret_cast<uint2*>(xh)[g] = o;
            }
        }
        if (xdh) {
            // i = 4g: the four values are group g's, one hash.
            const float4 a = p > 0.0f ? lora_prep_drop4(v, seed, (u64)g, t32, ks) : v;
            reinterpret_cast<uint2*>(xdh)[g] = make_uint2(lora_bf16_pair(a.x, a.y), lora_bf16_pair(a.z, a.w));
        }
    }
    for (i64 i = groups * (W8 ? 8 : 4) + tid; i < n; i += stride) {
        if (xh) {
            if (STRIDED) {
                const unsigned int t = (unsigned int)i / (unsigned int)cols;
                xh[t * (unsigned int)ldx + ((unsigned int)i - t * (unsigned int)cols)] = f32_to_bf16(x[i]);
            } else {
                xh[i] = f32_to_bf16(x[i]);
            }
        }
        if (xdh) xdh[i] = f32_to_bf16(lora_drop(x[i], seed, i, p, thr, ks));
    }
    if (dst0) lora_prep_job(dst0, src0, rows0, cols0, ld0, (float)scale0, tid, stride);
    if (dst1) lora_prep_job(dst1, src1, rows1, cols1, ld1, (float)scale1, tid, stride);
}

#define LORA_PREP_PARAMS                                                                                              \
    bf16_t *xh, bf16_t *xdh, const float *x, i64 n, i64 cols, i64 ldx, u64 seed, double p_d, u64 thr, double ks_d,   \
        bf16_t *dst0, const float *src0, i64 rows0, i64 cols0, i64 ld0, double scale0, bf16_t *dst1, const float *src1, \
        i64 rows1, i64 cols1, i64 ld1, double scale1
#define LORA_PREP_ARGS                                                                                                \
    xh, xdh, x, n, cols, ldx, seed, p_d, thr, ks_d, dst0, src0, rows0, cols0, ld0, scale0, dst1, src1, rows1, cols1, ld1, \
        scale1

extern "C" __global__ void lora_prep_bf16(LORA_PREP_PARAMS) { lora_prep_body<false, false>(LORA_PREP_ARGS); }
extern "C" __global__ void lora_prep_bf16_ld(LORA_PREP_PARAMS) { lora_prep_body<true, false>(LORA_PREP_ARGS); }
extern "C" __global__ void lora_prep_bf16_w8(LORA_PREP_PARAMS) { lora_prep_body<false, true>(LORA_PREP_ARGS); }
extern "C" __global__ void lora_prep_bf16_ld_w8(LORA_PREP_PARAMS) { lora_prep_body<true, true>(LORA_PREP_ARGS); }

// lora_dx4: dx [T,K] += the gradient through x of scale * (xd . A^T) .
// B^T, given g = dout . B [T,r]: v = scale * sum_j g[t,j] * A[j,k] (in j
// order), then dx += v * keep_scale where the forward kept x[t,k] (dx += v
// without dropout). For any K and r <= 16 (lora_dx_v4 when K % 4 == 0 and
// r <= 8, the same bits). A thread keeps its column of A in registers and
// takes four tokens an iteration, their loads issued before any store
// (restrict: dx does not alias g or A). Grid (ceil(K/256), rows): a
// thread visits the tokens 4*blockIdx.y .. +3, then + 4*gridDim.y, ...
extern "C" __global__ void lora_dx4(float* __restrict__ dx, const float* __restrict__ g, const float* __restrict__ A, i64 T,
                                    i64 K, i64 r, double scale_d, u64 seed, double p_d, u64 thr, double ks_d) {
    const float scale = (float)scale_d, p = (float)p_d, ks = (float)ks_d;
    const i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (k >= K) return;
    float a[16];
#pragma unroll
    for (int j = 0; j < 16; j++) a[j] = j < r ? A[j * K + k] : 0.0f;
    for (i64 t0 = 4 * (i64)blockIdx.y; t0 < T; t0 += 4 * (i64)gridDim.y) {
        bool keep[4];
        float d[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const i64 t = t0 + u, idx = t * K + k;
            keep[u] = t < T && (p <= 0.0f || lora_keep(seed, idx, thr));
            d[u] = keep[u] ? dx[idx] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            if (!keep[u]) continue;
            const float* gt = g + (t0 + u) * r;
            float s = 0.0f;
#pragma unroll
            for (int j = 0; j < 16; j++)
                if (j < r) s = __fadd_rn(s, __fmul_rn(gt[j], a[j]));
            float v = __fmul_rn(scale, s);
            if (p > 0.0f) v = __fmul_rn(v, ks);
            dx[(t0 + u) * K + k] = __fadd_rn(d[u], v);
        }
    }
}

// lora_dx_v4: lora_dx4 (the same sums in the same order, so the same bits)
// for K % 4 == 0 and r <= 8, four consecutive columns a thread: one float4
// of dx a token is one dropout group (k % 4 == 0, so t*K + k is too), so
// one hash serves four values (lora_dx4 hashed each value twice: the
// instructions, not the bytes, set its speed). A thread keeps A's 4 x r
// values in registers and does tt tokens (a multiple of 4), four at a
// time with their loads issued before any store. Grid (ceil(K/4/128),
// ceil(T/tt)), 128 threads.
//
// R8 (v11, lora_dx_v4_r8: r == 8, g 32-byte aligned): g's row in two
// 16-byte loads instead of eight, and no rank tests (the same sums).
template <bool R8>
__device__ __forceinline__ void lora_dx_v4_body(float* __restrict__ dx, const float* __restrict__ g,
                                                const float* __restrict__ A, i64 T, i64 K, i64 r, double scale_d,
                                                u64 seed, double p_d, u64 thr, double ks_d, i64 tt) {
    const float scale = (float)scale_d, p = (float)p_d, ks = (float)ks_d;
    const i64 q = blockIdx.x * (i64)blockDim.x + threadIdx.x, k = 4 * q;
    if (k >= K) return;
    const int rr = R8 ? 8 : (int)r;
    float4 a[8];
#pragma unroll
    for (int j = 0; j < 8; j++)
        a[j] = j < rr ? *reinterpret_cast<const float4*>(A + j * K + k) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const i64 tb = (i64)blockIdx.y * tt, te = min(T, tb + tt);
    for (i64 t0 = tb; t0 < te; t0 += 4) {
        float4 d[4];
        u64 h[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const i64 t = t0 + u;
            if (t < te) {
                d[u] = *reinterpret_cast<const float4*>(dx + t * K + k);
                h[u] = p > 0.0f ? dropout_group_hash(seed, (u64)((t * K + k) >> 2)) : 0;
            }
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const i64 t = t0 + u;
            if (t >= te) break;
            const float* gt = g + t * r;
            float gv[8];
            if (R8) {  // g's row: two 16-byte loads (g [T,8] is 32-byte aligned)
                const float4 g0 = reinterpret_cast<const float4*>(gt)[0], g1 = reinterpret_cast<const float4*>(gt)[1];
                gv[0] = g0.x, gv[1] = g0.y, gv[2] = g0.z, gv[3] = g0.w, gv[4] = g1.x, gv[5] = g1.y, gv[6] = g1.z, gv[7] = g1.w;
            }
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++)
                if (R8 || j < rr) {
                    const float gj = R8 ? gv[j] : gt[j];
                    s0 = __fadd_rn(s0, __fmul_rn(gj, a[j].x));
                    s1 = __fadd_rn(s1, __fmul_rn(gj, a[j].y));
                    s2 = __fadd_rn(s2, __fmul_rn(gj, a[j].z));
                    s3 = __fadd_rn(s3, __fmul_rn(gj, a[j].w));
                }
            float v0 = __fmul_rn(scale, s0), v1 = __fmul_rn(scale, s1), v2 = __fmul_rn(scale, s2),
                  v3 = __fmul_rn(scale, s3);
            float4 o = d[u];
            if (p > 0.0f) {
                // dropped: dx unchanged (the same bits written back)
                const u64 hu = h[u];
                const unsigned int t32 = (unsigned int)thr, lo = (unsigned int)hu, hi = (unsigned int)(hu >> 32);
                if ((lo & 0xFFFFu) >= t32) o.x = __fadd_rn(o.x, __fmul_rn(v0, ks));
                if ((lo >> 16) >= t32) o.y = __fadd_rn(o.y, __fmul_rn(v1, ks));
                if ((hi & 0xFFFFu) >= t32) o.z = __fadd_rn(o.z, __fmul_rn(v2, ks));
                if ((hi >> 16) >= t32) o.w = __fadd_rn(o.w, __fmul_rn(v3, ks));
            } else {
                o.x = __fadd_rn(o.x, v0), o.y = __fadd_rn(o.y, v1), o.z = __fadd_rn(o.z, v2), o.w = __fadd_rn(o.w, v3);
            }
            *reinterpret_cast<float4*>(dx + t * K + k) = o;
        }
    }
}

#define LORA_DX_V4_PARAMS                                                                                        \
    float *__restrict__ dx, const float *__restrict__ g, const float *__restrict__ A, i64 T, i64 K, i64 r,        \
        double scale_d, u64 seed, double p_d, u64 thr, double ks_d, i64 tt
extern "C" __global__ void __launch_bounds__(128) lora_dx_v4(LORA_DX_V4_PARAMS) {
    lora_dx_v4_body<false>(dx, g, A, T, K, r, scale_d, seed, p_d, thr, ks_d, tt);
}
extern "C" __global__ void __launch_bounds__(128) lora_dx_v4_r8(LORA_DX_V4_PARAMS) {
    lora_dx_v4_body<true>(dx, g, A, T, K, r, scale_d, seed, p_d, thr, ks_d, tt);
}

// lora_dx_v4_r8l (issue 8, v19): lora_dx_v4_r8 (the same sums in the same
// order, so the same bits) with 32-bit element offsets (the host checks T
// * K < 2^31) instead of 64-bit index arithmetic a value: ~30% fewer
// instructions, 2.06 -> 1.91 ms a step (H200). Capping it at 64 registers
// (__launch_bounds__(128, 8): twice the warps, a few spills) gave the same
// time, so it is not built.
__device__ __forceinline__ void lora_dx_r8_lean(float* __restrict__ dx, const float* __restrict__ g,
                                                const float* __restrict__ A, i64 T_, i64 K_, double scale_d, u64 seed,
                                                double p_d, u64 thr, double ks_d, i64 tt) {
    const float scale = (float)scale_d, ks = (float)ks_d;
    const bool drop = p_d > 0.0;
    const unsigned T = (unsigned)T_, K = (unsigned)K_;
    const unsigned q = blockIdx.x * blockDim.x + threadIdx.x, k = 4u * q;
    if (k >= K) return;
    float4 a[8];
#pragma unroll
    for (int j = 0; j < 8; j++) a[j] = *reinterpret_cast<const float4*>(A + (j * K + k));
    const unsigned tb = blockIdx.y * (unsigned)tt, te = min(T, tb + (unsigned)tt);
    const unsigned t32 = (unsigned)thr;
    for (unsigned t0 = tb; t0 < te; t0 += 4) {
        float4 d[4];
        u64 h[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const unsigned t = t0 + u;
            if (t < te) {
                d[u] = *reinterpret_cast<const float4*>(dx + (t * K + k));
                h[u] = drop ? dropout_group_hash(seed, (u64)((t * K + k) >> 2)) : 0;
            }
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const unsigned t = t0 + u;
            if (t >= te) break;
            const float4 g0 = reinterpret_cast<const float4*>(g + 8u * t)[0], g1 = reinterpret_cast<const float4*>(g + 8u * t)[1];
            const float gv[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                s0 = __fadd_rn(s0, __fmul_rn(gv[j], a[j].x));
                s1 = __fadd_rn(s1, __fmul_rn(gv[j], a[j].y));
                s2 = __fadd_rn(s2, __fmul_rn(gv[j], a[j].z));
                s3 = __fadd_rn(s3, __fmul_rn(gv[j], a[j].w));
            }
            const float v0 = __fmul_rn(scale, s0), v1 = __fmul_rn(scale, s1), v2 = __fmul_rn(scale, s2),
                        v3 = __fmul_rn(scale, s3);
            float4 o = d[u];
            if (drop) {
                // dropped: dx unchanged (the same bits written back)
                const u64 hu = h[u];
                const unsigned lo = (unsigned)hu, hi = (unsigned)(hu >> 32);
                if ((lo & 0xFFFFu) >= t32) o.x = __fadd_rn(o.x, __fmul_rn(v0, ks));
                if ((lo >> 16) >= t32) o.y = __fadd_rn(o.y, __fmul_rn(v1, ks));
                if ((hi & 0xFFFFu) >= t32) o.z = __fadd_rn(o.z, __fmul_rn(v2, ks));
                if ((hi >> 16) >= t32) o.w = __fadd_rn(o.w, __fmul_rn(v3, ks));
            } else {
                o.x = __fadd_rn(o.x, v0), o.y = __fadd_rn(o.y, v1), o.z = __fadd_rn(o.z, v2), o.w = __fadd_rn(o.w, v3);
            }
            *reinterpret_cast<float4*>(dx + (t * K + k)) = o;
        }
    }
}
extern "C" __global__ void __launch_bounds__(128) lora_dx_v4_r8l(LORA_DX_V4_PARAMS) {
    lora_dx_r8_lean(dx, g, A, T, K, scale_d, seed, p_d, thr, ks_d, tt);
}

// lora_rows_bf16 / _t (issue 8, v7): LoRA's skinny product fused into the
// pass that rounds its big operand to bfloat16. From one read of Y [T,K]
// float32 (x in the forward, dout in the backward):
//   yh[t*ldyh + k] = bf16(Y[t,k])                      (yh null: not written)
//   P[t,j] = sum_k bf16(drop(Y[t,k])) * bf16(W(j,k))    (float32, j < r <= 8)
//   p16[t*ldp + j] = bf16(scale16 * P[t,j])            (p16 null: not written)
// with W(j,k) = W[j*K + k] (lora_rows_bf16: A [r,K], P = h) or W[k*r + j]
// (lora_rows_bf16_t: B [K,r] read as B^T, P = g = dout . B), drop lora_drop's
// rule at the flat index t*K + k (p 0: none), plus one prepJob-like
// conversion spread over the grid (jdst[i*jld + c] = bf16(jscale *
// jsrc[i*jcols + c])). It replaces lora_prep_bf16's pass, the skinny GEMM
// that reread the rounded copy, and the small launch that rounded s.h into
// the fold columns (v6: three launches, ~26 us for a 1024 x 3072 x).
//
// Block b takes the 8 rows 8b .. 8b+7 (the MMA's rows 0-7; rows 8-15 are
// zero), WARPS warps (16; 32 for the _w32 entry points, v9); warp w the
// 32-column chunks w, w+WARPS, w+2*WARPS, ...; lane
// (g = lane/4, c = lane%4) row 8b+g, columns 8c .. 8c+7 of a chunk: two
// 16-byte loads (one of a bfloat16 Y, GU16), two dropout groups (one hash
// each), one 16-byte store of
// bf16(Y), and two mma.sync.m16n8k16 (bf16 in, float32 out) whose k slots
// 2c, 2c+1, 2c+8, 2c+9 stand for the values 8c .. 8c+3 and then 8c+4 ..
// 8c+7, W's fragment loaded in the same order (skinny_rows' pairing). The
// products are exact; each MMA's sum is added into float32 registers, the
// warps' sums then in warp order: a fixed order, so the same bits for the
// same shapes (LoRAHForward gives LinearForward's h exactly). The host
// checks K % 8 == 0, r <= 8, 16-byte aligned Y, W and yh rows.
#define LR_ROWS 8

__device__ __forceinline__ void lr_mma(float d[4], unsigned a0, unsigned a2, unsigned b0, unsigned b1) {
    const float z = 0.0f;
    const unsigned zero = 0u;
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a0), "r"(zero), "r"(a2), "r"(zero), "r"(b0), "r"(b1), "f"(z), "f"(z), "f"(z), "f"(z));
}

// lr_w_frag loads W(j, k .. k+7) from a row of A [r,K], wr = &A[j][k]
// (16-byte aligned), as four bf16 pairs in the MMA's k order.
__device__ __forceinline__ void lr_w_frag(unsigned f[4], const float* wr) {
    const float4 wa = __ldg(reinterpret_cast<const float4*>(wr)), wb = __ldg(reinterpret_cast<const float4*>(wr) + 1);
    f[0] = bf16x2_rn(wa.x, wa.y), f[1] = bf16x2_rn(wa.z, wa.w), f[2] = bf16x2_rn(wb.x, wb.y), f[3] = bf16x2_rn(wb.z, wb.w);
}

// lr_wt_frag loads W(., k .. k+7) of one column from B [K,r] (row k holds
// W(., k)), wc = &B[k][column], as four bf16 pairs in the MMA's k order
// (lora_rows_bf16_t's); r's type is the caller's index arithmetic.
template <typename I>
__device__ __forceinline__ void lr_wt_frag(unsigned f[4], const float* wc, I r) {
    f[0] = bf16x2_rn(__ldg(wc), __ldg(wc + r)), f[1] = bf16x2_rn(__ldg(wc + 2 * r), __ldg(wc + 3 * r));
    f[2] = bf16x2_rn(__ldg(wc + 4 * r), __ldg(wc + 5 * r)), f[3] = bf16x2_rn(__ldg(wc + 6 * r), __ldg(wc + 7 * r));
}

// lr_w16_frag loads W(j, k .. k+7) from a row of a packed copy W16 [r,K]
// (lora_pack_bf16: bf16x2_rn of A, or of B^T), w16r = &W16[j][k] (16-byte
// aligned): one 16-byte load in place of lr_w_frag's two and four
// conversions, or lr_wt_frag's eight scattered ones (v11).
__device__ __forceinline__ void lr_w16_frag(unsigned f[4], const bf16_t* w16r) {
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(w16r));
    f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;
}

// lr_finish ends a row kernel: the block's warps add their MMA sums (acc:
// lane (g, c) holds (row g, j 2c) and (row g, j 2c+1)) in warp order, and
// threads 0..63 write P [T,r] and bf16(scale16 * P) to p16 (row stride ldp;
// null: not written); then the block's share of the conversion job.
template <int WARPS>
__device__ __forceinline__ void lr_finish(const float acc[2], float* __restrict__ P, bf16_t* __restrict__ p16, i64 ldp,
                                          float scale16, i64 T, int r, bf16_t* jdst, const float* jsrc, i64 jrows,
                                          i64 jcols, i64 jld, double jscale) {
    __shared__ float red[WARPS][LR_ROWS * 8];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    red[w][g * 8 + 2 * c] = acc[0];
    red[w][g * 8 + 2 * c + 1] = acc[1];
    __syncthreads();
    if (threadIdx.x < LR_ROWS * 8) {
        const int row = threadIdx.x >> 3, j = threadIdx.x & 7;
        float sum = red[0][threadIdx.x];
#pragma unroll
        for (int v = 1; v < WARPS; v++) sum += red[v][threadIdx.x];
        const i64 tt = (i64)blockIdx.x * LR_ROWS + row;
        if (tt < T && j < r) {
            P[tt * r + j] = sum;
            if (p16) p16[tt * ldp + j] = f32_to_bf16(__fmul_rn(scale16, sum));
        }
    }
    if (jdst) {
        const i64 tid = blockIdx.x * (i64)blockDim.x + threadIdx.x, stride = (i64)gridDim.x * blockDim.x;
        lora_prep_job(jdst, jsrc, jrows, jcols, jld, (float)jscale, tid, stride);
    }
}

// lr_load8 loads 8 values at p + k of a float32 row, or (H) of a bfloat16
// one (p then holds bf16_t), as two float4.
template <bool H>
__device__ __forceinline__ void lr_load8(float4& a, float4& b, const float* p, int k) {
    if (H) {
        const uint4 q = *reinterpret_cast<const uint4*>(reinterpret_cast<const bf16_t*>(p) + k);
        a = bf16x4_to_f32(make_uint2(q.x, q.y)), b = bf16x4_to_f32(make_uint2(q.z, q.w));
    } else {
        a = reinterpret_cast<const float4*>(p + k)[0], b = reinterpret_cast<const float4*>(p + k)[1];
    }
}

// lr_nan8 says whether any of the 8 values is a NaN.
__device__ __forceinline__ bool lr_nan8(float4 a, float4 b) {
    return (a.x != a.x) | (a.y != a.y) | (a.z != a.z) | (a.w != a.w) | (b.x != b.x) | (b.y != b.y) | (b.z != b.z) |
           (b.w != b.w);
}

// lr_pack8 is bf16 of 8 values, two a word, as lora_bf16_pair rounds them
// (f32_to_bf16's bits) when nan is false; the caller redoes a group with a
// NaN through lr_pack8_exact. v9: lora_bf16_pair's per-pair NaN test was a
// divergent branch a pair (eight a chunk), and the branches kept the
// compiler from interleaving the chunks' independent work.
__device__ __forceinline__ uint4 lr_pack8(float4 a, float4 b) {
    return make_uint4(bf16x2_rn(a.x, a.y), bf16x2_rn(a.z, a.w), bf16x2_rn(b.x, b.y), bf16x2_rn(b.z, b.w));
}
__device__ __noinline__ uint4 lr_pack8_exact(float4 a, float4 b) {
    return make_uint4(lora_bf16_pair(a.x, a.y), lora_bf16_pair(a.z, a.w), lora_bf16_pair(b.x, b.y),
                      lora_bf16_pair(b.z, b.w));
}

// lr_drop8 is dropout of 8 values, the groups whose SplitMix64 states are
// s and s + the golden gamma (dropout_group_hash's argument, precomputed).
__device__ __forceinline__ void lr_drop8(float4& a, float4& b, u64 s, unsigned int thr, float ks) {
    const u64 h0 = mix64(s), h1 = mix64(s + 0x9E3779B97F4A7C15ULL);
    a = make_float4(lora_drop_field(a.x, h0, 0, thr, ks), lora_drop_field(a.y, h0, 1, thr, ks),
                    lora_drop_field(a.z, h0, 2, thr, ks), lora_drop_field(a.w, h0, 3, thr, ks));
    b = make_float4(lora_drop_field(b.x, h1, 0, thr, ks), lora_drop_field(b.y, h1, 1, thr, ks),
                    lora_drop_field(b.z, h1, 2, thr, ks), lora_drop_field(b.w, h1, 3, thr, ks));
}

// lr_chunk is a lane's row work on its 8 values a, b (columns k .. k+7 of
// its row; ok: a row below T, else the values count as zeros): bf16(a, b)
// to yhrow, bf16(dropout) to xdrow (null: not written; the row's dropout
// state srow as in lr_drop8's caller), and the two MMAs of dropout(a, b)
// with W's fragment wf added into acc.
__device__ __forceinline__ void lr_chunk(float acc[2], float4 a, float4 b, bool ok, int k, bf16_t* yhrow, bf16_t* xdrow,
                                         bool drop, u64 srow, unsigned int t32, float ks, const unsigned wf[4]) {
    const float4 a0 = a, b0 = b, z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    uint4 yo = lr_pack8(a, b);
    if (drop) lr_drop8(a, b, srow + (u64)(unsigned int)(k >> 2) * 0x9E3779B97F4A7C15ULL, t32, ks);
    uint4 xo = lr_pack8(a, b);
    if (lr_nan8(a0, b0)) {  // rare: f32_to_bf16 keeps a NaN's payload
        yo = lr_pack8_exact(a0, b0);
        xo = lr_pack8_exact(a, b);
    }
    if (ok && yhrow) *reinterpret_cast<uint4*>(yhrow + k) = yo;
    if (ok && xdrow) *reinterpret_cast<uint4*>(xdrow + k) = xo;  // kept for GradA (v8)
    if (!ok) a = b = z;
    float d[4];
    lr_mma(d, bf16x2_rn(a.x, a.y), bf16x2_rn(a.z, a.w), wf[0], wf[1]);
    acc[0] += d[0], acc[1] += d[1];
    lr_mma(d, bf16x2_rn(b.x, b.y), bf16x2_rn(b.z, b.w), wf[2], wf[3]);
    acc[0] += d[0], acc[1] += d[1];
}

// lr_swiglu_fwd8 is SwiGLU's output up * silu(gate) of 8 values (gate
// ga, gb; up pa, pb): swiglu_fwd's math, so its bits.
__device__ __forceinline__ void lr_swiglu_fwd8(float4& a, float4& b, float4 ga, float4 gb, float4 pa, float4 pb) {
    a = make_float4(__fmul_rn(pa.x, silu_f(ga.x)), __fmul_rn(pa.y, silu_f(ga.y)), __fmul_rn(pa.z, silu_f(ga.z)),
                    __fmul_rn(pa.w, silu_f(ga.w)));
    b = make_float4(__fmul_rn(pb.x, silu_f(gb.x)), __fmul_rn(pb.y, silu_f(gb.y)), __fmul_rn(pb.z, silu_f(gb.z)),
                    __fmul_rn(pb.w, silu_f(gb.w)));
}

// SW (lora_rows_swiglu_bf16, v7): Y is gate_up [T,2K] (gate in columns
// 0..K-1, up in K..2K-1) and the rows' values are SwiGLU's output, act =
// up * silu(gate) (swiglu_fwd's math, the same bits), also written to act
// [T,K] in float32 (act null: not; v10, where nothing reads it): SwiGLUForward
// and the down projection's row pass in one.
//
// v9 (the same sums in the same order as v7, so the same bits): the body
// has no divergent branch (the NaN test is one a chunk, see lr_pack8), the
// column and dropout indices are 32-bit offsets from per-row 64-bit bases
// (the dropout group's SplitMix64 state is the row's plus (k/4) * gamma).
// ncu at v8 (H100, 1024 x 3072): 13.5 us, 0.97 TB/s, 10 cycles between a
// warp's instructions at 16 warps an SM: latency-bound on a long
// instruction stream.
//
// RAW (v11, lora_rows_bf16_t_hr_w32: WT, GU16, no SwiGLU, no dropout, no
// copies): the bfloat16 words of Y go into the MMAs as loaded, where the
// others widen them to float32 and round them back (exact: the same bits
// but for a NaN's payload).
template <bool WT, bool SW, int WARPS, int BATCH, bool GU16 = false, bool RAW = false>
__device__ __forceinline__ void lora_rows_body(bf16_t* __restrict__ yh, i64 ldyh, float* __restrict__ P,
                                               bf16_t* __restrict__ p16, i64 ldp, double scale16_d,
                                               const float* __restrict__ Y, const float* __restrict__ W, i64 T, i64 K,
                                               i64 r, u64 seed, double p_d, u64 thr, double ks_d, bf16_t* jdst,
                                               const float* jsrc, i64 jrows, i64 jcols, i64 jld, double jscale,
                                               const bf16_t* __restrict__ w16, float* __restrict__ act,
                                               bf16_t* __restrict__ xd16) {
    const float ks = (float)ks_d;
    const bool drop = p_d > 0.0;
    const unsigned int t32 = (unsigned int)thr;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const i64 t = (i64)blockIdx.x * LR_ROWS + g;
    const bool okt = t < T, okg = g < (int)r;
    const i64 tr = okt ? t : 0;
    const int Ki = (int)K, Ri = (int)r;  // the host checks K < 2^31
    // GU16 (v9): Y held in bfloat16 (Tensor.half: gate_up, or dout = d qkv),
    // its bf16_t rows
    const float* yrow = GU16 ? reinterpret_cast<const float*>(reinterpret_cast<const bf16_t*>(Y) + tr * (SW ? 2 * K : K))
                             : Y + tr * (SW ? 2 * K : K);
    bf16_t* yhrow = yh ? yh + tr * ldyh : nullptr;
    bf16_t* xdrow = xd16 ? xd16 + tr * K : nullptr;
    float* actrow = SW && act ? act + tr * K : nullptr;  // act null: not written (v10, skipByproduct)
    const float* wcol = W + (okg ? g : 0) * (WT ? 1 : K);
    const bf16_t* w16row = w16 ? w16 + (okg ? g : 0) * K : nullptr;  // packed: W(g, .) whether A or B^T
    // dropout_group_hash's argument for the row's group k/4: srow + (k/4) * gamma
    const u64 srow = seed + (u64)(tr * (K >> 2)) * 0x9E3779B97F4A7C15ULL;
    float acc[2] = {0.0f, 0.0f};
    const int nch = (Ki + 31) >> 5;
    const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    // BATCH chunks a round, their loads issued before any is used (the
    // pass is latency-bound otherwise: 128 blocks, one a multiprocessor).
    for (int q0 = w; q0 < nch; q0 += WARPS * BATCH) {
        float4 ya[BATCH], yb[BATCH], ua[BATCH], ub[BATCH];
        uint4 yr[BATCH];  // RAW
        unsigned wf[BATCH][4];
#pragma unroll
        for (int u = 0; u < BATCH; u++) {
            const int k = ((q0 + u * WARPS) << 5) + 8 * c;
            const bool okk = q0 + u * WARPS < nch && k < Ki;  // K % 8 == 0: all 8 values or none
            ya[u] = yb[u] = ua[u] = ub[u] = z;
            yr[u] = make_uint4(0, 0, 0, 0);
            if (okt && okk) {
                if (RAW) {
                    yr[u] = *reinterpret_cast<const uint4*>(reinterpret_cast<const bf16_t*>(yrow) + k);
                } else {
                    lr_load8<GU16>(ya[u], yb[u], yrow, k);
                }
                if (SW) lr_load8<GU16>(ua[u], ub[u], yrow, Ki + k);
            }
            // W's 8 values of column g at k .. k+7, rounded to bf16 pairs.
            wf[u][0] = wf[u][1] = wf[u][2] = wf[u][3] = 0;
            if (okg && okk) {
                if (w16row) {
                    lr_w16_frag(wf[u], w16row + k);
                } else if (WT) {
                    lr_wt_frag(wf[u], wcol + k * Ri, Ri);
                } else {
                    lr_w_frag(wf[u], wcol + k);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < BATCH; u++) {
            const int k = ((q0 + u * WARPS) << 5) + 8 * c;
            const bool ok = okt && q0 + u * WARPS < nch && k < Ki;
            if (RAW) {
                float d[4];
                lr_mma(d, yr[u].x, yr[u].y, wf[u][0], wf[u][1]);
                acc[0] += d[0], acc[1] += d[1];
                lr_mma(d, yr[u].z, yr[u].w, wf[u][2], wf[u][3]);
                acc[0] += d[0], acc[1] += d[1];
                continue;
            }
            float4 a = ya[u], b = yb[u];
            if (SW) {
                lr_swiglu_fwd8(a, b, ya[u], yb[u], ua[u], ub[u]);
                if (ok && actrow) {
                    float4* ap = reinterpret_cast<float4*>(actrow + k);
                    ap[0] = a, ap[1] = b;
                }
            }
            lr_chunk(acc, a, b, ok, k, yhrow, xdrow, drop, srow, t32, ks, wf[u]);
        }
    }
    lr_finish<WARPS>(acc, P, p16, ldp, (float)scale16_d, T, (int)r, jdst, jsrc, jrows, jcols, jld, jscale);
}

// w16 (every row kernel's last common parameter; null: none) is W's
// packed bfloat16 copy [r,K] (lora_pack_bf16, v11), read in W's place.
#define LORA_ROWS_PARAMS                                                                                              \
    bf16_t *yh, i64 ldyh, float *P, bf16_t *p16, i64 ldp, double scale16, const float *Y, const float *W, i64 T, i64 K, \
        i64 r, u64 seed, double p_d, u64 thr, double ks_d, bf16_t *jdst, const float *jsrc, i64 jrows, i64 jcols,     \
        i64 jld, double jscale, const bf16_t *w16
#define LORA_ROWS_ARGS \
    yh, ldyh, P, p16, ldp, scale16, Y, W, T, K, r, seed, p_d, thr, ks_d, jdst, jsrc, jrows, jcols, jld, jscale, w16

// xd16 (null: not written) gets bf16(drop(Y)) [T,K], what lora_prep_bf16
// writes as xdh for the backward's GradA (finetune.LoRAInputKeeper, v8).
// The _w32 entry points (v9) take 32 warps a block (1024 threads, at most
// 64 registers a thread) and half the batch: twice the warps an SM to hide
// the latency of each warp's instruction stream with the same bytes in
// flight; the warps' sums are added in a different order than the 16-warp
// kernels' (other bits, the same precision).
#define LORA_ROWS_ENTRY(NAME, TNAME, WARPS, BATCH)                                                                 \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) NAME(LORA_ROWS_PARAMS, bf16_t* xd16) {           \
        lora_rows_body<false, false, WARPS, BATCH>(LORA_ROWS_ARGS, nullptr, xd16);                            \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) TNAME(LORA_ROWS_PARAMS) {                        \
        lora_rows_body<true, false, WARPS, BATCH>(LORA_ROWS_ARGS, nullptr, nullptr); /* p 0: no dropout */   \
    }
#define LORA_ROWS_SWIGLU_ENTRY(NAME, WARPS, BATCH)                                                            \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) NAME(LORA_ROWS_PARAMS, float* act, bf16_t* xd16) { \
        lora_rows_body<false, true, WARPS, BATCH>(LORA_ROWS_ARGS, act, xd16);                                 \
    }
LORA_ROWS_ENTRY(lora_rows_bf16, lora_rows_bf16_t, 16, 4)
LORA_ROWS_ENTRY(lora_rows_bf16_w32, lora_rows_bf16_t_w32, 32, 2)
LORA_ROWS_SWIGLU_ENTRY(lora_rows_swiglu_bf16, 16, 2)
LORA_ROWS_SWIGLU_ENTRY(lora_rows_swiglu_bf16_w32, 32, 1)
// lora_rows_bf16_t_h_w32 (v9): dout in bfloat16 (Y holds bf16_t: d qkv from
// attn_bwd_bf16_hh), which is then the dx and GradB GEMMs' operand itself
// (yh null): only g = dout . B and its rounding are written.
extern "C" __global__ void __launch_bounds__(32 * 32) lora_rows_bf16_t_h_w32(LORA_ROWS_PARAMS) {
    lora_rows_body<true, false, 32, 2, true>(LORA_ROWS_ARGS, nullptr, nullptr);
}
// lora_rows_bf16_t_hr_w32 (v11): lora_rows_bf16_t_h_w32 with RAW.
extern "C" __global__ void __launch_bounds__(32 * 32) lora_rows_bf16_t_hr_w32(LORA_ROWS_PARAMS) {
    lora_rows_body<true, false, 32, 2, true, true>(LORA_ROWS_ARGS, nullptr, nullptr);
}
// _h_w32 (v9): gate_up in bfloat16 (Y holds bf16_t; finetune.HalfAllocator).
extern "C" __global__ void __launch_bounds__(32 * 32) lora_rows_swiglu_bf16_h_w32(LORA_ROWS_PARAMS, float* act, bf16_t* xd16) {
    lora_rows_body<false, true, 32, 1, true>(LORA_ROWS_ARGS, act, xd16);
}

// lr_chunk_lean is lr_chunk for the lean kernels (v19): bf16 of a, b to
// yh + (hofs + k) (YH), the dropout copy (group state sk) to xd16 + (kofs +
// k) (XD), where ok, and the MMAs of the copy's rounded words (zeros where
// not ok) with W's fragment wf added into acc.
template <bool YH, bool XD>
__device__ __forceinline__ void lr_chunk_lean(float acc[2], float4 a, float4 b, bool ok, int k, bf16_t* __restrict__ yh,
                                              unsigned hofs, bf16_t* __restrict__ xd16, unsigned kofs, bool drop,
                                              u64 sk, unsigned int t32, float ks, const unsigned wf[4]) {
    const float4 a0 = a, b0 = b;
    uint4 yo = YH ? lr_pack8(a, b) : make_uint4(0u, 0u, 0u, 0u);
    if (drop) lr_drop8(a, b, sk, t32, ks);
    const uint4 mm = lr_pack8(a, b);  // the MMAs' operands
    uint4 xo = mm;
    if (lr_nan8(a0, b0)) {  // rare: f32_to_bf16 keeps a NaN's payload
        if (YH) yo = lr_pack8_exact(a0, b0);
        if (XD) xo = lr_pack8_exact(a, b);
    }
    if (YH && ok) *reinterpret_cast<uint4*>(yh + (hofs + k)) = yo;
    if (XD && ok) *reinterpret_cast<uint4*>(xd16 + (kofs + k)) = xo;  // kept for GradA (v8)
    float d[4];
    lr_mma(d, ok ? mm.x : 0u, ok ? mm.y : 0u, wf[0], wf[1]);
    acc[0] += d[0], acc[1] += d[1];
    lr_mma(d, ok ? mm.z : 0u, ok ? mm.w : 0u, wf[2], wf[3]);
    acc[0] += d[0], acc[1] += d[1];
}

// The lean row kernels (issue 8, v19): lora_rows_body's 32-warp kernels
// with a packed W (w16), the same operations in the same order, so the same
// bits, in a leaner loop. lora_rows_swiglu_bf16_h_w32 is bound by
// instruction issue (ncu, v17: 73% issue-active, ~63 instructions a value
// a lane) and the plain ones by latency on a long instruction stream
// (~32 a value); their SASS spent ~17 and ~14 instructions a value on
// per-chunk 64-bit address arithmetic, null tests of the output pointers
// and reloading keep_scale from the constant bank (the 64 registers a
// thread of a 1024-thread block leave ptxas rematerialising loop
// invariants). Here the outputs that are written are template parameters
// (ACT: act, YH: yh, XD: xd16; an entry point picks the instantiation),
// the addresses are 32-bit element offsets from the kernel's arguments (the
// host checks that they fit), the dropout group's SplitMix64 state steps
// by a constant, and the MMAs take the dropout copy's rounded words (before
// its NaN fix-up: what lr_chunk's bf16x2_rn of the dropped values gives).
// SW: Y is a bfloat16 gate_up [T,2K] and the values are SwiGLU's output
// (lora_rows_swiglu_bf16_h_w32); else Y is float32 [T,K] (lora_rows_bf16_w32,
// and with P = g and no dropout lora_rows_bf16_t_w32: a packed B^T is read
// as a packed A is). BATCH chunks a round, their loads first, as there.
// The host takes them only with a packed W (w16 not null: not under the
// lora-pack switch).
template <bool SW, int BATCH, bool ACT, bool YH, bool XD>
__device__ __forceinline__ void lora_rows_lean(bf16_t* __restrict__ yh, i64 ldyh, float* __restrict__ P,
                                               bf16_t* __restrict__ p16, i64 ldp, double scale16_d,
                                               const void* __restrict__ Yv, i64 T, i64 K, i64 r, u64 seed, double p_d,
                                               u64 thr, double ks_d, bf16_t* jdst, const float* jsrc, i64 jrows,
                                               i64 jcols, i64 jld, double jscale, const bf16_t* __restrict__ w16,
                                               float* __restrict__ act, bf16_t* __restrict__ xd16) {
    constexpr int WARPS = 32;
    constexpr u64 GAMMA = 0x9E3779B97F4A7C15ULL;
    const bf16_t* __restrict__ Yh = reinterpret_cast<const bf16_t*>(Yv);  // SW
    const float* __restrict__ Yf = reinterpret_cast<const float*>(Yv);    // !SW
    const bool drop = p_d > 0.0;
    float ks = (float)ks_d;
    asm("" : "+f"(ks));  // held in a register, not reloaded and converted a use
    const unsigned int t32 = (unsigned int)thr;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const i64 t = (i64)blockIdx.x * LR_ROWS + g;
    const bool okt = t < T, okg = g < (int)r;
    const i64 tr = okt ? t : 0;
    const int Ki = (int)K;
    // Element offsets in 32 bits (the host checks T * 2K and T * ldyh <
    // 2^31): one register a row base instead of a 64-bit pointer, which
    // ptxas recomputed from tr every chunk.
    const unsigned yofs = (unsigned)tr * (unsigned)(SW ? 2 * Ki : Ki), kofs = (unsigned)tr * (unsigned)Ki;
    const unsigned hofs = YH ? (unsigned)tr * (unsigned)ldyh : 0u, wofs = (unsigned)(okg ? g : 0) * (unsigned)Ki;
    // dropout_group_hash's argument for group k/4 of the row, k = 32q + 8c:
    // seed + (row * K/4 + 8q + 2c) * gamma, stepping 8 * WARPS groups a chunk.
    u64 s = seed + (u64)(tr * (K >> 2)) * GAMMA + (u64)(8 * w + 2 * c) * GAMMA;
    float acc[2] = {0.0f, 0.0f};
    const int nch = (Ki + 31) >> 5;
    const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int q0 = w; q0 < nch; q0 += WARPS * BATCH) {
        float4 ya[BATCH], yb[BATCH], ua[BATCH], ub[BATCH];
        unsigned wf[BATCH][4];
#pragma unroll
        for (int u = 0; u < BATCH; u++) {
            const int q = q0 + u * WARPS, k = (q << 5) + 8 * c;
            const bool okk = q < nch && k < Ki;  // K % 8 == 0: all 8 values or none
            ya[u] = yb[u] = ua[u] = ub[u] = z;
            if (okt && okk) {
                if (SW) {
                    const uint4 gq = *reinterpret_cast<const uint4*>(Yh + (yofs + k)),
                                uq = *reinterpret_cast<const uint4*>(Yh + (yofs + Ki + k));
                    ya[u] = bf16x4_to_f32(make_uint2(gq.x, gq.y)), yb[u] = bf16x4_to_f32(make_uint2(gq.z, gq.w));
                    ua[u] = bf16x4_to_f32(make_uint2(uq.x, uq.y)), ub[u] = bf16x4_to_f32(make_uint2(uq.z, uq.w));
                } else {
                    const float4* yp = reinterpret_cast<const float4*>(Yf + (yofs + k));
                    ya[u] = yp[0], yb[u] = yp[1];
                }
            }
            wf[u][0] = wf[u][1] = wf[u][2] = wf[u][3] = 0u;
            if (okg && okk) lr_w16_frag(wf[u], w16 + (wofs + k));
        }
#pragma unroll
        for (int u = 0; u < BATCH; u++) {
            const int q = q0 + u * WARPS, k = (q << 5) + 8 * c;
            const bool ok = okt && q < nch && k < Ki;
            float4 a = ya[u], b = yb[u];
            if (SW) {
                lr_swiglu_fwd8(a, b, ya[u], yb[u], ua[u], ub[u]);
                if (ACT && ok) {
                    float4* ap = reinterpret_cast<float4*>(act + (kofs + k));
                    ap[0] = a, ap[1] = b;
                }
            }
            lr_chunk_lean<YH, XD>(acc, a, b, ok, k, yh, hofs, xd16, kofs, drop, s + (u64)(8 * WARPS * u) * GAMMA, t32, ks,
                                  wf[u]);
        }
        s += (u64)(8 * WARPS * BATCH) * GAMMA;
    }
    lr_finish<WARPS>(acc, P, p16, ldp, (float)scale16_d, T, (int)r, jdst, jsrc, jrows, jcols, jld, jscale);
}

#define LORA_ROWS_LEAN(SW, BATCH, A, Y, X)                                                                       \
    lora_rows_lean<SW, BATCH, A, Y, X>(yh, ldyh, P, p16, ldp, scale16, Y_, T, K, r, seed, p_d, thr, ks_d, jdst, jsrc, \
                                       jrows, jcols, jld, jscale, w16, act, xd16)
#define LORA_ROWS_LEAN_PARAMS                                                                                 \
    bf16_t *yh, i64 ldyh, float *P, bf16_t *p16, i64 ldp, double scale16, const float *Y_, const float *W, i64 T, \
        i64 K, i64 r, u64 seed, double p_d, u64 thr, double ks_d, bf16_t *jdst, const float *jsrc, i64 jrows,     \
        i64 jcols, i64 jld, double jscale, const bf16_t *w16

// lora_rows_swiglu_bf16_hl_w32: lora_rows_swiglu_bf16_h_w32, lean.
extern "C" __global__ void __launch_bounds__(32 * 32)
    lora_rows_swiglu_bf16_hl_w32(LORA_ROWS_LEAN_PARAMS, float* act, bf16_t* xd16) {
    switch ((act ? 4 : 0) | (yh ? 2 : 0) | (xd16 ? 1 : 0)) {
        case 0: LORA_ROWS_LEAN(true, 1, false, false, false); break;
        case 1: LORA_ROWS_LEAN(true, 1, false, false, true); break;
        case 2: LORA_ROWS_LEAN(true, 1, false, true, false); break;
        case 3: LORA_ROWS_LEAN(true, 1, false, true, true); break;
        case 4: LORA_ROWS_LEAN(true, 1, true, false, false); break;
        case 5: LORA_ROWS_LEAN(true, 1, true, false, true); break;
        case 6: LORA_ROWS_LEAN(true, 1, true, true, false); break;
        default: LORA_ROWS_LEAN(true, 1, true, true, true); break;
    }
}

// lora_rows_bf16_l_w32: lora_rows_bf16_w32 (float32 Y, A [r,K]), lean.
extern "C" __global__ void __launch_bounds__(32 * 32) lora_rows_bf16_l_w32(LORA_ROWS_LEAN_PARAMS, bf16_t* xd16) {
    float* act = nullptr;
    switch ((yh ? 2 : 0) | (xd16 ? 1 : 0)) {
        case 0: LORA_ROWS_LEAN(false, 2, false, false, false); break;
        case 1: LORA_ROWS_LEAN(false, 2, false, false, true); break;
        case 2: LORA_ROWS_LEAN(false, 2, false, true, false); break;
        default: LORA_ROWS_LEAN(false, 2, false, true, true); break;
    }
}

// lora_rows_bf16_t_l_w32: lora_rows_bf16_t_w32 (float32 Y = dout, B^T, P
// = g, no dropout, nothing kept), lean.
extern "C" __global__ void __launch_bounds__(32 * 32) lora_rows_bf16_t_l_w32(LORA_ROWS_LEAN_PARAMS) {
    float* act = nullptr;
    bf16_t* xd16 = nullptr;
    if (yh)
        LORA_ROWS_LEAN(false, 2, false, true, false);
    else
        LORA_ROWS_LEAN(false, 2, false, false, false);
}

// lr_norm_rows is the norm row kernels' phase 1 for a lane's NQ chunks
// (w, w + WARPS, ...) of its row: s = a (+ b, then written to sum) into
// va, vb, its squares' float64 sum over the block's warps (in the lanes'
// chunks, the row's four lanes, then the warps in order), and rstd (one
// lane writes rstd[t]). ro is the row's element offset in a, b and sum,
// an i64 or (the lean kernel, v19) a 32-bit unsigned.
template <bool ADD, int WARPS, int NQ, typename O>
__device__ __forceinline__ float lr_norm_rows(float4 (&va)[NQ], float4 (&vb)[NQ], const float* __restrict__ a,
                                              const float* __restrict__ b, float* __restrict__ sum, O ro, bool okt,
                                              i64 t, int nch, i64 K, float eps, float* __restrict__ rstd,
                                              double (&ssw)[WARPS][LR_ROWS]) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    double ss = 0.0;
#pragma unroll
    for (int i = 0; i < NQ; i++) {
        const int k = ((w + i * WARPS) << 5) + 8 * c;
        va[i] = vb[i] = z;
        if (okt && w + i * WARPS < nch) {
            const float4* ap = reinterpret_cast<const float4*>(a + (ro + k));
            va[i] = ap[0], vb[i] = ap[1];
            if (ADD) {
                const float4* bp = reinterpret_cast<const float4*>(b + (ro + k));
                const float4 ba = bp[0], bb = bp[1];
                va[i] = make_float4(__fadd_rn(va[i].x, ba.x), __fadd_rn(va[i].y, ba.y), __fadd_rn(va[i].z, ba.z),
                                    __fadd_rn(va[i].w, ba.w));
                vb[i] = make_float4(__fadd_rn(vb[i].x, bb.x), __fadd_rn(vb[i].y, bb.y), __fadd_rn(vb[i].z, bb.z),
                                    __fadd_rn(vb[i].w, bb.w));
                float4* sp = reinterpret_cast<float4*>(sum + (ro + k));
                sp[0] = va[i], sp[1] = vb[i];
            }
        }
    }
#pragma unroll
    for (int i = 0; i < NQ; i++) {
        const float4 x = va[i], y = vb[i];
        ss += (double)x.x * (double)x.x + (double)x.y * (double)x.y + (double)x.z * (double)x.z + (double)x.w * (double)x.w;
        ss += (double)y.x * (double)y.x + (double)y.y * (double)y.y + (double)y.z * (double)y.z + (double)y.w * (double)y.w;
    }
    ss += __shfl_xor_sync(0xffffffffu, ss, 1);
    ss += __shfl_xor_sync(0xffffffffu, ss, 2);
    if (c == 0) ssw[w][g] = ss;
    __syncthreads();
    double tot = ssw[0][g];
#pragma unroll
    for (int v = 1; v < WARPS; v++) tot += ssw[v][g];
    const float rs = rms_rstd(tot, K, eps);
    if (okt && w == 0 && c == 0) rstd[t] = rs;
    return rs;
}

// lora_rows_norm_bf16 (issue 8, v9): RMSNorm, after the residual add with
// ADD, fused into lora_rows_bf16 for the linear that consumes its output
// (qkv_proj after input_layernorm, gate_up_proj after
// post_attention_layernorm: finetune.RMSNormLinearForwarder). From one read
// of a (and b) [T,K]:
//   ADD: sum = a + b (written), s = sum; else s = a
//   rstd[t] = 1/sqrt(float32(mean(s^2)) + eps)   (rmsnorm_fwd's math)
//   xn = nw * (s * rstd)                          (written when not null)
// then lora_rows_bf16 over xn: yh = bf16(xn), P = h, p16, xd16 and the job,
// with lora_rows_bf16's lanes, chunks and sums, so h and the copies are its
// bits. The row stays in registers between the two phases: lane (g, c) of
// warp w holds row 8b+g's chunks w, w+WARPS, ... (NQ of them at most: K <=
// NQ * WARPS * 32). The squares are summed in float64 like rmsnorm_fwd's,
// in another order (the lanes' chunks, then the four lanes of a row, then
// the warps in order): rstd is rmsnorm_fwd's unless the float64 sums differ
// across a float32 rounding boundary. It replaces the norm's launch, its
// float32 output's read by lora_rows_bf16 and that launch (v8: 13-19 us +
// 16 us a call, 126 calls a checkpointed Phi-3-mini step).
template <bool ADD, int WARPS, int NQ>
__device__ __forceinline__ void lora_rows_norm_body(bf16_t* __restrict__ yh, i64 ldyh, float* __restrict__ P,
                                                    bf16_t* __restrict__ p16, i64 ldp, double scale16_d,
                                                    const float* __restrict__ W, i64 T, i64 K, i64 r, u64 seed,
                                                    double p_d, u64 thr, double ks_d, bf16_t* jdst, const float* jsrc, i64 jrows,
                                                    i64 jcols, i64 jld, double jscale, const bf16_t* __restrict__ w16,
                                                    bf16_t* __restrict__ xd16,
                                                    float* __restrict__ sum, float* __restrict__ xn,
                                                    float* __restrict__ rstd, const float* __restrict__ a,
                                                    const float* __restrict__ b, const float* __restrict__ nw,
                                                    double eps_d) {
    __shared__ double ssw[WARPS][LR_ROWS];
    const float ks = (float)ks_d, eps = (float)eps_d;
    const bool drop = p_d > 0.0;
    const unsigned int t32 = (unsigned int)thr;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const i64 t = (i64)blockIdx.x * LR_ROWS + g;
    const bool okt = t < T, okg = g < (int)r;
    const i64 tr = okt ? t : 0;
    const int Ki = (int)K;  // the host checks K <= NQ * WARPS * 32
    const int nch = Ki >> 5;  // the host checks K % 32 == 0
    float4 va[NQ], vb[NQ];
    // Phase 1: s, its squares' float64 sum, rstd.
    const float rs = lr_norm_rows<ADD, WARPS, NQ>(va, vb, a, b, sum, tr * K, okt, t, nch, K, eps, rstd, ssw);
    // Phase 2: xn, then lora_rows_bf16's work on it.
    bf16_t* yhrow = yh ? yh + tr * ldyh : nullptr;
    bf16_t* xdrow = xd16 ? xd16 + tr * K : nullptr;
    float* xnrow = xn ? xn + tr * K : nullptr;
    const float* wrow = W + (okg ? g : 0) * K;
    const bf16_t* w16row = w16 ? w16 + (okg ? g : 0) * K : nullptr;
    const u64 srow = seed + (u64)(tr * (K >> 2)) * 0x9E3779B97F4A7C15ULL;
    float acc[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < NQ; i++) {
        const int q = w + i * WARPS, k = (q << 5) + 8 * c;
        if (q >= nch) break;  // warp-uniform
        unsigned wf[4] = {0, 0, 0, 0};
        if (okg) {
            if (w16row) {
                lr_w16_frag(wf, w16row + k);
            } else {
                lr_w_frag(wf, wrow + k);
            }
        }
        const float4* np = reinterpret_cast<const float4*>(nw + k);
        const float4 na = __ldg(np), nb = __ldg(np + 1);
        const float4 a0 = rms_scale4(va[i], na, rs), b0 = rms_scale4(vb[i], nb, rs);
        if (okt && xnrow) {
            float4* op = reinterpret_cast<float4*>(xnrow + k);
            op[0] = a0, op[1] = b0;
        }
        lr_chunk(acc, a0, b0, okt, k, yhrow, xdrow, drop, srow, t32, ks, wf);
    }
    lr_finish<WARPS>(acc, P, p16, ldp, (float)scale16_d, T, (int)r, jdst, jsrc, jrows, jcols, jld, jscale);
}

#define LORA_ROWS_NORM_PARAMS                                                                                        \
    bf16_t *yh, i64 ldyh, float *P, bf16_t *p16, i64 ldp, double scale16, const float *W, i64 T, i64 K, i64 r,      \
        u64 seed, double p_d, u64 thr, double ks_d, bf16_t *jdst, const float *jsrc, i64 jrows, i64 jcols, i64 jld, \
        double jscale, const bf16_t *w16, bf16_t *xd16, float *sum, float *xn, float *rstd, const float *a,         \
        const float *b, const float *nw, double eps
#define LORA_ROWS_NORM_ARGS                                                                                         \
    yh, ldyh, P, p16, ldp, scale16, W, T, K, r, seed, p_d, thr, ks_d, jdst, jsrc, jrows, jcols, jld, jscale, w16, xd16, \
        sum, xn, rstd, a, b, nw, eps
// lora_rows_norm_bf16[_add]_qN: lora_rows_bf16_w32's lanes, chunks and
// sums (32 warps), N chunks a lane at most: K <= 3072 (q3) or 4096 (q4).
#define LORA_ROWS_NORM_ENTRY(NAME, ADD, NQ)                                                          \
    extern "C" __global__ void __launch_bounds__(32 * 32) NAME(LORA_ROWS_NORM_PARAMS) {              \
        lora_rows_norm_body<ADD, 32, NQ>(LORA_ROWS_NORM_ARGS);                                       \
    }
LORA_ROWS_NORM_ENTRY(lora_rows_norm_bf16_q3, false, 3)
LORA_ROWS_NORM_ENTRY(lora_rows_norm_bf16_q4, false, 4)
LORA_ROWS_NORM_ENTRY(lora_rows_norm_bf16_add_q3, true, 3)
LORA_ROWS_NORM_ENTRY(lora_rows_norm_bf16_add_q4, true, 4)

// lora_rows_norm_bf16[_add]_l_q3 (issue 8, v19): lora_rows_norm_bf16[_add]_q3
// for a packed A (w16), lean as lora_rows_lean is (the same operations in
// the same order, so the same bits): the outputs yh and xd16 template
// parameters (xn, rarely written, a test), 32-bit element offsets (the
// host checks T * K and T * ldyh < 2^31), keep_scale held in a register,
// the dropout state stepped by a constant, the MMAs fed the dropout copy's
// rounded words.
template <bool ADD, int NQ, bool YH, bool XD>
__device__ __forceinline__ void lora_rows_norm_lean(bf16_t* __restrict__ yh, i64 ldyh, float* __restrict__ P,
                                                    bf16_t* __restrict__ p16, i64 ldp, double scale16_d, i64 T, i64 K,
                                                    i64 r, u64 seed, double p_d, u64 thr, double ks_d, bf16_t* jdst,
                                                    const float* jsrc, i64 jrows, i64 jcols, i64 jld, double jscale,
                                                    const bf16_t* __restrict__ w16, bf16_t* __restrict__ xd16,
                                                    float* __restrict__ sum, float* __restrict__ xn,
                                                    float* __restrict__ rstd, const float* __restrict__ a,
                                                    const float* __restrict__ b, const float* __restrict__ nw,
                                                    double eps_d) {
    constexpr int WARPS = 32;
    constexpr u64 GAMMA = 0x9E3779B97F4A7C15ULL;
    __shared__ double ssw[WARPS][LR_ROWS];
    const float eps = (float)eps_d;
    float ks = (float)ks_d;
    asm("" : "+f"(ks));  // held in a register
    const bool drop = p_d > 0.0;
    const unsigned int t32 = (unsigned int)thr;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const i64 t = (i64)blockIdx.x * LR_ROWS + g;
    const bool okt = t < T, okg = g < (int)r;
    const i64 tr = okt ? t : 0;
    const int Ki = (int)K;    // the host checks K <= NQ * WARPS * 32
    const int nch = Ki >> 5;  // the host checks K % 32 == 0
    const unsigned kofs = (unsigned)tr * (unsigned)Ki, hofs = YH ? (unsigned)tr * (unsigned)ldyh : 0u,
                   wofs = (unsigned)(okg ? g : 0) * (unsigned)Ki;
    float4 va[NQ], vb[NQ];
    // Phase 1: s, its squares' float64 sum, rstd (lora_rows_norm_body's).
    const float rs = lr_norm_rows<ADD, WARPS, NQ>(va, vb, a, b, sum, kofs, okt, t, nch, K, eps, rstd, ssw);
    // Phase 2: xn, then the row kernel's work on it.
    u64 s = seed + (u64)(tr * (K >> 2)) * GAMMA + (u64)(8 * w + 2 * c) * GAMMA;
    float acc[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < NQ; i++) {
        const int q = w + i * WARPS, k = (q << 5) + 8 * c;
        if (q >= nch) break;  // warp-uniform
        unsigned wf[4] = {0u, 0u, 0u, 0u};
        if (okg) lr_w16_frag(wf, w16 + (wofs + k));
        const float4* np = reinterpret_cast<const float4*>(nw + k);
        const float4 na = __ldg(np), nb = __ldg(np + 1);
        float4 x0 = rms_scale4(va[i], na, rs), x1 = rms_scale4(vb[i], nb, rs);
        if (okt && xn) {
            float4* op = reinterpret_cast<float4*>(xn + (kofs + k));
            op[0] = x0, op[1] = x1;
        }
        lr_chunk_lean<YH, XD>(acc, x0, x1, okt, k, yh, hofs, xd16, kofs, drop, s + (u64)(8 * WARPS * i) * GAMMA, t32, ks, wf);
    }
    lr_finish<WARPS>(acc, P, p16, ldp, (float)scale16_d, T, (int)r, jdst, jsrc, jrows, jcols, jld, jscale);
}

#define LORA_ROWS_NORM_LEAN(ADD, Y, X)                                                                          \
    lora_rows_norm_lean<ADD, 3, Y, X>(yh, ldyh, P, p16, ldp, scale16, T, K, r, seed, p_d, thr, ks_d, jdst, jsrc, \
                                      jrows, jcols, jld, jscale, w16, xd16, sum, xn, rstd, a, b, nw, eps)
#define LORA_ROWS_NORM_LEAN_ENTRY(NAME, ADD)                                                         \
    extern "C" __global__ void __launch_bounds__(32 * 32) NAME(LORA_ROWS_NORM_PARAMS) {              \
        switch ((yh ? 2 : 0) | (xd16 ? 1 : 0)) {                                                     \
            case 0: LORA_ROWS_NORM_LEAN(ADD, false, false); break;                                   \
            case 1: LORA_ROWS_NORM_LEAN(ADD, false, true); break;                                    \
            case 2: LORA_ROWS_NORM_LEAN(ADD, true, false); break;                                    \
            default: LORA_ROWS_NORM_LEAN(ADD, true, true); break;                                    \
        }                                                                                            \
    }
LORA_ROWS_NORM_LEAN_ENTRY(lora_rows_norm_bf16_l_q3, false)
LORA_ROWS_NORM_LEAN_ENTRY(lora_rows_norm_bf16_add_l_q3, true)

// lr_swiglu8 is swiglu_bwd's d gate (dg) and d up (du) of 8 features.
__device__ __forceinline__ void lr_swiglu8(float dg[8], float du[8], float4 d0, float4 d1, float4 g0, float4 g1, float4 u0,
                                           float4 u1) {
    const float d[8] = {d0.x, d0.y, d0.z, d0.w, d1.x, d1.y, d1.z, d1.w};
    const float gg[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
    const float uu[8] = {u0.x, u0.y, u0.z, u0.w, u1.x, u1.y, u1.z, u1.w};
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const swiglu_grad r = swiglu_grad_f(gg[i], uu[i], d[i]);
        dg[i] = r.dg, du[i] = r.du;
    }
}

// lora_rows_swiglu_bf16_t (issue 8, v7): lora_rows_bf16_t for dout = d
// gate_up, the SwiGLU backward of dact [T,I] at gate_up gu [T,2I] (gate in
// columns 0..I-1, up in I..2I-1), computed in registers with swiglu_bwd's
// math: yh [T, ldyh >= 2I] gets bf16(d gate) in columns 0..I-1 and bf16(d
// up) in I..2I-1, P [T,r] = d gate_up . B for B [2I,r], p16 = bf16(P); the
// float32 d gate_up is never written (swiglu_bwd wrote 4 bytes a value and
// the row kernel read them back). Lane (g, c) takes features k .. k+7 of
// its row: d gate's MMAs pair them with B's rows k .., d up's with rows I+k
// ... BATCH chunks a round (2 with 16 warps, 1 with 32), each six 16-byte
// loads (four with a bfloat16 gate_up, GU16). The host checks I % 8 == 0
// and 16-byte alignment.
template <int WARPS, int BATCH, bool GU16 = false>
__device__ __forceinline__ void lora_rows_swiglu_t_body(
    bf16_t* __restrict__ yh, i64 ldyh, float* __restrict__ P, bf16_t* __restrict__ p16, i64 ldp,
    const float* __restrict__ dact, const float* __restrict__ gu, const float* __restrict__ W, i64 T, i64 I, i64 r,
    bf16_t* jdst, const float* jsrc, i64 jrows, i64 jcols, i64 jld, double jscale, const bf16_t* __restrict__ w16) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const i64 t = (i64)blockIdx.x * LR_ROWS + g;
    const bool okt = t < T, okg = g < (int)r;
    const float* drow = dact + (okt ? t : 0) * I;
    const float* grow = GU16 ? reinterpret_cast<const float*>(reinterpret_cast<const bf16_t*>(gu) + (okt ? t : 0) * 2 * I)
                             : gu + (okt ? t : 0) * 2 * I;  // GU16: bf16_t rows
    bf16_t* yhrow = yh + (okt ? t : 0) * ldyh;
    float acc[2] = {0.0f, 0.0f};
    const int nch = (int)((I + 31) >> 5);  // the host checks I < 2^31
    const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int q0 = w; q0 < nch; q0 += WARPS * BATCH) {
        float4 d0[BATCH], d1[BATCH], g0[BATCH], g1[BATCH], u0[BATCH], u1[BATCH];
        unsigned wg[BATCH][4], wu[BATCH][4];
#pragma unroll
        for (int u = 0; u < BATCH; u++) {
            const int k = ((q0 + u * WARPS) << 5) + 8 * c;
            const bool okk = q0 + u * WARPS < nch && k < I;
            d0[u] = d1[u] = g0[u] = g1[u] = u0[u] = u1[u] = z;
            if (okt && okk) {
                const float4* dp = reinterpret_cast<const float4*>(drow + k);
                d0[u] = dp[0], d1[u] = dp[1];
                lr_load8<GU16>(g0[u], g1[u], grow, k);
                lr_load8<GU16>(u0[u], u1[u], grow, (int)I + k);
            }
#pragma unroll
            for (int i = 0; i < 4; i++) wg[u][i] = wu[u][i] = 0;
            if (okg && okk) {
                if (w16) {  // packed B^T [r, 2I]
                    lr_w16_frag(wg[u], w16 + g * 2 * I + k), lr_w16_frag(wu[u], w16 + g * 2 * I + I + k);
                } else {
                    lr_wt_frag(wg[u], W + k * r + g, r), lr_wt_frag(wu[u], W + (I + k) * r + g, r);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < BATCH; u++) {
            const int k = ((q0 + u * WARPS) << 5) + 8 * c;
            float dg[8], du[8];
            lr_swiglu8(dg, du, d0[u], d1[u], g0[u], g1[u], u0[u], u1[u]);
            const float4 ga = make_float4(dg[0], dg[1], dg[2], dg[3]), gb = make_float4(dg[4], dg[5], dg[6], dg[7]);
            const float4 ua = make_float4(du[0], du[1], du[2], du[3]), ub = make_float4(du[4], du[5], du[6], du[7]);
            uint4 ao = lr_pack8(ga, gb), bo = lr_pack8(ua, ub);
            if (lr_nan8(ga, gb) | lr_nan8(ua, ub)) ao = lr_pack8_exact(ga, gb), bo = lr_pack8_exact(ua, ub);  // rare
            if (okt && q0 + u * WARPS < nch && k < I) {
                *reinterpret_cast<uint4*>(yhrow + k) = ao;
                *reinterpret_cast<uint4*>(yhrow + I + k) = bo;
            }
            float d[4];
            lr_mma(d, ao.x, ao.y, wg[u][0], wg[u][1]);
            acc[0] += d[0], acc[1] += d[1];
            lr_mma(d, ao.z, ao.w, wg[u][2], wg[u][3]);
            acc[0] += d[0], acc[1] += d[1];
            lr_mma(d, bo.x, bo.y, wu[u][0], wu[u][1]);
            acc[0] += d[0], acc[1] += d[1];
            lr_mma(d, bo.z, bo.w, wu[u][2], wu[u][3]);
            acc[0] += d[0], acc[1] += d[1];
        }
    }
    lr_finish<WARPS>(acc, P, p16, ldp, 1.0f, T, (int)r, jdst, jsrc, jrows, jcols, jld, jscale);
}

#define LORA_ROWS_SWIGLU_T_PARAMS                                                                                   \
    bf16_t *yh, i64 ldyh, float *P, bf16_t *p16, i64 ldp, const float *dact, const float *gu, const float *W, i64 T, \
        i64 I, i64 r, bf16_t *jdst, const float *jsrc, i64 jrows, i64 jcols, i64 jld, double jscale, const bf16_t *w16
#define LORA_ROWS_SWIGLU_T_ARGS yh, ldyh, P, p16, ldp, dact, gu, W, T, I, r, jdst, jsrc, jrows, jcols, jld, jscale, w16
extern "C" __global__ void __launch_bounds__(16 * 32) lora_rows_swiglu_bf16_t(LORA_ROWS_SWIGLU_T_PARAMS) {
    lora_rows_swiglu_t_body<16, 2>(LORA_ROWS_SWIGLU_T_ARGS);
}
extern "C" __global__ void __launch_bounds__(32 * 32) lora_rows_swiglu_bf16_t_w32(LORA_ROWS_SWIGLU_T_PARAMS) {
    lora_rows_swiglu_t_body<32, 1>(LORA_ROWS_SWIGLU_T_ARGS);
}
// _h_w32 (v9): gate_up in bfloat16 (gu holds bf16_t; finetune.HalfAllocator).
extern "C" __global__ void __launch_bounds__(32 * 32) lora_rows_swiglu_bf16_t_h_w32(LORA_ROWS_SWIGLU_T_PARAMS) {
    lora_rows_swiglu_t_body<32, 1, true>(LORA_ROWS_SWIGLU_T_ARGS);
}

// lora_rows_swiglu_bf16_t_hl_w32 (issue 8, v19): lora_rows_swiglu_bf16_t_h_w32
// for a packed B^T (w16), lean as lora_rows_lean is (the same operations in
// the same order, so the same bits): 32-bit element offsets (the host
// checks T * 2I and T * ldyh < 2^31) instead of the seven 64-bit row
// addresses ptxas rebuilt every chunk.
__device__ __forceinline__ void lora_rows_swiglu_t_lean(bf16_t* __restrict__ yh, i64 ldyh, float* __restrict__ P,
                                                        bf16_t* __restrict__ p16, i64 ldp, const float* __restrict__ dact,
                                                        const bf16_t* __restrict__ gu, i64 T, i64 I, i64 r,
                                                        bf16_t* jdst, const float* jsrc, i64 jrows, i64 jcols, i64 jld,
                                                        double jscale, const bf16_t* __restrict__ w16) {
    constexpr int WARPS = 32;
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const i64 t = (i64)blockIdx.x * LR_ROWS + g;
    const bool okt = t < T, okg = g < (int)r;
    const unsigned tr = okt ? (unsigned)t : 0u, Ii = (unsigned)I;
    const unsigned dofs = tr * Ii, gofs = tr * 2u * Ii, hofs = tr * (unsigned)ldyh, wofs = (unsigned)(okg ? g : 0) * 2u * Ii;
    float acc[2] = {0.0f, 0.0f};
    const int nch = (int)((I + 31) >> 5);
    const float4 z = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int q = w; q < nch; q += WARPS) {
        const unsigned k = ((unsigned)q << 5) + 8u * (unsigned)c;
        const bool ok = okt && k < Ii;
        float4 d0 = z, d1 = z, g0 = z, g1 = z, u0 = z, u1 = z;
        if (ok) {
            const float4* dp = reinterpret_cast<const float4*>(dact + (dofs + k));
            d0 = dp[0], d1 = dp[1];
            const uint4 gq = *reinterpret_cast<const uint4*>(gu + (gofs + k)),
                        uq = *reinterpret_cast<const uint4*>(gu + (gofs + Ii + k));
            g0 = bf16x4_to_f32(make_uint2(gq.x, gq.y)), g1 = bf16x4_to_f32(make_uint2(gq.z, gq.w));
            u0 = bf16x4_to_f32(make_uint2(uq.x, uq.y)), u1 = bf16x4_to_f32(make_uint2(uq.z, uq.w));
        }
        unsigned wg[4] = {0u, 0u, 0u, 0u}, wu[4] = {0u, 0u, 0u, 0u};
        if (okg && k < Ii) lr_w16_frag(wg, w16 + (wofs + k)), lr_w16_frag(wu, w16 + (wofs + Ii + k));
        float dg[8], du[8];
        lr_swiglu8(dg, du, d0, d1, g0, g1, u0, u1);
        const float4 ga = make_float4(dg[0], dg[1], dg[2], dg[3]), gb = make_float4(dg[4], dg[5], dg[6], dg[7]);
        const float4 ua = make_float4(du[0], du[1], du[2], du[3]), ub = make_float4(du[4], du[5], du[6], du[7]);
        uint4 ao = lr_pack8(ga, gb), bo = lr_pack8(ua, ub);
        if (lr_nan8(ga, gb) | lr_nan8(ua, ub)) ao = lr_pack8_exact(ga, gb), bo = lr_pack8_exact(ua, ub);  // rare
        if (ok) {
            *reinterpret_cast<uint4*>(yh + (hofs + k)) = ao;
            *reinterpret_cast<uint4*>(yh + (hofs + Ii + k)) = bo;
        }
        float d[4];
        lr_mma(d, ao.x, ao.y, wg[0], wg[1]);
        acc[0] += d[0], acc[1] += d[1];
        lr_mma(d, ao.z, ao.w, wg[2], wg[3]);
        acc[0] += d[0], acc[1] += d[1];
        lr_mma(d, bo.x, bo.y, wu[0], wu[1]);
        acc[0] += d[0], acc[1] += d[1];
        lr_mma(d, bo.z, bo.w, wu[2], wu[3]);
        acc[0] += d[0], acc[1] += d[1];
    }
    lr_finish<WARPS>(acc, P, p16, ldp, 1.0f, T, (int)r, jdst, jsrc, jrows, jcols, jld, jscale);
}
extern "C" __global__ void __launch_bounds__(32 * 32) lora_rows_swiglu_bf16_t_hl_w32(LORA_ROWS_SWIGLU_T_PARAMS) {
    lora_rows_swiglu_t_lean(yh, ldyh, P, p16, ldp, dact, reinterpret_cast<const bf16_t*>(gu), T, I, r, jdst, jsrc, jrows,
                            jcols, jld, jscale, w16);
}

// lora_pack_bf16 (v11): the row kernels' packed weights (their w16), for
// a table of jobs, 5 values each: src, dst, R, C, trans. dst = bf16(src)
// for src [R,C] float32 (A [r,K]: dst [r,K]), or with trans dst [C,R] =
// bf16(src^T) (B [K,r]: dst [r,K]); each value rounded by bf16x2_rn, as
// lr_w_frag and lr_wt_frag round them, so the row kernels see the same
// bits. Grid (x, jobs), 256 threads: block (x, q) takes job q's items
// 256x.., striding by 256 * gridDim.x; an item is a value, or with trans a
// row of src (its C <= 8 values go to dst's rows at column rr: the lanes'
// stores are consecutive). The host checks R * C < 2^31.
extern "C" __global__ void lora_pack_bf16(const i64* __restrict__ table) {
    const i64* e = table + 5 * blockIdx.y;
    const float* src = reinterpret_cast<const float*>(e[0]);
    bf16_t* dst = reinterpret_cast<bf16_t*>(e[1]);
    const int R = (int)e[2], C = (int)e[3], stride = gridDim.x * blockDim.x;
    const int i0 = blockIdx.x * blockDim.x + threadIdx.x;
    if (e[4] == 0) {
        for (int i = i0; i < R * C; i += stride) dst[i] = (bf16_t)(bf16x2_rn(__ldg(src + i), 0.0f) & 0xffffu);
        return;
    }
    for (int rr = i0; rr < R; rr += stride)
        for (int c = 0; c < C; c++) dst[c * R + rr] = (bf16_t)(bf16x2_rn(__ldg(src + rr * C + c), 0.0f) & 0xffffu);
}
