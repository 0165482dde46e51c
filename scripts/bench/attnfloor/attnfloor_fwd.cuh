// attnfloor's forward copies: attn_fwd_bf16_body for SPEC and DC 96 (the
// step's shapes) with phases cut off (PH 1: operands into shared memory;
// 2: and the scores and softmax, lse written; 3: the whole kernel) and the
// candidate changes as switches:
//   QK1  Q and K rotated in one loop (ab_load_qk_rope96)
//   VCP  V copied with cp.async (ab_copy_v96)
//   DIV  p / sum through one reciprocal a row (ab_div_mk)
//   ST   how O is stored: 0 ab_store (two 4-byte stores a pair), 1 one
//        8-byte store a pair (ab_store_f2_96), 2 through shared memory,
//        16 bytes a lane
template <int PH, bool QK1, bool VCP, bool DIV, int ST = 0>
__device__ __forceinline__ void fwd_body(float* out, float* lse, const bf16_t* qkv, const int* pos, i64 B, i64 S_,
                                         i64 H, i64 K, double scale_d, const float2* cs) {
    constexpr int D = 96, D16 = 96, ld = 104, half = 48;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int S = (int)S_;
    bf16_t* Qs = (bf16_t*)smem_raw;
    bf16_t* Ks = Qs + AB_S * ld;
    bf16_t* Vs = Ks + AB_S * ld;
    float* red = (float*)(Vs + AB_S * ld);
    const float scale = (float)scale_d;
    const i64 h = blockIdx.x, b = blockIdx.y;
    const i64 T = B * S, width = (H + 2 * K) * D, kvh = h;
    const bf16_t* base = qkv + b * S * width;
    const int* prow = pos + b * S;
    const float2* csb = cs + b * S * half;
    if (VCP) {
        ab_copy_v96(Vs, ld, base + (H + K + kvh) * D, width, S);
        cp_commit();
    }
    if (QK1) {
        ab_load_qk_rope96(Qs, Ks, ld, base + h * D, base + (H + kvh) * D, width, S, csb);
    } else {
        ab_load_rope<true>(Qs, ld, base + h * D, width, S, D, D16, true, csb, half);
        ab_load_rope<true>(Ks, ld, base + (H + kvh) * D, width, S, D, D16, true, csb, half);
    }
    if (!VCP) ab_load(Vs, ld, base + (H + K + kvh) * D, width, S, D, D16, true);
    else cp_wait<0>();
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const int hb = w >> 2, a = hb ? 3 - (w & 3) : (w & 3), row0 = 16 * a;
    const int nt = row0 < S ? ab_tiles(row0, hb, S) : 0;
    __syncthreads();
    if (PH == 1) {
        if (threadIdx.x == 0) out[(b * S) * H * D + h * D] = bf16_to_f32(Qs[5]) + bf16_to_f32(Ks[7]) + bf16_to_f32(Vs[9]);
        return;
    }

    float acc[4][4];
    ab_scores(acc, Qs, Ks, ld, D16, row0, hb, nt, lane);
    const float ninf = -__int_as_float(0x7f800000);
    int lo[2];
    bool live[2];
#pragma unroll
    for (int rr = 0; rr < 2; rr++) {
        const int i = row0 + g + 8 * rr;
        live[rr] = i < S;
        lo[rr] = live[rr] ? at_lo(i, prow, 0) : 0;
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
    __syncthreads();
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
    if (PH == 2) {
        if (acc[0][0] == 12345.0f) out[0] = acc[1][1] + acc[2][2] + acc[3][3];
        return;
    }
    if (DIV) {
        float r[2];
        bool fast[2];
#pragma unroll
        for (int rr = 0; rr < 2; rr++) {
            fast[rr] = sum[rr] >= 1.0f && sum[rr] <= 0x1p100f;
            r[rr] = __frcp_rn(sum[rr]);
        }
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int rr = e >> 1;
                acc[n][e] = live[rr] ? ab_div_mk(acc[n][e], sum[rr], r[rr], fast[rr]) : 0.0f;
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
    bf16_t* Ps = Qs;
    ab_put(Ps, acc, row0, hb, g, t);
    __syncthreads();
    int n0, n1;
    ab_half(D16, hb, n0, n1);
    float o[AB_MAXNT][4];
    ab_wsum<false>(o, Ps, AB_LDP, Vs, ld, row0, 0, row0 < S ? min(row0 + 15, S - 1) / 16 + 1 : 0, n0, n1, lane);
    float* dst = out + b * S * H * D + h * D;
    if (ST == 0) {
        ab_store<false>(dst, H * D, o, row0, n0, n1, S, D, g, t);
    } else if (ST == 1) {
        ab_store_f2_96(dst, H * D, o, row0, n0, S, g, t);
    } else {
        constexpr int ldx = 100;
        float* X = (float*)smem_raw;
        __syncthreads();  // every warp is done reading P
#pragma unroll
        for (int n = 0; n < 6; n++)
#pragma unroll
            for (int e = 0; e < 4; e += 2) {
                const int i = row0 + g + 8 * (e >> 1), d = 8 * (n0 + n) + 2 * t;
                *(float2*)&X[i * ldx + d] = make_float2(o[n][e], o[n][e + 1]);
            }
        __syncthreads();
#pragma unroll
        for (int x = threadIdx.x; x < AB_S * 24; x += AB_THREADS) {
            const int i = x / 24, c = 4 * (x - i * 24);
            if (i < S) *(float4*)&dst[(i64)i * H * D + c] = *(const float4*)&X[i * ldx + c];
        }
    }
}

#define FWD_VARIANT(NAME, PH, QK1, VCP, DIV, ...)                                                                     \
    extern "C" __global__ void __launch_bounds__(AB_THREADS, 4) NAME(float* out, float* lse, const bf16_t* qkv,  \
            const int* pos, i64 B, i64 S, i64 H, i64 K, i64 D, i64 window, double scale_d, const float2* cs,        \
            i64 half) {                                                                                              \
        fwd_body<PH, QK1, VCP, DIV, ##__VA_ARGS__>(out, lse, qkv, pos, B, S, H, K, scale_d, cs);                                     \
    }
FWD_VARIANT(fwd_copy, 3, false, false, false)
FWD_VARIANT(fwd_ph1, 1, false, false, false)
FWD_VARIANT(fwd_ph2, 2, false, false, false)
FWD_VARIANT(fwd_qk1, 3, true, false, false)
FWD_VARIANT(fwd_vcp, 3, false, true, false)
FWD_VARIANT(fwd_div, 3, false, false, true)
FWD_VARIANT(fwd_all, 3, true, true, true)
FWD_VARIANT(fwd_all_ph1, 1, true, true, true)
FWD_VARIANT(fwd_all_ph2, 2, true, true, true)
FWD_VARIANT(fwd_all_st1, 3, true, true, true, 1)
FWD_VARIANT(fwd_all_st2, 3, true, true, true, 2)
