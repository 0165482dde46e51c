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
#include "attention.cuh"

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
// Short rows (S <= 64, D <= 128): one thread block of 256 threads per
// (head, row) in the forward, per (KV head, row) in the backward, working on
// 64 x 64 tiles held in shared memory, with every product register-tiled.
//
// Thread (ty, tx) = (threadIdx.x / 16, threadIdx.x % 16) owns rows
// 4ty..4ty+3 of every 64-row result; warp w holds rows 8w..8w+7.
//   Score-like products (S = Q K^T, dP = dO V^T), 64 x 64 over the head
//   dimension: the thread owns columns 4tx..4tx+3, a 4x4 tile. Both operands
//   are staged transposed, [d][row] with rows padded to AT_LD floats, in
//   chunks of the head dimension, so that each step d reads a float4 of each
//   operand (the q float4 is a broadcast, the k float4s of 16 lanes are 256
//   consecutive bytes) for 16 fmaf.
//   Value-like products (O = P V, dV = P^T dO, dK = dS^T Q, dQ = dS K),
//   64 x D over the 64 rows of the other side: the thread owns columns
//   tx + 16c; the 64 x 64 weights W sit in shared memory laid out so that
//   the thread's four rows are one float4, the other operand is staged in
//   column chunks of AT_VC, and each step reads 1 float4 and 3 floats for 12
//   fmaf. The weights are exactly 0 above the causal diagonal, so the loop
//   over the other side stops (or starts) at the warp's own diagonal: no
//   branch inside a warp, and about half the work of the full square.
// A Phi-3-mini layer is 512 blocks, one wave at four blocks a multiprocessor,
// so the blocks would all load, then all compute, in step: every operand
// chunk is therefore copied with cp.async (no registers) into one of two
// buffers while the block computes on the other.
// The softmax of a row runs in float32 across the 16 lanes of a half-warp
// (shuffles), with one expf per visible score and one logf per row.
// Sums run in a different order than the CPU's (and fused), well within
// float32's 1e-5 of the CPU reference. Rows and columns past S are zero.
#define AT_THREADS 256
#define AT_S 64   // rows of a tile: S <= 64
#define AT_LD 68  // padded row of a transposed or weight tile (float4-aligned)
#define AT_VC 48  // columns of a value-like operand chunk
#define AT_NC (AT_VC / 16)
#define AT_W (AT_S * AT_LD)   // floats of the weights tile
#define AT_Y (AT_S * AT_VC)   // floats of an operand chunk
// One block's shared memory: the weights and two operand chunks (41 KiB,
// under the 48 KiB a block gets without opting in). The score phase's two
// buffers of transposed chunks, AT_W floats each, fit in the same space.
#define AT_SMEM (AT_W + 2 * AT_Y)



// at_issue_t starts copying dst[dd][i] = src[i*stride + d0+dd] for dd < dc,
// i < 64, and stores 0 where i >= S or d0+dd >= D. A warp reads dc
// consecutive floats of a row or two.
template <int dc>
__device__ __forceinline__ void at_issue_t(float* dst, const float* src, i64 stride, int S, int D, int d0) {
#pragma unroll 4
    for (int x = threadIdx.x; x < AT_S * dc; x += AT_THREADS) {
        int i = x / dc, dd = x % dc, d = d0 + dd;
        if (i < S && d < D)
            cp_async4(&dst[dd * AT_LD + i], src + (i64)i * stride + d);
        else
            dst[dd * AT_LD + i] = 0.0f;
    }
}

