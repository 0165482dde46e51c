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

// adam8_block updates 256-value block b of one parameter: bitsandbytes'
// kOptimizerStatic8bit2StateBlockwise (finetune/optim adam8bitBlock). The
// whole thread block calls it. smap, umap: the signed and unsigned
// dynamic maps.
__device__ __forceinline__ void adam8_block(float* p, const float* g, unsigned char* mc, unsigned char* vc, float* absm,
                                            float* absv, i64 n, i64 b, const float* smap, const float* umap, float b1,
                                            float b2, float w1, float w2, float step_size, float eps_c2, bool decay,
                                            float decay_factor) {
    __shared__ float red[32];
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

// adamw8bit: one block of 256 threads per 256-value block of one parameter.
extern "C" __global__ void adamw8bit(float* p, const float* g, unsigned char* mc, unsigned char* vc, float* absm,
                                     float* absv, i64 n, const float* smap, const float* umap, double b1_d,
                                     double b2_d, double w1_d, double w2_d, double step_size_d, double eps_c2_d,
                                     i64 decay, double decay_factor_d) {
    adam8_block(p, g, mc, vc, absm, absv, n, blockIdx.x, smap, umap, (float)b1_d, (float)b2_d, (float)w1_d,
                (float)w2_d, (float)step_size_d, (float)eps_c2_d, decay != 0, (float)decay_factor_d);
}

// adamw8bit_multi: adamw8bit over a table of k parameters in one launch
// (one launch a step instead of one per LoRA matrix): grid (the largest
// block count, k); block x of parameter y is adamw8bit's block x. The
// table holds k values each of p, g, m codes, v codes, m absmax, v absmax
// (addresses) and n, in that order.
extern "C" __global__ void adamw8bit_multi(const u64* table, i64 k, const float* smap, const float* umap, double b1_d,
                                           double b2_d, double w1_d, double w2_d, double step_size_d,
                                           double eps_c2_d, i64 decay, double decay_factor_d) {
    i64 t = blockIdx.y;
    i64 n = (i64)table[6 * k + t];
    if ((i64)blockIdx.x * 256 >= n) return;  // the whole block leaves
    adam8_block((float*)table[t], (const float*)table[k + t], (unsigned char*)table[2 * k + t],
                (unsigned char*)table[3 * k + t], (float*)table[4 * k + t], (float*)table[5 * k + t], n, blockIdx.x,
                smap, umap, (float)b1_d, (float)b2_d, (float)w1_d, (float)w2_d, (float)step_size_d,
                (float)eps_c2_d, decay != 0, (float)decay_factor_d);
}

// Gradient-norm clipping on the device (clip_grad_norm_ without a host
// round trip), over a table of tensors: ptrs, ns (element counts), nblk
// (SumSquares' block count for each, min(ceil(n/256), 1024)) and poff (each
// tensor's first partial). The results are bit-identical to the host path
// (SumSquares per tensor, summed in order, then optim.ClipScale and Scale).

// sumsq_multi: grid (max nblk, tensors), 256 threads. Block x < nblk[t] of
// tensor t computes SumSquares' partial x: the float64 sum of squares of
// the elements it visits with the tensor's own grid stride, reduced as
// sum_squares_partial reduces it.
extern "C" __global__ void sumsq_multi(const u64* ptrs, const i64* ns, const i64* nblk, const i64* poff,
                                       double* partials) {
    __shared__ double red[32];
    i64 t = blockIdx.y;
    i64 nb = nblk[t];
    if ((i64)blockIdx.x >= nb) return;  // the whole block leaves
    const float* x = (const float*)ptrs[t];
    i64 n = ns[t];
    double s = 0.0;
    for (i64 i = blockIdx.x * (i64)256 + threadIdx.x; i < n; i += nb * 256) s += (double)x[i] * (double)x[i];
    s = block_sum_double(s, red);
    if (threadIdx.x == 0) partials[poff[t] + blockIdx.x] = s;
}

// clip_finish: one block. Each tensor's partials are added in order (as
// SumSquares adds them on the host), the tensors' sums in order, then
// norm = sqrt(total) and coef = float32(max_norm) / (float32(norm) + 1e-6)
// clamped to 1 (optim.ClipScale); max_norm <= 0 means no clipping.
extern "C" __global__ void clip_finish(const double* partials, const i64* nblk, const i64* poff, i64 ntensors,
                                       double* tsum, double max_norm, double* norm_out, float* coef_out) {
    for (i64 t = threadIdx.x; t < ntensors; t += blockDim.x) {
        double s = 0.0;
        for (i64 k = 0; k < nblk[t]; k++) s += partials[poff[t] + k];
        tsum[t] = s;
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    double ss = 0.0;
    for (i64 t = 0; t < ntensors; t++) ss += tsum[t];
    double norm = sqrt(ss);
    float coef = 1.0f;
    if (max_norm > 0.0) {
        coef = __fdiv_rn((float)max_norm, __fadd_rn((float)norm, 1e-6f));
        if (coef > 1.0f) coef = 1.0f;
    }
    *norm_out = norm;
    *coef_out = coef;
}

// scale_multi: grid (blocks, tensors): x *= coef when coef < 1, as the
// host path calls Scale only then.
extern "C" __global__ void scale_multi(const u64* ptrs, const i64* ns, const float* coef) {
    float c = *coef;
    if (!(c < 1.0f)) return;
    float* x = (float*)ptrs[blockIdx.y];
    i64 n = ns[blockIdx.y];
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        x[i] = __fmul_rn(x[i], c);
}

// The warp forms (issue 8, v19): one warp does what one 256-thread block
// did, so a block does eight blocks' work and needs no barrier. For
// Phi-3-mini's 256 LoRA matrices the block forms ran ~49,000 blocks of one
// value a thread, each two or three barriers long: sumsq_multi 111 us,
// scale_multi 83, adamw8bit_multi 242 (H200). Lane l of a warp stands for
// the block's threads l, l + 32, ..., l + 224 ("virtual warps" 0..7), and
// every sum is block_sum_double's tree replayed: each virtual warp's
// shuffle-down tree, then the tree over the eight warp sums in lanes 0..7
// and zeros above. Maxima need no order. The same bits.

// warp_block_sum_double: block_sum_double of the 256 values v[w] (thread
// 32w + lane's), in its order, for a whole warp; every lane gets it.
__device__ __forceinline__ double warp_block_sum_double(double v[8]) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int w = 0; w < 8; w++) v[w] += __shfl_down_sync(0xffffffffu, v[w], o);
    // lane 0 holds the eight warp sums; lane w < 8 takes warp sum w.
    double x = 0.0;
#pragma unroll
    for (int w = 0; w < 8; w++) {
        const double sw = __shfl_sync(0xffffffffu, v[w], 0);
        if (lane == w) x = sw;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
    return __shfl_sync(0xffffffffu, x, 0);
}

// sumsq_multi_w: sumsq_multi with a warp a partial: grid (ceil(max nblk /
// 8), tensors), 256 threads; warp w of block x computes partial 8x + w.
extern "C" __global__ void sumsq_multi_w(const u64* ptrs, const i64* ns, const i64* nblk, const i64* poff,
                                         double* partials) {
    const i64 t = blockIdx.y, nb = nblk[t];
    const int lane = threadIdx.x & 31;
    const i64 x = 8 * (i64)blockIdx.x + (threadIdx.x >> 5);
    if (x >= nb) return;  // the whole warp leaves
    const float* g = (const float*)ptrs[t];
    const i64 n = ns[t];
    double s[8];
#pragma unroll
    for (int w = 0; w < 8; w++) {
        s[w] = 0.0;
        for (i64 i = x * 256 + 32 * w + lane; i < n; i += nb * 256) s[w] += (double)g[i] * (double)g[i];
    }
    const double r = warp_block_sum_double(s);
    if (lane == 0) partials[poff[t] + x] = r;
}

// scale_multi_w: scale_multi with up to eight values a thread (any
// mapping gives each value x * coef): grid (ceil(max n / 2048), tensors).
extern "C" __global__ void scale_multi_w(const u64* ptrs, const i64* ns, const float* coef) {
    const float c = *coef;
    if (!(c < 1.0f)) return;
    float* x = (float*)ptrs[blockIdx.y];
    const i64 n = ns[blockIdx.y], stride = (i64)gridDim.x * blockDim.x;
    i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n; i += 4 * stride) {
        float v[4];
#pragma unroll
        for (int j = 0; j < 4; j++) v[j] = x[i + j * stride];
#pragma unroll
        for (int j = 0; j < 4; j++) x[i + j * stride] = __fmul_rn(v[j], c);
    }
    for (; i < n; i += stride) x[i] = __fmul_rn(x[i], c);
}

