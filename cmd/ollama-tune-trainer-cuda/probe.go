//go:build cuda

package main

// The driver probe: dlopen libcuda.so.1 and ask it about the GPUs, without
// linking it. gorgonia.org/cu links libcuda and exits the process from its
// package init when cuInit fails, so a binary that imports it cannot even
// start on a machine without a driver or a GPU, let alone say why. This
// launcher can: it probes first and only then execs the worker that
// imports cu.

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

typedef int (*cuInit_t)(unsigned int);
typedef int (*cuDriverGetVersion_t)(int*);
typedef int (*cuDeviceGetCount_t)(int*);
typedef int (*cuDeviceGet_t)(int*, int);
typedef int (*cuDeviceGetName_t)(char*, int, int);
typedef int (*cuDeviceTotalMem_t)(size_t*, int);
typedef int (*cuDeviceGetAttribute_t)(int*, int, int);

typedef struct {
	cuInit_t init;
	cuDriverGetVersion_t version;
	cuDeviceGetCount_t count;
	cuDeviceGet_t get;
	cuDeviceGetName_t name;
	cuDeviceTotalMem_t total_mem;
	cuDeviceGetAttribute_t attr;
} cuda_api;

// probe_open loads libname; it returns NULL and the API, or dlerror().
static const char* probe_open(const char* libname, cuda_api* api) {
	void* lib = dlopen(libname, RTLD_NOW | RTLD_LOCAL);
	if (!lib) return dlerror();
	api->init = (cuInit_t)dlsym(lib, "cuInit");
	api->version = (cuDriverGetVersion_t)dlsym(lib, "cuDriverGetVersion");
	api->count = (cuDeviceGetCount_t)dlsym(lib, "cuDeviceGetCount");
	api->get = (cuDeviceGet_t)dlsym(lib, "cuDeviceGet");
	api->name = (cuDeviceGetName_t)dlsym(lib, "cuDeviceGetName");
	api->total_mem = (cuDeviceTotalMem_t)dlsym(lib, "cuDeviceTotalMem_v2");
	api->attr = (cuDeviceGetAttribute_t)dlsym(lib, "cuDeviceGetAttribute");
	if (!api->init || !api->version || !api->count || !api->get || !api->name || !api->total_mem || !api->attr)
		return "the library lacks a CUDA driver function (cuInit, cuDeviceGetCount, ...)";
	return NULL;
}

static int probe_init(cuda_api* a) { return a->init(0); }
static int probe_version(cuda_api* a, int* v) { return a->version(v); }
static int probe_count(cuda_api* a, int* n) { return a->count(n); }
static int probe_device(cuda_api* a, int ordinal, char* name, int len, size_t* mem, int* major, int* minor) {
	int dev, st;
	if ((st = a->get(&dev, ordinal)) != 0) return st;
	if ((st = a->name(name, len, dev)) != 0) return st;
	if ((st = a->total_mem(mem, dev)) != 0) return st;
	if ((st = a->attr(major, 75, dev)) != 0) return st;  // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
	return a->attr(minor, 76, dev);                      // ..._MINOR
}
*/
import "C"

import (
	"fmt"
	"strings"
	"unsafe"
)

// minDriver and minCompute match package cuda's requirements: PTX ISA 7.8
// (CUDA 11.8) for compute_80.
const (
	minDriver  = 11080
	minCompute = 80
)

// gpuInfo is one GPU as the driver describes it.
type gpuInfo struct {
	Ordinal      int
	Name         string
	TotalMemory  uint64
	Major, Minor int
}

// probeResult is what the driver reports.
type probeResult struct {
	Driver int // CUDA version the driver supports, e.g. 13000
	GPUs   []gpuInfo
}

// cuda driver errors worth naming (cuda.h CUresult).
var cuErrors = map[int]string{
	3:   "CUDA_ERROR_NOT_INITIALIZED",
	34:  "CUDA_ERROR_STUB_LIBRARY (the toolkit's stub libcuda, not the driver's, was loaded)",
	35:  "CUDA_ERROR_INSUFFICIENT_DRIVER (the driver is older than the CUDA runtime)",
	100: "CUDA_ERROR_NO_DEVICE",
	101: "CUDA_ERROR_INVALID_DEVICE",
	999: "CUDA_ERROR_UNKNOWN",
}

func cuError(st C.int) string {
	if s, ok := cuErrors[int(st)]; ok {
		return fmt.Sprintf("%s (%d)", s, int(st))
	}
	return fmt.Sprintf("CUresult %d", int(st))
}

// probeDriver loads the driver library (libname; libcuda.so.1 in use) and
// lists the GPUs our kernels can run on. Its errors say what is missing
// and what to do.
func probeDriver(libname string) (probeResult, error) {
	var res probeResult
	var api C.cuda_api
	cname := C.CString(libname)
	defer C.free(unsafe.Pointer(cname))
	if msg := C.probe_open(cname, &api); msg != nil {
		return res, fmt.Errorf("no NVIDIA driver: cannot load %s (%s); install the NVIDIA driver, or use device: cpu", libname, C.GoString(msg))
	}
	if st := C.probe_init(&api); st != 0 {
		if st == 100 {
			return res, fmt.Errorf("the NVIDIA driver sees no GPU (cuInit: %s); use device: cpu", cuError(st))
		}
		return res, fmt.Errorf("the NVIDIA driver failed to start (cuInit: %s); check nvidia-smi, or use device: cpu", cuError(st))
	}
	var v C.int
	if st := C.probe_version(&api, &v); st != 0 {
		return res, fmt.Errorf("cuDriverGetVersion: %s", cuError(st))
	}
	res.Driver = int(v)
	if res.Driver < minDriver {
		return res, fmt.Errorf("the NVIDIA driver supports CUDA %d.%d; ollama-tune needs a driver for CUDA 11.8 or newer: update the driver, or use device: cpu", res.Driver/1000, res.Driver%1000/10)
	}
	var n C.int
	if st := C.probe_count(&api, &n); st != 0 {
		return res, fmt.Errorf("cuDeviceGetCount: %s", cuError(st))
	}
	var old []string
	for i := 0; i < int(n); i++ {
		var name [256]C.char
		var mem C.size_t
		var major, minor C.int
		if st := C.probe_device(&api, C.int(i), &name[0], C.int(len(name)), &mem, &major, &minor); st != 0 {
			return res, fmt.Errorf("GPU %d: %s", i, cuError(st))
		}
		g := gpuInfo{Ordinal: i, Name: C.GoString(&name[0]), TotalMemory: uint64(mem), Major: int(major), Minor: int(minor)}
		if g.Major*10+g.Minor < minCompute {
			old = append(old, fmt.Sprintf("%s (compute capability %d.%d)", g.Name, g.Major, g.Minor))
			continue
		}
		res.GPUs = append(res.GPUs, g)
	}
	if len(res.GPUs) == 0 {
		if len(old) > 0 {
			return res, fmt.Errorf("no usable GPU: %s; ollama-tune's kernels need compute capability 8.0 or newer (Ampere, Ada, Hopper); use device: cpu", strings.Join(old, ", "))
		}
		return res, fmt.Errorf("the NVIDIA driver reports no GPU; use device: cpu")
	}
	return res, nil
}
