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

// ---------------------------------------------------------------------------
// Short rows (S <= 64): one thread block per (head, row) instead of one per
// query. The block keeps the row's keys (or values) in shared memory,
// padded to D+1 floats a row so that 32 lanes reading 32 keys hit 32
// banks, and the S x S probabilities (stride S+1). Warp w owns query rows
// 8w..8w+7; in the score phases lane l owns keys l and l+32, in the
// product phases lane l owns features l, l+32, l+64, l+96. Dot products
// over the head dimension run in d order, like the CPU's; sums over keys or
// queries run in index order in float32.
#define AS_ROWS 8
#define AS_MAXC 4  // features per lane: head dims up to 128

// as_lo is the first key query i of a row may see.
__device__ __forceinline__ int as_lo(int i, const int* pos_row, i64 window) {
    int lo = max(0, i - pos_row[i]);
    if (window > 0) lo = max(lo, (int)(i - window + 1));
    return lo;
}

// as_load_rows copies S rows of D floats (row j at src + j*stride) into
// dst [S][D+1].
__device__ __forceinline__ void as_load_rows(float* dst, const float* src, i64 stride, int S, int D) {
    for (int x = threadIdx.x; x < S * D; x += blockDim.x) {
        int j = x / D, d = x - j * D;
        dst[j * (D + 1) + d] = src[j * stride + d];
    }
}

// as_scores: acc[r][c] = q_{i0+r} . key_{lane+32c} over d (float32, d
// order), keys from shared memory ks [S][D+1]; rows past S read row S-1.
__device__ __forceinline__ void as_scores(float acc[AS_ROWS][2], const float* qbase, i64 qstride, const float* ks, int i0,
                                          int S, int D, int lane, bool two) {
    const float* q[AS_ROWS];
#pragma unroll
    for (int r = 0; r < AS_ROWS; r++) {
        q[r] = qbase + (i64)min(i0 + r, S - 1) * qstride;
        acc[r][0] = 0.0f;
        acc[r][1] = 0.0f;
    }
    const int j0 = min(lane, S - 1), j1 = min(lane + 32, S - 1);
    for (int d = 0; d < D; d++) {
        float k0 = ks[j0 * (D + 1) + d];
        float k1 = two ? ks[j1 * (D + 1) + d] : 0.0f;
#pragma unroll
        for (int r = 0; r < AS_ROWS; r++) {
            float qv = q[r][d];
            acc[r][0] = __fadd_rn(acc[r][0], __fmul_rn(qv, k0));
            acc[r][1] = __fadd_rn(acc[r][1], __fmul_rn(qv, k1));
        }
    }
}

// as_weighted: a[r][c] = sum over m of w(r, m) * src[m*stride + lane+32c]
// for this warp's rows r (i0+r), m from m0 to m1 in order (float32), with
// w(r, m) = P[i0+r][m], or P[m][i0+r] when transposed; rows past S weigh 0.
// P is [S][S+1] in shared memory.
template <bool transposed>
__device__ __forceinline__ void as_weighted(float a[AS_ROWS][AS_MAXC], const float* P, int S, int i0, int m0, int m1,
                                            const float* src, i64 stride, int D, int lane) {
#pragma unroll
    for (int r = 0; r < AS_ROWS; r++)
#pragma unroll
        for (int c = 0; c < AS_MAXC; c++) a[r][c] = 0.0f;
    for (int m = m0; m <= m1; m++) {
        float v[AS_MAXC];
#pragma unroll
        for (int c = 0; c < AS_MAXC; c++) {
            int d = lane + 32 * c;
            v[c] = d < D ? src[(i64)m * stride + d] : 0.0f;
        }
#pragma unroll
        for (int r = 0; r < AS_ROWS; r++) {
            float w = (i0 + r < S) ? (transposed ? P[m * (S + 1) + i0 + r] : P[(i0 + r) * (S + 1) + m]) : 0.0f;
#pragma unroll
            for (int c = 0; c < AS_MAXC; c++) a[r][c] = __fadd_rn(a[r][c], __fmul_rn(w, v[c]));
        }
    }
}

