// attention_tc.cuh: the bodies of attention_tc.cu's kernels and of
// attention_tc_rp.cu's (two modules: one PTX file would pass 2 MiB).
//
// Attention for short rows (S <= 64 tokens, head dimension D <= 128) on the
// tensor cores under BF16 compute (v8): like the linears there, every
// matrix product takes bfloat16 operands and sums in float32 (mma.sync
// m16n8k16), which is what the reference stack does (bitsandbytes' bf16
// compute, PyTorch's bf16 attention). The softmax, log-sum-exp, di and dS
// stay float32. The rounding points, which the tests emulate:
//   forward:  s = bf16(q) . bf16(k) * scale;  p = softmax(s);
//             o = sum_j bf16(p_j) bf16(v_j)
//   backward: p = exp(bf16(q) . bf16(k) * scale - lse);
//             dp = bf16(dO) . bf16(v);  ds = p (dp - di) scale;
//             dV = sum_i bf16(p_i) bf16(dO_i);  dK = sum_i bf16(ds_i) bf16(q_i);
//             dQ = sum_j bf16(ds_j) bf16(k_j);  di = rowsum(dO * O) (float32)
// Float32 compute keeps attention.cu's kernels (the CPU reference's
// numerics to 1e-5).
//
// One block of 8 warps per (head, row) in the forward, per (KV head, row)
// in the backward. The operands (Q, K, V, dO: 64 rows of D floats) are read
// once, rounded, and kept in shared memory as bfloat16, zero past S rows
// and D columns; fragments come from there through ldmatrix. Warp w works on
// the 16-row band a (w & 3, or 3 - (w & 3) for warps 4..7, so that warps w
// and w + 4, which share a scheduler, get bands a and 3 - a and the causal
// triangle's work evens out) and half hb = w >> 2: of the keys (32hb..
// 32hb+31) in score-like products, of the head's column tiles in value-like
// ones. Tiles wholly above the causal diagonal are skipped.
//
// mma.m16n8k16 fragments (g = lane / 4, t = lane % 4; each register holds
// two bfloat16, the lower column first): A (16 x 16, row) a0 (g, 2t..2t+1),
// a1 (g + 8, 2t..), a2 (g, 2t + 8..), a3 (g + 8, 2t + 8..); B (16 x 8, col)
// b0 (k 2t..2t+1, n g), b1 (k 2t + 8.., n g); C (16 x 8) c0 (g, 2t),
// c1 (g, 2t + 1), c2 (g + 8, 2t), c3 (g + 8, 2t + 1).
#pragma once
#include "common.cuh"
#include "attention.cuh"

#define AB_THREADS 256
#define AB_S 64    // rows of a tile: S <= 64
#define AB_LDP 72  // row stride (bfloat16) of the P and dS tiles [64][64]

// ab_d16 is D rounded up to a k-step of 16; ab_ld the row stride of Q, K,
// V, dO in bfloat16: D16 + 8, an odd number of 16-byte units, so that the 8
// rows an ldmatrix reads fall in 8 different bank groups (AB_LDP likewise).
__host__ __device__ __forceinline__ int ab_d16(int D) { return (D + 15) & ~15; }
__host__ __device__ __forceinline__ int ab_ld(int D) { return ab_d16(D) + 8; }

__device__ __forceinline__ void ab_mma(float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ab_ldsm loads four 8 x 8 bfloat16 matrices; lane l gives the address of
// row l % 8 of matrix l / 8 and gets, of matrix q, register q = (row g,
// columns 2t, 2t+1), or with trans (row 2t and 2t+1, column g).
template <bool trans>
__device__ __forceinline__ void ab_ldsm(unsigned r[4], const bf16_t* p) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(p);
    if (trans)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a)
                     : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a)
                     : "memory");
}

// ab_frag_a: the A fragment of rows r0..r0+15, columns c0..c0+15 of M
// (row-major, stride ld), or with trans of M^T (A[m][k] = M[k][m]: rows
// r0.. of A are columns of M).
template <bool trans>
__device__ __forceinline__ void ab_frag_a(unsigned a[4], const bf16_t* M, int ld, int r0, int c0, int lane) {
    const int q = lane >> 3, r = lane & 7;
    if (trans)  // matrices (k, m): (0, 0), (0, 8), (8, 0), (8, 8)
        ab_ldsm<true>(a, M + (c0 + r + 8 * (q >> 1)) * ld + r0 + 8 * (q & 1));
    else  // matrices (m, k): (0, 0), (8, 0), (0, 8), (8, 8)
        ab_ldsm<false>(a, M + (r0 + r + 8 * (q & 1)) * ld + c0 + 8 * (q >> 1));
}

// ab_frag_b2: the B fragments of two column tiles n0.. and n0+8.. over
// k0..k0+15: b[0], b[1] for the first, b[2], b[3] for the second. nmajor:
// B[k][n] = M[n][k] (K in Q K^T); else B[k][n] = M[k][n] (V in P V).
template <bool nmajor>
__device__ __forceinline__ void ab_frag_b2(unsigned b[4], const bf16_t* M, int ld, int k0, int n0, int lane) {
    const int q = lane >> 3, r = lane & 7;
    if (nmajor)  // matrices (n, k): (0, 0), (0, 8), (8, 0), (8, 8)
        ab_ldsm<false>(b, M + (n0 + r + 8 * (q >> 1)) * ld + k0 + 8 * (q & 1));
    else  // matrices (k, n): (0, 0), (8, 0), (0, 8), (8, 8)
        ab_ldsm<true>(b, M + (k0 + r + 8 * (q & 1)) * ld + n0 + 8 * (q >> 1));
}

// ab_ld4 / ab_ld1 read 4 values / 1 value of a float32 row or (TS bf16_t,
// v9: qkv held in bfloat16, Tensor.half) a bfloat16 one, as float32.
__device__ __forceinline__ float4 ab_ld4(const float* p) { return *(const float4*)p; }
__device__ __forceinline__ float4 ab_ld4(const bf16_t* p) { return bf16x4_to_f32(*(const uint2*)p); }
__device__ __forceinline__ float ab_ld1(const float* p) { return *p; }
__device__ __forceinline__ float ab_ld1(const bf16_t* p) { return bf16_to_f32(*p); }

