// attnfloor's backward copies: attn_bwd_bf16_body for SPEC and DC 96 (one
// query head a KV head, dqkv overwritten) with phases cut off (PH 1: the
// operands into shared memory, di and lse; 2: and P, dS; 3: and dV; 4: the
// whole kernel), and the candidate changes as switches:
//   NOCS  the stores read the cos/sin table from global memory (L2), not a
//         shared copy: 24 KB less shared memory a block
//   QK1, VCP  as in the forward
//   V20L  the production v20 loaders (ab_copy_v96, ab_load_qk_rope96,
//         at_di_lse_do96), for the v20 kernel's phases
//   ST2   dV, dK, dQ staged in shared memory (V's, dO's, Q's places, each
//         free after a barrier) and stored 16 bytes a lane (ab_stage_bf16,
//         ab_stage_pairs_rope, ab_copy_out96)
//   ORD   with V20L: 1 dO and di before Q and K; 2 dO's and O's loads
//         issued first, Q and K loaded and rotated, then di and dO's copy
template <int PH, bool NOCS = false, bool QK1 = false, bool VCP = false, bool V20L = false, bool ST2 = false,
          int ORD = 0>
__device__ __forceinline__ void bwd_body(bf16_t* dqkv, const float* dout, const float* out, const float* lse,
                                         const bf16_t* qkv, const int* pos, i64 B, i64 S_, i64 H, i64 K,
                                         double scale_d, const float2* cs) {
    constexpr int D = 96, D16 = 96, ld = 104, half = 48;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int S = (int)S_;
    bf16_t* Qs = (bf16_t*)smem_raw;
    bf16_t* Ks = Qs + AB_S * ld;
    bf16_t* Vs = Ks + AB_S * ld;
    bf16_t* dOs = Vs + AB_S * ld;
    bf16_t* Ps = dOs + AB_S * ld;
    bf16_t* dSs = Ps + AB_S * AB_LDP;
    float* lse_s = (float*)(dSs + AB_S * AB_LDP);
    float* di_s = lse_s + AB_S;
    float2* csS = (float2*)(di_s + AB_S);
    const float scale = (float)scale_d;
    const i64 kvh = blockIdx.x, b = blockIdx.y, h = kvh;
    const i64 T = B * S, width = (H + 2 * K) * D, HD = H * D;
    const i64 koff = (H + kvh) * D, voff = (H + K + kvh) * D;
    const bf16_t* base = qkv + b * S * width;
    bf16_t* dbase = dqkv + b * S * width;
    const float* dobase = dout + b * S * HD;
    const float* obase = out + b * S * HD;
    const int* prow = pos + b * S;
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int hb = w >> 2, a = hb ? 3 - (w & 3) : (w & 3), row0 = 16 * a;
    const int nt = row0 < S ? ab_tiles(row0, hb, S) : 0;
    int n0, n1;
    ab_half(D16, hb, n0, n1);
    int lo[2];
#pragma unroll
    for (int rr = 0; rr < 2; rr++) lo[rr] = row0 + g + 8 * rr < S ? at_lo(row0 + g + 8 * rr, prow, 0) : 0;
    const int qsteps = (S + 15) / 16, ksteps = row0 < S ? min(row0 + 15, S - 1) / 16 + 1 : 0;
    const float2* csb = cs + b * S * half;
    const float2* cst = NOCS ? csb : csS;
    if (!NOCS) ab_copy_cs(csS, csb, S, half);
    if (V20L) {
        ab_copy_v96(Vs, ld, base + voff, width, S);
        cp_commit();
        if (ORD == 0) {
            ab_load_qk_rope96(Qs, Ks, ld, base + h * D, base + koff, width, S, csb);
            at_di_lse_do96(dOs, ld, di_s, lse_s, dobase + h * D, obase + h * D, HD, lse + h * T + b * S, 8 * w, S, lane);
        } else if (ORD == 1) {
            at_di_lse_do96(dOs, ld, di_s, lse_s, dobase + h * D, obase + h * D, HD, lse + h * T + b * S, 8 * w, S, lane);
            ab_load_qk_rope96(Qs, Ks, ld, base + h * D, base + koff, width, S, csb);
        } else {
            const float* dO = dobase + h * D;
            const float* O = obase + h * D;
            const int i0 = 8 * w;
            float xv[3][8], ov[3][8];
#pragma unroll
            for (int k = 0; k < 3; k++)
#pragma unroll
                for (int rr = 0; rr < 8; rr++) {
                    const int i = i0 + rr, d = lane + 32 * k;
                    xv[k][rr] = i < S ? dO[i * HD + d] : 0.0f;
                    ov[k][rr] = i < S ? O[i * HD + d] : 0.0f;
                }
            ab_load_qk_rope96(Qs, Ks, ld, base + h * D, base + koff, width, S, csb);
            float di[8];
#pragma unroll
            for (int rr = 0; rr < 8; rr++) di[rr] = 0.0f;
#pragma unroll
            for (int k = 0; k < 3; k++) {
                const int d = lane + 32 * k;
#pragma unroll
                for (int rr = 0; rr < 8; rr++) {
                    const int i = i0 + rr;
                    unsigned short hb16 = 0;
                    if (i < S) {
                        di[rr] = fmaf(xv[k][rr], ov[k][rr], di[rr]);
                        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(hb16) : "f"(xv[k][rr]));
                    }
                    dOs[i * ld + d] = hb16;
                }
            }
            at_di_put(di_s, lse_s, di, lse + h * T + b * S, i0, S, lane);
        }
    } else {
    if (VCP) {
        ab_copy_v96(Vs, ld, base + voff, width, S);
        cp_commit();
    }
    if (QK1) {
        ab_load_qk_rope96(Qs, Ks, ld, base + h * D, base + koff, width, S, csb);
    } else {
        ab_load_rope<true>(Ks, ld, base + koff, width, S, D, D16, true, csb, half);
        ab_load_rope<true>(Qs, ld, base + h * D, width, S, D, D16, true, csb, half);
    }
    if (!VCP) ab_load(Vs, ld, base + voff, width, S, D, D16, true);
    ab_load(dOs, ld, dobase + h * D, HD, S, D, D16, true);
    at_di_lse(di_s, lse_s, dobase + h * D, obase + h * D, HD, lse + h * T + b * S, 8 * w, S, D, lane);
    }
    cp_wait<0>();
    __syncthreads();
    if (PH == 1) {
        if (threadIdx.x == 0) dbase[0] = Qs[3] + Ks[5] + Vs[7] + dOs[9] + (bf16_t)di_s[3] + (bf16_t)cst[4].x;
        return;
    }
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
    if (PH == 2) {
        if (threadIdx.x == 0) dbase[0] = Ps[7] + dSs[9];
        return;
    }
    float acc[AB_MAXNT][4];
    ab_wsum<true>(acc, Ps, AB_LDP, dOs, ld, row0, row0 < S ? a : qsteps, qsteps, n0, n1, lane);
    if (ST2) {
        ab_stage_bf16(Vs, ld, acc, row0, n0, n1, g, t);  // V: last read before the P, dS barrier
        const int h8 = half >> 3, q = h8 >> 1, t0 = hb * q;
        float a1[4][4], a2[4][4];
        ab_wsum<true, 4>(a1, dSs, AB_LDP, Qs, ld, row0, row0 < S ? a : qsteps, qsteps, t0, t0 + q, lane);
        ab_wsum<true, 4>(a2, dSs, AB_LDP, Qs, ld, row0, row0 < S ? a : qsteps, qsteps, t0 + h8, t0 + h8 + q, lane);
        __syncthreads();  // every warp is done with dO
        ab_stage_pairs_rope(dOs, ld, a1, a2, row0, t0, q, S, cst, half, g, t);
        ab_wsum<false, 4>(a1, dSs, AB_LDP, Ks, ld, row0, 0, ksteps, t0, t0 + q, lane);
        ab_wsum<false, 4>(a2, dSs, AB_LDP, Ks, ld, row0, 0, ksteps, t0 + h8, t0 + h8 + q, lane);
        __syncthreads();  // every warp is done with Q
        ab_stage_pairs_rope(Qs, ld, a1, a2, row0, t0, q, S, cst, half, g, t);
        __syncthreads();
        ab_copy_out96(dbase, width, Vs, dOs, Qs, ld, voff, koff, h * D, S);
        return;
    }
    ab_store<false>(dbase + voff, width, acc, row0, n0, n1, S, D, g, t);
    if (PH == 3) return;
    const int h8 = half >> 3, q = h8 >> 1, t0 = hb * q;
    float a1[4][4], a2[4][4];
    ab_wsum<true, 4>(a1, dSs, AB_LDP, Qs, ld, row0, row0 < S ? a : qsteps, qsteps, t0, t0 + q, lane);
    ab_wsum<true, 4>(a2, dSs, AB_LDP, Qs, ld, row0, row0 < S ? a : qsteps, qsteps, t0 + h8, t0 + h8 + q, lane);
    ab_store_pairs_rope<false>(dbase + koff, width, a1, a2, row0, t0, q, S, cst, half, g, t);
    ab_wsum<false, 4>(a1, dSs, AB_LDP, Ks, ld, row0, 0, ksteps, t0, t0 + q, lane);
    ab_wsum<false, 4>(a2, dSs, AB_LDP, Ks, ld, row0, 0, ksteps, t0 + h8, t0 + h8 + q, lane);
    ab_store_pairs_rope<false>(dbase + h * D, width, a1, a2, row0, t0, q, S, cst, half, g, t);
}

