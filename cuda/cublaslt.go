//go:build cuda

package cuda

// Pinned cuBLASLt configurations (issue 8, v21). cublasGemmEx takes the
// kernel cuBLAS's heuristic picks. scripts/bench/cublaslt_enum.cu timed
// every configuration cuBLASLt 13.1 offers for the base GEMMs at
// Phi-3-mini's step shapes (1,024 tokens) on an H200: for seven of them a
// fixed configuration runs 1-3% faster than gemmEx's pick and gives its
// bits. ltPins lists them.
//
// A GEMM runs through cublasLtMatmul with its pin only where all of this
// holds, and through gemmEx as before everywhere else:
//   - its shape and types are a pin's;
//   - the GPU is sm_90 and the library cuBLASLt 13.1, where the pins were
//     measured and their bits compared;
//   - cublasLtMatmulAlgoCheck accepts the configuration without a
//     workspace;
//   - A, B and C are 256-byte aligned (what the heuristic assumes).
// The library is opened with dlopen, as cuBLAS is (cublas.go).
// OLLAMA_TUNE_CUDA_REFERENCE=lt-pin turns the pins off (the A/B).
// TestGemmPinned compares every pin with gemmEx bit for bit.

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// cublasLtMatmulAlgo_t and cublasLtMatmulHeuristicResult_t (cublasLt.h).
typedef struct { uint64_t data[8]; } lt_algo;
typedef struct { lt_algo algo; size_t workspace; int state; float waves; int reserved[4]; } lt_heur;

typedef int (*lt_create_t)(void**);
typedef int (*lt_destroy_t)(void*);
typedef size_t (*lt_version_t)(void);
typedef int (*lt_desc_create_t)(void**, int, int);
typedef int (*lt_desc_set_t)(void*, int, const void*, size_t);
typedef int (*lt_layout_create_t)(void**, int, uint64_t, uint64_t, int64_t);
typedef int (*lt_obj_destroy_t)(void*);
typedef int (*lt_algo_init_t)(void*, int, int, int, int, int, int, int, lt_algo*);
typedef int (*lt_cfg_set_t)(lt_algo*, int, const void*, size_t);
typedef int (*lt_cfg_get_t)(const lt_algo*, int, void*, size_t, size_t*);
typedef int (*lt_check_t)(void*, void*, void*, void*, void*, void*, const lt_algo*, lt_heur*);
typedef int (*lt_matmul_t)(void*, void*, const void*, const void*, void*, const void*, void*, const void*, const void*,
                           void*, void*, void*, const lt_algo*, void*, size_t, void*);

static lt_create_t lt_p_create;
static lt_destroy_t lt_p_destroy;
static lt_version_t lt_p_version;
static lt_desc_create_t lt_p_desc_create;
static lt_desc_set_t lt_p_desc_set;
static lt_obj_destroy_t lt_p_desc_destroy;
static lt_layout_create_t lt_p_layout_create;
static lt_obj_destroy_t lt_p_layout_destroy;
static lt_algo_init_t lt_p_algo_init;
static lt_cfg_set_t lt_p_cfg_set;
static lt_cfg_get_t lt_p_cfg_get;
static lt_check_t lt_p_check;
static lt_matmul_t lt_p_matmul;

