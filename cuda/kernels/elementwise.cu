// RMSNorm, SwiGLU, RoPE, LoRA dropout and the small element-wise ops, the
// CUDA twins of finetune/cpu_norm.go, cpu_rope.go and cpu_linear.go: the
// same float32 operations in the same order (sums the CPU takes in float64
// are reduced in float64 here too, in a different order, which changes
// nothing once rounded to float32 but for rare ties).
#include "common.cuh"
#include "swiglu.cuh"
#include "rng.cuh"

// rmsnorm_row: rstd = 1/sqrt(float32(mean(x^2)) + eps), out = w * (x * rstd)
// for one row of C values, by one block; with ADD the row is x = a + b
// (float32), which is stored into sum first (the fused residual add).
// Rows of a multiple of 4 values go 16 bytes a load (a tensor's rows are
// 16-byte aligned then), with CACHE the first 4 of each thread's vectors
// kept in registers for the second pass, else read again; any other C
// takes the scalar loops.
template <bool ADD, bool CACHE>
__device__ __forceinline__ void rmsnorm_row(float* ot, float* rstd_t, float* st, const float* at, const float* bt,
                                            const float* w, i64 C, float eps, double* red) {
    double ss = 0.0;
    if ((C & 3) == 0) {
        i64 C4 = C >> 2;
        const float4* a4 = (const float4*)at;
        const float4* b4 = (const float4*)bt;
        float4* s4 = (float4*)st;
        float4 v[4];
        const int NC = CACHE ? 4 : 0;
#pragma unroll
        for (int j = 0; j < NC; j++) {
            i64 k = threadIdx.x + (i64)j * blockDim.x;
            if (k < C4) {
                float4 x = a4[k];
                if (ADD) {
                    float4 y = b4[k];
                    x = make_float4(__fadd_rn(x.x, y.x), __fadd_rn(x.y, y.y), __fadd_rn(x.z, y.z), __fadd_rn(x.w, y.w));
                    s4[k] = x;
                }
                v[j] = x;
                ss += (double)x.x * (double)x.x + (double)x.y * (double)x.y + (double)x.z * (double)x.z +
                      (double)x.w * (double)x.w;
            }
        }
        for (i64 k = threadIdx.x + NC * (i64)blockDim.x; k < C4; k += blockDim.x) {
            float4 x = a4[k];
            if (ADD) {
                float4 y = b4[k];
                x = make_float4(__fadd_rn(x.x, y.x), __fadd_rn(x.y, y.y), __fadd_rn(x.z, y.z), __fadd_rn(x.w, y.w));
                s4[k] = x;
            }
            ss += (double)x.x * (double)x.x + (double)x.y * (double)x.y + (double)x.z * (double)x.z +
                  (double)x.w * (double)x.w;
        }
        ss = block_sum_double(ss, red);
        const float r = rms_rstd(ss, C, eps);
        if (threadIdx.x == 0) *rstd_t = r;
        const float4* w4 = (const float4*)w;
        float4* o4 = (float4*)ot;
#pragma unroll
        for (int j = 0; j < NC; j++) {
            i64 k = threadIdx.x + (i64)j * blockDim.x;
            if (k < C4) {
                o4[k] = rms_scale4(v[j], w4[k], r);
            }
        }
        // (with ADD, the row's sum was written by this same thread above)
        const float4* x4 = ADD ? (const float4*)st : a4;
        for (i64 k = threadIdx.x + NC * (i64)blockDim.x; k < C4; k += blockDim.x) {
            o4[k] = rms_scale4(x4[k], w4[k], r);
        }
        return;
    }
    for (i64 k = threadIdx.x; k < C; k += blockDim.x) {
        float x = at[k];
        if (ADD) {
            x = __fadd_rn(x, bt[k]);
            st[k] = x;
        }
        ss += (double)x * (double)x;
    }
    ss = block_sum_double(ss, red);
    const float r = rms_rstd(ss, C, eps);
    if (threadIdx.x == 0) *rstd_t = r;
    const float* xt = ADD ? st : at;
    for (i64 k = threadIdx.x; k < C; k += blockDim.x) ot[k] = __fmul_rn(w[k], __fmul_rn(xt[k], r));
}

// rmsnorm_fwd: one block per row t of x [T,C]:
// rstd = 1/sqrt(float32(mean(x^2)) + eps), out = w * (x * rstd).
extern "C" __global__ void rmsnorm_fwd(float* out, float* rstd, const float* x, const float* w, i64 C, double eps_d) {
    __shared__ double red[32];
    i64 t = blockIdx.x;
    rmsnorm_row<false, true>(out + t * C, rstd + t, 0, x + t * C, 0, w, C, (float)eps_d, red);
}