// ab_load: dst[i*ld + d] = bf16(src[i*stride + d]) for i < 64, d < D16,
// zero where i >= S or d >= D (no garbage may meet a zero weight). With v4
// (D, src and stride multiples of 4 values) the loads are 16 bytes wide (8
// for a bfloat16 src).
template <typename TS>
__device__ __forceinline__ void ab_load(bf16_t* dst, int ld, const TS* src, i64 stride, int S, int D, int D16,
                                        bool v4) {
    if (v4) {
        const int n4 = D16 >> 2;
#pragma unroll 4
        for (int x = threadIdx.x; x < AB_S * n4; x += AB_THREADS) {
            const int i = x / n4, c = 4 * (x - i * n4);
            float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (i < S && c < D) v = ab_ld4(src + (i64)i * stride + c);
            *(uint2*)&dst[i * ld + c] = make_uint2(bf16x2_rn(v.x, v.y), bf16x2_rn(v.z, v.w));
        }
        return;
    }
    const int n2 = D16 >> 1;
#pragma unroll 4
    for (int x = threadIdx.x; x < AB_S * n2; x += AB_THREADS) {
        const int i = x / n2, c = 2 * (x - i * n2);
        const TS* s = src + (i64)i * stride + c;
        const float x0 = i < S && c < D ? ab_ld1(s) : 0.0f, x1 = i < S && c + 1 < D ? ab_ld1(s + 1) : 0.0f;
        *(unsigned*)&dst[i * ld + c] = bf16x2_rn(x0, x1);
    }
}

// RoPE fused into the kernels (v8, finetune.RoPEAttentioner): with half >
// 0, q and k arrive before RoPE and are rotated as they are loaded, pairs
// (d, d + half) for d < half by the token's (cos, sin) of cs [T][half]
// (rope_apply's table and arithmetic, so the same bits), and the backward
// rotates dQ and dK back before it stores them (rope_apply's inverse).
// One KV head a query head only (the Go side checks): dK is then final
// when it is stored.
__device__ __forceinline__ void ab_rope(float& y1, float& y2, float x1, float x2, float2 cs, bool inverse) {
    if (inverse) {
        y1 = __fadd_rn(__fmul_rn(x1, cs.x), __fmul_rn(x2, cs.y));
        y2 = __fsub_rn(__fmul_rn(x2, cs.x), __fmul_rn(x1, cs.y));
    } else {
        y1 = __fsub_rn(__fmul_rn(x1, cs.x), __fmul_rn(x2, cs.y));
        y2 = __fadd_rn(__fmul_rn(x2, cs.x), __fmul_rn(x1, cs.y));
    }
}

// ab_load_rope is ab_load with RoPE on the first 2 half columns; cs is the
// row's table (its token 0). v4 needs half a multiple of 4 too: a thread
// then takes 4 pairs (columns c.. and c + half..) or 4 columns past the
// rotated ones, so that no lane idles.
template <bool SPEC = false, typename TS>
__device__ __forceinline__ void ab_load_rope(bf16_t* dst, int ld, const TS* src, i64 stride, int S, int D, int D16,
                                             bool v4, const float2* cs, int half) {
    if (SPEC || v4 && (half & 3) == 0) {  // SPEC (v11): the caller checked, and the other path is not compiled
        const int h4 = half >> 2, n4 = h4 + ((D16 - 2 * half) >> 2);
#pragma unroll 3
        for (int x = threadIdx.x; x < AB_S * n4; x += AB_THREADS) {
            const int i = x / n4, k = x - i * n4;
            if (k < h4) {
                const int c = 4 * k;
                float4 y = make_float4(0.0f, 0.0f, 0.0f, 0.0f), z = y;
                if (i < S) {
                    const float4 v = ab_ld4(src + (i64)i * stride + c);
                    const float4 u = ab_ld4(src + (i64)i * stride + c + half);
                    const float4 ca = *(const float4*)&cs[i * half + c], cb = *(const float4*)&cs[i * half + c + 2];
                    ab_rope(y.x, z.x, v.x, u.x, make_float2(ca.x, ca.y), false);
                    ab_rope(y.y, z.y, v.y, u.y, make_float2(ca.z, ca.w), false);
                    ab_rope(y.z, z.z, v.z, u.z, make_float2(cb.x, cb.y), false);
                    ab_rope(y.w, z.w, v.w, u.w, make_float2(cb.z, cb.w), false);
                }
                *(uint2*)&dst[i * ld + c] = make_uint2(bf16x2_rn(y.x, y.y), bf16x2_rn(y.z, y.w));
                *(uint2*)&dst[i * ld + c + half] = make_uint2(bf16x2_rn(z.x, z.y), bf16x2_rn(z.z, z.w));
            } else {
                const int c = 2 * half + 4 * (k - h4);
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (i < S && c < D) v = ab_ld4(src + (i64)i * stride + c);
                *(uint2*)&dst[i * ld + c] = make_uint2(bf16x2_rn(v.x, v.y), bf16x2_rn(v.z, v.w));
            }
        }
    } else {
        for (int x = threadIdx.x; x < AB_S * D16; x += AB_THREADS) {
            const int i = x / D16, c = x - i * D16;
            if (c >= half && c < 2 * half) continue;
            const bool live = i < S && c < D;
            const float v = live ? ab_ld1(src + (i64)i * stride + c) : 0.0f;
            if (c < half) {
                float y = 0.0f, z = 0.0f;
                if (live) ab_rope(y, z, v, ab_ld1(src + (i64)i * stride + c + half), cs[i * half + c], false);
                dst[i * ld + c] = f32_to_bf16(y);
                dst[i * ld + c + half] = f32_to_bf16(z);
            } else {
                dst[i * ld + c] = f32_to_bf16(v);
            }
        }
    }
}

// ab_copy_cs starts copying the row's table cs [S][half] into csS
// (16-byte copies where half is even, else 4-byte ones).
__device__ __forceinline__ void ab_copy_cs(float2* csS, const float2* cs, int S, int half) {
    if ((half & 1) == 0) {
        for (int x = threadIdx.x; x < S * half / 2; x += AB_THREADS)
            cp_async16((float*)&csS[2 * x], (const float*)&cs[2 * x]);
    } else {
        for (int x = threadIdx.x; x < 2 * S * half; x += AB_THREADS)
            cp_async4((float*)csS + x, (const float*)cs + x);
    }
    cp_commit();
}

// ab_put_x writes the warp's accumulators (rows r0 + g (+8), columns
// 8(n0 + n) + 2t (+1)) into X [64][ldx] float.
__device__ __forceinline__ void ab_put_x(float* X, int ldx, const float acc[][4], int r0, int n0, int n1, int g, int t) {
#pragma unroll
    for (int n = 0; n < 8; n++) {
        if (n0 + n >= n1) break;
        const int d = 8 * (n0 + n) + 2 * t;
        *(float2*)&X[(r0 + g) * ldx + d] = make_float2(acc[n][0], acc[n][1]);
        *(float2*)&X[(r0 + g + 8) * ldx + d] = make_float2(acc[n][2], acc[n][3]);
    }
}

