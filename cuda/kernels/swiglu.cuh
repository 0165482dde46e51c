// SwiGLU's float32 math, shared by elementwise.cu (swiglu_fwd, swiglu_bwd)
// and lora.cu (lora_rows_swiglu_bf16_t), so that both give the same bits.
#pragma once

// SwiGLU in float32: e = expf(-g) (within 2 ulp of the CPU's float64 exp
// rounded to float32), silu(g) = g / (1 + e) as torch's float32 kernel,
// sigmoid(g) = 1 / (1 + e). Far within tolF32 of the CPU reference's
// float64 sigmoid; an overflowing e gives silu -0 and sigmoid 0, as there.
struct swiglu_grad {
    float du, dg;
};
__device__ __forceinline__ float silu_f(float g) { return __fdiv_rn(g, __fadd_rn(1.0f, expf(-g))); }
// d up = d * silu(g); d gate = d * u * s * (1 + g*(1-s)).
__device__ __forceinline__ swiglu_grad swiglu_grad_f(float g, float u, float d) {
    float den = __fadd_rn(1.0f, expf(-g));
    float s = __fdiv_rn(1.0f, den);
    float f = __fadd_rn(1.0f, __fmul_rn(g, __fsub_rn(1.0f, s)));
    return {__fmul_rn(d, __fdiv_rn(g, den)), __fmul_rn(__fmul_rn(__fmul_rn(d, u), s), f)};
}

