//go:build cuda

package cuda

// Pinned cuBLASLt configurations (issue 8, v21). cublasGemmEx takes the
// kernel cuBLAS's heuristic picks. scripts/bench/cublaslt_enum.cu timed
// every configuration cuBLASLt 13.1 offers for the base GEMMs at
// Phi-3-mini's step shapes (1,024 tokens) on an H200: for seven of them a
// fixed configuration runs 1-3% faster than gemmEx's pick and gives its
// bits. v25 added the float32 base GEMMs under IEEE float32 compute (six,
// 2-10% faster than cublasSgemm's pick, its bits: scripts/bench/sgemm)
// and under TF32 (four). ltPins lists them.
//
// A GEMM runs through cublasLtMatmul with its pin only where all of this
// holds, and through gemmEx as before everywhere else:
//   - its shape and types are a pin's, and for float32 operands the
//     handle's math mode (IEEE or TF32) too;
//   - the GPU is sm_90 and the library cuBLASLt 13.1, where the pins were
//     measured and their bits compared;
//   - cublasLtMatmulAlgoCheck accepts the configuration with a workspace
//     of at most ltWorkMax (the bfloat16 pins take none; a scratch buffer
//     of its own, sLtWork, serves the others);
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
// B likewise (op T: stored n x k), C of type ct: compute type compute
// (CUBLAS_COMPUTE_32F, or _FAST_TF32), float32 scale, cfg = {algorithm id, tile, stages, custom option, cluster shape,
// split-K, reduction scheme, CTA swizzling} (a custom option or cluster
// shape of 0 is left as cublasLtMatmulAlgoInit set it). It returns 0, or
// the step that failed (1 descriptor, 2 its transposes, 3 a layout, 4 the
// algorithm, 5 an attribute, 6 the check) with cuBLAS's status in *st, and
// the workspace the check asks for in *ws.
static int lt_plan_make(uintptr_t h, lt_plan* p, int compute, int opA, int opB, uint64_t m, uint64_t n, uint64_t k, int ab,
                        int64_t lda, int64_t ldb, int ct, int64_t ldc, const int* cfg, size_t* ws, int* st) {
	enum { r32F = 0, transA = 3, transB = 4 };
	enum { tileID = 1, splitK = 2, reduction = 3, swizzle = 4, custom = 5, stagesID = 6, clusterID = 8 };
	memset(p, 0, sizeof *p);
	*ws = 0;
	void* o = 0;
	if ((*st = lt_p_desc_create(&o, compute, r32F))) return 1;
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
	if ((*st = lt_p_algo_init((void*)h, compute, r32F, ab, ab, ct, ct, cfg[0], &p->algo))) return 4;
	const int attrs[7] = {tileID, stagesID, custom, clusterID, splitK, reduction, swizzle};
	for (int i = 0; i < 7; i++) {
		if ((attrs[i] == custom || attrs[i] == clusterID) && cfg[i + 1] == 0) continue;
		if ((*st = lt_setattr(&p->algo, attrs[i], cfg[i + 1]))) return 5;
	}
	lt_heur r;
	memset(&r, 0, sizeof r);
	if ((*st = lt_p_check((void*)h, (void*)p->desc, (void*)p->a, (void*)p->b, (void*)p->c, (void*)p->c, &p->algo, &r))) return 6;
	*ws = r.workspace;
	return 0;
}

// lt_matmul runs p in place (D = C) on stream s with the workspace ws of
// wsz bytes (0 and NULL: none).
static int lt_matmul(uintptr_t h, const lt_plan* p, float alpha, uintptr_t A, uintptr_t B, float beta, uintptr_t C, uintptr_t ws,
                     size_t wsz, uintptr_t s) {
	return lt_p_matmul((void*)h, (void*)p->desc, &alpha, (const void*)A, (void*)p->a, (const void*)B, (void*)p->b, &beta,
	                   (const void*)C, (void*)p->c, (void*)C, (void*)p->c, &p->algo, (void*)ws, wsz, (void*)s);
}
*/
import "C"

import (
	"fmt"
	"strings"
	"sync"
)

// ltConfig is one cuBLASLt configuration: algorithm id, tile id, stages
// id, custom option, cluster shape id (cublasLt.h's enums; cluster 5 is
// CUBLASLT_CLUSTER_SHAPE_1x2x1), split-K (1: none), reduction scheme (2:
// CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE, in a workspace) and CTA
// swizzling.
type ltConfig struct{ algo, tile, stages, custom, cluster, splitK, red, swizzle int }