// warp_max_float: the maximum of a warp's values (all lanes get it).
__device__ __forceinline__ float warp_max_float(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// adamw8bit_multi_w: adamw8bit_multi with a warp a 256-value block (lane l
// takes values l, l + 32, ..., l + 224 of it): adam8_block's arithmetic
// value for value, its two block maxima as warp maxima (exact in any
// order). Grid (ceil(max blocks / 8), k), 256 threads.
extern "C" __global__ void adamw8bit_multi_w(const u64* table, i64 k, const float* smap, const float* umap,
                                             double b1_d, double b2_d, double w1_d, double w2_d, double step_size_d,
                                             double eps_c2_d, i64 decay_, double decay_factor_d) {
    const i64 t = blockIdx.y;
    const i64 n = (i64)table[6 * k + t];
    const i64 b = 8 * (i64)blockIdx.x + (threadIdx.x >> 5);
    if (b * 256 >= n) return;  // the whole warp leaves
    float* p = (float*)table[t];
    const float* g = (const float*)table[k + t];
    unsigned char* mc = (unsigned char*)table[2 * k + t];
    unsigned char* vc = (unsigned char*)table[3 * k + t];
    float* absm = (float*)table[4 * k + t];
    float* absv = (float*)table[5 * k + t];
    const float b1 = (float)b1_d, b2 = (float)b2_d, w1 = (float)w1_d, w2 = (float)w2_d;
    const float step_size = (float)step_size_d, eps_c2 = (float)eps_c2_d, decay_factor = (float)decay_factor_d;
    const bool decay = decay_ != 0;
    const int lane = threadIdx.x & 31;
    const float am1 = absm[b], am2 = absv[b];
    float gj[8], s1[8], s2[8];
    unsigned char c1[8], c2[8];
    float m1 = 0.0f, m2 = 0.0f;  // the maxima of fabsf(s1), fabsf(s2) over the lane's values (fmaxf, as block_max_float)
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const i64 i = b * 256 + 32 * j + lane;
        gj[j] = 0.0f, c1[j] = 128, c2[j] = 0;
        if (i < n) gj[j] = g[i], c1[j] = mc[i], c2[j] = vc[i];
    }
#pragma unroll
    for (int j = 0; j < 8; j++) {
        s1[j] = 0.0f, s2[j] = 0.0f;
        if (finite32(gj[j])) {
            const float x2 = __fmul_rn(umap[c2[j]], am2);
            s2[j] = __fadd_rn(__fmul_rn(x2, b2), __fmul_rn(__fmul_rn(w2, gj[j]), gj[j]));
            const float x1 = __fmul_rn(smap[c1[j]], am1);
            s1[j] = __fadd_rn(__fmul_rn(x1, b1), __fmul_rn(w1, gj[j]));
        }
        m1 = j ? fmaxf(m1, fabsf(s1[j])) : fabsf(s1[j]);
        m2 = j ? fmaxf(m2, fabsf(s2[j])) : fabsf(s2[j]);
    }
    const float max1 = warp_max_float(m1), max2 = warp_max_float(m2);
    if (lane == 0) {
        absm[b] = max1;
        absv[b] = max2;
    }
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const i64 i = b * 256 + 32 * j + lane;
        if (i >= n) break;
        if (finite32(gj[j])) {
            float pi = __fadd_rn(p[i], __fmul_rn(step_size, __fdiv_rn(s1[j], __fadd_rn(__fsqrt_rn(s2[j]), eps_c2))));
            if (decay) pi = __fmul_rn(pi, decay_factor);
            p[i] = pi;
        }
        unsigned char q1 = quantize_dynamic(smap, __fdiv_rn(s1[j], max1));
        const bool code_neg = __float_as_uint(smap[q1]) >> 31, val_neg = __float_as_uint(s1[j]) >> 31;
        if (code_neg != val_neg) {
            if (s1[j] > 0.0f)
                q1++;
            else
                q1--;
        }
        mc[i] = q1;
        vc[i] = quantize_dynamic(umap, __fdiv_rn(s2[j], max2));
    }
}

