// The float32 LoRA products of float32 and float16 compute (lora_dot.cu's
// entry points; scripts/bench/coldot and rowdot time them alone): row dots,
// h = dropout(x) . A^T and g = dout . B, and column dots, GradA += scale *
// g^T . dropout(x) and GradB += scale * dout^T . h.
#pragma once
#include "lora_drop.cuh"

// lora_rowdot_sum ends a row product of a block of 256 threads: each
// warp sums its lanes' acc (shuffles down by 16, 8, 4, 2, 1), and the 8
// warps' sums are added in order into y[t0 + q, j].
template <int R, int ROWS>
__device__ __forceinline__ void lora_rowdot_sum(const float (&acc)[ROWS][R], float* y, i64 t0, i64 T, i64 r) {
    __shared__ float red[ROWS * R][8];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int q = 0; q < ROWS; q++)
#pragma unroll
        for (int j = 0; j < R; j++) {
            float v = acc[q][j];
            for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_down_sync(0xffffffffu, v, o));
            if (lane == 0) red[q * R + j][warp] = v;
        }
    __syncthreads();
    if (threadIdx.x < ROWS * R) {
        int q = threadIdx.x / R, j = threadIdx.x % R;
        i64 t = t0 + q;
        if (t < T && j < r) {
            float s = 0.0f;
            for (int w = 0; w < 8; w++) s = __fadd_rn(s, red[threadIdx.x][w]);
            y[t * r + j] = s;
        }
    }
}

// lora_rowdot8 / 16: y [T,r], y[t,j] = sum_k xd[t,k] * W(j,k) with
// W(j,k) = W[j*wsj + k*wsi] (A [r,K]: wsj = K, wsi = 1; B [K,r] read as
// B^T: wsj = 1, wsi = r), for r <= 8 / 16. One block of 256 threads per
// ROWS rows, so each W value loaded serves ROWS rows; thread i adds its k
// = i, i + 256, ... in order, then lane 0 of each warp sums the lanes
// (shuffles down by 16, 8, 4, 2, 1) and the 8 warps' sums are added in
// order (TestRowdot repeats these sums on the host, bit for bit).
// Each step's loads (its W values and its ROWS values of x) are all
// issued before any of its adds (v23): adding each row's value as it came
// made every step wait for one load after another, which held the
// backward's g = dout . B (no dropout) at 0.5-0.8 TB/s on an H200
// (K = 16,384: 122 us, now 62); with dropout the hashes set the pace.
// v24 (scripts/bench/rowdot, H200, a Phi-3-mini step's 384 calls): the
// offsets from each step's bases 32-bit and one loop for all three cases
// (h with dropout at K 3,072: 22.4 -> 16.5 us), and AHEAD steps' loads
// issued together (lora_rowdot8: 2, 9.8 -> 9.1 ms a step), then B^T's W
// as float4s (VECW, below: 8.5 ms; rank 16's step 30.5 -> 17.6 ms).
// Neither ROWS 2 (more blocks, each W value serving fewer rows: 12.7-14.0
// ms) nor capped registers (3 or 4 blocks an SM: 9.9-10.2 ms) did better;
// the order of a row's sums depends on none of ROWS, AHEAD and VECW.
template <int R, int ROWS, int AHEAD, bool VECW>
__device__ __forceinline__ void lora_rowdot_t(float* y, const float* x, const float* W, i64 T, i64 K, i64 r, i64 wsj,
                                              i64 wsi, u64 seed, double p_d, u64 thr, double ks_d) {
    // The shared hashes give lane 4m+q row q % ROWS's: more than four rows
    // would need more lanes (scripts/bench/rowdot's ROWS 8 changed bits).
    static_assert(ROWS <= 4, "lora_rowdot_t: at most four rows a block");
    const float p = (float)p_d, ks = (float)ks_d;
    const i64 t0 = blockIdx.x * (i64)ROWS;
    const i64 step = blockDim.x;
    float acc[ROWS][R];
#pragma unroll
    for (int q = 0; q < ROWS; q++)
#pragma unroll
        for (int j = 0; j < R; j++) acc[q][j] = 0.0f;
    const int lane = threadIdx.x & 31;
    const bool shared = p > 0.0f && (K & 3) == 0;
    // Offsets from the rows' and the step's bases are 32-bit (the host
    // checks ROWS * K and r * K < 2^31): 64-bit index arithmetic a load
    // cost registers, hence warps.
    const unsigned int Ku = (unsigned int)K, wsju = (unsigned int)wsj, sw = (unsigned int)(step * wsi);
    const float* xt = x + t0 * K;
    // VECW (the _v entry points): B read as B^T at full rank (wsj 1, wsi
    // R, 16-byte aligned, the host's choice), a k's R values contiguous, so
    // a thread loads them as R/4 float4s. As scalars they were R loads a
    // step, each touching R/4 as many L1 lines as a coalesced load (v24: g
    // = dout . B at rank 16 ran at 0.2 TB/s). A template parameter, not a
    // run-time test: the test's registers slowed h by a fifth.
    static_assert(!VECW || R % 4 == 0, "lora_rowdot_t: float4 loads of W need R % 4 == 0");
    // The loop runs while any lane of the warp has a k (the shuffles need
    // all 32); a lane past K loads and adds nothing, as if it had left.
    for (i64 k = threadIdx.x; k - lane < K; k += AHEAD * step) {
        const float* xk = xt + k;
        const float* wk = W + k * wsi;
        float w[AHEAD][R], v[AHEAD][ROWS];
#pragma unroll
        for (int s = 0; s < AHEAD; s++) {
            const bool in = k + s * step < K;
            if (VECW) {
#pragma unroll
                for (int j = 0; j < R; j += 4) {
                    const float4 w4 = in ? *reinterpret_cast<const float4*>(wk + s * sw + j) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                    w[s][j] = w4.x, w[s][j + 1] = w4.y, w[s][j + 2] = w4.z, w[s][j + 3] = w4.w;
                }
            } else {
#pragma unroll
                for (int j = 0; j < R; j++) w[s][j] = in && j < r ? wk[j * wsju + s * sw] : 0.0f;
            }
#pragma unroll
            for (int q = 0; q < ROWS; q++) v[s][q] = in && t0 + q < T ? xk[q * Ku + s * (unsigned int)step] : 0.0f;
        }
        if (shared) {
            // Dropout with K % 4 == 0: lanes 4m .. 4m+3 hold the four k of
            // one dropout group in every row, so lane 4m+q hashes row q's
            // group and the four lanes share the ROWS hashes by shuffles (a
            // quarter of the hashes, which set this loop's pace: v23).
            const u64 i0 = (u64)(t0 * K + k);  // the flat index of (t0, k)
#pragma unroll
            for (int s = 0; s < AHEAD; s++) {
                const u64 hm = dropout_hash(seed, i0 + ((lane & 3) % ROWS) * Ku + s * (unsigned int)step);
#pragma unroll
                for (int q = 0; q < ROWS; q++) {
                    const u64 h = __shfl_sync(0xffffffffu, hm, (lane & ~3) | q);
                    v[s][q] = dropout_field(h, (u64)(k + s * step)) >= thr ? __fmul_rn(v[s][q], ks) : 0.0f;
                }
            }
        } else if (p > 0.0f) {
            const i64 i0 = t0 * K + k;
#pragma unroll
            for (int s = 0; s < AHEAD; s++)
#pragma unroll
                for (int q = 0; q < ROWS; q++) v[s][q] = lora_drop(v[s][q], seed, i0 + q * Ku + s * (unsigned int)step, p, thr, ks);
        }
#pragma unroll
        for (int s = 0; s < AHEAD; s++) {
            if (k + s * step >= K) break;
#pragma unroll
            for (int q = 0; q < ROWS; q++)
                if (t0 + q < T) {
#pragma unroll
                    for (int j = 0; j < R; j++) acc[q][j] = __fadd_rn(acc[q][j], __fmul_rn(v[s][q], w[s][j]));
                }
        }
    }
    lora_rowdot_sum<R, ROWS>(acc, y, t0, T, r);
}