static const char* lt_open(const char* path) {
	void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!lib) return dlerror();
	lt_p_create = (lt_create_t)dlsym(lib, "cublasLtCreate");
	lt_p_destroy = (lt_destroy_t)dlsym(lib, "cublasLtDestroy");
	lt_p_version = (lt_version_t)dlsym(lib, "cublasLtGetVersion");
	lt_p_desc_create = (lt_desc_create_t)dlsym(lib, "cublasLtMatmulDescCreate");
	lt_p_desc_set = (lt_desc_set_t)dlsym(lib, "cublasLtMatmulDescSetAttribute");
	lt_p_desc_destroy = (lt_obj_destroy_t)dlsym(lib, "cublasLtMatmulDescDestroy");
	lt_p_layout_create = (lt_layout_create_t)dlsym(lib, "cublasLtMatrixLayoutCreate");
	lt_p_layout_destroy = (lt_obj_destroy_t)dlsym(lib, "cublasLtMatrixLayoutDestroy");
	lt_p_algo_init = (lt_algo_init_t)dlsym(lib, "cublasLtMatmulAlgoInit");
	lt_p_cfg_set = (lt_cfg_set_t)dlsym(lib, "cublasLtMatmulAlgoConfigSetAttribute");
	lt_p_cfg_get = (lt_cfg_get_t)dlsym(lib, "cublasLtMatmulAlgoConfigGetAttribute");
	lt_p_check = (lt_check_t)dlsym(lib, "cublasLtMatmulAlgoCheck");
	lt_p_matmul = (lt_matmul_t)dlsym(lib, "cublasLtMatmul");
	if (!lt_p_create || !lt_p_destroy || !lt_p_version || !lt_p_desc_create || !lt_p_desc_set || !lt_p_desc_destroy ||
	    !lt_p_layout_create || !lt_p_layout_destroy || !lt_p_algo_init || !lt_p_cfg_set || !lt_p_cfg_get || !lt_p_check ||
	    !lt_p_matmul) {
		dlclose(lib);
		return "a cuBLASLt function (cublasLtCreate, cublasLtMatmulAlgoCheck, cublasLtMatmul, ...) is missing";
	}
	return NULL;
}

static size_t lt_version(void) { return lt_p_version(); }
static int lt_create(uintptr_t* h) {
	void* p = 0;
	int st = lt_p_create(&p);
	*h = (uintptr_t)p;
	return st;
}
static void lt_destroy(uintptr_t h) { lt_p_destroy((void*)h); }

// lt_plan: one GEMM's descriptors (column-major, cuBLAS's view) and its
// configured algorithm.
typedef struct {
	uintptr_t desc, a, b, c;
	lt_algo algo;
} lt_plan;

// lt_setattr sets a configuration attribute at its own width, which a
// first get with no buffer reports (2 or 4 bytes: set at 4, the Hopper
// kernels refuse every configuration; cublaslt_enum.cu, v20).
static int lt_setattr(lt_algo* a, int attr, int64_t v) {
	size_t n = 0;
	int st = lt_p_cfg_get(a, attr, NULL, 0, &n);
	if (st != 0) return st;
	if (n == 0 || n > 8) return -1;
	unsigned char buf[8];
	memcpy(buf, &v, 8); // little-endian: the low bytes
	return lt_p_cfg_set(a, attr, buf, n);
}

static void lt_plan_free(lt_plan* p) {
	if (p->desc) lt_p_desc_destroy((void*)p->desc);
	if (p->a) lt_p_layout_destroy((void*)p->a);
	if (p->b) lt_p_layout_destroy((void*)p->b);
	if (p->c) lt_p_layout_destroy((void*)p->c);
	memset(p, 0, sizeof *p);
}