// at_issue_rows starts copying dst[m][cc] = src[m*stride + d0+cc] for m < 64,
// cc < AT_VC, and stores 0 where m >= S or cc >= cw. With v4 (src, stride,
// d0 and cw multiples of 4 floats) the copies are 16 bytes wide.
__device__ __forceinline__ void at_issue_rows(float* dst, const float* src, i64 stride, int S, int d0, int cw, bool v4) {
    if (v4) {
#pragma unroll
        for (int x = threadIdx.x; x < AT_Y / 4; x += AT_THREADS) {
            int m = x / (AT_VC / 4), cc = 4 * (x % (AT_VC / 4));
            if (m < S && cc < cw)
                cp_async16(&dst[4 * x], src + (i64)m * stride + d0 + cc);
            else
                *(float4*)&dst[4 * x] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
        return;
    }
#pragma unroll 4
    for (int x = threadIdx.x; x < AT_Y; x += AT_THREADS) {
        int m = x / AT_VC, cc = x % AT_VC;
        if (m < S && cc < cw)
            cp_async4(&dst[x], src + (i64)m * stride + d0 + cc);
        else
            dst[x] = 0.0f;
    }
}

// at_dot: acc[r][c] += sum over dd < dc of aT[dd][4ty+r] * bT[dd][4tx+c].
template <int dc>
__device__ __forceinline__ void at_dot(float acc[4][4], const float* aT, const float* bT, int ty, int tx) {
#pragma unroll 8
    for (int dd = 0; dd < dc; dd++) {
        float4 a4 = *(const float4*)&aT[dd * AT_LD + 4 * ty];
        float4 b4 = *(const float4*)&bT[dd * AT_LD + 4 * tx];
        float a[4] = {a4.x, a4.y, a4.z, a4.w}, b[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[r][c] = fmaf(a[r], b[c], acc[r][c]);
    }
}

// at_wsum: for the block's rows n = 4ty+r < S and chunk columns cc < cw,
//   dst[n*dstride + cc] (+)= sum over m0 <= m <= m1 of W[m][n] * Y[m][cc]
// with W [64][AT_LD] and Y [64][AT_VC] in shared memory. m0 and m1 must be
// the same across each warp. When adding, the old values are loaded before
// the sums, so that their latency hides behind them.
template <bool add>
__device__ __forceinline__ void at_wsum(float* dst, i64 dstride, const float* W, const float* Y, int S, int cw, int m0,
                                        int m1, int ty, int tx) {
    float a[4][AT_NC];
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int c = 0; c < AT_NC; c++) {
            int n = 4 * ty + r, cc = tx + 16 * c;
            a[r][c] = add && n < S && cc < cw ? dst[(i64)n * dstride + cc] : 0.0f;
        }
    float acc[4][AT_NC];
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int c = 0; c < AT_NC; c++) acc[r][c] = 0.0f;
#pragma unroll 2
    for (int m = m0; m <= m1; m++) {
        float4 w4 = *(const float4*)&W[m * AT_LD + 4 * ty];
        float w[4] = {w4.x, w4.y, w4.z, w4.w};
#pragma unroll
        for (int c = 0; c < AT_NC; c++) {
            float y = Y[m * AT_VC + tx + 16 * c];
#pragma unroll
            for (int r = 0; r < 4; r++) acc[r][c] = fmaf(w[r], y, acc[r][c]);
        }
    }
#pragma unroll
    for (int r = 0; r < 4; r++) {
        int n = 4 * ty + r;
        if (n >= S) break;
#pragma unroll
        for (int c = 0; c < AT_NC; c++) {
            int cc = tx + 16 * c;
            if (cc < cw) dst[(i64)n * dstride + cc] = add ? __fadd_rn(a[r][c], acc[r][c]) : acc[r][c];
        }
    }
}

// at_band is the 8-row band of warp w. Warps w and w+4 share a scheduler
// (warp % 4), and the value-like products' work grows (or shrinks) with the
// band, so warps 0..3 take bands 0..3 and warps 4..7 bands 7..4: each
// scheduler gets bands k and 7-k, the same work.
__device__ __forceinline__ int at_band(int w) { return w < 4 ? w : 11 - w; }

// at_store4 writes a, b, c, d into W at [row][col..col+3] (col a multiple of 4).
__device__ __forceinline__ void at_store4(float* W, int row, int col, float a, float b, float c, float d) {
    *(float4*)&W[row * AT_LD + col] = make_float4(a, b, c, d);
}

// The forward's score chunks: Q^T and K^T, 32 dimensions each, in a buffer
// of AT_W floats.
#define AT_FDC 32
__device__ __forceinline__ void at_fwd_issue(float* buf, const float* q, const float* k, i64 width, int S, int D, int d0) {
    at_issue_t<AT_FDC>(buf, q, width, S, D, d0);
    at_issue_t<AT_FDC>(buf + AT_FDC * AT_LD, k, width, S, D, d0);
    cp_commit();
}