// ltPin is one row-major GEMM shape of the step as the profile names it
// ("gemm bf16 MxNxK"; transB: the forwards' x . W^T, else the dx products'
// dout . W), its A and B type (ab: bfloat16, or float32: under IEEE
// float32 compute, or with tf32 under training.tf32's TF32 compute), C
// bfloat16 (cHalf) or float32, and its configuration.
type ltPin struct {
	name    string
	transB  bool
	M, N, K int
	ab      int
	tf32    bool
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
//
// The float32 pins (v25): scripts/bench/sgemm/sgemm_enum.cu's fastest
// configuration with cublasSgemm's bits for the base GEMMs under IEEE
// float32 compute (the seed's bnb_4bit_compute_dtype), which run on the
// CUDA cores at full clock (no power cap, so warm and cold rank alike);
// us a GEMM, cublasSgemm -> pinned. The forwards of o_proj and down_proj
// have none (nothing faster with cublasSgemm's bits). Three take split-K 4
// with its reduction in a workspace, as cublasSgemm itself evidently does
// (the same bits).
//
// The TF32 pins (v25, training.tf32): sgemm_sweep.cu's fastest of the
// heuristic's answers with cublasSgemm's bits (under TF32 math), warm
// (TF32 steps run at the power cap, where v21 found warm gains shrink: the
// step's A/B decides); split-K -1 is the value the heuristic's answer
// carries for those kernels (set as it was read).
var ltPins = []ltPin{
	{"qkv_proj forward", true, 1024, 9216, 3080, dataR16BF, false, true, ltConfig{66, 186, 35, 4, 3, 1, 0, 0}},  // 85.6 -> 84.6
	{"o_proj forward", true, 1024, 3072, 3080, dataR16BF, false, false, ltConfig{66, 31, 35, 4, 5, 1, 0, 0}},    // 30.6 -> 30.0
	{"down_proj forward", true, 1024, 3072, 8200, dataR16BF, false, false, ltConfig{66, 31, 35, 6, 5, 1, 0, 0}}, // 73.3 -> 72.0
	{"qkv_proj dx", false, 1024, 3072, 9216, dataR16BF, false, false, ltConfig{66, 31, 35, 6, 5, 1, 0, 0}},      // 80.1 -> 78.0
	{"o_proj dx", false, 1024, 3072, 3072, dataR16BF, false, false, ltConfig{66, 31, 35, 6, 5, 1, 0, 0}},        // 29.4 -> 28.8
	{"gate_up_proj dx", false, 1024, 3072, 16384, dataR16BF, false, false, ltConfig{66, 31, 35, 6, 5, 1, 0, 0}}, // 136.2 -> 133.9
	{"down_proj dx", false, 1024, 8192, 3072, dataR16BF, false, false, ltConfig{66, 23, 35, 5, 5, 1, 0, 0}},     // 73.2 -> 71.6

	{"qkv_proj forward f32", true, 1024, 9216, 3072, dataR32F, false, false, ltConfig{55, 19, 31, 0, 0, 1, 0, 0}},      // 1468.5 -> 1318.9
	{"gate_up_proj forward f32", true, 1024, 16384, 3072, dataR32F, false, false, ltConfig{55, 20, 31, 0, 0, 1, 0, 1}}, // 2040.3 -> 2007.3
	{"qkv_proj dx f32", false, 1024, 3072, 9216, dataR32F, false, false, ltConfig{55, 24, 31, 0, 0, 4, 2, 1}},          // 1239.9 -> 1119.6
	{"o_proj dx f32", false, 1024, 3072, 3072, dataR32F, false, false, ltConfig{55, 20, 31, 0, 0, 4, 2, 0}},            // 430.4 -> 401.0
	{"gate_up_proj dx f32", false, 1024, 3072, 16384, dataR32F, false, false, ltConfig{55, 24, 31, 0, 0, 4, 2, 1}},     // 2163.3 -> 1938.3
	{"down_proj dx f32", false, 1024, 8192, 3072, dataR32F, false, false, ltConfig{55, 24, 31, 0, 0, 1, 0, 0}},         // 1008.9 -> 971.0

	{"gate_up_proj forward tf32", true, 1024, 16384, 3072, dataR32F, true, false, ltConfig{43, 20, 34, 0, 5, 1, 0, 1}}, // 271.3 -> 262.2
	{"qkv_proj dx tf32", false, 1024, 3072, 9216, dataR32F, true, false, ltConfig{43, 24, 34, 0, 2, 1, 0, 1}},          // 178.7 -> 174.9
	{"o_proj dx tf32", false, 1024, 3072, 3072, dataR32F, true, false, ltConfig{43, 24, 34, 0, 5, -1, 2, 0}},           // 73.1 -> 66.2
	{"down_proj dx tf32", false, 1024, 8192, 3072, dataR32F, true, false, ltConfig{43, 24, 34, 0, 5, -1, 2, 1}},        // 148.5 -> 129.5
}

// ltWorkMax bounds the workspace a pin may ask for (a split-K reduction's
// partial products: splitK x M x N floats, 48 MiB for the dx products'
// 1024 x 3072 at split-K 4; a TF32 kernel's 131 bytes); a pin asking for
// more runs through gemmEx.
const ltWorkMax = 64 << 20

// ltPinned is whether the pins are on: OLLAMA_TUNE_CUDA_REFERENCE=lt-pin
// turns them off; lt-pin-f32 only the float32 ones, IEEE and TF32 (v25's
// A/B).
var ltPinned = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "lt-pin")
var ltPinnedF32 = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "lt-pin-f32")

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
	tf32           bool // the handle's float32 GEMMs on TF32 (no float32 pin then)
}