// lt_plan_make fills p for D = C = alpha op(A) op(B) + beta C, column-major
// m x n x k, A of type ab with leading dimension lda (op T: stored k x m),
// B likewise (op T: stored n x k), C of type ct: float32 compute and
// scale, no split-K, cfg = {algorithm id, tile, stages, custom option,
// cluster shape}. It returns 0, or the step that failed (1 descriptor, 2
// its transposes, 3 a layout, 4 the algorithm, 5 an attribute, 6 the
// check) with cuBLAS's status in *st, and the workspace the check asks for
// in *ws.
static int lt_plan_make(uintptr_t h, lt_plan* p, int opA, int opB, uint64_t m, uint64_t n, uint64_t k, int ab,
                        int64_t lda, int64_t ldb, int ct, int64_t ldc, const int* cfg, size_t* ws, int* st) {
	enum { compute32F = 68, r32F = 0, transA = 3, transB = 4 };
	enum { tileID = 1, splitK = 2, custom = 5, stagesID = 6, clusterID = 8 };
	memset(p, 0, sizeof *p);
	*ws = 0;
	void* o = 0;
	if ((*st = lt_p_desc_create(&o, compute32F, r32F))) return 1;
	p->desc = (uintptr_t)o;
	if ((*st = lt_p_desc_set(o, transA, &opA, sizeof opA)) || (*st = lt_p_desc_set(o, transB, &opB, sizeof opB))) return 2;
	o = 0;
	if ((*st = lt_p_layout_create(&o, ab, opA ? k : m, opA ? m : k, lda))) return 3;
	p->a = (uintptr_t)o;
	o = 0;
	if ((*st = lt_p_layout_create(&o, ab, opB ? n : k, opB ? k : n, ldb))) return 3;
	p->b = (uintptr_t)o;
	o = 0;
	if ((*st = lt_p_layout_create(&o, ct, m, n, ldc))) return 3;
	p->c = (uintptr_t)o;
	if ((*st = lt_p_algo_init((void*)h, compute32F, r32F, ab, ab, ct, ct, cfg[0], &p->algo))) return 4;
	const int attrs[4] = {tileID, stagesID, custom, clusterID};
	for (int i = 0; i < 4; i++)
		if ((*st = lt_setattr(&p->algo, attrs[i], cfg[i + 1]))) return 5;
	if ((*st = lt_setattr(&p->algo, splitK, 1))) return 5;
	lt_heur r;
	memset(&r, 0, sizeof r);
	if ((*st = lt_p_check((void*)h, (void*)p->desc, (void*)p->a, (void*)p->b, (void*)p->c, (void*)p->c, &p->algo, &r))) return 6;
	*ws = r.workspace;
	return 0;
}

// lt_matmul runs p in place (D = C) on stream s without a workspace.
static int lt_matmul(uintptr_t h, const lt_plan* p, float alpha, uintptr_t A, uintptr_t B, float beta, uintptr_t C, uintptr_t s) {
	return lt_p_matmul((void*)h, (void*)p->desc, &alpha, (const void*)A, (void*)p->a, (const void*)B, (void*)p->b, &beta,
	                   (const void*)C, (void*)p->c, (void*)C, (void*)p->c, &p->algo, NULL, 0, (void*)s);
}
*/
import "C"

import (
	"fmt"
	"strings"
	"sync"
)

// ltConfig is one cuBLASLt configuration: algorithm id, tile id, stages
// id, custom option and cluster shape id (cublasLt.h's enums; cluster 5 is
// CUBLASLT_CLUSTER_SHAPE_1x2x1), without split-K.
type ltConfig struct{ algo, tile, stages, custom, cluster int }

// ltPin is one row-major GEMM shape of the step as the profile names it
// ("gemm bf16 MxNxK"; transB: the forwards' x . W^T, else the dx products'
// dout . W), bfloat16 A and B, C bfloat16 (cHalf) or float32, and its
// configuration.
type ltPin struct {
	name    string
	transB  bool
	M, N, K int
	cHalf   bool
	cfg     ltConfig
}

// ltPins: cublaslt_enum.cu's fastest configuration with gemmEx's bits for
// each base GEMM of Phi-3-mini at 1,024 tokens, ranked with its operands
// rotating through four sets past the L2 cache, as the step reads weights
// just dequantized (H200, cuBLASLt 13.1, BENCHMARKS.md v21; us a GEMM,
// gemmEx -> pinned, cold). The warm ranking (operands in L2) promised up
// to 16% (qkv_proj's forward 92.3 -> 77.2 us) but that gain did not reach
// the step. The folded linears' forwards have K = in + 8 (the LoRA
// up-projection's columns, lora_bf16.go). gate_up_proj's forward is not
// here: gemmEx's pick was the fastest (156.6 us cold).
var ltPins = []ltPin{
	{"qkv_proj forward", true, 1024, 9216, 3080, true, ltConfig{66, 186, 35, 4, 3}},  // 85.6 -> 84.6
	{"o_proj forward", true, 1024, 3072, 3080, false, ltConfig{66, 31, 35, 4, 5}},    // 30.6 -> 30.0
	{"down_proj forward", true, 1024, 3072, 8200, false, ltConfig{66, 31, 35, 6, 5}}, // 73.3 -> 72.0
	{"qkv_proj dx", false, 1024, 3072, 9216, false, ltConfig{66, 31, 35, 6, 5}},      // 80.1 -> 78.0
	{"o_proj dx", false, 1024, 3072, 3072, false, ltConfig{66, 31, 35, 6, 5}},        // 29.4 -> 28.8
	{"gate_up_proj dx", false, 1024, 3072, 16384, false, ltConfig{66, 31, 35, 6, 5}}, // 136.2 -> 133.9
	{"down_proj dx", false, 1024, 8192, 3072, false, ltConfig{66, 23, 35, 5, 5}},     // 73.2 -> 71.6
}