#define BWD_VARIANT(NAME, MINB, ...)                                                                              \
    extern "C" __global__ void __launch_bounds__(AB_THREADS, MINB) NAME(bf16_t* dqkv, const float* dout,             \
            const float* out, const float* lse, const bf16_t* qkv, const int* pos, i64 B, i64 S, i64 H, i64 K,     \
            i64 D, i64 window, double scale_d, i64 accum, const float2* cs, i64 half) {                             \
        bwd_body<__VA_ARGS__>(dqkv, dout, out, lse, qkv, pos, B, S, H, K, scale_d, cs);                                      \
    }
BWD_VARIANT(bwd_copy, 2, 4)
BWD_VARIANT(bwd_ph1, 2, 1)
BWD_VARIANT(bwd_ph2, 2, 2)
BWD_VARIANT(bwd_ph3, 2, 3)
BWD_VARIANT(bwd_nocs, 2, 4, true)
BWD_VARIANT(bwd_nocs3, 3, 4, true)
BWD_VARIANT(bwd_all, 2, 4, true, true, true)
BWD_VARIANT(bwd_all3, 3, 4, true, true, true)
BWD_VARIANT(bwd_all_ph1, 2, 1, true, true, true)
BWD_VARIANT(bwd_v20, 2, 4, false, false, false, true)
BWD_VARIANT(bwd_v20_ph1, 2, 1, false, false, false, true)
BWD_VARIANT(bwd_v20_ph2, 2, 2, false, false, false, true)
BWD_VARIANT(bwd_v20_ph3, 2, 3, false, false, false, true)
BWD_VARIANT(bwd_v20_st2, 2, 4, false, false, false, true, true)
BWD_VARIANT(bwd_v20_o1, 2, 4, false, false, false, true, true, 1)
BWD_VARIANT(bwd_v20_o2, 2, 4, false, false, false, true, true, 2)
BWD_VARIANT(bwd_v20_o1_ph1, 2, 1, false, false, false, true, false, 1)
BWD_VARIANT(bwd_v20_o2_ph1, 2, 1, false, false, false, true, false, 2)
