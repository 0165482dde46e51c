// Skinny bfloat16 GEMMs (one dimension r <= 8, the LoRA's rank): float32
// results, read-once memory-bound products that cuBLAS runs at a fraction
// of the bandwidth. Both kernels use the tensor cores
// (mma.sync.m16n8k16 bf16 -> f32) with a zero accumulator input, and add
// each MMA's result into float32 registers with IEEE adds (round to
// nearest), so the accumulation is float32 throughout: a chain of at most
// 16 exact products inside the MMA, then ordinary float32 sums. The order is
// fixed (no atomics on the values): per warp, then the block's 4 warps in
// order, then the launch's splits (gridDim.y) in order, summed by the last
// block of each tile to finish (a counter per tile, reset by that block).
//
//   skinny_rows: C[m,j] = alpha * sum_k Y[m,k] W(k,j) + beta C[m,j]; Y [M,K]
//   (the big operand, row stride ldy), W(k,j) = W[j*ldw + k] (wtrans) or
//   W[k*ldw + j]; j < n <= 8. h = x . A^T and g = dout . B.
//   skinny_tall: C(c,j) = alpha * sum_t Y[t,c] S[t,j] + beta C(c,j); Y [T,N]
//   (row stride ldy), S [T,n] (row stride lds), C(c,j) at C[c*cn + j*cj].
//   GradB += s dout^T . h (cn = ldc, cj = 1) and GradA += s g^T . x (cn =
//   1, cj = ldc).
//
// The host (skinny.go) checks the 16-byte alignment of Y, W (rows) and
// their strides, K % 8 == 0 (rows) and N % 8 == 0 (tall).
#include "common.cuh"

#define SK_WARPS 4
#define SK_WSTR 160  // bf16 per row of the transposed W chunk (128 + 32: rows 64 bytes apart mod 128)

__device__ __forceinline__ void sk_mma(float d[4], unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0,
                                       unsigned b1) {
    const float z = 0.0f;
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(z), "f"(z), "f"(z), "f"(z));
}

__device__ __forceinline__ uint4 sk_ld16(const bf16_t* p) { return __ldg((const uint4*)p); }

__device__ __forceinline__ unsigned sk_word(const uint4& v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// sk_splits combines the launch's splits: every block stores its R*128
// values (thread t holds elements t + 128*r) to part[split][tile][...];
// the last block of the tile to finish sums them in split order into v and
// returns true (it writes C); the others return false. fence 1: every
// thread's __threadfence before thread 0's atomic (the CUDA samples'
// pattern); 0: the barrier, then thread 0's acq_rel atomic (CUTLASS's
// semaphore: the release is cumulative over the barrier).
template <int R>
__device__ __forceinline__ bool sk_splits(float (&v)[R], float* part, unsigned* cnt, i64 fence) {
    const int S = gridDim.y;
    if (S == 1) return true;
    const i64 E = (i64)R * 128;
    float* mine = part + ((i64)blockIdx.y * gridDim.x + blockIdx.x) * E;
#pragma unroll
    for (int r = 0; r < R; r++) mine[threadIdx.x + 128 * r] = v[r];
    if (fence) __threadfence();
    __syncthreads();
    __shared__ int last;
    if (threadIdx.x == 0) {
        unsigned prev;
        if (fence) {
            prev = atomicAdd(cnt + blockIdx.x, 1u);
        } else {
            asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(prev) : "l"(cnt + blockIdx.x) : "memory");
        }
        last = prev == (unsigned)(S - 1);
    }
    __syncthreads();
    if (!last) return false;
    if (fence) __threadfence();
    // Split-major loads (R at a time, 4 splits unrolled): few round trips.
    const float* base = part + (i64)blockIdx.x * E + threadIdx.x;
    const i64 stride = (i64)gridDim.x * E;
#pragma unroll
    for (int r = 0; r < R; r++) v[r] = 0.0f;
#pragma unroll 4
    for (int q = 0; q < S; q++) {
#pragma unroll
        for (int r = 0; r < R; r++) v[r] += __ldcg(base + q * stride + 128 * r);
    }
    if (threadIdx.x == 0) cnt[blockIdx.x] = 0;
    return true;
}

// sk_out is alpha v + beta c (c not read when beta is 0).
__device__ __forceinline__ float sk_out(float v, float c, float alpha, float beta) {
    const float o = alpha * v;
    return beta != 0.0f ? fmaf(beta, c, o) : o;
}

