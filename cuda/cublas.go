//go:build cuda

package cuda

// cuBLAS through dlopen: gorgonia.org/cu's blas package has no stream
// control and no mixed-precision GEMM, and linking libcublas would tie the
// binary to one CUDA major version. We open libcublas.so.13, .12 or .11
// (whichever the machine has; $OLLAMA_TUNE_CUBLAS names another) and call
// its functions through pointers. The types are declared here, not taken
// from cublas_v2.h, so the build needs no cuBLAS headers.

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int (*cublasCreate_t)(void**);
typedef int (*cublasDestroy_t)(void*);
typedef int (*cublasSetStream_t)(void*, void*);
typedef int (*cublasSetMathMode_t)(void*, int);
typedef int (*cublasGetVersion_t)(void*, int*);
typedef int (*cublasSgemm_t)(void*, int, int, int, int, int, const float*, const float*, int, const float*, int,
                             const float*, float*, int);
typedef int (*cublasGemmEx_t)(void*, int, int, int, int, int, const void*, const void*, int, int, const void*, int,
                              int, const void*, void*, int, int, int, int);
typedef int (*cublasGemmBatchedEx_t)(void*, int, int, int, int, int, const void*, const void* const*, int, int,
                                     const void* const*, int, int, const void*, void* const*, int, int, int, int, int);

static void* blas_lib;
static cublasCreate_t p_create;
static cublasDestroy_t p_destroy;
static cublasSetStream_t p_set_stream;
static cublasSetMathMode_t p_set_math_mode;
static cublasGetVersion_t p_get_version;
static cublasSgemm_t p_sgemm;
static cublasGemmEx_t p_gemm_ex;
static cublasGemmBatchedEx_t p_gemm_batched_ex; // optional: NULL runs the products one by one

// blas_open loads the library at path and its functions; it returns NULL
// or a message (static storage or dlerror's).
static const char* blas_open(const char* path) {
	void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!lib) return dlerror();
	p_create = (cublasCreate_t)dlsym(lib, "cublasCreate_v2");
	p_destroy = (cublasDestroy_t)dlsym(lib, "cublasDestroy_v2");
	p_set_stream = (cublasSetStream_t)dlsym(lib, "cublasSetStream_v2");
	p_set_math_mode = (cublasSetMathMode_t)dlsym(lib, "cublasSetMathMode");
	p_get_version = (cublasGetVersion_t)dlsym(lib, "cublasGetVersion_v2");
	p_sgemm = (cublasSgemm_t)dlsym(lib, "cublasSgemm_v2");
	p_gemm_ex = (cublasGemmEx_t)dlsym(lib, "cublasGemmEx");
	p_gemm_batched_ex = (cublasGemmBatchedEx_t)dlsym(lib, "cublasGemmBatchedEx");
	if (!p_create || !p_destroy || !p_set_stream || !p_set_math_mode || !p_get_version || !p_sgemm || !p_gemm_ex) {
		dlclose(lib);
		return "a cuBLAS function (cublasCreate_v2, cublasSetStream_v2, cublasSgemm_v2, cublasGemmEx, ...) is missing";
	}
	blas_lib = lib;
	return NULL;
}

static int blas_create(uintptr_t* h) {
	void* p = 0;
	int st = p_create(&p);
	*h = (uintptr_t)p;
	return st;
}
static int blas_destroy(uintptr_t h) { return p_destroy((void*)h); }
static int blas_set_stream(uintptr_t h, uintptr_t s) { return p_set_stream((void*)h, (void*)s); }
static int blas_set_math_mode(uintptr_t h, int m) { return p_set_math_mode((void*)h, m); }
static int blas_version(uintptr_t h, int* v) { return p_get_version((void*)h, v); }

static int blas_sgemm(uintptr_t h, int ta, int tb, int m, int n, int k, float alpha, uintptr_t A, int lda,
                      uintptr_t B, int ldb, float beta, uintptr_t C, int ldc) {
	return p_sgemm((void*)h, ta, tb, m, n, k, &alpha, (const float*)A, lda, (const float*)B, ldb, &beta, (float*)C, ldc);
}

static int blas_gemm_ex(uintptr_t h, int ta, int tb, int m, int n, int k, float alpha, uintptr_t A, int atype, int lda,
                        uintptr_t B, int btype, int ldb, float beta, uintptr_t C, int ctype, int ldc, int compute,
                        int algo) {
	return p_gemm_ex((void*)h, ta, tb, m, n, k, &alpha, (const void*)A, atype, lda, (const void*)B, btype, ldb, &beta,
	                 (void*)C, ctype, ldc, compute, algo);
}

static int blas_has_batched(void) { return p_gemm_batched_ex != 0; }

