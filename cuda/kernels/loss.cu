// Cross-entropy over a chunk of logits, the CUDA twin of the per-row part
// of finetune/cpu_loss.go. One block per row of logits [n,V]: the first
// maximum and its index (torch.argmax), the log-sum-exp in float64, the
// loss lse - logit[target] and, with grad, the row replaced in place by
// dlogits = gradScale * (softmax - onehot).
#include "common.cuh"

extern "C" __global__ void ce_rows(float* logits, const int* targets, i64 V, double* losses, int* hits,
                                   i64 grad, double grad_scale_d) {
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
    for (i64 v = threadIdx.x; v < V; v += blockDim.x) {
        float l = row[v];
        if (l > m || (v < arg && l == m)) {
            m = l;
            arg = (int)v;
        }
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
    for (i64 v = threadIdx.x; v < V; v += blockDim.x) sum += exp((double)__fsub_rn(row[v], m));
    sum = block_sum_double(sum, redd);
    double lse = (double)m + log(sum);
    if (threadIdx.x == 0) {
        losses[k] = lse - (double)row[target];
        hits[k] = arg == target;
    }
    if (!grad) return;
    __syncthreads();  // row[target] was read above
    float gs = (float)grad_scale_d;
    for (i64 v = threadIdx.x; v < V; v += blockDim.x) row[v] = __fmul_rn((float)exp((double)row[v] - lse), gs);
    __syncthreads();
    if (threadIdx.x == 0) row[target] = __fsub_rn(row[target], gs);
}
