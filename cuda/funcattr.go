//go:build cuda

package cuda

// Kernel attributes gorgonia.org/cu does not wrap: a kernel that takes more
// than 48 KiB of dynamic shared memory must opt in first
// (cuFuncSetAttribute, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES).

/*
#cgo LDFLAGS: -lcuda
#include <cuda.h>

static int func_max_dynamic_smem(CUfunction f, int n) {
	return (int)cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, n);
}
*/
import "C"

import (
	"fmt"
	"unsafe"
)

// defaultDynamicSmem is what a kernel may take without opting in.
const defaultDynamicSmem = 48 << 10

// allowSmem lets kernel name take n bytes of dynamic shared memory,
// opting in above 48 KiB once per size; an error means the GPU cannot
// (its per-block limit is lower) and the caller takes another kernel.
func (b *Backend) allowSmem(name string, n int) error {
	if n <= defaultDynamicSmem || n <= b.smemOptIn[name] {
		return nil
	}
	f, ok := b.fns[name]
	if !ok {
		return fmt.Errorf("kernel %s is not in the embedded PTX (run make ptx)", name)
	}
	// gorgonia.org/cu's Function is a struct holding only the CUfunction.
	h := *(*C.CUfunction)(unsafe.Pointer(&f))
	if r := C.func_max_dynamic_smem(h, C.int(n)); r != 0 {
		return fmt.Errorf("kernel %s: %d bytes of dynamic shared memory: CUresult %d", name, n, int(r))
	}
	if b.smemOptIn == nil {
		b.smemOptIn = map[string]int{}
	}
	b.smemOptIn[name] = n
	return nil
}