// bnb_adam32: bitsandbytes' 32-bit Adam (kOptimizer32bit2State, ADAM),
// which its 8-bit optimizers apply to parameters under 4096 values
// (finetune/optim.BnbAdam32); p, g, m, v [n], weight decay after the
// update:
//   m = m*b1 + w1*g, v = v*b2 + w2*(g*g),
//   p = p + step_size * (m / (sqrt(v) + eps_c2)), p = p * decay_factor.
extern "C" __global__ void bnb_adam32(float* p, const float* g, float* m, float* v, i64 n, double b1_d, double b2_d,
                                      double w1_d, double w2_d, double step_size_d, double eps_c2_d, i64 decay,
                                      double decay_factor_d) {
    float b1 = (float)b1_d, b2 = (float)b2_d, w1 = (float)w1_d, w2 = (float)w2_d;
    float step_size = (float)step_size_d, eps_c2 = (float)eps_c2_d, decay_factor = (float)decay_factor_d;
    FOR_N(i, n) {
        float gi = g[i];
        float mi = __fadd_rn(__fmul_rn(m[i], b1), __fmul_rn(w1, gi));
        float vi = __fadd_rn(__fmul_rn(v[i], b2), __fmul_rn(w2, __fmul_rn(gi, gi)));
        float pi = __fadd_rn(p[i], __fmul_rn(step_size, __fdiv_rn(mi, __fadd_rn(__fsqrt_rn(vi), eps_c2))));
        if (decay) pi = __fmul_rn(pi, decay_factor);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }
}