// rmsnorm_fwd_nc: rmsnorm_fwd reading x again in its second pass.
extern "C" __global__ void rmsnorm_fwd_nc(float* out, float* rstd, const float* x, const float* w, i64 C,
                                          double eps_d) {
    __shared__ double red[32];
    i64 t = blockIdx.x;
    rmsnorm_row<false, false>(out + t * C, rstd + t, 0, x + t * C, 0, w, C, (float)eps_d, red);
}

// add_rmsnorm_fwd: sum = a + b, then rmsnorm_fwd of sum (the residual add
// and the next norm in one pass), one block per row.
extern "C" __global__ void add_rmsnorm_fwd(float* sum, float* out, float* rstd, const float* a, const float* b,
                                           const float* w, i64 C, double eps_d) {
    __shared__ double red[32];
    i64 t = blockIdx.x;
    rmsnorm_row<true, true>(out + t * C, rstd + t, sum + t * C, a + t * C, b + t * C, w, C, (float)eps_d, red);
}

// add_rmsnorm_fwd_nc: add_rmsnorm_fwd reading the sum again (each thread
// its own values) in its second pass.
extern "C" __global__ void add_rmsnorm_fwd_nc(float* sum, float* out, float* rstd, const float* a, const float* b,
                                              const float* w, i64 C, double eps_d) {
    __shared__ double red[32];
    i64 t = blockIdx.x;
    rmsnorm_row<true, false>(out + t * C, rstd + t, sum + t * C, a + t * C, b + t * C, w, C, (float)eps_d, red);
}

// rmsnorm_bwd: dx (+)= rstd*w*dout + c*x with c = -rstd^3 * sum(w*dout*x) / C;
// acc = 0 writes dx without reading it (a pending Zero, device.go). One
// block per row; rows of a multiple of 4 go 16 bytes a load, with (CACHE)
// the first 4 vectors of x and dout a thread kept in registers for the
// second pass, or (!CACHE) read again (from L1/L2: fewer registers, more
// blocks resident).
template <bool CACHE>
__device__ __forceinline__ void rmsnorm_bwd_row(float* dx, const float* dout, const float* x, const float* w,
                                                const float* rstd, i64 C, i64 acc, double* red) {
    i64 t = blockIdx.x;
    const float* xt = x + t * C;
    const float* dt = dout + t * C;
    float* d = dx + t * C;
    float r = rstd[t];
    if ((C & 3) == 0) {
        i64 C4 = C >> 2;
        const float4 *x4 = (const float4*)xt, *d4 = (const float4*)dt, *w4 = (const float4*)w;
        float4* o4 = (float4*)d;
        float4 xv[4], dv[4];
        double s = 0.0;
        const int NC = CACHE ? 4 : 0;
#pragma unroll
        for (int j = 0; j < NC; j++) {
            i64 k = threadIdx.x + (i64)j * blockDim.x;
            if (k < C4) {
                float4 a = x4[k], g = d4[k], ww = w4[k];
                xv[j] = a;
                dv[j] = g;
                s += (double)ww.x * (double)g.x * (double)a.x + (double)ww.y * (double)g.y * (double)a.y +
                     (double)ww.z * (double)g.z * (double)a.z + (double)ww.w * (double)g.w * (double)a.w;
            }
        }
        for (i64 k = threadIdx.x + NC * (i64)blockDim.x; k < C4; k += blockDim.x) {
            float4 a = x4[k], g = d4[k], ww = w4[k];
            s += (double)ww.x * (double)g.x * (double)a.x + (double)ww.y * (double)g.y * (double)a.y +
                 (double)ww.z * (double)g.z * (double)a.z + (double)ww.w * (double)g.w * (double)a.w;
        }
        s = block_sum_double(s, red);
        float c = (float)(-(double)r * (double)r * (double)r * s / (double)C);
#define RMS_BWD_ONE(o, a, g, ww) __fadd_rn(__fmul_rn(__fmul_rn(r, ww), g), __fmul_rn(c, a))
#define RMS_BWD_V4(k, a, g)                                                                                       \
    do {                                                                                                          \
        float4 ww = w4[k];                                                                                        \
        float4 y = make_float4(RMS_BWD_ONE(0, a.x, g.x, ww.x), RMS_BWD_ONE(0, a.y, g.y, ww.y),                    \
                               RMS_BWD_ONE(0, a.z, g.z, ww.z), RMS_BWD_ONE(0, a.w, g.w, ww.w));                   \
        if (acc) {                                                                                                \
            float4 o = o4[k];                                                                                     \
            y = make_float4(__fadd_rn(o.x, y.x), __fadd_rn(o.y, y.y), __fadd_rn(o.z, y.z), __fadd_rn(o.w, y.w)); \
        }                                                                                                         \
        o4[k] = y;                                                                                                \
    } while (0)
#pragma unroll
        for (int j = 0; j < NC; j++) {
            i64 k = threadIdx.x + (i64)j * blockDim.x;
            if (k < C4) RMS_BWD_V4(k, xv[j], dv[j]);
        }
        for (i64 k = threadIdx.x + NC * (i64)blockDim.x; k < C4; k += blockDim.x) {
            float4 a = x4[k], g = d4[k];
            RMS_BWD_V4(k, a, g);
        }
#undef RMS_BWD_V4
#undef RMS_BWD_ONE
        return;
    }
    double s = 0.0;
    for (i64 k = threadIdx.x; k < C; k += blockDim.x) s += (double)w[k] * (double)dt[k] * (double)xt[k];
    s = block_sum_double(s, red);
    float c = (float)(-(double)r * (double)r * (double)r * s / (double)C);
    for (i64 k = threadIdx.x; k < C; k += blockDim.x) {
        float y = __fadd_rn(__fmul_rn(__fmul_rn(r, w[k]), dt[k]), __fmul_rn(c, xt[k]));
        d[k] = acc ? __fadd_rn(d[k], y) : y;
    }
}

