// The tensor-core attention kernels compiled for the shapes of
// Phi-3-mini's step (v11; attention_tc.cuh's SPEC and DC: the generic
// kernels' code paths with the others not compiled, so the same bits;
// cuda/attention.go's abSpec picks them).
#include "attention_tc.cuh"

// attn_fwd_bf16_h_rp: attn_fwd_bf16_h for the SPEC shapes alone; _rp96
// also for 96-value heads with RoPE over all of them.
extern "C" __global__ void __launch_bounds__(AB_THREADS, 4) attn_fwd_bf16_h_rp(float* out, float* lse, const bf16_t* qkv,
                                                                             const int* pos, i64 B, i64 S, i64 H, i64 K,
                                                                             i64 D, i64 window, double scale_d,
                                                                             const float2* cs, i64 half) {
    attn_fwd_bf16_body<bf16_t, true>(out, lse, qkv, pos, B, S, H, K, D, window, scale_d, cs, half);
}
extern "C" __global__ void __launch_bounds__(AB_THREADS, 4) attn_fwd_bf16_h_rp96(float* out, float* lse, const bf16_t* qkv,
                                                                               const int* pos, i64 B, i64 S, i64 H, i64 K,
                                                                               i64 D, i64 window, double scale_d,
                                                                               const float2* cs, i64 half) {
    attn_fwd_bf16_body<bf16_t, true, 96>(out, lse, qkv, pos, B, S, H, K, D, window, scale_d, cs, half);
}

// attn_fwd_bf16_h_rp96v (v20): _rp96 with the v20 loaders and ab_div_mk
// (attention_tc.cuh's V20; the same bits). The host checks that qkv is
// 16-byte aligned.
extern "C" __global__ void __launch_bounds__(AB_THREADS, 4) attn_fwd_bf16_h_rp96v(float* out, float* lse, const bf16_t* qkv,
                                                                                const int* pos, i64 B, i64 S, i64 H, i64 K,
                                                                                i64 D, i64 window, double scale_d,
                                                                                const float2* cs, i64 half) {
    attn_fwd_bf16_body<bf16_t, true, 96, true>(out, lse, qkv, pos, B, S, H, K, D, window, scale_d, cs, half);
}

// attn_bwd_bf16_hh_rp (v11): attn_bwd_bf16_hh for the SPEC shapes alone.
extern "C" __global__ void __launch_bounds__(AB_THREADS, 2)
    attn_bwd_bf16_hh_rp(bf16_t* dqkv, const float* dout, const float* out, const float* lse, const bf16_t* qkv,
                        const int* pos, i64 B, i64 S, i64 H, i64 K, i64 D, i64 window, double scale_d, i64 accum,
                        const float2* cs, i64 half) {
    attn_bwd_bf16_body<bf16_t, bf16_t, true>(dqkv, dout, out, lse, qkv, pos, B, S, H, K, D, window, scale_d, accum, cs,
                                             half);
}
extern "C" __global__ void __launch_bounds__(AB_THREADS, 2)
    attn_bwd_bf16_hh_rp96(bf16_t* dqkv, const float* dout, const float* out, const float* lse, const bf16_t* qkv,
                          const int* pos, i64 B, i64 S, i64 H, i64 K, i64 D, i64 window, double scale_d, i64 accum,
                          const float2* cs, i64 half) {
    attn_bwd_bf16_body<bf16_t, bf16_t, true, 96>(dqkv, dout, out, lse, qkv, pos, B, S, H, K, D, window, scale_d, accum,
                                                 cs, half);
}
// attn_bwd_bf16_hh_rp96v (v20): _rp96 with the v20 loaders (the same bits).
extern "C" __global__ void __launch_bounds__(AB_THREADS, 2)
    attn_bwd_bf16_hh_rp96v(bf16_t* dqkv, const float* dout, const float* out, const float* lse, const bf16_t* qkv,
                           const int* pos, i64 B, i64 S, i64 H, i64 K, i64 D, i64 window, double scale_d, i64 accum,
                           const float2* cs, i64 half) {
    attn_bwd_bf16_body<bf16_t, bf16_t, true, 96, true>(dqkv, dout, out, lse, qkv, pos, B, S, H, K, D, window, scale_d,
                                                       accum, cs, half);
}