// as_add_rows: dst[(i0+r)*stride + lane+32c] += a[r][c] for the rows below S.
__device__ __forceinline__ void as_add_rows(float* dst, i64 stride, const float a[AS_ROWS][AS_MAXC], int i0, int S, int D,
                                            int lane) {
#pragma unroll
    for (int r = 0; r < AS_ROWS; r++) {
        int i = i0 + r;
        if (i >= S) break;
#pragma unroll
        for (int c = 0; c < AS_MAXC; c++) {
            int d = lane + 32 * c;
            if (d < D) {
                float* gp = dst + (i64)i * stride + d;
                *gp = __fadd_rn(*gp, a[r][c]);
            }
        }
    }
}

// attn_fwd_s64: grid (H, B), 256 threads, dynamic shared memory
// 4*(S*(D+1) + S*(S+1)) bytes. Same outputs as attn_fwd.
extern "C" __global__ void attn_fwd_s64(float* out, float* lse, const float* qkv, const int* pos, i64 B, i64 S_, i64 H, i64 K,
                                        i64 D_, i64 window, double scale_d) {
    extern __shared__ float sm[];
    const int S = (int)S_, D = (int)D_;
    float* ks = sm;               // [S][D+1]
    float* P = sm + S * (D + 1);  // [S][S+1]
    const float scale = (float)scale_d;
    const i64 h = blockIdx.x, b = blockIdx.y;
    const i64 T = B * S, width = (H + 2 * K) * D, kvh = h / (H / K);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float* base = qkv + b * S * width;
    const int* prow = pos + b * S;
    as_load_rows(ks, base + (H + kvh) * D, width, S, D);
    __syncthreads();
    const int i0 = warp * AS_ROWS;
    if (i0 >= S) return;  // no block-wide barrier below
    const int imax = min(i0 + AS_ROWS, S) - 1;
    const bool two = imax >= 32;
    float acc[AS_ROWS][2];
    as_scores(acc, base + h * D, width, ks, i0, S, D, lane, two);
    const float ninf = -__int_as_float(0x7f800000);
#pragma unroll
    for (int r = 0; r < AS_ROWS; r++) {
        int i = i0 + r;
        if (i >= S) break;
        int lo = as_lo(i, prow, window);
        int j0 = lane, j1 = lane + 32;
        float s0 = (j0 >= lo && j0 <= i) ? __fmul_rn(acc[r][0], scale) : ninf;
        float s1 = (j1 >= lo && j1 <= i) ? __fmul_rn(acc[r][1], scale) : ninf;
        float m = fmaxf(s0, s1);
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        double e0 = j0 <= i && j0 >= lo ? exp((double)__fsub_rn(s0, m)) : 0.0;
        double e1 = j1 <= i && j1 >= lo ? exp((double)__fsub_rn(s1, m)) : 0.0;
        double sum = e0 + e1;
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (j0 < S) P[i * (S + 1) + j0] = (float)(e0 / sum);
        if (j1 < S) P[i * (S + 1) + j1] = (float)(e1 / sum);
        if (lane == 0) lse[h * T + b * S + i] = __fadd_rn(m, (float)log(sum));
    }
    __syncwarp();
    float o[AS_ROWS][AS_MAXC];
    as_weighted<false>(o, P, S, i0, 0, imax, base + (H + K + kvh) * D, width, D, lane);
#pragma unroll
    for (int r = 0; r < AS_ROWS; r++) {
        int i = i0 + r;
        if (i >= S) break;
        float* ot = out + (b * S + i) * H * D + h * D;
#pragma unroll
        for (int c = 0; c < AS_MAXC; c++) {
            int d = lane + 32 * c;
            if (d < D) ot[d] = o[r][c];
        }
    }
}