extern "C" __global__ void rmsnorm_bwd(float* dx, const float* dout, const float* x, const float* w, const float* rstd,
                                       i64 C, i64 acc) {
    __shared__ double red[32];
    rmsnorm_bwd_row<true>(dx, dout, x, w, rstd, C, acc, red);
}

extern "C" __global__ void rmsnorm_bwd_nc(float* dx, const float* dout, const float* x, const float* w,
                                          const float* rstd, i64 C, i64 acc) {
    __shared__ double red[32];
    rmsnorm_bwd_row<false>(dx, dout, x, w, rstd, C, acc, red);
}

// swiglu_fwd: out [T,I] = up * silu(gate) from gate_up [T,2I]. Grid
// (ceil(I/256), rows): feature i = blockIdx.x*256 + threadIdx.x, tokens
// blockIdx.y, + gridDim.y, ... (no 64-bit division per element).
extern "C" __global__ void swiglu_fwd(float* out, const float* gu, i64 T, i64 I) {
    i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= I) return;
    for (i64 t = blockIdx.y; t < T; t += gridDim.y) {
        float g = gu[t * 2 * I + i], u = gu[t * 2 * I + I + i];
        out[t * I + i] = __fmul_rn(u, silu_f(g));
    }
}

// swiglu_fwd_v4: swiglu_fwd 4 features a thread (I a multiple of 4); grid
// (ceil(I/4/256), rows).
extern "C" __global__ void swiglu_fwd_v4(float* out, const float* gu, i64 T, i64 I) {
    i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= (I >> 2)) return;
    for (i64 t = blockIdx.y; t < T; t += gridDim.y) {
        float4 g = ((const float4*)(gu + t * 2 * I))[i], u = ((const float4*)(gu + t * 2 * I + I))[i];
        ((float4*)(out + t * I))[i] = make_float4(__fmul_rn(u.x, silu_f(g.x)), __fmul_rn(u.y, silu_f(g.y)),
                                                  __fmul_rn(u.z, silu_f(g.z)), __fmul_rn(u.w, silu_f(g.w)));
    }
}

// swiglu_bwd: d up (+)= dout * silu(g); d gate (+)= dout * up * s * (1 + g*(1-s));
// acc = 0 writes dgu without reading it (a pending Zero). The same grid as
// swiglu_fwd.
extern "C" __global__ void swiglu_bwd(float* dgu, const float* dout, const float* gu, i64 T, i64 I, i64 acc) {
    i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= I) return;
    for (i64 t = blockIdx.y; t < T; t += gridDim.y) {
        i64 gi = t * 2 * I + i, ui = gi + I;
        swiglu_grad r = swiglu_grad_f(gu[gi], gu[ui], dout[t * I + i]);
        dgu[ui] = acc ? __fadd_rn(dgu[ui], r.du) : r.du;
        dgu[gi] = acc ? __fadd_rn(dgu[gi], r.dg) : r.dg;
    }
}