// lora_coldot_nb: the tokens whose loads a thread issues together
// (scripts/bench/coldot, v24, H200: 8, 16 and 32 take 3.80, 4.01 and 4.35 ms
// a Phi-3-mini step: more tokens a batch cost registers, hence warps).
constexpr int lora_coldot_nb = 8;

// lora_coldot_partial8 / 16 (and _s): part [nchunks,r,K], part[c,j,k] =
// sum over the tokens t of chunk c (c*tc .. min(T,(c+1)*tc)-1, tc <= 64)
// of a[t,j] * xd[t,k], in token order, for r <= 8 / 16. Grid
// (ceil(K/256), nchunks), 256 threads, one column k a thread; the chunk's
// rows of a sit in shared memory, padded to R with zeros.
// A thread loads NB tokens' values, then adds them. v24 rewrote it (v23's
// kernel: 0.3-0.9 TB/s on an H200, 12 ms of a float16 or TF32 step; now
// 3.8 ms, scripts/bench/coldot, the same bits) in three ways:
//   - R a template parameter and a's rows padded to it: no per-rank
//     predicates, a's values read as float4s;
//   - the offsets within a batch 32-bit (the host checks tc * K < 2^31):
//     with both, 40 registers instead of 80, twice the warps an SM;
//   - the _s entry points (SHARED: dropout and K % 4 == 0, the host's
//     choice): lanes 4m .. 4m+3 hold the four k of one dropout group in
//     every token, so lane 4m+q hashes the tokens q, q+4, ... of the batch
//     and the four share the hashes by shuffles (a quarter of the hashes,
//     the same keep decisions; GradA went from 46 to 10 us at K 3,072), as
//     lora_rowdot8 does. Lanes past K stay in the loop for the shuffles
//     and load nothing.
// TestColdot repeats these sums on the host, bit for bit.
template <int R, bool SHARED, int NB>
__device__ __forceinline__ void lora_coldot_t(float* part, const float* a, const float* x, i64 T, i64 K, i64 r, i64 tc,
                                              u64 seed, double p_d, u64 thr, double ks_d) {
    __shared__ __align__(16) float as[64 * R];
    const float p = (float)p_d, ks = (float)ks_d;
    const i64 c = blockIdx.y, t0 = c * tc, t1 = min(T, t0 + tc);
    const int nt = (int)(t1 - t0), rr = (int)r;
    for (int e = threadIdx.x; e < nt * R; e += blockDim.x) {
        const int u = e / R, j = e % R;
        as[e] = j < rr ? a[(t0 + u) * r + j] : 0.0f;
    }
    __syncthreads();
    const i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    const bool in = k < K;
    const int lane = threadIdx.x & 31;
    const unsigned int Ku = (unsigned int)K;
    float acc[R];
#pragma unroll
    for (int j = 0; j < R; j++) acc[j] = 0.0f;
    for (int tb = 0; tb < nt; tb += NB) {
        const i64 i0 = (t0 + tb) * K + k;  // the flat index of (t0 + tb, k)
        const float* xp = x + i0;
        float v[NB];
#pragma unroll
        for (int u = 0; u < NB; u++) v[u] = in && tb + u < nt ? xp[u * Ku] : 0.0f;
        if (SHARED) {
            u64 hm[NB / 4];
#pragma unroll
            for (int i = 0; i < NB / 4; i++) hm[i] = dropout_hash(seed, (u64)i0 + (4 * i + (lane & 3)) * Ku);
#pragma unroll
            for (int u = 0; u < NB; u++) {
                const u64 h = __shfl_sync(0xffffffffu, hm[u / 4], (lane & ~3) | (u & 3));
                v[u] = dropout_field(h, (u64)k) >= thr ? __fmul_rn(v[u], ks) : 0.0f;
            }
        } else if (p > 0.0f) {
#pragma unroll
            for (int u = 0; u < NB; u++) v[u] = lora_drop(v[u], seed, i0 + u * Ku, p, thr, ks);
        }
#pragma unroll
        for (int u = 0; u < NB; u++) {
            if (tb + u >= nt) break;
            const float4* at = reinterpret_cast<const float4*>(as + (tb + u) * R);
#pragma unroll
            for (int q = 0; q < R / 4; q++) {
                const float4 w = at[q];
                acc[4 * q + 0] = __fadd_rn(acc[4 * q + 0], __fmul_rn(w.x, v[u]));
                acc[4 * q + 1] = __fadd_rn(acc[4 * q + 1], __fmul_rn(w.y, v[u]));
                acc[4 * q + 2] = __fadd_rn(acc[4 * q + 2], __fmul_rn(w.z, v[u]));
                acc[4 * q + 3] = __fadd_rn(acc[4 * q + 3], __fmul_rn(w.w, v[u]));
            }
        }
    }
    if (!in) return;
#pragma unroll
    for (int j = 0; j < R; j++)
        if (j < rr) part[(c * r + j) * K + k] = acc[j];
}