// skinny_rows: grid (ceil(M/16), splits), 128 threads. Block (x, y) takes
// rows 16x .. 16x+15; its warp w the k range [(4y+w)*KW, +KW) (KW a
// multiple of 128), 128 k an iteration: each lane loads 16 bytes of row g
// and of row g+8 per 32 k (the MMA's k slots 2c, 2c+1, 2c+8, 2c+9 stand for
// k 8c .. 8c+3, then 8c+4 .. 8c+7 in a second MMA), and W's matching 8
// values of column g (16 bytes from global when wtrans, else through a
// transposed chunk in shared memory).
extern "C" __global__ void __launch_bounds__(128) skinny_rows(float* C, const bf16_t* Y, const bf16_t* W, float* part,
                                                            unsigned* cnt, i64 M, i64 K, i64 n, i64 ldy, i64 ldw,
                                                            i64 wtrans, i64 ldc, i64 KW, double alpha_, double beta_,
                                                            i64 fence) {
    __shared__ __align__(16) bf16_t wsm[SK_WARPS][8 * SK_WSTR];
    __shared__ float red[SK_WARPS][128];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const i64 r0 = (i64)blockIdx.x * 16 + g, r1 = r0 + 8;
    const bool ok0 = r0 < M, ok1 = r1 < M;
    const bf16_t* y0 = Y + (ok0 ? r0 : 0) * ldy;
    const bf16_t* y1 = Y + (ok1 ? r1 : 0) * ldy;
    const bf16_t* wg = W + (g < n ? g : 0) * ldw;  // wtrans: W's row of column g
    const bool okg = g < n;
    const i64 k0 = ((i64)blockIdx.y * SK_WARPS + w) * KW;
    bf16_t* ws = wsm[w];
    const uint4 z = make_uint4(0, 0, 0, 0);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    // C's old value (beta != 0) is read now, off the critical path.
    const float alpha = (float)alpha_, beta = (float)beta_;
    const i64 orow = (i64)blockIdx.x * 16 + (threadIdx.x >> 3);
    const int oj = threadIdx.x & 7;
    const bool ook = orow < M && oj < n;
    const float cold = (beta != 0.0f && ook) ? C[orow * ldc + oj] : 0.0f;
    for (i64 kb = k0; kb < k0 + KW && kb < K; kb += 128) {
        uint4 u0[4], u1[4], wf[4], wr[4];
#pragma unroll
        for (int ch = 0; ch < 4; ch++) {
            const i64 k = kb + 32 * ch + 8 * c;
            const bool okk = k < K;
            u0[ch] = (ok0 && okk) ? sk_ld16(y0 + k) : z;
            u1[ch] = (ok1 && okk) ? sk_ld16(y1 + k) : z;
            if (wtrans) {
                wf[ch] = (okg && okk) ? sk_ld16(wg + k) : z;
            } else {
                const i64 kr = kb + lane + 32 * ch;
                wr[ch] = kr < K ? sk_ld16(W + kr * ldw) : z;
            }
        }
        if (!wtrans) {
            __syncwarp();  // the previous iteration's reads of ws are done
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const int kk = lane + 32 * q;
#pragma unroll
                for (int j2 = 0; j2 < 4; j2++) {
                    const unsigned v = sk_word(wr[q], j2);
                    ws[(2 * j2) * SK_WSTR + kk] = (bf16_t)(v & 0xffffu);
                    ws[(2 * j2 + 1) * SK_WSTR + kk] = (bf16_t)(v >> 16);
                }
            }
            __syncwarp();
#pragma unroll
            for (int ch = 0; ch < 4; ch++) wf[ch] = *(const uint4*)(ws + g * SK_WSTR + 32 * ch + 8 * c);
        }
#pragma unroll
        for (int ch = 0; ch < 4; ch++) {
            float d[4];
            sk_mma(d, u0[ch].x, u1[ch].x, u0[ch].y, u1[ch].y, wf[ch].x, wf[ch].y);
#pragma unroll
            for (int q = 0; q < 4; q++) acc[q] += d[q];
            sk_mma(d, u0[ch].z, u1[ch].z, u0[ch].w, u1[ch].w, wf[ch].z, wf[ch].w);
#pragma unroll
            for (int q = 0; q < 4; q++) acc[q] += d[q];
        }
    }
    // acc: (row g, j 2c), (g, 2c+1), (g+8, 2c), (g+8, 2c+1); element e = row*8 + j.
    red[w][g * 8 + 2 * c] = acc[0];
    red[w][g * 8 + 2 * c + 1] = acc[1];
    red[w][(g + 8) * 8 + 2 * c] = acc[2];
    red[w][(g + 8) * 8 + 2 * c + 1] = acc[3];
    __syncthreads();
    float v[1];
    v[0] = red[0][threadIdx.x];
#pragma unroll
    for (int q = 1; q < SK_WARPS; q++) v[0] += red[q][threadIdx.x];
    if (!sk_splits<1>(v, part, cnt, fence)) return;
    if (ook) C[orow * ldc + oj] = sk_out(v[0], cold, alpha, beta);
}