// swiglu_bwd_v4: swiglu_bwd 4 features a thread, as swiglu_fwd_v4.
extern "C" __global__ void swiglu_bwd_v4(float* dgu, const float* dout, const float* gu, i64 T, i64 I, i64 acc) {
    i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= (I >> 2)) return;
    for (i64 t = blockIdx.y; t < T; t += gridDim.y) {
        float4* dg4 = (float4*)(dgu + t * 2 * I);
        float4* du4 = (float4*)(dgu + t * 2 * I + I);
        float4 g = ((const float4*)(gu + t * 2 * I))[i], u = ((const float4*)(gu + t * 2 * I + I))[i];
        float4 d = ((const float4*)(dout + t * I))[i];
        swiglu_grad r0 = swiglu_grad_f(g.x, u.x, d.x), r1 = swiglu_grad_f(g.y, u.y, d.y);
        swiglu_grad r2 = swiglu_grad_f(g.z, u.z, d.z), r3 = swiglu_grad_f(g.w, u.w, d.w);
        float4 du = make_float4(r0.du, r1.du, r2.du, r3.du), dg = make_float4(r0.dg, r1.dg, r2.dg, r3.dg);
        if (acc) {
            float4 a = du4[i], b = dg4[i];
            du = make_float4(__fadd_rn(a.x, du.x), __fadd_rn(a.y, du.y), __fadd_rn(a.z, du.z), __fadd_rn(a.w, du.w));
            dg = make_float4(__fadd_rn(b.x, dg.x), __fadd_rn(b.y, dg.y), __fadd_rn(b.z, dg.z), __fadd_rn(b.w, dg.w));
        }
        du4[i] = du;
        dg4[i] = dg;
    }
}

extern "C" __global__ void add_f32(float* out, const float* a, const float* b, i64 n) {
    FOR_N(i, n) out[i] = __fadd_rn(a[i], b[i]);
}

// add_f32_v4: add_f32 over n4 groups of 4 (n a multiple of 4).
extern "C" __global__ void add_f32_v4(float4* out, const float4* a, const float4* b, i64 n4) {
    FOR_N(i, n4) {
        float4 x = a[i], y = b[i];
        out[i] = make_float4(__fadd_rn(x.x, y.x), __fadd_rn(x.y, y.y), __fadd_rn(x.z, y.z), __fadd_rn(x.w, y.w));
    }
}

extern "C" __global__ void scale_f32(float* x, i64 n, double s_d) {
    float s = (float)s_d;
    FOR_N(i, n) x[i] = __fmul_rn(x[i], s);
}