// ab_st stores v at p (add: adds it to *p), into a float32 or (v9: dqkv
// held in bfloat16, Tensor.half) a bfloat16 element; a bfloat16 element is
// f32_to_bf16 of the float32 result (the host asks for one only where the
// kernel overwrites: add is then never true). ab_st2 stores v0, v1 at p,
// p + 1: one 4-byte store of the pair for bfloat16 (p even).
__device__ __forceinline__ void ab_st(float* p, float v, bool add) { *p = add ? __fadd_rn(*p, v) : v; }
__device__ __forceinline__ void ab_st(bf16_t* p, float v, bool add) {
    *p = f32_to_bf16(add ? __fadd_rn(bf16_to_f32(*p), v) : v);
}
__device__ __forceinline__ void ab_st2(float* p, float v0, float v1, bool add) {
    ab_st(p, v0, add);
    ab_st(p + 1, v1, add);
}
__device__ __forceinline__ void ab_st2(bf16_t* p, float v0, float v1, bool add) {
    if (add || ((size_t)p & 3) != 0) {
        ab_st(p, v0, add);
        ab_st(p + 1, v1, add);
    } else {
        *(unsigned*)p = (unsigned)f32_to_bf16(v0) | ((unsigned)f32_to_bf16(v1) << 16);
    }
}

// ab_store_rope: dst[i*stride + d] (add: +=) X[i][d] rotated back (pairs
// (d, d + half), d < half), i < S, d < D; the whole block, one column a
// thread in turn (coalesced).
template <bool add, typename TD>
__device__ __forceinline__ void ab_store_rope(TD* dst, i64 stride, const float* X, int ldx, int S, int D,
                                              const float2* cs, int half) {
    for (int x = threadIdx.x; x < S * D; x += AB_THREADS) {
        const int i = x / D, d = x - i * D;
        float y = X[i * ldx + d];
        if (d < 2 * half) {
            float y1, y2;
            const int e = d < half ? d : d - half;
            ab_rope(y1, y2, X[i * ldx + e], X[i * ldx + e + half], cs[i * half + e], true);
            y = d < half ? y1 : y2;
        }
        ab_st(dst + (i64)i * stride + d, y, add);
    }
}

// ab_store_pairs_rope: the register form of ab_store_rope where each
// lane holds both columns of its pairs: a1 the column tiles t0..t0+q-1 (of
// the first half), a2 the same tiles plus half / 8 (their partners).
template <bool add, typename TD>
__device__ __forceinline__ void ab_store_pairs_rope(TD* dst, i64 stride, const float a1[4][4], const float a2[4][4],
                                                    int r0, int t0, int q, int S, const float2* cs, int half, int g,
                                                    int t) {
#pragma unroll
    for (int n = 0; n < 4; n++) {
        if (n >= q) break;
#pragma unroll
        for (int e = 0; e < 4; e += 2) {  // columns d and d + 1 of row i
            const int i = r0 + g + 8 * (e >> 1), d = 8 * (t0 + n) + 2 * t;
            if (i >= S) continue;
            float y1, y2, z1, z2;
            ab_rope(y1, y2, a1[n][e], a2[n][e], cs[i * half + d], true);
            ab_rope(z1, z2, a1[n][e + 1], a2[n][e + 1], cs[i * half + d + 1], true);
            TD* p = dst + (i64)i * stride + d;
            ab_st2(p, y1, z1, add);
            ab_st2(p + half, y2, z2, add);
        }
    }
}

// ab_tiles is how many of the 4 key tiles 32hb + 8n (n < 4) hold a key that
// a query of rows r0..r0+15 may see: key <= query < S.
__device__ __forceinline__ int ab_tiles(int r0, int hb, int S) {
    const int last = min(r0 + 15, S - 1) - 32 * hb;  // the last visible key, relative
    return last < 0 ? 0 : min(4, last / 8 + 1);
}

// ab_half is warp half hb's column tiles [n0, n1) of the head's D16/8.
__device__ __forceinline__ void ab_half(int D16, int hb, int& n0, int& n1) {
    const int h0 = D16 >> 4;
    n0 = hb ? h0 : 0;
    n1 = hb ? 2 * h0 : h0;
}

#define AB_MAXNT 8  // column tiles of a half: D16 / 16 <= 8

