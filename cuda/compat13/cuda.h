/*
 * cuda.h for building gorgonia.org/cu v0.9.6 (and so the CUDA plugin)
 * against a CUDA 13 toolkit's headers.
 *
 * CUDA 13 changed the signatures of five driver API calls that cu makes:
 * cuCtxCreate (a CUctxCreateParams argument), cuMemAdvise and
 * cuMemPrefetchAsync (a CUmemLocation instead of a CUdevice, and flags),
 * cuGraphAddDependencies and cuGraphGetEdges (CUgraphEdgeData). cu's cgo
 * calls use the old ones and stop compiling. This header includes the
 * toolkit's cuda.h and, from CUDA 13 on, maps those five names to small
 * static wrappers with the old signatures over the new calls (no edge
 * data, no context parameters, a device or host location). ollama-tune
 * itself calls none of them (it uses the primary context and plain device
 * memory); the wrappers exist so that cu compiles.
 *
 * Use: put this folder before the toolkit's include folder, e.g.
 *   CGO_CFLAGS="-I$PWD/cuda/compat13 -I/usr/local/cuda/include" \
 *   CGO_LDFLAGS="-L/usr/local/cuda/lib64/stubs -lcuda" \
 *   go build -tags cuda ./cmd/ollama-tune-trainer-cuda/...
 * With CUDA 11.x or 12.x headers it changes nothing.
 */
#ifndef OLLAMA_TUNE_CUDA_COMPAT13_H
#define OLLAMA_TUNE_CUDA_COMPAT13_H

#include_next <cuda.h>

#if defined(CUDA_VERSION) && CUDA_VERSION >= 13000
#include <stddef.h>

/* The wrappers are defined while the toolkit's names still mean the
 * CUDA 13 calls; the names are redirected to them below. */
static inline CUresult ollamatune_cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev) {
    return cuCtxCreate(pctx, NULL, flags, dev);
}

/* ollamatune_location is the CUmemLocation of a pre-13 device argument:
 * CU_DEVICE_CPU (-1) is the host, anything else a device ordinal. */
static inline CUmemLocation ollamatune_location(CUdevice dev) {
    CUmemLocation loc;
    loc.type = dev == CU_DEVICE_CPU ? CU_MEM_LOCATION_TYPE_HOST : CU_MEM_LOCATION_TYPE_DEVICE;
    loc.id = dev == CU_DEVICE_CPU ? 0 : dev;
    return loc;
}

static inline CUresult ollamatune_cuMemAdvise(CUdeviceptr ptr, size_t count, CUmem_advise advice, CUdevice dev) {
    return cuMemAdvise(ptr, count, advice, ollamatune_location(dev));
}

static inline CUresult ollamatune_cuMemPrefetchAsync(CUdeviceptr ptr, size_t count, CUdevice dev, CUstream stream) {
    return cuMemPrefetchAsync(ptr, count, ollamatune_location(dev), 0, stream);
}

static inline CUresult ollamatune_cuGraphAddDependencies(CUgraph graph, const CUgraphNode *from, const CUgraphNode *to,
                                                         size_t n) {
    return cuGraphAddDependencies(graph, from, to, NULL, n);
}

static inline CUresult ollamatune_cuGraphGetEdges(CUgraph graph, CUgraphNode *from, CUgraphNode *to, size_t *n) {
    return cuGraphGetEdges(graph, from, to, NULL, n);
}

#undef cuCtxCreate
#undef cuMemAdvise
#undef cuMemPrefetchAsync
#undef cuGraphAddDependencies
#undef cuGraphGetEdges
#define cuCtxCreate ollamatune_cuCtxCreate
#define cuMemAdvise ollamatune_cuMemAdvise
#define cuMemPrefetchAsync ollamatune_cuMemPrefetchAsync
#define cuGraphAddDependencies ollamatune_cuGraphAddDependencies
#define cuGraphGetEdges ollamatune_cuGraphGetEdges
#endif /* CUDA_VERSION >= 13000 */

#endif /* OLLAMA_TUNE_CUDA_COMPAT13_H */
