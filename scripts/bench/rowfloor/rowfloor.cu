// rowfloor: the copy floor of the LoRA row kernels' shape (issue 8, v17).
// The row kernels (cuda/kernels/lora.cu) read a float32 [T,K] activation
// and write its bfloat16 copy (and, in the backward's recompute, the
// bfloat16 copy of its dropout), one wave of T/8 blocks of 1024 threads,
// 8 rows a block. These kernels do only the bytes, in that shape and in
// others, so that the row kernels' time splits into what their shape costs
// and what their arithmetic costs:
//   onewave   T/8 blocks x 1024 threads, the row kernels' lanes and chunks
//   onewave2  the same, all loads first, a block barrier, then the stores
//             (the norm kernels' two phases)
//   rows      T blocks x 256 threads, one row a block
//   flat      a grid-stride loop, 8 values a thread an iteration
// each with one output (yh) and two (yh and xd16). Inputs rotate over
// enough buffers to leave the L2 cache (60 MB on an H200).
//
//   nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/rowfloor rowfloor.cu && /tmp/rowfloor
// (on the GPU machine: this repository's CUDA 11.8 toolchain has no host
// compiler here).
#include <cuda_bf16.h>
#include <cstdio>
#include <vector>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); return 1; } } while (0)

__device__ __forceinline__ uint4 pack8(float4 a, float4 b) {
    __nv_bfloat162 p0 = __floats2bfloat162_rn(a.x, a.y), p1 = __floats2bfloat162_rn(a.z, a.w);
    __nv_bfloat162 p2 = __floats2bfloat162_rn(b.x, b.y), p3 = __floats2bfloat162_rn(b.z, b.w);
    return make_uint4(*(unsigned*)&p0, *(unsigned*)&p1, *(unsigned*)&p2, *(unsigned*)&p3);
}

// lane (g, c) of warp w: row 8*blockIdx.x + g, columns 32q + 8c .. +7 for
// chunks q = w, w + 32, ... (lora_rows_body's layout).
template <int NQ, bool TWO, bool BARRIER>
__global__ void __launch_bounds__(1024) onewave(const float* __restrict__ x, __nv_bfloat16* __restrict__ yh,
                                                __nv_bfloat16* __restrict__ xd, int K) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const long t = (long)blockIdx.x * 8 + g;
    const float* row = x + t * K;
    float4 a[NQ], b[NQ];
#pragma unroll
    for (int i = 0; i < NQ; i++) {
        const int k = ((w + 32 * i) << 5) + 8 * c;
        if (k < K) a[i] = *(const float4*)(row + k), b[i] = *(const float4*)(row + k + 4);
    }
    if (BARRIER) __syncthreads();
#pragma unroll
    for (int i = 0; i < NQ; i++) {
        const int k = ((w + 32 * i) << 5) + 8 * c;
        if (k >= K) continue;
        uint4 o = pack8(a[i], b[i]);
        *(uint4*)(yh + t * K + k) = o;
        if (TWO) {
            o.x ^= 1u;  // another value: the dropout copy
            *(uint4*)(xd + t * K + k) = o;
        }
    }
}

// splitk: the 8 rows' columns split over S blocks of W warps (grid
// (T/8, S)): more, smaller blocks in the same lane layout, several
// resident an SM.
template <int NQ, int W>
__global__ void __launch_bounds__(W * 32) splitk(const float* __restrict__ x, __nv_bfloat16* __restrict__ yh, int K) {
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, g = lane >> 2, c = lane & 3;
    const long t = (long)blockIdx.x * 8 + g;
    const int k0 = blockIdx.y * (K / gridDim.y);
    const float* row = x + t * K + k0;
    float4 a[NQ], b[NQ];
#pragma unroll
    for (int i = 0; i < NQ; i++) {
        const int k = ((w + W * i) << 5) + 8 * c;
        a[i] = *(const float4*)(row + k), b[i] = *(const float4*)(row + k + 4);
    }
#pragma unroll
    for (int i = 0; i < NQ; i++) {
        const int k = ((w + W * i) << 5) + 8 * c;
        *(uint4*)(yh + t * K + k0 + k) = pack8(a[i], b[i]);
    }
}

// one row a block, 256 threads, 8 values a thread a round
template <bool TWO>
__global__ void __launch_bounds__(256) rows(const float* __restrict__ x, __nv_bfloat16* __restrict__ yh,
                                            __nv_bfloat16* __restrict__ xd, int K) {
    const long t = blockIdx.x;
    for (int k = 8 * threadIdx.x; k < K; k += 8 * blockDim.x) {
        const float4 a = *(const float4*)(x + t * K + k), b = *(const float4*)(x + t * K + k + 4);
        uint4 o = pack8(a, b);
        *(uint4*)(yh + t * K + k) = o;
        if (TWO) {
            o.x ^= 1u;
            *(uint4*)(xd + t * K + k) = o;
        }
    }
}

