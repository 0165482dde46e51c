// RMSNorm, SwiGLU, RoPE, LoRA dropout and the small element-wise ops, the
// CUDA twins of finetune/cpu_norm.go, cpu_rope.go and cpu_linear.go: the
// same float32 operations in the same order (sums the CPU takes in float64
// are reduced in float64 here too, in a different order, which changes
// nothing once rounded to float32 but for rare ties).
#include "common.cuh"
#include "rng.cuh"

// rmsnorm_fwd: one block per row t of x [T,C]:
// rstd = 1/sqrt(float32(mean(x^2)) + eps), out = w * (x * rstd).
extern "C" __global__ void rmsnorm_fwd(float* out, float* rstd, const float* x, const float* w, i64 C, double eps_d) {
    __shared__ double red[32];
    i64 t = blockIdx.x;
    const float* xt = x + t * C;
    double ss = 0.0;
    for (i64 k = threadIdx.x; k < C; k += blockDim.x) ss += (double)xt[k] * (double)xt[k];
    ss = block_sum_double(ss, red);
    float ms = (float)(ss / (double)C);
    float r = (float)(1.0 / sqrt((double)__fadd_rn(ms, (float)eps_d)));
    if (threadIdx.x == 0) rstd[t] = r;
    float* ot = out + t * C;
    for (i64 k = threadIdx.x; k < C; k += blockDim.x) ot[k] = __fmul_rn(w[k], __fmul_rn(xt[k], r));
}

// rmsnorm_bwd: dx += rstd*w*dout + c*x with c = -rstd^3 * sum(w*dout*x) / C.
extern "C" __global__ void rmsnorm_bwd(float* dx, const float* dout, const float* x, const float* w, const float* rstd,
                                       i64 C) {
    __shared__ double red[32];
    i64 t = blockIdx.x;
    const float* xt = x + t * C;
    const float* dt = dout + t * C;
    double s = 0.0;
    for (i64 k = threadIdx.x; k < C; k += blockDim.x) s += (double)w[k] * (double)dt[k] * (double)xt[k];
    s = block_sum_double(s, red);
    float r = rstd[t];
    float c = (float)(-(double)r * (double)r * (double)r * s / (double)C);
    float* d = dx + t * C;
    for (i64 k = threadIdx.x; k < C; k += blockDim.x)
        d[k] = __fadd_rn(d[k], __fadd_rn(__fmul_rn(__fmul_rn(r, w[k]), dt[k]), __fmul_rn(c, xt[k])));
}

__device__ __forceinline__ float sigmoidf_ref(float x) { return (float)(1.0 / (1.0 + exp(-(double)x))); }
// silu as torch's float32 kernel: x / (1 + exp(-x)).
__device__ __forceinline__ float siluf_ref(float x) { return __fdiv_rn(x, __fadd_rn(1.0f, (float)exp(-(double)x))); }

// swiglu_fwd: out [T,I] = up * silu(gate) from gate_up [T,2I]. Grid
// (ceil(I/256), rows): feature i = blockIdx.x*256 + threadIdx.x, tokens
// blockIdx.y, + gridDim.y, ... (no 64-bit division per element).
extern "C" __global__ void swiglu_fwd(float* out, const float* gu, i64 T, i64 I) {
    i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= I) return;
    for (i64 t = blockIdx.y; t < T; t += gridDim.y) {
        float g = gu[t * 2 * I + i], u = gu[t * 2 * I + I + i];
        out[t * I + i] = __fmul_rn(u, siluf_ref(g));
    }
}

// swiglu_bwd: d up += dout * silu(g); d gate += dout * up * s * (1 + g*(1-s)).
// The same grid as swiglu_fwd.
extern "C" __global__ void swiglu_bwd(float* dgu, const float* dout, const float* gu, i64 T, i64 I) {
    i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (i >= I) return;
    for (i64 t = blockIdx.y; t < T; t += gridDim.y) {
        i64 gi = t * 2 * I + i, ui = gi + I;
        float g = gu[gi], u = gu[ui], d = dout[t * I + i];
        float s = sigmoidf_ref(g);
        dgu[ui] = __fadd_rn(dgu[ui], __fmul_rn(d, siluf_ref(g)));
        float f = __fadd_rn(1.0f, __fmul_rn(g, __fsub_rn(1.0f, s)));
        dgu[gi] = __fadd_rn(dgu[gi], __fmul_rn(__fmul_rn(__fmul_rn(d, u), s), f));
    }
}

extern "C" __global__ void add_f32(float* out, const float* a, const float* b, i64 n) {
    FOR_N(i, n) out[i] = __fadd_rn(a[i], b[i]);
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