// ltPinned is whether the pins are on: OLLAMA_TUNE_CUDA_REFERENCE=lt-pin
// turns them off.
var ltPinned = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "lt-pin")

// ltVersionMin and ltVersionEnd bound the cuBLASLt versions the pins were
// measured with (cublasLtGetVersion: 130100 is 13.1.0).
const ltVersionMin, ltVersionEnd = 130100, 130200

// ltKey is a GEMM's whole layout: a plan's descriptors hold the strides.
// plans keeps every layout seen, a nil plan where no pin matches, so each
// GEMM costs one map lookup.
type ltKey struct {
	transA, transB bool
	M, N, K        int
	lda, ldb, ldc  int
	abType         int
	cHalf          bool
}

// ltPlan is one key's descriptors, or why it runs through gemmEx (ok
// false: refused by the check, or needing a workspace).
type ltPlan struct {
	p   C.lt_plan
	pin *ltPin
	ok  bool
	why string
}

// cublasLt is the pinned configurations' handle on the backend's stream;
// nil where the pins are off (off says why, for Info and the tests).
type cublasLt struct {
	h       C.uintptr_t
	stream  C.uintptr_t
	version int
	plans   map[ltKey]*ltPlan
}

// ltLibraries are the names tried for libcublasLt ($OLLAMA_TUNE_CUBLASLT
// names another), after cuBLAS's own (loadCublas), which needs it.
var ltLibraries = []string{"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11",
	"/usr/local/cuda/lib64/libcublasLt.so.13", "/usr/local/cuda/lib64/libcublasLt.so.12", "/usr/local/cuda/lib64/libcublasLt.so.11"}

var ltLoad struct {
	once    sync.Once
	version int
	err     string
}

// loadCublasLt opens the cuBLASLt library once per process and returns
// its version, or why it could not.
func loadCublasLt() (version int, err string) {
	ltLoad.once.Do(func() {
		opened, _, msgs := openFirst(ltLibraries, "OLLAMA_TUNE_CUBLASLT", func(p *C.char) *C.char { return C.lt_open(p) })
		if opened == "" {
			ltLoad.err = "no cuBLASLt: " + strings.Join(msgs, "; ")
			return
		}
		ltLoad.version = int(C.lt_version())
	})
	return ltLoad.version, ltLoad.err
}

// newCublasLt opens cuBLASLt for the pins on stream, or returns nil and
// the reason they are off: switched off, another GPU than sm_90, another
// library version than the one measured, or no library. None of these is
// an error: every GEMM then runs through gemmEx.
func newCublasLt(stream uintptr, major, minor int) (*cublasLt, string) {
	if !ltPinned {
		return nil, "off (OLLAMA_TUNE_CUDA_REFERENCE=lt-pin)"
	}
	if major != 9 || minor != 0 {
		return nil, fmt.Sprintf("off (measured on sm_90, this GPU is sm_%d%d)", major, minor)
	}
	v, err := loadCublasLt()
	if err != "" {
		return nil, "off (" + err + ")"
	}
	if v < ltVersionMin || v >= ltVersionEnd {
		return nil, fmt.Sprintf("off (measured with cuBLASLt %d, this is %d)", ltVersionMin, v)
	}
	l := &cublasLt{stream: C.uintptr_t(stream), version: v, plans: map[ltKey]*ltPlan{}}
	if st := C.lt_create(&l.h); st != 0 {
		return nil, fmt.Sprintf("off (cublasLtCreate: status %d)", int(st))
	}
	return l, fmt.Sprintf("on (%d pinned shapes, cuBLASLt %d)", len(ltPins), v)
}

