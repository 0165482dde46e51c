// LoRA's low-rank products fused with its dropout, for ranks up to
// LORA_MAX_R (the fast path of LinearForward / LinearBackward). Each kernel
// reads its large operand (x or dout, [T,K]) once and regenerates the
// dropout mask from (seed, index) instead of materialising dropout(x); the
// sums are float32, in a different order than cuBLAS's, so the results
// agree with the one-op-at-a-time path to rounding.
//
// Notation: xd = dropout(x) = keep(seed, t*K+k) ? x * keep_scale : 0 when
// p > 0, else x (dropout_fwd's rule, the same index).
#include "common.cuh"
#include "rng.cuh"

#define LORA_MAX_R 16

__device__ __forceinline__ float lora_drop(float v, u64 seed, i64 idx, float p, float ks) {
    if (p > 0.0f) return dropout_keep(seed, (u64)idx, p) ? __fmul_rn(v, ks) : 0.0f;
    return v;
}

// lora_rowdot: y [T,r], y[t,j] = sum_k xd[t,k] * W(j,k) with
// W(j,k) = W[j*wsj + k*wsi] (A [r,K]: wsj = K, wsi = 1; B [K,r] used as
// B^T: wsj = 1, wsi = r). One block of 256 threads per row t.
extern "C" __global__ void lora_rowdot(float* y, const float* x, const float* W, i64 T, i64 K, i64 r, i64 wsj, i64 wsi,
                                       u64 seed, double p_d, double ks_d) {
    __shared__ float red[LORA_MAX_R][8];
    float p = (float)p_d, ks = (float)ks_d;
    i64 t = blockIdx.x;
    const float* xt = x + t * K;
    float acc[LORA_MAX_R];
#pragma unroll
    for (int j = 0; j < LORA_MAX_R; j++) acc[j] = 0.0f;
    for (i64 k = threadIdx.x; k < K; k += blockDim.x) {
        float v = lora_drop(xt[k], seed, t * K + k, p, ks);
        const float* w = W + k * wsi;
#pragma unroll
        for (int j = 0; j < LORA_MAX_R; j++)
            if (j < r) acc[j] = __fadd_rn(acc[j], __fmul_rn(v, w[j * wsj]));
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int j = 0; j < LORA_MAX_R; j++) {
        if (j < r) {
            float v = acc[j];
            for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_down_sync(0xffffffffu, v, o));
            if (lane == 0) red[j][warp] = v;
        }
    }
    __syncthreads();
    if (threadIdx.x < r) {
        float s = 0.0f;
        for (int w = 0; w < 8; w++) s = __fadd_rn(s, red[threadIdx.x][w]);
        y[t * r + threadIdx.x] = s;
    }
}

// lora_coldot_partial: part [nchunks,r,K], part[c,j,k] = sum over the
// tokens t of chunk c (c*tc .. min(T,(c+1)*tc)-1) of a[t,j] * xd[t,k].
// Grid (ceil(K/256), nchunks), 256 threads, one column k a thread.
extern "C" __global__ void lora_coldot_partial(float* part, const float* a, const float* x, i64 T, i64 K, i64 r, i64 tc,
                                               u64 seed, double p_d, double ks_d) {
    float p = (float)p_d, ks = (float)ks_d;
    i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    i64 c = blockIdx.y;
    if (k >= K) return;
    i64 t0 = c * tc, t1 = min(T, t0 + tc);
    float acc[LORA_MAX_R];
#pragma unroll
    for (int j = 0; j < LORA_MAX_R; j++) acc[j] = 0.0f;
    for (i64 t = t0; t < t1; t++) {
        float v = lora_drop(x[t * K + k], seed, t * K + k, p, ks);
        const float* at = a + t * r;
#pragma unroll
        for (int j = 0; j < LORA_MAX_R; j++)
            if (j < r) acc[j] = __fadd_rn(acc[j], __fmul_rn(at[j], v));
    }
#pragma unroll
    for (int j = 0; j < LORA_MAX_R; j++)
        if (j < r) part[(c * r + j) * K + k] = acc[j];
}

// lora_coldot_finish: G(j,k) += scale * sum_c part[c,j,k] (chunks in
// order) with G(j,k) = G[j*gsj + k*gsk] (GradA [r,K]: gsj = K, gsk = 1;
// GradB [K,r]: gsj = 1, gsk = r). Grid (ceil(K/256), r).
extern "C" __global__ void lora_coldot_finish(float* G, const float* part, i64 nchunks, i64 K, i64 r, i64 gsj, i64 gsk,
                                              double scale_d) {
    float scale = (float)scale_d;
    i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    i64 j = blockIdx.y;
    if (k >= K) return;
    float s = 0.0f;
    for (i64 c = 0; c < nchunks; c++) s = __fadd_rn(s, part[(c * r + j) * K + k]);
    float* g = G + j * gsj + k * gsk;
    *g = __fadd_rn(*g, __fmul_rn(scale, s));
}

// lora_dx: dx [T,K] += the gradient through x of scale * (xd . A^T) . B^T,
// given g = dout . B [T,r]: v = scale * sum_j g[t,j] * A[j,k], then
// dx += v * keep_scale where the forward kept x[t,k] (dx += v without
// dropout). Grid (ceil(K/256), rows), rows stepping by gridDim.y.
extern "C" __global__ void lora_dx(float* dx, const float* g, const float* A, i64 T, i64 K, i64 r, double scale_d,
                                   u64 seed, double p_d, double ks_d) {
    float scale = (float)scale_d, p = (float)p_d, ks = (float)ks_d;
    i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    if (k >= K) return;
    for (i64 t = blockIdx.y; t < T; t += gridDim.y) {
        i64 idx = t * K + k;
        if (p > 0.0f && !dropout_keep(seed, (u64)idx, p)) continue;
        const float* gt = g + t * r;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < LORA_MAX_R; j++)
            if (j < r) s = __fadd_rn(s, __fmul_rn(gt[j], A[j * K + k]));
        float v = __fmul_rn(scale, s);
        if (p > 0.0f) v = __fmul_rn(v, ks);
        dx[idx] = __fadd_rn(dx[idx], v);
    }
}