// blas_gemm_batched_ex: A, B and C are device arrays of count pointers.
static int blas_gemm_batched_ex(uintptr_t h, int ta, int tb, int m, int n, int k, float alpha, uintptr_t A, int atype,
                                int lda, uintptr_t B, int btype, int ldb, float beta, uintptr_t C, int ctype, int ldc,
                                int count, int compute, int algo) {
	return p_gemm_batched_ex((void*)h, ta, tb, m, n, k, &alpha, (const void* const*)A, atype, lda,
	                         (const void* const*)B, btype, ldb, &beta, (void* const*)C, ctype, ldc, count, compute, algo);
}
*/
import "C"

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"unsafe"
)

// cuBLAS enum values (cublas_api.h, library_types.h).
const (
	blasOpN = 0
	blasOpT = 1

	blasDefaultMath = 0 // no TF32: fp32 GEMMs stay IEEE fp32
	blasTF32Math    = 3 // CUBLAS_TF32_TENSOR_OP_MATH: fp32 GEMMs on TF32 tensor cores (training.tf32)

	dataR32F  = 0  // CUDA_R_32F
	dataR16BF = 14 // CUDA_R_16BF
	dataR16F  = 2  // CUDA_R_16F

	blasCompute32F = 68 // CUBLAS_COMPUTE_32F
	// CUBLAS_COMPUTE_32F_FAST_TF32: cuBLASLt's name for the TF32 math mode
	// (the TF32 pins, cublaslt.go)
	blasCompute32FFastTF32 = 77
	blasGemmDefault        = -1 // CUBLAS_GEMM_DEFAULT
)

var blasLoad struct {
	once sync.Once
	err  error
	path string
}

// loadCublas opens the cuBLAS library once per process.
func loadCublas() (string, error) {
	blasLoad.once.Do(func() {
		names := []string{"libcublas.so.13", "libcublas.so.12", "libcublas.so.11",
			"/usr/local/cuda/lib64/libcublas.so.13", "/usr/local/cuda/lib64/libcublas.so.12", "/usr/local/cuda/lib64/libcublas.so.11"}
		var msgs []string
		if blasLoad.path, names, msgs = openFirst(names, "OLLAMA_TUNE_CUBLAS", func(p *C.char) *C.char { return C.blas_open(p) }); blasLoad.path == "" {
			blasLoad.err = fmt.Errorf("cannot load cuBLAS (tried %s): %s; install the CUDA toolkit's cuBLAS (libcublas) or set OLLAMA_TUNE_CUBLAS to its path",
				strings.Join(names, ", "), strings.Join(msgs, "; "))
		}
	})
	return blasLoad.path, blasLoad.err
}

// openFirst tries open on each of names in turn ($env, when set, names the
// one to try instead) and returns the name it opened, or "" with the names
// tried and open's messages (nil: opened; else a C string).
func openFirst(names []string, env string, open func(path *C.char) *C.char) (opened string, tried, msgs []string) {
	if p := os.Getenv(env); p != "" {
		names = []string{p}
	}
	for _, n := range names {
		cn := C.CString(n)
		msg := open(cn)
		C.free(unsafe.Pointer(cn))
		if msg == nil {
			return n, names, nil
		}
		msgs = append(msgs, C.GoString(msg))
	}
	return "", names, msgs
}

// cublas is one handle bound to the backend's stream.
type cublas struct {
	h       C.uintptr_t
	version int
	tf32    bool // the math mode setTF32 set (the float32 pins stay off with it: cublaslt.go)
}

// newCublas makes a handle on stream, its float32 GEMMs IEEE or, with
// tf32, on TF32 tensor cores (setTF32).
func newCublas(stream uintptr, tf32 bool) (*cublas, error) {
	if _, err := loadCublas(); err != nil {
		return nil, err
	}
	var h C.uintptr_t
	if st := C.blas_create(&h); st != 0 {
		return nil, fmt.Errorf("cublasCreate: status %d", int(st))
	}
	b := &cublas{h: h}
	if st := C.blas_set_stream(h, C.uintptr_t(stream)); st != 0 {
		C.blas_destroy(h)
		return nil, fmt.Errorf("cublasSetStream: status %d", int(st))
	}
	if err := b.setTF32(tf32); err != nil {
		C.blas_destroy(h)
		return nil, err
	}
	var v C.int
	if C.blas_version(h, &v) == 0 {
		b.version = int(v)
	}
	return b, nil
}

// setTF32 sets the handle's math mode: TF32 tensor cores for the float32
// GEMMs (on), or IEEE float32 (off).
func (b *cublas) setTF32(on bool) error {
	mode := C.int(blasDefaultMath)
	if on {
		mode = blasTF32Math
	}
	if st := C.blas_set_math_mode(b.h, mode); st != 0 {
		return fmt.Errorf("cublasSetMathMode(%d): status %d", int(mode), int(st))
	}
	b.tf32 = on
	return nil
}

func (b *cublas) destroy() {
	if b != nil && b.h != 0 {
		C.blas_destroy(b.h)
		b.h = 0
	}
}