__device__ __forceinline__ void ab_zero(float acc[][4], int n) {
#pragma unroll
    for (int k = 0; k < n; k++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[k][e] = 0.0f;
}

// ab_scores: acc[n] = the warp's 16 x 32 products A . B^T of rows r0.. of
// X with rows 32hb + 8n.. of Y (n < nt) over the head's D16 columns.
__device__ __forceinline__ void ab_scores(float acc[4][4], const bf16_t* X, const bf16_t* Y, int ld, int D16, int r0,
                                          int hb, int nt, int lane) {
    ab_zero(acc, 4);
    for (int kk = 0; kk < D16; kk += 16) {
        unsigned a[4], b[4];
        ab_frag_a<false>(a, X, ld, r0, kk, lane);
#pragma unroll
        for (int p = 0; p < 2; p++)
            if (2 * p < nt) {
                ab_frag_b2<true>(b, Y, ld, kk, 32 * hb + 16 * p, lane);
                ab_mma(acc[2 * p], a, b[0], b[1]);
                if (2 * p + 1 < nt) ab_mma(acc[2 * p + 1], a, b[2], b[3]);
            }
    }
}

// ab_wsum: acc[n - n0] = sum over k-steps kk in [k0, k1) (16 each) of A . B,
// A rows r0.. of W (trans: of W^T), B the column tiles n0..n1-1 of Y
// (B[k][n] = Y[k*ldy + n]).
template <bool trans, int maxnt>
__device__ __forceinline__ void ab_wsum(float (&acc)[maxnt][4], const bf16_t* W, int ldw, const bf16_t* Y, int ldy, int r0,
                                        int k0, int k1, int n0, int n1, int lane) {
    ab_zero(acc, maxnt);
    for (int kk = k0; kk < k1; kk++) {
        unsigned a[4], b[4];
        ab_frag_a<trans>(a, W, ldw, r0, 16 * kk, lane);
#pragma unroll
        for (int n = 0; n < maxnt; n += 2)
            if (n0 + n < n1) {
                ab_frag_b2<false>(b, Y, ldy, 16 * kk, 8 * (n0 + n), lane);
                ab_mma(acc[n], a, b[0], b[1]);
                if (n0 + n + 1 < n1) ab_mma(acc[n + 1], a, b[2], b[3]);
            }
    }
}

// ab_store writes (add: adds into) dst[i*stride + d] for the warp's
// accumulators: rows r0 + g (+8), columns 8(n0 + n) + 2t (+1), i < S, d < D.
template <bool add, typename TD>
__device__ __forceinline__ void ab_store(TD* dst, i64 stride, const float acc[AB_MAXNT][4], int r0, int n0, int n1,
                                         int S, int D, int g, int t) {
#pragma unroll
    for (int n = 0; n < AB_MAXNT; n++) {
        if (n0 + n >= n1) break;
#pragma unroll
        for (int e = 0; e < 4; e += 2) {  // columns d and d + 1 of row i
            const int i = r0 + g + 8 * (e >> 1), d = 8 * (n0 + n) + 2 * t;
            if (i < S && d < D) {
                TD* p = dst + (i64)i * stride + d;
                if (d + 1 < D)
                    ab_st2(p, acc[n][e], acc[n][e + 1], add);
                else
                    ab_st(p, acc[n][e], add);
            }
        }
    }
}

// ab_put writes the warp's 16 x 32 tile v (4 key tiles of C fragments),
// rounded to bfloat16, into R [64][AB_LDP] at rows r0.., columns 32hb...
__device__ __forceinline__ void ab_put(bf16_t* R, const float v[4][4], int r0, int hb, int g, int t) {
#pragma unroll
    for (int n = 0; n < 4; n++) {
        const int j = 32 * hb + 8 * n + 2 * t;
        *(unsigned*)&R[(r0 + g) * AB_LDP + j] = bf16x2_rn(v[n][0], v[n][1]);
        *(unsigned*)&R[(r0 + g + 8) * AB_LDP + j] = bf16x2_rn(v[n][2], v[n][3]);
    }
}

// The v20 loaders (issue 8; the _rp96v entry points: DC 96, a bfloat16
// qkv). attnfloor (scripts/bench/attnfloor) timed the forward's loads
// alone at 14.1 of its 24.7 us and the backward's loads and di at 25 of
// 50 us on an H200: each loader's loop waited for its own loads before the
// next loader issued any. The same values land in the same places, so the
// same bits (a NaN's payload aside: V's raw copy keeps it where rounding
// made it the canonical 0x7fff).
//
// ab_copy_v96 starts copying V's 64 rows of 96 bfloat16 into Vs with
// 16-byte cp.async (a bfloat16 source needs no rounding), zeros past S
// rows. The caller commits and waits. src and the row stride: 16-byte
// multiples (the host checks qkv's alignment; 96 values a head).
__device__ __forceinline__ void ab_copy_v96(bf16_t* Vs, int ld, const bf16_t* src, i64 stride, int S) {
#pragma unroll
    for (int x = threadIdx.x; x < AB_S * 12; x += AB_THREADS) {
        const int i = x / 12, c = 8 * (x - i * 12);
        if (i < S)
            cp_async16((float*)&Vs[i * ld + c], (const float*)(src + (i64)i * stride + c));
        else
            *(uint4*)&Vs[i * ld + c] = make_uint4(0u, 0u, 0u, 0u);
    }
}

// ab_load_qk_rope96 is ab_load_rope<SPEC> of Q (rows of q) and K (rows of
// k) of 96-value heads rotated over all 96 in one loop: each item reads
// its 4 pairs of the cos/sin table once for both (the same arithmetic).
__device__ __forceinline__ void ab_load_qk_rope96(bf16_t* Qs, bf16_t* Ks, int ld, const bf16_t* q, const bf16_t* k,
                                                  i64 stride, int S, const float2* cs) {
    constexpr int half = 48;
#pragma unroll
    for (int x = threadIdx.x; x < AB_S * 12; x += AB_THREADS) {
        const int i = x / 12, c = 4 * (x - i * 12);
        float4 y = make_float4(0.0f, 0.0f, 0.0f, 0.0f), z = y, y2 = y, z2 = y;
        if (i < S) {
            const float4 v = ab_ld4(q + (i64)i * stride + c), u = ab_ld4(q + (i64)i * stride + c + half);
            const float4 v2 = ab_ld4(k + (i64)i * stride + c), u2 = ab_ld4(k + (i64)i * stride + c + half);
            const float4 ca = *(const float4*)&cs[i * half + c], cb = *(const float4*)&cs[i * half + c + 2];
            ab_rope(y.x, z.x, v.x, u.x, make_float2(ca.x, ca.y), false);
            ab_rope(y.y, z.y, v.y, u.y, make_float2(ca.z, ca.w), false);
            ab_rope(y.z, z.z, v.z, u.z, make_float2(cb.x, cb.y), false);
            ab_rope(y.w, z.w, v.w, u.w, make_float2(cb.z, cb.w), false);
            ab_rope(y2.x, z2.x, v2.x, u2.x, make_float2(ca.x, ca.y), false);
            ab_rope(y2.y, z2.y, v2.y, u2.y, make_float2(ca.z, ca.w), false);
            ab_rope(y2.z, z2.z, v2.z, u2.z, make_float2(cb.x, cb.y), false);
            ab_rope(y2.w, z2.w, v2.w, u2.w, make_float2(cb.z, cb.w), false);
        }
        *(uint2*)&Qs[i * ld + c] = make_uint2(bf16x2_rn(y.x, y.y), bf16x2_rn(y.z, y.w));
        *(uint2*)&Qs[i * ld + c + half] = make_uint2(bf16x2_rn(z.x, z.y), bf16x2_rn(z.z, z.w));
        *(uint2*)&Ks[i * ld + c] = make_uint2(bf16x2_rn(y2.x, y2.y), bf16x2_rn(y2.z, y2.w));
        *(uint2*)&Ks[i * ld + c + half] = make_uint2(bf16x2_rn(z2.x, z2.y), bf16x2_rn(z2.z, z2.w));
    }
}

// ab_div_mk is __fdiv_rn(x, s) for the softmax's p / sum, r = __frcp_rn(s)
// computed once a row: Markstein's correction q + (x - s q) r of q =
// RN(x r), which is the correctly rounded quotient when r is the correctly
// rounded reciprocal and nothing underflows; fast says 1 <= s <= 2^100 (a
// row's sum is at least exp(0) = 1), and x must be 0 or at least 2^-100,
// else (and for NaN) __fdiv_rn itself. attnfloor and TestAttentionRoPE
// compare it with __fdiv_rn's bits.
__device__ __forceinline__ float ab_div_mk(float x, float s, float r, bool fast) {
    if (fast && (x == 0.0f || x >= 0x1p-100f)) {
        const float q = __fmul_rn(x, r);
        return __fmaf_rn(__fmaf_rn(-s, q, x), r, q);
    }
    return __fdiv_rn(x, s);
}

// ab_store_f2_96 is ab_store<false> of a float32 O for 96-value heads,
// each pair of columns in one 8-byte store (ab_store's two 4-byte stores
// took the forward 20.0 -> 16.8 us at Phi-3-mini's step, attnfloor).
__device__ __forceinline__ void ab_store_f2_96(float* dst, i64 stride, const float acc[AB_MAXNT][4], int r0, int n0,
                                               int S, int g, int t) {
#pragma unroll
    for (int n = 0; n < 6; n++)
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
            const int i = r0 + g + 8 * (e >> 1), d = 8 * (n0 + n) + 2 * t;
            if (i < S) *(float2*)&dst[(i64)i * stride + d] = make_float2(acc[n][e], acc[n][e + 1]);
        }
}