// lora_coldot_finish: G(j,k) += scale * sum_c part[c,j,k] (chunks in
// order) with G(j,k) = G[j*gsj + k*gsk] (GradA [r,K]: gsj = K, gsk = 1;
// GradB [K,r]: gsj = 1, gsk = r), or with acc 0, G(j,k) = 0 + scale *
// sum. Grid (ceil(K/256), r).
__device__ __forceinline__ void lora_coldot_finish_t(float* G, const float* part, i64 nchunks, i64 K, i64 r, i64 gsj,
                                                     i64 gsk, double scale_d, i64 acc) {
    float scale = (float)scale_d;
    i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    i64 j = blockIdx.y;
    if (k >= K) return;
    // 32 chunks' loads go out before their adds (v24: a Phi-3-mini step's
    // 32 chunks in one round trip); the sum is in chunk order as before.
    float s = 0.0f;
    const float* pk = part + j * K + k;
    const i64 cs = r * K;
    i64 c = 0;
    for (; c + 32 <= nchunks; c += 32) {
        float v[32];
#pragma unroll
        for (int u = 0; u < 32; u++) v[u] = pk[(c + u) * cs];
#pragma unroll
        for (int u = 0; u < 32; u++) s = __fadd_rn(s, v[u]);
    }
    for (; c < nchunks; c++) s = __fadd_rn(s, pk[c * cs]);
    float* g = G + j * gsj + k * gsk;
    // acc 0 (G a pending Zero, lazy zeroing): G is not read; adding to a
    // literal 0 keeps the bits of adding to the zeros (-0 becomes +0).
    *g = __fadd_rn(acc ? *g : 0.0f, __fmul_rn(scale, s));
}
