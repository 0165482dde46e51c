/*
 * check13.c: the five driver calls gorgonia.org/cu v0.9.6 makes with their
 * pre-13 signatures, through compat13/cuda.h. Compiled against a CUDA 13
 * toolkit's headers and run on a GPU (scripts/gpu-smoke.sh run), it shows
 * the shim compiles against the real header and that the wrapped
 * cuCtxCreate (NULL creation parameters) makes a context:
 *
 *   gcc -I cuda/compat13 -I /usr/local/cuda/include cuda/compat13/check13.c -o check13 -l:libcuda.so.1 && ./check13
 */
#include <cuda.h>
#include <stdio.h>

int main(void) {
    printf("CUDA_VERSION %d\n", CUDA_VERSION);
    if (cuInit(0) != CUDA_SUCCESS) {
        printf("cuInit failed: no GPU; compiled only\n");
        return 0;
    }
    CUdevice dev;
    CUcontext ctx;
    CUresult r = cuDeviceGet(&dev, 0);
    if (r == CUDA_SUCCESS) r = cuCtxCreate(&ctx, 0, dev);
    printf("cuCtxCreate(&ctx, 0, dev): %d\n", (int)r);
    if (r != CUDA_SUCCESS) return 1;
    CUdeviceptr p;
    r = cuMemAllocManaged(&p, 1 << 20, CU_MEM_ATTACH_GLOBAL);
    if (r == CUDA_SUCCESS) {
        printf("cuMemAdvise(READ_MOSTLY, dev): %d\n", (int)cuMemAdvise(p, 1 << 20, CU_MEM_ADVISE_SET_READ_MOSTLY, dev));
        printf("cuMemPrefetchAsync(dev): %d\n", (int)cuMemPrefetchAsync(p, 1 << 20, dev, 0));
        printf("cuMemPrefetchAsync(CU_DEVICE_CPU): %d\n", (int)cuMemPrefetchAsync(p, 1 << 20, CU_DEVICE_CPU, 0));
        cuCtxSynchronize();
        cuMemFree(p);
    }
    CUgraph g;
    CUgraphNode a, b, from[2], to[2];
    size_t n = 2;
    if (cuGraphCreate(&g, 0) == CUDA_SUCCESS && cuGraphAddEmptyNode(&a, g, NULL, 0) == CUDA_SUCCESS &&
        cuGraphAddEmptyNode(&b, g, NULL, 0) == CUDA_SUCCESS) {
        printf("cuGraphAddDependencies: %d\n", (int)cuGraphAddDependencies(g, &a, &b, 1));
        r = cuGraphGetEdges(g, from, to, &n);
        printf("cuGraphGetEdges: %d, %d edge(s), a->b %d\n", (int)r, (int)n, n == 1 && from[0] == a && to[0] == b);
        cuGraphDestroy(g);
    }
    cuCtxDestroy(ctx);
    return 0;
}