// skinny_tall: grid (ceil(N/128), splits), 128 threads. Block (x, y) takes
// columns 128x .. 128x+127; its warp w the rows t in [(4y+w)*TW, +TW) (TW a
// multiple of 32), 16 t an MMA step. The MMA's row m is a column of Y (m <
// 8: 128x + 8m + i, else 128x + 64 + 8(m-8) + i for the step's i-th MMA, i
// < 8), its k slot k the row t0 + k, its column j: lane (g, c) loads 16
// bytes (8 columns) of Y at columns 128x + 8g and 128x + 64 + 8g from rows
// 2c, 2c+1, 2c+8, 2c+9 and pairs the rows' values with byte permutes.
extern "C" __global__ void __launch_bounds__(128) skinny_tall(float* C, const bf16_t* Y, const bf16_t* Sm, float* part,
                                                            unsigned* cnt, i64 T, i64 N, i64 n, i64 ldy, i64 lds,
                                                            i64 cn, i64 cj, i64 TW, double alpha_, double beta_,
                                                            i64 fence) {
    __shared__ float red[SK_WARPS][1024];
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const i64 col0 = (i64)blockIdx.x * 128;
    const i64 ca = col0 + 8 * g, cb = col0 + 64 + 8 * g;
    const bool okA = ca < N, okB = cb < N, okg = g < n;
    const i64 t0 = ((i64)blockIdx.y * SK_WARPS + w) * TW;
    const uint4 z = make_uint4(0, 0, 0, 0);
    float acc[8][4];
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
    // Thread t finishes elements t + 128r in C's order: j-major where
    // columns are contiguous (cn == 1), else column-major. C's old values
    // (beta != 0) are read now, off the critical path.
    const float alpha = (float)alpha_, beta = (float)beta_;
    const bool jmajor = cn == 1;
    float cold[8];
#pragma unroll
    for (int r = 0; r < 8; r++) {
        const int eo = threadIdx.x + 128 * r;
        const int lc = jmajor ? (eo & 127) : (eo >> 3), j = jmajor ? (eo >> 7) : (eo & 7);
        const i64 col = col0 + lc;
        cold[r] = (beta != 0.0f && col < N && j < n) ? C[col * cn + j * cj] : 0.0f;
    }
    for (i64 tb = t0; tb < t0 + TW && tb < T; tb += 32) {
        uint4 ya[2][4], yb[2][4];
        unsigned sv[2][4];
#pragma unroll
        for (int h = 0; h < 2; h++) {
#pragma unroll
            for (int q = 0; q < 4; q++) {
                const i64 t = tb + 16 * h + 2 * c + (q & 1) + 8 * (q >> 1);
                const bool okt = t < T;
                const bf16_t* row = Y + (okt ? t : 0) * ldy;
                ya[h][q] = (okt && okA) ? sk_ld16(row + ca) : z;
                yb[h][q] = (okt && okB) ? sk_ld16(row + cb) : z;
                sv[h][q] = (okt && okg) ? (unsigned)__ldg(Sm + t * lds + g) : 0u;
            }
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const unsigned b0 = sv[h][0] | (sv[h][1] << 16), b1 = sv[h][2] | (sv[h][3] << 16);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const unsigned sel = (i & 1) ? 0x7632u : 0x5410u;
                const unsigned a0 = __byte_perm(sk_word(ya[h][0], i >> 1), sk_word(ya[h][1], i >> 1), sel);
                const unsigned a1 = __byte_perm(sk_word(yb[h][0], i >> 1), sk_word(yb[h][1], i >> 1), sel);
                const unsigned a2 = __byte_perm(sk_word(ya[h][2], i >> 1), sk_word(ya[h][3], i >> 1), sel);
                const unsigned a3 = __byte_perm(sk_word(yb[h][2], i >> 1), sk_word(yb[h][3], i >> 1), sel);
                float d[4];
                sk_mma(d, a0, a1, a2, a3, b0, b1);
#pragma unroll
                for (int q = 0; q < 4; q++) acc[i][q] += d[q];
            }
        }
    }
    // acc[i]: (column ca+i, j 2c), (ca+i, 2c+1), (cb+i, 2c), (cb+i, 2c+1);
    // element e = local column * 8 + j.
#pragma unroll
    for (int i = 0; i < 8; i++) {
        red[w][(8 * g + i) * 8 + 2 * c] = acc[i][0];
        red[w][(8 * g + i) * 8 + 2 * c + 1] = acc[i][1];
        red[w][(64 + 8 * g + i) * 8 + 2 * c] = acc[i][2];
        red[w][(64 + 8 * g + i) * 8 + 2 * c + 1] = acc[i][3];
    }
    __syncthreads();
    float v[8];
#pragma unroll
    for (int r = 0; r < 8; r++) {
        const int eo = threadIdx.x + 128 * r;
        const int lc = jmajor ? (eo & 127) : (eo >> 3), j = jmajor ? (eo >> 7) : (eo & 7);
        float s = red[0][lc * 8 + j];
#pragma unroll
        for (int q = 1; q < SK_WARPS; q++) s += red[q][lc * 8 + j];
        v[r] = s;
    }
    if (!sk_splits<8>(v, part, cnt, fence)) return;
#pragma unroll
    for (int r = 0; r < 8; r++) {
        const int eo = threadIdx.x + 128 * r;
        const int lc = jmajor ? (eo & 127) : (eo >> 3), j = jmajor ? (eo >> 7) : (eo & 7);
        const i64 col = col0 + lc;
        if (col < N && j < n) C[col * cn + j * cj] = sk_out(v[r], cold[r], alpha, beta);
    }
}