// ab_stage_bf16 is ab_store<false> of a bfloat16 destination (ab_st2's
// rounding) into a shared tile X [64][ld] instead, rows past S included
// (never copied out); ab_stage_pairs_rope likewise for
// ab_store_pairs_rope<false>. ab_copy_out96 then stores the tile's
// 96-value rows 16 bytes a lane: the backward's dV, dK and dQ so took
// 42.3 -> 39.1 us against ab_st2's 4-byte stores (attnfloor). (ab_store
// and ab_store_pairs_rope themselves into the tiles, with their 64-bit
// strides and alignment tests, took 42.0: call 8.)
__device__ __forceinline__ void ab_stage_bf16(bf16_t* X, int ld, const float acc[AB_MAXNT][4], int r0, int n0, int n1,
                                              int g, int t) {
#pragma unroll
    for (int n = 0; n < AB_MAXNT; n++) {
        if (n0 + n >= n1) break;
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
            const int i = r0 + g + 8 * (e >> 1), d = 8 * (n0 + n) + 2 * t;
            *(unsigned*)&X[i * ld + d] = (unsigned)f32_to_bf16(acc[n][e]) | ((unsigned)f32_to_bf16(acc[n][e + 1]) << 16);
        }
    }
}
__device__ __forceinline__ void ab_stage_pairs_rope(bf16_t* X, int ld, const float a1[4][4], const float a2[4][4],
                                                    int r0, int t0, int q, int S, const float2* cs, int half, int g,
                                                    int t) {
#pragma unroll
    for (int n = 0; n < 4; n++) {
        if (n >= q) break;
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
            const int i = r0 + g + 8 * (e >> 1), d = 8 * (t0 + n) + 2 * t;
            if (i >= S) continue;
            float y1, y2, z1, z2;
            ab_rope(y1, y2, a1[n][e], a2[n][e], cs[i * half + d], true);
            ab_rope(z1, z2, a1[n][e + 1], a2[n][e + 1], cs[i * half + d + 1], true);
            *(unsigned*)&X[i * ld + d] = (unsigned)f32_to_bf16(y1) | ((unsigned)f32_to_bf16(z1) << 16);
            *(unsigned*)&X[i * ld + d + half] = (unsigned)f32_to_bf16(y2) | ((unsigned)f32_to_bf16(z2) << 16);
        }
    }
}
// ab_copy_out96: dst[i*stride + offs[m] + c] = X_m[i*ld + c] for the three
// tiles X_m, rows i < S, 96 bfloat16 a row.
__device__ __forceinline__ void ab_copy_out96(bf16_t* dst, i64 stride, const bf16_t* X0, const bf16_t* X1,
                                              const bf16_t* X2, int ld, i64 off0, i64 off1, i64 off2, int S) {
#pragma unroll
    for (int x = threadIdx.x; x < 3 * AB_S * 12; x += AB_THREADS) {
        const int m = x / (AB_S * 12), y = x - m * (AB_S * 12), i = y / 12, c = 8 * (y - i * 12);
        const bf16_t* src = m == 0 ? X0 : m == 1 ? X1 : X2;
        const i64 off = m == 0 ? off0 : m == 1 ? off1 : off2;
        if (i < S) *(uint4*)&dst[(i64)i * stride + off + c] = *(const uint4*)&src[i * ld + c];
    }
}

// at_di_lse_do96 is ab_load of dO (96-value heads) and at_di_lse in one
// pass: lane d of warp w's rows 8w.. reads dO and O once, as at_di_lse
// does (the same fmaf order, so di's bits), and writes bf16(dO) into dOs
// (zeros past S rows).
__device__ __forceinline__ void at_di_lse_do96(bf16_t* dOs, int ld, float* di_s, float* lse_s, const float* dO,
                                               const float* O, i64 HD, const float* lse_row, int i0, int S,
                                               int lane) {
    float di[8];
#pragma unroll
    for (int rr = 0; rr < 8; rr++) di[rr] = 0.0f;
#pragma unroll
    for (int k = 0; k < 3; k++) {
        const int d = lane + 32 * k;
#pragma unroll
        for (int rr = 0; rr < 8; rr++) {
            const int i = i0 + rr;
            unsigned short hb = 0;
            if (i < S) {
                const float x = dO[i * HD + d];
                di[rr] = fmaf(x, O[i * HD + d], di[rr]);
                asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(hb) : "f"(x));
            }
            dOs[i * ld + d] = hb;
        }
    }
    at_di_put(di_s, lse_s, di, lse_row, i0, S, lane);
}

