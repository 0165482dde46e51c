// Causal grouped-query attention over packed rows, the CUDA twin of
// finetune/cpu_attention.go. Simple, correct kernels (speed is issue 8):
// one thread block per query (forward, dQ) or per key (dK, dV). Every dot
// product is a sequential float32 sum over the head dimension and every
// accumulation over keys (or queries) runs in the CPU's order, so the
// results match the CPU reference but for the last bits of exp/log.
//
// Query i of a row may see key j iff max(i - pos[i], i - window + 1) <= j
// <= i: causal, within its packed example, inside the sliding window.
#include "common.cuh"

#define CHUNK 256
#define MAXD_PER_THREAD 4  // head dims up to 4*blockDim.x

// attend computes one query's output o [D] over keys lo..hi (key j at
// kb + j*kstride, value j at vb + j*vstride) and returns its log-sum-exp,
// like cpu attend(): scores in float32, their maximum, exp(s - m) and the
// value sums in float64, rounded once. s is dynamic shared memory for
// hi-lo+1 scores. Called by the whole block.
__device__ float attend(float* o, const float* q, const float* kb, i64 kstride, const float* vb, i64 vstride, i64 lo,
                        i64 hi, i64 D, float scale, float* s) {
    __shared__ double e[CHUNK];
    __shared__ float redf[32];
    __shared__ double sum_sh;
    i64 n = hi - lo + 1;
    float m = -__int_as_float(0x7f800000);
    for (i64 j = lo + threadIdx.x; j <= hi; j += blockDim.x) {
        const float* k = kb + j * kstride;
        float dot = 0.0f;
        for (i64 d = 0; d < D; d++) dot = __fadd_rn(dot, __fmul_rn(q[d], k[d]));
        float sc = __fmul_rn(dot, scale);
        s[j - lo] = sc;
        m = fmaxf(m, sc);
    }
    m = block_max_float(m, redf);
    double acc[MAXD_PER_THREAD];
    for (int r = 0; r < MAXD_PER_THREAD; r++) acc[r] = 0.0;
    if (threadIdx.x == 0) sum_sh = 0.0;
    for (i64 c0 = 0; c0 < n; c0 += CHUNK) {
        i64 cn = min((i64)CHUNK, n - c0);
        __syncthreads();
        for (i64 k = threadIdx.x; k < cn; k += blockDim.x) e[k] = exp((double)__fsub_rn(s[c0 + k], m));
        __syncthreads();
        if (threadIdx.x == 0) {
            double sum = sum_sh;
            for (i64 k = 0; k < cn; k++) sum += e[k];
            sum_sh = sum;
        }
        for (int r = 0; r < MAXD_PER_THREAD; r++) {
            i64 d = threadIdx.x + (i64)r * blockDim.x;
            if (d >= D) break;
            double a = acc[r];
            const float* v = vb + (lo + c0) * vstride + d;
            for (i64 k = 0; k < cn; k++) a += e[k] * (double)v[k * vstride];
            acc[r] = a;
        }
    }
    __syncthreads();
    double sum = sum_sh;
    for (int r = 0; r < MAXD_PER_THREAD; r++) {
        i64 d = threadIdx.x + (i64)r * blockDim.x;
        if (d >= D) break;
        o[d] = (float)(acc[r] / sum);
    }
    return __fadd_rn(m, (float)log(sum));
}

// attn_fwd: grid (S, H, B). out [T,H*D], lse [H,T], qkv [T,(H+2K)*D].
extern "C" __global__ void attn_fwd(float* out, float* lse, const float* qkv, const int* pos, i64 B, i64 S, i64 H,
                                    i64 K, i64 D, i64 window, double scale) {
    extern __shared__ float s[];
    i64 i = blockIdx.x, h = blockIdx.y, row = blockIdx.z;
    i64 T = B * S, width = (H + 2 * K) * D;
    i64 t = row * S + i;
    i64 lo = max((i64)0, i - (i64)pos[t]);
    if (window > 0) lo = max(lo, i - window + 1);
    i64 kvh = h / (H / K);
    const float* base = qkv + row * S * width;
    float l = attend(out + t * H * D + h * D, qkv + t * width + h * D, base + (H + kvh) * D, width,
                     base + (H + K + kvh) * D, width, lo, i, D, (float)scale, s);
    if (threadIdx.x == 0) lse[h * T + t] = l;
}