func (l *cublasLt) destroy() {
	if l == nil || l.h == 0 {
		return
	}
	for _, p := range l.plans {
		if p != nil {
			C.lt_plan_free(&p.p)
		}
	}
	l.plans = nil
	C.lt_destroy(l.h)
	l.h = 0
}

// pinFor returns g's pin, or nil.
func pinFor(g gemmArgs) *ltPin {
	if g.transA || g.abType != dataR16BF {
		return nil
	}
	for i := range ltPins {
		p := &ltPins[i]
		if p.transB == g.transB && p.M == g.M && p.N == g.N && p.K == g.K && p.cHalf == g.cHalf {
			return p
		}
	}
	return nil
}

// plan returns g's ready plan, or nil where g runs through gemmEx.
func (l *cublasLt) plan(g gemmArgs) *ltPlan {
	if l == nil || (g.A|g.B|g.C)%256 != 0 {
		return nil
	}
	k := ltKey{g.transA, g.transB, g.M, g.N, g.K, g.lda, g.ldb, g.ldc, g.abType, g.cHalf}
	p, seen := l.plans[k]
	if !seen {
		if pin := pinFor(g); pin != nil {
			p = l.makePlan(g, pin)
		}
		l.plans[k] = p // nil: no pin for this layout
	}
	if p == nil || !p.ok {
		return nil
	}
	return p
}

func (l *cublasLt) makePlan(g gemmArgs, pin *ltPin) *ltPlan {
	p := &ltPlan{pin: pin}
	cType := dataR32F
	if g.cHalf {
		cType = dataR16BF
	}
	cfg := [5]C.int{C.int(pin.cfg.algo), C.int(pin.cfg.tile), C.int(pin.cfg.stages), C.int(pin.cfg.custom), C.int(pin.cfg.cluster)}
	var ws C.size_t
	var st C.int
	step := C.lt_plan_make(l.h, &p.p, blasOp(g.transB), blasOp(g.transA), C.uint64_t(g.N), C.uint64_t(g.M), C.uint64_t(g.K),
		C.int(g.abType), C.int64_t(g.ldb), C.int64_t(g.lda), C.int(cType), C.int64_t(g.ldc), &cfg[0], &ws, &st)
	switch {
	case step != 0:
		steps := map[C.int]string{1: "descriptor", 2: "transposes", 3: "layout", 4: "algorithm", 5: "attribute", 6: "check"}
		p.why = fmt.Sprintf("%s: cuBLASLt refused the %s (status %d)", pin.name, steps[step], int(st))
		C.lt_plan_free(&p.p)
	case ws != 0:
		p.why = fmt.Sprintf("%s: the configuration asks for a %d-byte workspace", pin.name, int(ws))
		C.lt_plan_free(&p.p)
	default:
		p.ok = true
	}
	return p
}

// run issues g through its plan on the backend's stream.
func (l *cublasLt) run(p *ltPlan, g gemmArgs) error {
	st := C.lt_matmul(l.h, &p.p, C.float(g.alpha), C.uintptr_t(g.B), C.uintptr_t(g.A), C.float(g.beta), C.uintptr_t(g.C), l.stream)
	if st == blasStatusAllocFailed {
		return fmt.Errorf("cuBLASLt GEMM %dx%dx%d (%s): CUBLAS_STATUS_ALLOC_FAILED: %w", g.M, g.N, g.K, p.pin.name, ErrOutOfMemory)
	}
	if st != 0 {
		return fmt.Errorf("cuBLASLt GEMM %dx%dx%d (%s, pinned; OLLAMA_TUNE_CUDA_REFERENCE=lt-pin runs it through cublasGemmEx): status %d%s",
			g.M, g.N, g.K, p.pin.name, int(st), blasStatusHint(int(st)))
	}
	return nil
}

// refused lists the pins cuBLASLt refused so far, with why.
func (l *cublasLt) refused() []string {
	if l == nil {
		return nil
	}
	var out []string
	for _, p := range l.plans {
		if p != nil && !p.ok {
			out = append(out, p.why)
		}
	}
	return out
}