// attn_fwd_bf16: grid (H, B), AB_THREADS threads, dynamic shared memory:
// Q [64][max(ld, AB_LDP)] (P [64][AB_LDP] takes Q's place), K, V [64][ld]
// bfloat16, the halves' row maxima and sums [2][2][64] float. Same outputs
// as attn_fwd_t64 but for the bfloat16 operands.
//
// SPEC (v11, the _rp entry points): the shapes of Phi-3-mini's step, which
// the host checked (abSpec): RoPE with whole 16-column tiles in each half
// of the head (2 half == D16, half % 16 == 0), 16-byte-friendly rows (v4),
// and in the backward one query head a KV head and dqkv overwritten. The
// same code path as the generic kernel, so the same bits, with the other
// paths not compiled: the generic backward's 15 k instructions (243 KB)
// stalled 17% of the time on instruction fetch (ncu, v10).
// DC (v11, the _rp96 entry points: SPEC with Phi-3-mini's 96-value heads
// and RoPE over all of them): the head's size a constant, so its loops
// unroll and its index arithmetic folds (the same code path).
// V20 (the _rp96v entry points, DC 96 and a bfloat16 qkv): the v20
// loaders, ab_div_mk and ab_store_f2_96 (the same bits).
// STOP (scripts/bench/attnfloor's timing cuts; 0 in the backend): return
// after the loads (1) or after the softmax (2), keeping what was computed
// alive through a store that no reader trusts.
template <typename TS, bool SPEC = false, int DC = 0, bool V20 = false, int STOP = 0>
__device__ __forceinline__ void attn_fwd_bf16_body(float* out, float* lse, const TS* qkv, const int* pos, i64 B, i64 S_,
                                                   i64 H, i64 K, i64 D_, i64 window, double scale_d, const float2* cs,
                                                   i64 half_) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int S = (int)S_, D = DC ? DC : (int)D_, D16 = ab_d16(D), ld = ab_ld(D);
    bf16_t* Qs = (bf16_t*)smem_raw;
    bf16_t* Ks = Qs + AB_S * max(ld, AB_LDP);
    bf16_t* Vs = Ks + AB_S * ld;
    float* red = (float*)(Vs + AB_S * ld);  // [0][hb][i] maxima, [1][hb][i] sums
    const float scale = (float)scale_d;
    const i64 h = blockIdx.x, b = blockIdx.y;
    const i64 T = B * S, width = (H + 2 * K) * D, kvh = h / (H / K);
    const TS* base = qkv + b * S * width;
    const int* prow = pos + b * S;
    const bool v4 = SPEC || (D & 3) == 0 && ((size_t)qkv & (4 * sizeof(TS) - 1)) == 0;
    const int half = DC ? DC / 2 : (int)half_;
    if constexpr (V20) {
        static_assert(SPEC && DC == 96, "V20: Phi-3-mini's heads, a bfloat16 qkv");
        ab_copy_v96(Vs, ld, (const bf16_t*)base + (H + K + kvh) * D, width, S);
        cp_commit();
        ab_load_qk_rope96(Qs, Ks, ld, (const bf16_t*)base + h * D, (const bf16_t*)base + (H + kvh) * D, width, S,
                          cs + b * S * half);
        cp_wait<0>();
    } else if (SPEC || half > 0) {
        ab_load_rope<SPEC>(Qs, ld, base + h * D, width, S, D, D16, v4, cs + b * S * half, half);
        ab_load_rope<SPEC>(Ks, ld, base + (H + kvh) * D, width, S, D, D16, v4, cs + b * S * half, half);
    } else {
        ab_load(Qs, ld, base + h * D, width, S, D, D16, v4);
        ab_load(Ks, ld, base + (H + kvh) * D, width, S, D, D16, v4);
    }
    if constexpr (!V20) ab_load(Vs, ld, base + (H + K + kvh) * D, width, S, D, D16, v4);
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int hb = w >> 2, a = hb ? 3 - (w & 3) : (w & 3), row0 = 16 * a;
    const int nt = row0 < S ? ab_tiles(row0, hb, S) : 0;
    __syncthreads();
    if constexpr (STOP == 1) {
        if (threadIdx.x == 0) out[b * S * H * D + h * D] = bf16_to_f32(Qs[5]) + bf16_to_f32(Ks[7]) + bf16_to_f32(Vs[9]);
        return;
    }

    float acc[4][4];
    ab_scores(acc, Qs, Ks, ld, D16, row0, hb, nt, lane);

    // Softmax: scores, the row maxima of both halves, exp, the sums.
    const float ninf = -__int_as_float(0x7f800000);
    int lo[2];
    bool live[2];
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        const int i = row0 + g + 8 * rr;
        live[rr] = i < S;
        lo[rr] = live[rr] ? at_lo(i, prow, window) : 0;
    }
    float m[2] = {ninf, ninf};
#pragma unroll
    for (int n = 0; n < 4; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int rr = e >> 1, i = row0 + g + 8 * rr, j = 32 * hb + 8 * n + 2 * t + (e & 1);
            const bool vis = live[rr] && j >= lo[rr] && j <= i;
            acc[n][e] = vis ? __fmul_rn(acc[n][e], scale) : ninf;
            m[rr] = fmaxf(m[rr], acc[n][e]);
        }
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        m[rr] = fmaxf(m[rr], __shfl_xor_sync(0xffffffffu, m[rr], 1));
        m[rr] = fmaxf(m[rr], __shfl_xor_sync(0xffffffffu, m[rr], 2));
        if (t == 0) red[hb * AB_S + row0 + g + 8 * rr] = m[rr];
    }
    __syncthreads();  // also: every warp is done reading Q
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        const int i = row0 + g + 8 * rr;
        m[rr] = fmaxf(red[i], red[AB_S + i]);
    }
    float sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int n = 0; n < 4; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int rr = e >> 1;
            acc[n][e] = acc[n][e] != ninf ? expf(__fsub_rn(acc[n][e], m[rr])) : 0.0f;
            sum[rr] = __fadd_rn(sum[rr], acc[n][e]);
        }
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        sum[rr] = __fadd_rn(sum[rr], __shfl_xor_sync(0xffffffffu, sum[rr], 1));
        sum[rr] = __fadd_rn(sum[rr], __shfl_xor_sync(0xffffffffu, sum[rr], 2));
        if (t == 0) red[2 * AB_S + hb * AB_S + row0 + g + 8 * rr] = sum[rr];
    }
    __syncthreads();
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        const int i = row0 + g + 8 * rr;
        sum[rr] = __fadd_rn(red[2 * AB_S + i], red[3 * AB_S + i]);
        if (live[rr] && hb == 0 && t == 0) lse[h * T + b * S + i] = __fadd_rn(m[rr], logf(sum[rr]));
    }
    if constexpr (STOP == 2) {
        if (acc[0][0] == 12345.0f) out[0] = acc[1][1] + acc[2][2] + acc[3][3];
        return;
    }
    if constexpr (V20) {
        float rcp[2];
        bool fast[2];
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            fast[rr] = sum[rr] >= 1.0f && sum[rr] <= 0x1p100f;
            rcp[rr] = __frcp_rn(sum[rr]);
        }
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int rr = e >> 1;
                acc[n][e] = live[rr] ? ab_div_mk(acc[n][e], sum[rr], rcp[rr], fast[rr]) : 0.0f;
            }
    } else {
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int rr = e >> 1;
                acc[n][e] = live[rr] ? __fdiv_rn(acc[n][e], sum[rr]) : 0.0f;
            }
    }
    // P takes Q's place (every warp passed a barrier after its last Q read).
    bf16_t* Ps = Qs;
    ab_put(Ps, acc, row0, hb, g, t);
    __syncthreads();

    // O = P V: rows row0.., the half's column tiles, keys up to the band's last row.
    int n0, n1;
    ab_half(D16, hb, n0, n1);
    float o[AB_MAXNT][4];
    ab_wsum<false>(o, Ps, AB_LDP, Vs, ld, row0, 0, row0 < S ? min(row0 + 15, S - 1) / 16 + 1 : 0, n0, n1, lane);
    if constexpr (V20)
        ab_store_f2_96(out + b * S * H * D + h * D, H * D, o, row0, n0, S, g, t);
    else
        ab_store<false>(out + b * S * H * D + h * D, H * D, o, row0, n0, n1, S, D, g, t);
}