template <bool TWO>
__global__ void __launch_bounds__(256) flat(const float* __restrict__ x, __nv_bfloat16* __restrict__ yh,
                                            __nv_bfloat16* __restrict__ xd, long n) {
    for (long i = 8 * ((long)blockIdx.x * blockDim.x + threadIdx.x); i < n; i += 8L * gridDim.x * blockDim.x) {
        const float4 a = *(const float4*)(x + i), b = *(const float4*)(x + i + 4);
        uint4 o = pack8(a, b);
        *(uint4*)(yh + i) = o;
        if (TWO) {
            o.x ^= 1u;
            *(uint4*)(xd + i) = o;
        }
    }
}

int main() {
    const int T = 1024, NB = 8, iters = 200;
    for (int K : {3072, 8192}) {
        const long n = (long)T * K;
        std::vector<float*> xs(NB);
        std::vector<__nv_bfloat16*> ys(NB), ds(NB);
        for (int i = 0; i < NB; i++) {
            CK(cudaMalloc(&xs[i], 4 * n));
            CK(cudaMalloc(&ys[i], 2 * n));
            CK(cudaMalloc(&ds[i], 2 * n));
            CK(cudaMemset(xs[i], 0x3f, 4 * n));
        }
        cudaEvent_t e0, e1;
        cudaEventCreate(&e0), cudaEventCreate(&e1);
        auto time = [&](const char* name, auto launch, double mb) {
            for (int i = 0; i < 10; i++) launch(i % NB);
            cudaEventRecord(e0);
            for (int i = 0; i < iters; i++) launch(i % NB);
            cudaEventRecord(e1);
            cudaEventSynchronize(e1);
            float ms;
            cudaEventElapsedTime(&ms, e0, e1);
            const double us = 1e3 * ms / iters;
            printf("K %5d  %-22s %7.2f us  %6.1f MB  %5.2f TB/s\n", K, name, us, mb, mb / us);
        };
        const double one = (4.0 * n + 2.0 * n) / 1e6, two = (4.0 * n + 4.0 * n) / 1e6;
        if (K == 3072) {
            time("onewave yh", [&](int i) { onewave<3, false, false><<<T / 8, 1024>>>(xs[i], ys[i], ds[i], K); }, one);
            time("onewave yh+xd", [&](int i) { onewave<3, true, false><<<T / 8, 1024>>>(xs[i], ys[i], ds[i], K); }, two);
            time("onewave2 yh (barrier)", [&](int i) { onewave<3, false, true><<<T / 8, 1024>>>(xs[i], ys[i], ds[i], K); }, one);
            time("onewave2 yh+xd", [&](int i) { onewave<3, true, true><<<T / 8, 1024>>>(xs[i], ys[i], ds[i], K); }, two);
            time("splitk 2 x 16 warps yh", [&](int i) { splitk<3, 16><<<dim3(T / 8, 2), 512>>>(xs[i], ys[i], K); }, one);
            time("splitk 4 x 8 warps yh", [&](int i) { splitk<3, 8><<<dim3(T / 8, 4), 256>>>(xs[i], ys[i], K); }, one);
            time("splitk 12 x 8 warps yh", [&](int i) { splitk<1, 8><<<dim3(T / 8, 12), 256>>>(xs[i], ys[i], K); }, one);
        } else {
            time("onewave yh", [&](int i) { onewave<8, false, false><<<T / 8, 1024>>>(xs[i], ys[i], ds[i], K); }, one);
            time("onewave yh+xd", [&](int i) { onewave<8, true, false><<<T / 8, 1024>>>(xs[i], ys[i], ds[i], K); }, two);
        }
        time("rows yh", [&](int i) { rows<false><<<T, 256>>>(xs[i], ys[i], ds[i], K); }, one);
        time("rows yh+xd", [&](int i) { rows<true><<<T, 256>>>(xs[i], ys[i], ds[i], K); }, two);
        time("flat yh", [&](int i) { flat<false><<<132 * 8, 256>>>(xs[i], ys[i], ds[i], n); }, one);
        time("flat yh+xd", [&](int i) { flat<true><<<132 * 8, 256>>>(xs[i], ys[i], ds[i], n); }, two);
        CK(cudaGetLastError());
        CK(cudaDeviceSynchronize());
        for (int i = 0; i < NB; i++) cudaFree(xs[i]), cudaFree(ys[i]), cudaFree(ds[i]);
    }
    return 0;
}