// attn_bwd_s64: grid (K, B), 256 threads, the same shared memory as
// attn_fwd_s64. For each query head h of KV head kvh (in order), with the
// row's keys or values in shared memory as each phase needs them:
//   P    = exp(q.k*scale - lse) where visible, else 0     (S x S, shared)
//   dV  += P^T dO
//   dS   = P * (dO.v - di) * scale                         (over P)
//   dQ  += dS K,  dK += dS^T Q
// di = rowsum(dO * O) comes from attn_bwd_di. Same result as attn_bwd_dq
// and attn_bwd_dkdv up to the order of float32 sums.
extern "C" __global__ void attn_bwd_s64(float* dqkv, const float* dout, const float* lse, const float* di,
                                        const float* qkv, const int* pos, i64 B, i64 S_, i64 H, i64 K, i64 D_, i64 window,
                                        double scale_d) {
    extern __shared__ float sm[];
    const int S = (int)S_, D = (int)D_;
    float* kv = sm;               // [S][D+1]: keys, then values, then keys
    float* P = sm + S * (D + 1);  // [S][S+1]: P, then dS
    const float scale = (float)scale_d;
    const i64 kvh = blockIdx.x, b = blockIdx.y;
    const i64 T = B * S, width = (H + 2 * K) * D, HD = H * D, group = H / K;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const i64 koff = (H + kvh) * D, voff = (H + K + kvh) * D;
    const float* base = qkv + b * S * width;
    float* dbase = dqkv + b * S * width;
    const float* dobase = dout + b * S * HD;
    const int* prow = pos + b * S;
    const int i0 = warp * AS_ROWS;
    const bool active = i0 < S;
    const int imax = min(i0 + AS_ROWS, S) - 1;
    const bool two = imax >= 32;
    for (i64 g = 0; g < group; g++) {
        const i64 h = kvh * group + g;
        __syncthreads();  // the previous head's readers of kv and P are done
        as_load_rows(kv, base + koff, width, S, D);
        __syncthreads();
        // P for this warp's query rows.
        if (active) {
            float acc[AS_ROWS][2];
            as_scores(acc, base + h * D, width, kv, i0, S, D, lane, two);
#pragma unroll
            for (int r = 0; r < AS_ROWS; r++) {
                int i = i0 + r;
                if (i >= S) break;
                int lo = as_lo(i, prow, window);
                float l = lse[h * T + b * S + i];
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    int j = lane + 32 * c;
                    if (j >= S) continue;
                    float p = 0.0f;
                    if (j >= lo && j <= i) p = (float)exp((double)__fsub_rn(__fmul_rn(acc[r][c], scale), l));
                    P[i * (S + 1) + j] = p;
                }
            }
        }
        __syncthreads();
        // dV for this warp's key rows j = i0..: sum over queries i >= i0.
        if (active) {
            float a[AS_ROWS][AS_MAXC];
            as_weighted<true>(a, P, S, i0, i0, S - 1, dobase + h * D, HD, D, lane);
            as_add_rows(dbase + voff, width, a, i0, S, D, lane);
        }
        __syncthreads();  // everyone is done with the keys and with P as P
        as_load_rows(kv, base + voff, width, S, D);
        __syncthreads();
        // dS over P: dp = dO_i . v_j in d order.
        if (active) {
            float acc[AS_ROWS][2];
            as_scores(acc, dobase + h * D, HD, kv, i0, S, D, lane, two);
#pragma unroll
            for (int r = 0; r < AS_ROWS; r++) {
                int i = i0 + r;
                if (i >= S) break;
                float dI = di[h * T + b * S + i];
#pragma unroll
                for (int c = 0; c < 2; c++) {
                    int j = lane + 32 * c;
                    if (j >= S) continue;
                    float p = P[i * (S + 1) + j];
                    P[i * (S + 1) + j] = __fmul_rn(__fmul_rn(p, __fsub_rn(acc[r][c], dI)), scale);
                }
            }
        }
        __syncthreads();  // dS complete; the values are no longer needed
        as_load_rows(kv, base + koff, width, S, D);
        __syncthreads();
        if (active) {
            // dQ for this warp's query rows: sum over keys j <= imax in order.
            float a[AS_ROWS][AS_MAXC];
            as_weighted<false>(a, P, S, i0, 0, imax, kv, D + 1, D, lane);
            as_add_rows(dbase + h * D, width, a, i0, S, D, lane);
            // dK for this warp's key rows: sum over queries i >= i0 in order.
            as_weighted<true>(a, P, S, i0, i0, S - 1, base + h * D, width, D, lane);
            as_add_rows(dbase + koff, width, a, i0, S, D, lane);
        }
    }
}