// sum_squares_partial: one float64 partial sum of x^2 per block.
extern "C" __global__ void sum_squares_partial(double* partial, const float* x, i64 n) {
    __shared__ double red[32];
    double s = 0.0;
    FOR_N(i, n) s += (double)x[i] * (double)x[i];
    s = block_sum_double(s, red);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// dropout_fwd: xd = keep(seed, k) ? x * keep_scale : 0.
extern "C" __global__ void dropout_fwd(float* xd, const float* x, i64 n, u64 seed, double p_d, double keep_scale_d) {
    float p = (float)p_d, ks = (float)keep_scale_d;
    FOR_N(i, n) xd[i] = dropout_keep(seed, (u64)i, p) ? __fmul_rn(x[i], ks) : 0.0f;
}

// dropout_bwd_acc: dx += tmp * keep_scale where the forward kept the value.
extern "C" __global__ void dropout_bwd_acc(float* dx, const float* tmp, i64 n, u64 seed, double p_d,
                                           double keep_scale_d) {
    float p = (float)p_d, ks = (float)keep_scale_d;
    FOR_N(i, n) if (dropout_keep(seed, (u64)i, p)) dx[i] = __fadd_rn(dx[i], __fmul_rn(tmp[i], ks));
}

// gather_rows: dst [n,C] = src[idx[k], :].
extern "C" __global__ void gather_rows(float* dst, const float* src, const int* idx, i64 n, i64 C) {
    FOR_N(k, n * C) dst[k] = src[(i64)idx[k / C] * C + k % C];
}

// scatter_add_rows: dst[idx[k], :] += src [n,C] (the indices are distinct).
extern "C" __global__ void scatter_add_rows(float* dst, const float* src, const int* idx, i64 n, i64 C) {
    FOR_N(k, n * C) {
        i64 j = (i64)idx[k / C] * C + k % C;
        dst[j] = __fadd_rn(dst[j], src[k]);
    }
}

// rope: rotate the q and k heads of qkv [T,(H+2K)*D] in place, Hugging
// Face's rotate_half over the first rotary_dim features of each head, with
// the angles computed as transformers does (cpu_rope.go ropeTable):
// inv_freq = 1/float32(theta^(float32(2i)/float32(dim))), angle =
// float32(pos) * inv_freq in float32, cos/sin of it. inverse applies the
// transposed rotation (the backward).
extern "C" __global__ void rope(float* qkv, const int* pos, i64 T, i64 nrot, i64 D, i64 width, i64 rot_dim,
                                double theta, i64 inverse) {
    i64 half = rot_dim / 2;
    FOR_N(k, T * nrot * half) {
        i64 i = k % half, h = (k / half) % nrot, t = k / (half * nrot);
        float e = __fdiv_rn((float)(2 * i), (float)rot_dim);
        float inv = __fdiv_rn(1.0f, (float)pow(theta, (double)e));
        double a = (double)__fmul_rn((float)pos[t], inv);
        float c = (float)cos(a), s = (float)sin(a);
        float* x = qkv + t * width + h * D;
        float x1 = x[i], x2 = x[i + half];
        if (inverse) {
            x[i] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
            x[i + half] = __fsub_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
        } else {
            x[i] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
            x[i + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
        }
    }
}

// rope_table: cs [T][half] = (cos, sin) of each token's angles, computed
// exactly as rope computes them; rope_apply rotates with the table, so the
// transcendental functions run T*half times instead of T*heads*half.
extern "C" __global__ void rope_table(float2* cs, const int* pos, i64 T, i64 half, i64 rot_dim, double theta) {
    FOR_N(k, T * half) {
        i64 i = k % half, t = k / half;
        float e = __fdiv_rn((float)(2 * i), (float)rot_dim);
        float inv = __fdiv_rn(1.0f, (float)pow(theta, (double)e));
        double a = (double)__fmul_rn((float)pos[t], inv);
        cs[k] = make_float2((float)cos(a), (float)sin(a));
    }
}

// rope_apply: grid (ceil(nrot*half/256), rows); token t = blockIdx.y,
// stepping by gridDim.y; x indexes (head, i) pairs of the nrot rotated
// heads.
extern "C" __global__ void rope_apply(float* qkv, const float2* cs, i64 T, i64 nrot, i64 D, i64 width, i64 half_,
                                      i64 inverse) {
    int half = (int)half_;
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= nrot * half) return;
    int h = x / half, i = x - h * half;
    for (i64 t = blockIdx.y; t < T; t += gridDim.y) {
        float2 v = cs[t * half + i];
        float c = v.x, s = v.y;
        float* p = qkv + t * width + (i64)h * D;
        float x1 = p[i], x2 = p[i + half];
        if (inverse) {
            p[i] = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
            p[i + half] = __fsub_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
        } else {
            p[i] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
            p[i + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
        }
    }
}

// rope_apply_v4: rope_apply 4 frequencies a thread (half, D and width
// multiples of 4: every access 16 bytes aligned); grid
// (ceil(nrot*half/4/256), rows).
extern "C" __global__ void rope_apply_v4(float* qkv, const float2* cs, i64 T, i64 nrot, i64 D, i64 width, i64 half_,
                                         i64 inverse) {
    int half = (int)half_, q = half >> 2;
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= nrot * q) return;
    int h = x / q, i = (x - h * q) * 4;
    for (i64 t = blockIdx.y; t < T; t += gridDim.y) {
        const float4* c4 = (const float4*)(cs + t * half + i);
        float4 ca = c4[0], cb = c4[1];  // (c0, s0, c1, s1), (c2, s2, c3, s3)
        float c[4] = {ca.x, ca.z, cb.x, cb.z}, s[4] = {ca.y, ca.w, cb.y, cb.w};
        float* p = qkv + t * width + (i64)h * D + i;
        float4 a4 = *(float4*)p, b4 = *(float4*)(p + half);
        float x1[4] = {a4.x, a4.y, a4.z, a4.w}, x2[4] = {b4.x, b4.y, b4.z, b4.w}, y1[4], y2[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (inverse) {
                y1[j] = __fadd_rn(__fmul_rn(x1[j], c[j]), __fmul_rn(x2[j], s[j]));
                y2[j] = __fsub_rn(__fmul_rn(x2[j], c[j]), __fmul_rn(x1[j], s[j]));
            } else {
                y1[j] = __fsub_rn(__fmul_rn(x1[j], c[j]), __fmul_rn(x2[j], s[j]));
                y2[j] = __fadd_rn(__fmul_rn(x2[j], c[j]), __fmul_rn(x1[j], s[j]));
            }
        }
        *(float4*)p = make_float4(y1[0], y1[1], y1[2], y1[3]);
        *(float4*)(p + half) = make_float4(y2[0], y2[1], y2[2], y2[3]);
    }
}
