// AdamW (torch.optim.AdamW as torch's CPU kernel rounds it) and
// bitsandbytes' blockwise 8-bit AdamW, the CUDA twins of finetune/optim:
// every float32 operation is one correctly rounded intrinsic, fused only
// where the reference fuses (fmaf in torch's lerp and addcmul), so the
// results are bit-identical to the CPU's. The scalar constants are computed
// on the host exactly as the reference does and passed in.
#include "common.cuh"

// adamw: p, g, m, v [n].
//   p = p * decay (decoupled), m = fma(lerp_coef, g - m, from_g ? g : m),
//   v = fma(w2*g, g, v*b2), denom = sqrt(v)/bc2_sqrt + eps,
//   p = p + (neg_step*m)/denom.
extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, i64 n, double decay_d,
                                 i64 decoupled, double lerp_coef_d, i64 from_g, double b2_d, double w2_d,
                                 double bc2_sqrt_d, double eps_d, double neg_step_d) {
    float decay = (float)decay_d, lerp_coef = (float)lerp_coef_d, b2 = (float)b2_d, w2 = (float)w2_d;
    float bc2_sqrt = (float)bc2_sqrt_d, eps = (float)eps_d, neg_step = (float)neg_step_d;
    FOR_N(i, n) {
        float pi = p[i], gi = g[i], mi = m[i];
        if (decoupled) pi = __fmul_rn(pi, decay);
        float base = from_g ? gi : mi;
        mi = __fmaf_rn(lerp_coef, __fsub_rn(gi, mi), base);
        float vi = __fmaf_rn(__fmul_rn(w2, gi), gi, __fmul_rn(v[i], b2));
        float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
        p[i] = __fadd_rn(pi, __fdiv_rn(__fmul_rn(neg_step, mi), denom));
        m[i] = mi;
        v[i] = vi;
    }
}

__device__ __forceinline__ bool finite32(float x) { return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u; }

// adamw8bit: one block of 256 threads per 256-value block
// (kOptimizerStatic8bit2StateBlockwise, finetune/optim adam8bitBlock).
// smap, umap: the signed and unsigned dynamic maps.
extern "C" __global__ void adamw8bit(float* p, const float* g, unsigned char* mc, unsigned char* vc, float* absm,
                                     float* absv, i64 n, const float* smap, const float* umap, double b1_d,
                                     double b2_d, double w1_d, double w2_d, double step_size_d, double eps_c2_d,
                                     i64 decay, double decay_factor_d) {
    __shared__ float red[32];
    float b1 = (float)b1_d, b2 = (float)b2_d, w1 = (float)w1_d, w2 = (float)w2_d;
    float step_size = (float)step_size_d, eps_c2 = (float)eps_c2_d, decay_factor = (float)decay_factor_d;
    i64 b = blockIdx.x;
    i64 i = b * 256 + threadIdx.x;
    bool valid = i < n;
    float gj = 0.0f;
    unsigned char c1 = 128, c2 = 0;  // padding lanes: gradient 0, codes 128 and 0
    if (valid) {
        gj = g[i];
        c1 = mc[i];
        c2 = vc[i];
    }
    float am1 = absm[b], am2 = absv[b];
    float s1 = 0.0f, s2 = 0.0f;
    if (finite32(gj)) {
        float x2 = __fmul_rn(umap[c2], am2);
        s2 = __fadd_rn(__fmul_rn(x2, b2), __fmul_rn(__fmul_rn(w2, gj), gj));
        float x1 = __fmul_rn(smap[c1], am1);
        s1 = __fadd_rn(__fmul_rn(x1, b1), __fmul_rn(w1, gj));
    }
    float max1 = block_max_float(fabsf(s1), red);
    float max2 = block_max_float(fabsf(s2), red);
    if (threadIdx.x == 0) {
        absm[b] = max1;
        absv[b] = max2;
    }
    if (!valid) return;
    if (finite32(gj)) {
        float pi = __fadd_rn(p[i], __fmul_rn(step_size, __fdiv_rn(s1, __fadd_rn(__fsqrt_rn(s2), eps_c2))));
        if (decay) pi = __fmul_rn(pi, decay_factor);
        p[i] = pi;
    }
    unsigned char q1 = quantize_dynamic(smap, __fdiv_rn(s1, max1));
    bool code_neg = __float_as_uint(smap[q1]) >> 31, val_neg = __float_as_uint(s1) >> 31;
    if (code_neg != val_neg) {
        if (s1 > 0.0f)
            q1++;
        else
            q1--;
    }
    mc[i] = q1;
    vc[i] = quantize_dynamic(umap, __fdiv_rn(s2, max2));
}