// gemmArgs is one row-major GEMM: C[M,N] = alpha * op(A) . op(B) + beta * C
// with op(A) [M,K] and op(B) [K,N]; A is stored [M,K] (or [K,M] when
// transA), B [K,N] (or [N,K] when transB); lda, ldb, ldc are row strides.
type gemmArgs struct {
	transA, transB bool
	M, N, K        int
	alpha, beta    float32
	A, B, C        uintptr
	lda, ldb, ldc  int
	abType         int  // dataR32F, dataR16BF or dataR16F for A and B
	cHalf          bool // C is bfloat16 (abType dataR16BF; Tensor.half), else float32
}

// blasOp is cuBLAS's operation for a transposed (or not) operand.
func blasOp(t bool) C.int {
	if t {
		return blasOpT
	}
	return blasOpN
}

// run issues the GEMM. cuBLAS is column-major: a row-major C = A.B is the
// column-major C^T = B^T.A^T, so the operands swap places.
func (b *cublas) run(g gemmArgs) error {
	if g.M == 0 || g.N == 0 {
		return nil
	}
	var st C.int
	cType := dataR32F
	if g.cHalf {
		if g.abType != dataR16BF {
			return fmt.Errorf("cuBLAS GEMM %dx%dx%d: a bfloat16 C needs bfloat16 A and B (types %d)", g.M, g.N, g.K, g.abType)
		}
		cType = dataR16BF
	}
	if g.abType == dataR32F {
		st = C.blas_sgemm(b.h, blasOp(g.transB), blasOp(g.transA), C.int(g.N), C.int(g.M), C.int(g.K), C.float(g.alpha),
			C.uintptr_t(g.B), C.int(g.ldb), C.uintptr_t(g.A), C.int(g.lda), C.float(g.beta), C.uintptr_t(g.C), C.int(g.ldc))
	} else {
		st = C.blas_gemm_ex(b.h, blasOp(g.transB), blasOp(g.transA), C.int(g.N), C.int(g.M), C.int(g.K), C.float(g.alpha),
			C.uintptr_t(g.B), C.int(g.abType), C.int(g.ldb), C.uintptr_t(g.A), C.int(g.abType), C.int(g.lda), C.float(g.beta),
			C.uintptr_t(g.C), C.int(cType), C.int(g.ldc), blasCompute32F, blasGemmDefault)
	}
	if st == blasStatusAllocFailed {
		return fmt.Errorf("cuBLAS GEMM %dx%dx%d (types %d): CUBLAS_STATUS_ALLOC_FAILED: %w", g.M, g.N, g.K, g.abType, ErrOutOfMemory)
	}
	if st != 0 {
		return fmt.Errorf("cuBLAS GEMM %dx%dx%d (types %d): status %d%s", g.M, g.N, g.K, g.abType, int(st), blasStatusHint(int(st)))
	}
	return nil
}

// batched says whether the library has cublasGemmBatchedEx.
func (b *cublas) batched() bool { return C.blas_has_batched() != 0 }

// runBatched runs count GEMMs of g's shape, types and scalars (16-bit A
// and B) whose A, B and C pointers are the device arrays As, Bs and Cs
// (row-major, as run: cuBLAS gets them swapped).
func (b *cublas) runBatched(g gemmArgs, As, Bs, Cs uintptr, count int) error {
	if g.abType == dataR32F || !b.batched() {
		return fmt.Errorf("cuBLAS batched GEMM %dx%dx%d (types %d): not available", g.M, g.N, g.K, g.abType)
	}
	cType := dataR32F
	if g.cHalf {
		cType = dataR16BF
	}
	st := C.blas_gemm_batched_ex(b.h, blasOp(g.transB), blasOp(g.transA), C.int(g.N), C.int(g.M), C.int(g.K), C.float(g.alpha),
		C.uintptr_t(Bs), C.int(g.abType), C.int(g.ldb), C.uintptr_t(As), C.int(g.abType), C.int(g.lda), C.float(g.beta),
		C.uintptr_t(Cs), C.int(cType), C.int(g.ldc), C.int(count), blasCompute32F, blasGemmDefault)
	if st == blasStatusAllocFailed {
		return fmt.Errorf("cuBLAS batched GEMM %dx%dx%d x%d: CUBLAS_STATUS_ALLOC_FAILED: %w", g.M, g.N, g.K, count, ErrOutOfMemory)
	}
	if st != 0 {
		return fmt.Errorf("cuBLAS batched GEMM %dx%dx%d x%d (types %d): status %d%s", g.M, g.N, g.K, count, g.abType, int(st), blasStatusHint(int(st)))
	}
	return nil
}

// blasStatusAllocFailed is CUBLAS_STATUS_ALLOC_FAILED.
const blasStatusAllocFailed = 3

func blasStatusHint(st int) string {
	switch st {
	case 3:
		return " (CUBLAS_STATUS_ALLOC_FAILED: out of GPU memory)"
	case 7:
		return " (CUBLAS_STATUS_INVALID_VALUE)"
	case 13:
		return " (CUBLAS_STATUS_EXECUTION_FAILED)"
	case 15:
		return " (CUBLAS_STATUS_NOT_SUPPORTED)"
	}
	return ""
}