// ltPlan is one key's descriptors, or why it runs through gemmEx (ok
// false: refused by the check, or needing a workspace).
type ltPlan struct {
	p   C.lt_plan
	pin *ltPin
	ws  int64 // the workspace it needs (split-K), at most ltWorkMax
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
	var n32, ntf int
	for _, p := range ltPins {
		switch {
		case p.ab == dataR32F && p.tf32:
			ntf++
		case p.ab == dataR32F:
			n32++
		}
	}
	return l, fmt.Sprintf("on (%d pinned shapes: %d bfloat16, %d float32, %d TF32; cuBLASLt %d)", len(ltPins), len(ltPins)-n32-ntf, n32, ntf, v)
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

// pinFor returns g's pin, or nil (tf32: the float32 GEMMs run on TF32,
// and take the TF32 pins, else the IEEE ones).
func pinFor(g gemmArgs, tf32 bool) *ltPin {
	if g.transA || g.abType == dataR32F && !ltPinnedF32 {
		return nil
	}
	for i := range ltPins {
		p := &ltPins[i]
		if p.ab == g.abType && (p.ab != dataR32F || p.tf32 == tf32) && p.transB == g.transB && p.M == g.M && p.N == g.N &&
			p.K == g.K && p.cHalf == g.cHalf {
			return p
		}
	}
	return nil
}

// plan returns g's ready plan, or nil where g runs through gemmEx (tf32:
// the handle's math mode, cublas.tf32).
func (l *cublasLt) plan(g gemmArgs, tf32 bool) *ltPlan {
	if l == nil || (g.A|g.B|g.C)%256 != 0 {
		return nil
	}
	k := ltKey{g.transA, g.transB, g.M, g.N, g.K, g.lda, g.ldb, g.ldc, g.abType, g.cHalf, tf32}
	p, seen := l.plans[k]
	if !seen {
		if pin := pinFor(g, tf32); pin != nil {
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
	c := pin.cfg
	cfg := [8]C.int{C.int(c.algo), C.int(c.tile), C.int(c.stages), C.int(c.custom), C.int(c.cluster), C.int(c.splitK), C.int(c.red), C.int(c.swizzle)}
	var ws C.size_t
	var st C.int
	compute := C.int(blasCompute32F)
	if pin.tf32 {
		compute = blasCompute32FFastTF32
	}
	step := C.lt_plan_make(l.h, &p.p, compute, blasOp(g.transB), blasOp(g.transA), C.uint64_t(g.N), C.uint64_t(g.M), C.uint64_t(g.K),
		C.int(g.abType), C.int64_t(g.ldb), C.int64_t(g.lda), C.int(cType), C.int64_t(g.ldc), &cfg[0], &ws, &st)
	switch {
	case step != 0:
		steps := map[C.int]string{1: "descriptor", 2: "transposes", 3: "layout", 4: "algorithm", 5: "attribute", 6: "check"}
		p.why = fmt.Sprintf("%s: cuBLASLt refused the %s (status %d)", pin.name, steps[step], int(st))
		C.lt_plan_free(&p.p)
	case ws > ltWorkMax:
		p.why = fmt.Sprintf("%s: the configuration asks for a %d-byte workspace", pin.name, int(ws))
		C.lt_plan_free(&p.p)
	default:
		p.ok, p.ws = true, int64(ws)
	}
	return p
}

// run issues g through its plan on the backend's stream, with ws (p.ws
// bytes) as its workspace.
func (l *cublasLt) run(p *ltPlan, g gemmArgs, ws uintptr) error {
	st := C.lt_matmul(l.h, &p.p, C.float(g.alpha), C.uintptr_t(g.B), C.uintptr_t(g.A), C.float(g.beta), C.uintptr_t(g.C),
		C.uintptr_t(ws), C.size_t(p.ws), l.stream)
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
