// Cross-entropy over a chunk of logits, the CUDA twin of the per-row part
// of finetune/cpu_loss.go. One block per row of logits [n,V]: the first
// maximum and its index (torch.argmax), the log-sum-exp in float64, the
// loss lse - logit[target] and, with grad, the row replaced in place by
// dlogits = gradScale * (softmax - onehot). Launched with 512 threads a
// block (the rows are long: 32064 for Phi-3); rows of a multiple of 4
// values go 16 bytes a load.
#include "common.cuh"

// ce_max keeps the first maximum: a larger value wins, a tie goes to the
// smaller index (each thread scans its values in increasing order).
#define CE_MAX(l, v)                          \
    do {                                      \
        float l_ = (l);                       \
        int v_ = (int)(v);                    \
        if (l_ > m || (v_ < arg && l_ == m)) { \
            m = l_;                           \
            arg = v_;                         \
        }                                     \
    } while (0)

extern "C" __global__ void __launch_bounds__(512) ce_rows(float* logits, const int* targets, i64 V, double* losses,
                                                          int* hits, i64 grad, double grad_scale_d) {
    __shared__ float redv[32];
    __shared__ int redi[32];
    __shared__ double redd[32];
    i64 k = blockIdx.x;
    float* row = logits + k * V;
    int target = targets[k];
    // first maximum: each thread scans its values in increasing order, then
    // the larger value wins and ties go to the smaller index.
    float m = row[0];
    int arg = 0;
    const bool vec = (V & 3) == 0;  // then every row is 16-byte aligned
    const float4* r4 = (const float4*)row;
    const i64 V4 = V >> 2;
    if (vec) {
        for (i64 q = threadIdx.x; q < V4; q += blockDim.x) {
            float4 l = r4[q];
            CE_MAX(l.x, 4 * q);
            CE_MAX(l.y, 4 * q + 1);
            CE_MAX(l.z, 4 * q + 2);
            CE_MAX(l.w, 4 * q + 3);
        }
    } else {
        for (i64 v = threadIdx.x; v < V; v += blockDim.x) CE_MAX(row[v], v);
    }
    for (int o = 16; o > 0; o >>= 1) {
        float m2 = __shfl_down_sync(0xffffffffu, m, o);
        int a2 = __shfl_down_sync(0xffffffffu, arg, o);
        if (m2 > m || (m2 == m && a2 < arg)) {
            m = m2;
            arg = a2;
        }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    if (lane == 0) {
        redv[warp] = m;
        redi[warp] = arg;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < nw; w++)
            if (redv[w] > m || (redv[w] == m && redi[w] < arg)) {
                m = redv[w];
                arg = redi[w];
            }
        redv[0] = m;
        redi[0] = arg;
    }
    __syncthreads();
    m = redv[0];
    arg = redi[0];
    double sum = 0.0;
    if (vec) {
        for (i64 q = threadIdx.x; q < V4; q += blockDim.x) {
            float4 l = r4[q];
            sum += exp((double)__fsub_rn(l.x, m)) + exp((double)__fsub_rn(l.y, m)) + exp((double)__fsub_rn(l.z, m)) +
                   exp((double)__fsub_rn(l.w, m));
        }
    } else {
        for (i64 v = threadIdx.x; v < V; v += blockDim.x) sum += exp((double)__fsub_rn(row[v], m));
    }
    sum = block_sum_double(sum, redd);
    double lse = (double)m + log(sum);
    if (threadIdx.x == 0) {
        losses[k] = lse - (double)row[target];
        hits[k] = arg == target;
    }
    if (!grad) return;
    __syncthreads();  // row[target] was read above
    float gs = (float)grad_scale_d;
    if (vec) {
        float4* w4 = (float4*)row;
        for (i64 q = threadIdx.x; q < V4; q += blockDim.x) {
            float4 l = w4[q];
            w4[q] = make_float4(__fmul_rn((float)exp((double)l.x - lse), gs), __fmul_rn((float)exp((double)l.y - lse), gs),
                                __fmul_rn((float)exp((double)l.z - lse), gs), __fmul_rn((float)exp((double)l.w - lse), gs));
        }
    } else {
        for (i64 v = threadIdx.x; v < V; v += blockDim.x) row[v] = __fmul_rn((float)exp((double)row[v] - lse), gs);
    }
    __syncthreads();
    if (threadIdx.x == 0) row[target] = __fsub_rn(row[target], gs);
}