// attn_cache_store: kc, vc [maxSeq,K*D] rows start..start+T-1 = the k and v
// of qkv [T,(H+2K)*D].
extern "C" __global__ void attn_cache_store(float* kc, float* vc, const float* qkv, i64 T, i64 H, i64 K, i64 D,
                                            i64 start) {
    i64 width = (H + 2 * K) * D, kd = K * D;
    FOR_N(x, T * kd) {
        i64 t = x / kd, c = x % kd;
        kc[(start + t) * kd + c] = qkv[t * width + H * D + c];
        vc[(start + t) * kd + c] = qkv[t * width + (H + K) * D + c];
    }
}

// attn_cached: grid (T, H). out [T,H*D] for the queries of qkv, which sit
// at positions start..start+T-1, over the caches' first start+T keys.
extern "C" __global__ void attn_cached(float* out, const float* qkv, const float* kc, const float* vc, i64 H, i64 K,
                                       i64 D, i64 start, i64 window, double scale) {
    extern __shared__ float s[];
    i64 t = blockIdx.x, h = blockIdx.y;
    i64 width = (H + 2 * K) * D, kd = K * D;
    i64 i = start + t;
    i64 lo = 0;
    if (window > 0) lo = max(lo, i - window + 1);
    i64 kvh = h / (H / K);
    attend(out + t * H * D + h * D, qkv + t * width + h * D, kc + kvh * D, kd, vc + kvh * D, kd, lo, i, D,
           (float)scale, s);
}

// attn_bwd_di: di [H,T] = rowsum(dO * O) per query head, a sequential
// float32 sum.
extern "C" __global__ void attn_bwd_di(float* di, const float* dout, const float* out, i64 T, i64 H, i64 D) {
    FOR_N(x, T * H) {
        i64 h = x / T, t = x % T;
        const float* a = dout + t * H * D + h * D;
        const float* b = out + t * H * D + h * D;
        float s = 0.0f;
        for (i64 d = 0; d < D; d++) s = __fadd_rn(s, __fmul_rn(a[d], b[d]));
        di[x] = s;
    }
}

// ds_p recomputes, for query t (head h, row position i) and key tj, the
// probability p = exp(q.k*scale - lse) and ds = p * (dO.v - di) * scale.
__device__ __forceinline__ void ds_p(const float* q, const float* k, const float* dO, const float* v, i64 D,
                                     float scale, float l, float di, float* ds, float* p) {
    float dot = 0.0f, dp = 0.0f;
    for (i64 d = 0; d < D; d++) {
        dot = __fadd_rn(dot, __fmul_rn(q[d], k[d]));
        dp = __fadd_rn(dp, __fmul_rn(dO[d], v[d]));
    }
    float pj = (float)exp((double)__fsub_rn(__fmul_rn(dot, scale), l));
    *p = pj;
    *ds = __fmul_rn(__fmul_rn(pj, __fsub_rn(dp, di)), scale);
}

// attn_bwd_dq: grid (S, H, B): dq_i = sum_j ds_ij k_j (in j order), added
// to dqkv once.
extern "C" __global__ void attn_bwd_dq(float* dqkv, const float* dout, const float* lse, const float* di,
                                       const float* qkv, const int* pos, i64 B, i64 S, i64 H, i64 K, i64 D, i64 window,
                                       double scale_d) {
    __shared__ float dsc[CHUNK];
    float scale = (float)scale_d;
    i64 i = blockIdx.x, h = blockIdx.y, row = blockIdx.z;
    i64 T = B * S, width = (H + 2 * K) * D;
    i64 t = row * S + i;
    i64 lo = max((i64)0, i - (i64)pos[t]);
    if (window > 0) lo = max(lo, i - window + 1);
    i64 kvh = h / (H / K);
    i64 koff = (H + kvh) * D, voff = (H + K + kvh) * D;
    const float* q = qkv + t * width + h * D;
    const float* dO = dout + t * H * D + h * D;
    float l = lse[h * T + t], dI = di[h * T + t];
    float acc[MAXD_PER_THREAD];
    for (int r = 0; r < MAXD_PER_THREAD; r++) acc[r] = 0.0f;
    i64 n = i - lo + 1;
    for (i64 c0 = 0; c0 < n; c0 += CHUNK) {
        i64 cn = min((i64)CHUNK, n - c0);
        __syncthreads();
        for (i64 k = threadIdx.x; k < cn; k += blockDim.x) {
            i64 tj = row * S + lo + c0 + k;
            float p;
            ds_p(q, qkv + tj * width + koff, dO, qkv + tj * width + voff, D, scale, l, dI, &dsc[k], &p);
        }
        __syncthreads();
        for (int r = 0; r < MAXD_PER_THREAD; r++) {
            i64 d = threadIdx.x + (i64)r * blockDim.x;
            if (d >= D) break;
            float a = acc[r];
            const float* kk = qkv + (row * S + lo + c0) * width + koff + d;
            for (i64 k = 0; k < cn; k++) a = __fadd_rn(a, __fmul_rn(dsc[k], kk[k * width]));
            acc[r] = a;
        }
    }
    for (int r = 0; r < MAXD_PER_THREAD; r++) {
        i64 d = threadIdx.x + (i64)r * blockDim.x;
        if (d >= D) break;
        float* g = dqkv + t * width + h * D + d;
        *g = __fadd_rn(*g, acc[r]);
    }
}