// attn_bwd_bf16: grid (K, B), AB_THREADS threads, dynamic shared memory:
// Q, K, V, dO [64][ld] and P, dS [64][AB_LDP] bfloat16, lse, di [64]
// float, with RoPE the row's table [S][half] float2. For each query head h of KV head kvh in turn:
//   di = rowsum(dO * O);  P = exp(q.k*scale - lse) where visible, else 0
//   dP = dO V^T;  dS = P * (dP - di) * scale
//   dV += P^T dO;  dK += dS^T Q;  dQ = dS K
// Same result as attn_bwd_t64 but for the bfloat16 operands. accum 1 adds
// into dqkv; 0 overwrites it (dQ of every head, dK and dV of the first;
// the group's other heads add). Two blocks a multiprocessor (111
// registers): at three (80 registers, spilling) the step's 512 blocks took
// 97 us against 85.
// SPEC, DC, V20: see attn_fwd_bf16_body (V20: at_di_lse_do96, and dV,
// dK, dQ staged in shared memory: ab_stage_bf16, ab_copy_out96; TD must
// then be bf16_t and dqkv overwritten, which SPEC implies). STOP (as the
// forward's): return after the loads and di (1), after P and dS (2), or
// after dV (3).
template <typename TS, typename TD, bool SPEC = false, int DC = 0, bool V20 = false, int STOP = 0>
__device__ __forceinline__ void attn_bwd_bf16_body(TD* dqkv, const float* dout, const float* out, const float* lse,
                                                   const TS* qkv, const int* pos, i64 B, i64 S_, i64 H, i64 K, i64 D_,
                                                   i64 window, double scale_d, i64 accum_, const float2* cs, i64 half_) {
    const bool accum = !SPEC && accum_ != 0;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int S = (int)S_, D = DC ? DC : (int)D_, D16 = ab_d16(D), ld = ab_ld(D);
    bf16_t* Qs = (bf16_t*)smem_raw;
    bf16_t* Ks = Qs + AB_S * ld;
    bf16_t* Vs = Ks + AB_S * ld;
    bf16_t* dOs = Vs + AB_S * ld;
    bf16_t* Ps = dOs + AB_S * ld;
    bf16_t* dSs = Ps + AB_S * AB_LDP;
    float* lse_s = (float*)(dSs + AB_S * AB_LDP);
    float* di_s = lse_s + AB_S;
    float2* csS = (float2*)(di_s + AB_S);  // with RoPE: the row's table [S][half]
    const float scale = (float)scale_d;
    const i64 kvh = blockIdx.x, b = blockIdx.y;
    const i64 T = B * S, width = (H + 2 * K) * D, HD = H * D, group = SPEC ? 1 : H / K;
    const i64 koff = (H + kvh) * D, voff = (H + K + kvh) * D;
    const TS* base = qkv + b * S * width;
    TD* dbase = dqkv + b * S * width;
    const float* dobase = dout + b * S * HD;
    const float* obase = out + b * S * HD;
    const int* prow = pos + b * S;
    const bool v4 = SPEC || (D & 3) == 0 && ((size_t)qkv & (4 * sizeof(TS) - 1)) == 0 && ((size_t)dout & 15) == 0;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int hb = w >> 2, a = hb ? 3 - (w & 3) : (w & 3), row0 = 16 * a;
    const int nt = row0 < S ? ab_tiles(row0, hb, S) : 0;
    int n0, n1;
    ab_half(D16, hb, n0, n1);
    int lo[2];
#pragma unroll
    for (int rr = 0; rr < 2; rr++) lo[rr] = row0 + g + 8 * rr < S ? at_lo(row0 + g + 8 * rr, prow, window) : 0;
    // k-steps of 16: dV, dK over the queries from the band's first key on,
    // dQ over the keys up to the band's last query.
    const int qsteps = (S + 15) / 16, ksteps = row0 < S ? min(row0 + 15, S - 1) / 16 + 1 : 0;

    const int half = DC ? DC / 2 : (int)half_;
    const float2* csb = cs + b * S * half;
    if constexpr (V20) {
        static_assert(SPEC && DC == 96, "V20: Phi-3-mini's heads, a bfloat16 qkv");
        ab_copy_cs(csS, csb, S, half);
        ab_copy_v96(Vs, ld, (const bf16_t*)base + voff, width, S);  // one head a KV head: loaded once
        cp_commit();
    } else if (SPEC || half > 0) {
        ab_copy_cs(csS, csb, S, half);  // for the stores: waited for before the first barrier
        ab_load_rope<SPEC>(Ks, ld, base + koff, width, S, D, D16, v4, csb, half);
    } else {
        ab_load(Ks, ld, base + koff, width, S, D, D16, v4);
    }
    for (i64 hh = 0; hh < group; hh++) {
        const i64 h = kvh * group + hh;
        // The previous head ended with a barrier: Q, V, dO, P, dS, lse_s, di_s are free.
        if constexpr (V20) {
            ab_load_qk_rope96(Qs, Ks, ld, (const bf16_t*)base + h * D, (const bf16_t*)base + koff, width, S, csb);
            at_di_lse_do96(dOs, ld, di_s, lse_s, dobase + h * D, obase + h * D, HD, lse + h * T + b * S, 8 * w, S,
                           lane);
        } else {
            if (SPEC || half > 0)
                ab_load_rope<SPEC>(Qs, ld, base + h * D, width, S, D, D16, v4, csb, half);
            else
                ab_load(Qs, ld, base + h * D, width, S, D, D16, v4);
            ab_load(Vs, ld, base + voff, width, S, D, D16, v4);
            ab_load(dOs, ld, dobase + h * D, HD, S, D, D16, v4);
            // di and lse of rows 8w..8w+7.
            at_di_lse(di_s, lse_s, dobase + h * D, obase + h * D, HD, lse + h * T + b * S, 8 * w, S, D, lane);
        }
        cp_wait<0>();
        __syncthreads();
        if constexpr (STOP == 1) {
            if (threadIdx.x == 0)
                ab_st(dbase, bf16_to_f32(Qs[3]) + bf16_to_f32(Ks[5]) + bf16_to_f32(Vs[7]) + bf16_to_f32(dOs[9]) + di_s[3] + csS[4].x,
                      false);
            return;
        }

        // S = Q K^T and dP = dO V^T over the warp's 16 rows and 32 keys,
        // then P and dS in their place, rounded into the shared tiles.
        float sacc[4][4], pacc[4][4];
        ab_scores(sacc, Qs, Ks, ld, D16, row0, hb, nt, lane);
        ab_scores(pacc, dOs, Vs, ld, D16, row0, hb, nt, lane);
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int rr = e >> 1, i = row0 + g + 8 * rr, j = 32 * hb + 8 * n + 2 * t + (e & 1);
                float p = 0.0f, ds = 0.0f;
                if (i < S && j >= lo[rr] && j <= i) {
                    p = expf(__fsub_rn(__fmul_rn(sacc[n][e], scale), lse_s[i]));
                    ds = __fmul_rn(__fmul_rn(p, __fsub_rn(pacc[n][e], di_s[i])), scale);
                }
                sacc[n][e] = p;
                pacc[n][e] = ds;
            }
        ab_put(Ps, sacc, row0, hb, g, t);
        ab_put(dSs, pacc, row0, hb, g, t);
        __syncthreads();
        if constexpr (STOP == 2) {
            if (threadIdx.x == 0) ab_st(dbase, bf16_to_f32(Ps[7]) + bf16_to_f32(dSs[9]), false);
            return;
        }

        const bool addKV = accum || hh > 0;
        float acc[AB_MAXNT][4];
        if constexpr (V20) {
            // dV, dK, dQ staged in V's, dO's and Q's places (each free after
            // a barrier: V's last read came before the P, dS barrier), then
            // stored 16 bytes a lane.
            const int h8 = half >> 3, q = h8 >> 1, t0 = hb * q;
            ab_wsum<true>(acc, Ps, AB_LDP, dOs, ld, row0, row0 < S ? a : qsteps, qsteps, n0, n1, lane);
            ab_stage_bf16(Vs, ld, acc, row0, n0, n1, g, t);
            if constexpr (STOP == 3) {
                __syncthreads();
                if (threadIdx.x == 0) ab_st(dbase, bf16_to_f32(Vs[11]), false);
                return;
            }
            float a1[4][4], a2[4][4];
            ab_wsum<true, 4>(a1, dSs, AB_LDP, Qs, ld, row0, row0 < S ? a : qsteps, qsteps, t0, t0 + q, lane);
            ab_wsum<true, 4>(a2, dSs, AB_LDP, Qs, ld, row0, row0 < S ? a : qsteps, qsteps, t0 + h8, t0 + h8 + q, lane);
            __syncthreads();  // every warp is done with dO
            ab_stage_pairs_rope(dOs, ld, a1, a2, row0, t0, q, S, csS, half, g, t);
            ab_wsum<false, 4>(a1, dSs, AB_LDP, Ks, ld, row0, 0, ksteps, t0, t0 + q, lane);
            ab_wsum<false, 4>(a2, dSs, AB_LDP, Ks, ld, row0, 0, ksteps, t0 + h8, t0 + h8 + q, lane);
            __syncthreads();  // every warp is done with Q
            ab_stage_pairs_rope(Qs, ld, a1, a2, row0, t0, q, S, csS, half, g, t);
            __syncthreads();
            ab_copy_out96((bf16_t*)dbase, width, Vs, dOs, Qs, ld, voff, koff, h * D, S);
            __syncthreads();
            continue;
        }
        // dV = P^T dO: key rows row0.., queries from the band's first key on.
        ab_wsum<true>(acc, Ps, AB_LDP, dOs, ld, row0, row0 < S ? a : qsteps, qsteps, n0, n1, lane);
        if (addKV)
            ab_store<true>(dbase + voff, width, acc, row0, n0, n1, S, D, g, t);
        else
            ab_store<false>(dbase + voff, width, acc, row0, n0, n1, S, D, g, t);
        if constexpr (STOP == 3) return;
        if (SPEC || half > 0 && 2 * half == D16 && (half & 15) == 0) {
            // RoPE over whole heads of a multiple of 32 (Phi-3-mini): warp
            // half hb takes column tiles hb*q.. of each half of the head,
            // so that its lanes hold both columns of their pairs and rotate
            // dK and dQ back in registers.
            const int h8 = half >> 3, q = h8 >> 1, t0 = hb * q;
            float a1[4][4], a2[4][4];
            ab_wsum<true, 4>(a1, dSs, AB_LDP, Qs, ld, row0, row0 < S ? a : qsteps, qsteps, t0, t0 + q, lane);
            ab_wsum<true, 4>(a2, dSs, AB_LDP, Qs, ld, row0, row0 < S ? a : qsteps, qsteps, t0 + h8, t0 + h8 + q, lane);
            if (accum)
                ab_store_pairs_rope<true>(dbase + koff, width, a1, a2, row0, t0, q, S, csS, half, g, t);
            else
                ab_store_pairs_rope<false>(dbase + koff, width, a1, a2, row0, t0, q, S, csS, half, g, t);
            ab_wsum<false, 4>(a1, dSs, AB_LDP, Ks, ld, row0, 0, ksteps, t0, t0 + q, lane);
            ab_wsum<false, 4>(a2, dSs, AB_LDP, Ks, ld, row0, 0, ksteps, t0 + h8, t0 + h8 + q, lane);
            if (accum)
                ab_store_pairs_rope<true>(dbase + h * D, width, a1, a2, row0, t0, q, S, csS, half, g, t);
            else
                ab_store_pairs_rope<false>(dbase + h * D, width, a1, a2, row0, t0, q, S, csS, half, g, t);
        } else if (half > 0) {
            // dK and dQ go through X [64][D16 + 4] float (V, dO and P's
            // place, free once dV is done) to be rotated back.
            float* X = (float*)Vs;
            const int ldx = D16 + 4;
            __syncthreads();  // every warp is done with V, dO, P
            ab_wsum<true>(acc, dSs, AB_LDP, Qs, ld, row0, row0 < S ? a : qsteps, qsteps, n0, n1, lane);
            ab_put_x(X, ldx, acc, row0, n0, n1, g, t);
            __syncthreads();
            if (accum)
                ab_store_rope<true>(dbase + koff, width, X, ldx, S, D, csS, half);
            else
                ab_store_rope<false>(dbase + koff, width, X, ldx, S, D, csS, half);
            ab_wsum<false>(acc, dSs, AB_LDP, Ks, ld, row0, 0, ksteps, n0, n1, lane);
            __syncthreads();  // every thread is done reading dK from X
            ab_put_x(X, ldx, acc, row0, n0, n1, g, t);
            __syncthreads();
            if (accum)
                ab_store_rope<true>(dbase + h * D, width, X, ldx, S, D, csS, half);
            else
                ab_store_rope<false>(dbase + h * D, width, X, ldx, S, D, csS, half);
        } else {
            // dK = dS^T Q, like dV.
            ab_wsum<true>(acc, dSs, AB_LDP, Qs, ld, row0, row0 < S ? a : qsteps, qsteps, n0, n1, lane);
            if (addKV)
                ab_store<true>(dbase + koff, width, acc, row0, n0, n1, S, D, g, t);
            else
                ab_store<false>(dbase + koff, width, acc, row0, n0, n1, S, D, g, t);
            // dQ = dS K: query rows row0.., keys up to the band's last row.
            ab_wsum<false>(acc, dSs, AB_LDP, Ks, ld, row0, 0, ksteps, n0, n1, lane);
            if (accum)
                ab_store<true>(dbase + h * D, width, acc, row0, n0, n1, S, D, g, t);
            else
                ab_store<false>(dbase + h * D, width, acc, row0, n0, n1, S, D, g, t);
        }
        __syncthreads();  // done with Q, dO, P, dS before the next head's
    }
}
