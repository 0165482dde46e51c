// The tensor-core attention kernels for any head (attention_tc.cuh has
// their bodies and what they compute).
#include "attention_tc.cuh"

// attn_fwd_bf16 reads a float32 qkv, attn_fwd_bf16_h (v9) a bfloat16 one
// (Tensor.half); q and k are rotated (RoPE) from the values read.
extern "C" __global__ void __launch_bounds__(AB_THREADS, 4) attn_fwd_bf16(float* out, float* lse, const float* qkv,
                                                                        const int* pos, i64 B, i64 S, i64 H, i64 K,
                                                                        i64 D, i64 window, double scale_d,
                                                                        const float2* cs, i64 half) {
    attn_fwd_bf16_body(out, lse, qkv, pos, B, S, H, K, D, window, scale_d, cs, half);
}
extern "C" __global__ void __launch_bounds__(AB_THREADS, 4) attn_fwd_bf16_h(float* out, float* lse, const bf16_t* qkv,
                                                                          const int* pos, i64 B, i64 S, i64 H, i64 K,
                                                                          i64 D, i64 window, double scale_d,
                                                                          const float2* cs, i64 half) {
    attn_fwd_bf16_body(out, lse, qkv, pos, B, S, H, K, D, window, scale_d, cs, half);
}

// attn_bwd_bf16 reads a float32 qkv, attn_bwd_bf16_h (v9) a bfloat16 one
// (Tensor.half); attn_bwd_bf16_hh (v9) also writes dqkv in bfloat16 (one KV
// head a query head and accum 0, so every element is stored once, pairs of
// columns as one 4-byte word).
#define ATTN_BWD_ENTRY(NAME, TD, TS)                                                                                \
    extern "C" __global__ void __launch_bounds__(AB_THREADS, 2)                                                     \
        NAME(TD* dqkv, const float* dout, const float* out, const float* lse, const TS* qkv, const int* pos, i64 B, \
             i64 S, i64 H, i64 K, i64 D, i64 window, double scale_d, i64 accum, const float2* cs, i64 half) {      \
        attn_bwd_bf16_body(dqkv, dout, out, lse, qkv, pos, B, S, H, K, D, window, scale_d, accum, cs, half);        \
    }
ATTN_BWD_ENTRY(attn_bwd_bf16, float, float)
ATTN_BWD_ENTRY(attn_bwd_bf16_h, float, bf16_t)
ATTN_BWD_ENTRY(attn_bwd_bf16_hh, bf16_t, bf16_t)