// attn_fwd_t64: grid (H, B), AT_THREADS threads. Same outputs as attn_fwd.
extern "C" __global__ void __launch_bounds__(AT_THREADS, 4) attn_fwd_t64(float* out, float* lse, const float* qkv,
                                                                      const int* pos, i64 B, i64 S_, i64 H, i64 K,
                                                                      i64 D_, i64 window, double scale_d) {
    __shared__ __align__(16) float sm[AT_SMEM];
    float* pT = sm;         // P^T [64][AT_LD] (after the score chunks in sm, sm + AT_W)
    float* Y0 = sm + AT_W;  // value chunks [64][AT_VC]
    const int S = (int)S_, D = (int)D_;
    const float scale = (float)scale_d;
    const i64 h = blockIdx.x, b = blockIdx.y;
    const i64 T = B * S, width = (H + 2 * K) * D, kvh = h / (H / K);
    const int band = at_band(threadIdx.x >> 5);
    const int tx = threadIdx.x & 15, ty = 2 * band + ((threadIdx.x >> 4) & 1);
    const float* base = qkv + b * S * width;
    const float* q = base + h * D;
    const float* k = base + (H + kvh) * D;
    const float* v = base + (H + K + kvh) * D;
    const int* prow = pos + b * S;
    const bool v4 = (D & 3) == 0 && ((size_t)qkv & 15) == 0;

    // S = Q K^T, chunk c+1 in flight while chunk c is multiplied.
    float acc[4][4];
#pragma unroll
    for (int r = 0; r < 4; r++)
#pragma unroll
        for (int c = 0; c < 4; c++) acc[r][c] = 0.0f;
    const int na = (D + AT_FDC - 1) / AT_FDC;
    at_fwd_issue(sm, q, k, width, S, D, 0);
    for (int c = 0; c < na; c++) {
        const float* buf = sm + (c & 1) * AT_W;
        if (c + 1 < na) {
            at_fwd_issue(sm + ((c + 1) & 1) * AT_W, q, k, width, S, D, (c + 1) * AT_FDC);
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        at_dot<AT_FDC>(acc, buf, buf + AT_FDC * AT_LD, ty, tx);
        __syncthreads();  // done with buf before it is refilled
    }
    // The first value chunk loads during the softmax.
    const int nv = (D + AT_VC - 1) / AT_VC;
    at_issue_rows(Y0, v, width, S, 0, min(AT_VC, D), v4);
    cp_commit();

    // Softmax of rows 4ty+r over the 16 lanes tx of this half-warp.
    const float ninf = -__int_as_float(0x7f800000);
    float p[4][4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        const int i = 4 * ty + r;
        const bool live = i < S;
        const int lo = live ? at_lo(i, prow, window) : 0;
        float s[4], m = ninf;
#pragma unroll
        for (int c = 0; c < 4; c++) {
            int j = 4 * tx + c;
            s[c] = (live && j >= lo && j <= i) ? __fmul_rn(acc[r][c], scale) : ninf;
            m = fmaxf(m, s[c]);
        }
        for (int o = 1; o < 16; o <<= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        // A live row sees key i, so m is finite there; a dead row keeps p = 0.
        float sum = 0.0f;
#pragma unroll
        for (int c = 0; c < 4; c++) {
            p[r][c] = s[c] != ninf ? expf(__fsub_rn(s[c], m)) : 0.0f;
            sum = __fadd_rn(sum, p[r][c]);
        }
        for (int o = 1; o < 16; o <<= 1) sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, o));
#pragma unroll
        for (int c = 0; c < 4; c++) p[r][c] = live ? __fdiv_rn(p[r][c], sum) : 0.0f;
        if (live && tx == 0) lse[h * T + b * S + i] = __fadd_rn(m, logf(sum));
    }
    // O = P V: the weights W[j][i] = P[i][j], keys up to the warp's last row.
#pragma unroll
    for (int c = 0; c < 4; c++) at_store4(pT, 4 * tx + c, 4 * ty, p[0][c], p[1][c], p[2][c], p[3][c]);
    float* o = out + b * S * H * D + h * D;
    for (int c = 0; c < nv; c++) {
        if (c + 1 < nv) {
            at_issue_rows(sm + AT_W + ((c + 1) & 1) * AT_Y, v, width, S, (c + 1) * AT_VC, min(AT_VC, D - (c + 1) * AT_VC),
                          v4);
            cp_commit();
            cp_wait<1>();
        } else {
            cp_wait<0>();
        }
        __syncthreads();
        at_wsum<false>(o + c * AT_VC, H * D, pT, sm + AT_W + (c & 1) * AT_Y, S, min(AT_VC, D - c * AT_VC), 0,
                       min(8 * band + 7, S - 1), ty, tx);
        __syncthreads();
    }
}