// attn_bwd_dkdv: grid (S, K, B), one block per key j of a KV head:
// dk_j += ds_ij q_i, dv_j += p_ij dO_i over the group's query heads h and
// the queries i >= j that see j, in (h, i) order as the CPU adds them.
extern "C" __global__ void attn_bwd_dkdv(float* dqkv, const float* dout, const float* lse, const float* di,
                                         const float* qkv, const int* pos, i64 B, i64 S, i64 H, i64 K, i64 D,
                                         i64 window, double scale_d) {
    __shared__ float dsc[CHUNK], pc[CHUNK];
    __shared__ int qi[CHUNK];
    float scale = (float)scale_d;
    i64 j = blockIdx.x, kvh = blockIdx.y, row = blockIdx.z;
    i64 T = B * S, width = (H + 2 * K) * D, group = H / K;
    i64 tj = row * S + j;
    i64 koff = (H + kvh) * D, voff = (H + K + kvh) * D;
    const float* k = qkv + tj * width + koff;
    const float* v = qkv + tj * width + voff;
    float ak[MAXD_PER_THREAD], av[MAXD_PER_THREAD];
    for (int r = 0; r < MAXD_PER_THREAD; r++) {
        i64 d = threadIdx.x + (i64)r * blockDim.x;
        ak[r] = d < D ? dqkv[tj * width + koff + d] : 0.0f;
        av[r] = d < D ? dqkv[tj * width + voff + d] : 0.0f;
    }
    i64 nq = S - j;            // queries j..S-1 may see key j
    i64 npairs = group * nq;   // (h, i) pairs in h-major order
    for (i64 c0 = 0; c0 < npairs; c0 += CHUNK) {
        i64 cn = min((i64)CHUNK, npairs - c0);
        __syncthreads();
        for (i64 x = threadIdx.x; x < cn; x += blockDim.x) {
            i64 pi = c0 + x;
            i64 h = kvh * group + pi / nq, i = j + pi % nq;
            i64 t = row * S + i;
            i64 lo = max((i64)0, i - (i64)pos[t]);
            if (window > 0) lo = max(lo, i - window + 1);
            if (j < lo) {
                qi[x] = -1;
                continue;
            }
            qi[x] = (int)(h * S + i);  // decoded below
            ds_p(qkv + t * width + h * D, k, dout + t * H * D + h * D, v, D, scale, lse[h * T + t],
                 di[h * T + t], &dsc[x], &pc[x]);
        }
        __syncthreads();
        for (int r = 0; r < MAXD_PER_THREAD; r++) {
            i64 d = threadIdx.x + (i64)r * blockDim.x;
            if (d >= D) break;
            float a = ak[r], b = av[r];
            for (i64 x = 0; x < cn; x++) {
                int code = qi[x];
                if (code < 0) continue;
                i64 h = code / S, t = row * S + code % S;
                a = __fadd_rn(a, __fmul_rn(dsc[x], qkv[t * width + h * D + d]));
                b = __fadd_rn(b, __fmul_rn(pc[x], dout[t * H * D + h * D + d]));
            }
            ak[r] = a;
            av[r] = b;
        }
    }
    for (int r = 0; r < MAXD_PER_THREAD; r++) {
        i64 d = threadIdx.x + (i64)r * blockDim.x;
        if (d >= D) break;
        dqkv[tj * width + koff + d] = ak[r];
        dqkv[tj * width + voff + d] = av[r];
    }
}
