/*
 * A stand-in for a CUDA 13 toolkit's cuda.h, for checking on a machine
 * with only CUDA 11.8 headers (scripts/cuda-compat13-check.sh): the next
 * cuda.h on the include path, with the five driver calls gorgonia.org/cu
 * makes redeclared with their CUDA 13 signatures and mapped the way CUDA
 * 13 maps them (cuCtxCreate -> cuCtxCreate_v4, the others -> _v2). The
 * types CUDA 13 adds are stand-ins of the right kind. Compile-only: the
 * 11.8 link stubs lack the new symbols.
 */
#ifndef OLLAMA_TUNE_STANDIN13_H
#define OLLAMA_TUNE_STANDIN13_H
#include_next <cuda.h>
#if CUDA_VERSION < 13000
#undef CUDA_VERSION
#define CUDA_VERSION 13000
typedef struct { int reserved; } CUctxCreateParams;
typedef struct { unsigned char from_port, to_port, type, reserved[5]; } CUgraphEdgeData;
#define CU_MEM_LOCATION_TYPE_HOST ((CUmemLocationType)2)
CUresult CUDAAPI cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *ctxCreateParams, unsigned int flags, CUdevice dev);
CUresult CUDAAPI cuMemAdvise_v2(CUdeviceptr devPtr, size_t count, CUmem_advise advice, CUmemLocation location);
CUresult CUDAAPI cuMemPrefetchAsync_v2(CUdeviceptr devPtr, size_t count, CUmemLocation location, unsigned int flags,
                                       CUstream hStream);
CUresult CUDAAPI cuGraphAddDependencies_v2(CUgraph hGraph, const CUgraphNode *from, const CUgraphNode *to,
                                           const CUgraphEdgeData *edgeData, size_t numDependencies);
CUresult CUDAAPI cuGraphGetEdges_v2(CUgraph hGraph, CUgraphNode *from, CUgraphNode *to, CUgraphEdgeData *edgeData,
                                    size_t *numEdges);
#undef cuCtxCreate
#undef cuMemAdvise
#undef cuMemPrefetchAsync
#undef cuGraphAddDependencies
#undef cuGraphGetEdges
#define cuCtxCreate cuCtxCreate_v4
#define cuMemAdvise cuMemAdvise_v2
#define cuMemPrefetchAsync cuMemPrefetchAsync_v2
#define cuGraphAddDependencies cuGraphAddDependencies_v2
#define cuGraphGetEdges cuGraphGetEdges_v2
#endif
#endif