// The backward's score chunks: Q^T, K^T, dO^T and V^T, 16 dimensions each,
// in a buffer of AT_W floats.
#define AT_BDC 16
__device__ __forceinline__ void at_bwd_issue(float* buf, const float* q, const float* k, const float* dO, const float* v,
                                             i64 width, i64 HD, int S, int D, int d0) {
    at_issue_t<AT_BDC>(buf, q, width, S, D, d0);
    at_issue_t<AT_BDC>(buf + AT_BDC * AT_LD, k, width, S, D, d0);
    at_issue_t<AT_BDC>(buf + 2 * AT_BDC * AT_LD, dO, HD, S, D, d0);
    at_issue_t<AT_BDC>(buf + 3 * AT_BDC * AT_LD, v, width, S, D, d0);
    cp_commit();
}

// attn_bwd_t64: grid (K, B), AT_THREADS threads; for each query head h of
// KV head kvh in turn (their dK, dV sums meet in this block):
//   di   = rowsum(dO * O)                     (folded in: no attn_bwd_di)
//   P    = exp(q.k*scale - lse) where visible, else 0;  dP = dO V^T
//   dS   = P * (dP - di) * scale              (P, dS stay in registers)
//   dV  += P^T dO,  dK += dS^T Q,  dQ += dS K (each through the weights tile,
//                                              column chunk by column chunk)
// Same result as attn_bwd_di + attn_bwd_dq + attn_bwd_dkdv up to the order
// of float32 sums. accum 1 adds into dqkv; 0 overwrites it (every element
// of the B rows is written by exactly one block). Four blocks a multiprocessor (64 registers) take the 512
// blocks of a Phi-3-mini layer in one wave (three, at 80 registers, ran 1.5x
// slower).
extern "C" __global__ void __launch_bounds__(AT_THREADS, 4) attn_bwd_t64(float* dqkv, const float* dout, const float* out,
                                                                         const float* lse, const float* qkv,
                                                                         const int* pos, i64 B, i64 S_, i64 H, i64 K,
                                                                         i64 D_, i64 window, double scale_d, i64 accum) {
    __shared__ __align__(16) float sm[AT_SMEM];
    __shared__ float lse_s[AT_S], di_s[AT_S];
    float* W = sm;  // the weights [64][AT_LD]: P, dS, dS^T (after the score chunks)
    const int S = (int)S_, D = (int)D_;
    const float scale = (float)scale_d;
    const i64 kvh = blockIdx.x, b = blockIdx.y;
    const i64 T = B * S, width = (H + 2 * K) * D, HD = H * D, group = H / K;
    const i64 koff = (H + kvh) * D, voff = (H + K + kvh) * D;
    const int band = at_band(threadIdx.x >> 5), lane = threadIdx.x & 31;
    const int tx = threadIdx.x & 15, ty = 2 * band + (lane >> 4);
    const float* base = qkv + b * S * width;
    float* dbase = dqkv + b * S * width;
    const float* dobase = dout + b * S * HD;
    const float* obase = out + b * S * HD;
    const int* prow = pos + b * S;
    int lo[4];
#pragma unroll
    for (int r = 0; r < 4; r++) lo[r] = 4 * ty + r < S ? at_lo(4 * ty + r, prow, window) : 0;
    // Keys past the warp's last row (dQ) and queries before its first (dV, dK)
    // have zero weight.
    const int jmax = min(8 * band + 7, S - 1), imin = 8 * band;
    const int na = (D + AT_BDC - 1) / AT_BDC, nv = (D + AT_VC - 1) / AT_VC;
    const bool v4 = (D & 3) == 0 && (((size_t)qkv | (size_t)dout) & 15) == 0;

    for (i64 g = 0; g < group; g++) {
        const i64 h = kvh * group + g;
        const float* q = base + h * D;
        const float* dO = dobase + h * D;
        // The previous head ended with a barrier: sm, lse_s, di_s are free.
        at_bwd_issue(sm, q, base + koff, dO, base + voff, width, HD, S, D, 0);
        // di and lse of the warp's rows 8band..8band+7.
        at_di_lse(di_s, lse_s, dO, obase + h * D, HD, lse + h * T + b * S, 8 * band, S, D, lane);
        // S = Q K^T and dP = dO V^T, chunk c+1 in flight while chunk c is multiplied.
        float sacc[4][4], pacc[4][4];
#pragma unroll
        for (int r = 0; r < 4; r++)
#pragma unroll
            for (int c = 0; c < 4; c++) sacc[r][c] = pacc[r][c] = 0.0f;
        for (int c = 0; c < na; c++) {
            const float* buf = sm + (c & 1) * AT_W;
            if (c + 1 < na) {
                at_bwd_issue(sm + ((c + 1) & 1) * AT_W, q, base + koff, dO, base + voff, width, HD, S, D,
                             (c + 1) * AT_BDC);
                cp_wait<1>();
            } else {
                cp_wait<0>();
            }
            __syncthreads();
            at_dot<AT_BDC>(sacc, buf, buf + AT_BDC * AT_LD, ty, tx);
            at_dot<AT_BDC>(pacc, buf + 2 * AT_BDC * AT_LD, buf + 3 * AT_BDC * AT_LD, ty, tx);
            __syncthreads();  // done with buf before it is refilled
        }
        // Three products, dV (weights P, operand dO), dK (dS, Q) and dQ (dS^T,
        // K), nv column chunks each: step s+1's chunk loads during step s.
        // The first one loads while P and dS are computed.
        const int nsteps = 3 * nv;
        at_issue_rows(sm + AT_W, dO, HD, S, 0, min(AT_VC, D), v4);
        cp_commit();
        float p[4][4], ds[4][4];
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int i = 4 * ty + r;
            const float l = lse_s[i], dI = di_s[i];
#pragma unroll
            for (int c = 0; c < 4; c++) {
                const int j = 4 * tx + c;
                float pp = 0.0f;
                if (i < S && j >= lo[r] && j <= i) pp = expf(__fsub_rn(__fmul_rn(sacc[r][c], scale), l));
                p[r][c] = pp;
                ds[r][c] = __fmul_rn(__fmul_rn(pp, __fsub_rn(pacc[r][c], dI)), scale);
            }
        }
        for (int s = 0; s < nsteps; s++) {
            const int ph = s / nv, c = s - ph * nv;
            if (c == 0) {  // a new product: its weights (the last step ended with a barrier)
                if (ph == 0) {  // W[i][j] = P[i][j]
#pragma unroll
                    for (int r = 0; r < 4; r++) at_store4(W, 4 * ty + r, 4 * tx, p[r][0], p[r][1], p[r][2], p[r][3]);
                } else if (ph == 1) {  // W[i][j] = dS[i][j]
#pragma unroll
                    for (int r = 0; r < 4; r++) at_store4(W, 4 * ty + r, 4 * tx, ds[r][0], ds[r][1], ds[r][2], ds[r][3]);
                } else {  // W[j][i] = dS[i][j]
#pragma unroll
                    for (int c4 = 0; c4 < 4; c4++)
                        at_store4(W, 4 * tx + c4, 4 * ty, ds[0][c4], ds[1][c4], ds[2][c4], ds[3][c4]);
                }
            }
            if (s + 1 < nsteps) {
                const int ph1 = (s + 1) / nv, c1 = (s + 1) - ph1 * nv;
                const float* src = ph1 == 0 ? dO : ph1 == 1 ? q : base + koff;
                at_issue_rows(sm + AT_W + ((s + 1) & 1) * AT_Y, src, ph1 == 0 ? HD : width, S, c1 * AT_VC,
                              min(AT_VC, D - c1 * AT_VC), v4);
                cp_commit();
                cp_wait<1>();
            } else {
                cp_wait<0>();
            }
            __syncthreads();
            float* dst = (ph == 0 ? dbase + voff : ph == 1 ? dbase + koff : dbase + h * D) + c * AT_VC;
            // accum 0 (a pending zero, v7): the block writes dQ of its heads
            // and the first head's dK, dV, then adds the group's others.
            if (accum || (ph < 2 && g > 0))
                at_wsum<true>(dst, width, W, sm + AT_W + (s & 1) * AT_Y, S, min(AT_VC, D - c * AT_VC),
                              ph == 2 ? 0 : imin, ph == 2 ? jmax : S - 1, ty, tx);
            else
                at_wsum<false>(dst, width, W, sm + AT_W + (s & 1) * AT_Y, S, min(AT_VC, D - c * AT_VC),
                               ph == 2 ? 0 : imin, ph == 2 ? jmax : S - 1, ty, tx);
            __syncthreads();  // done with W and this chunk before they are refilled
        }
    }
}
