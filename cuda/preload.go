//go:build cuda

package cuda

import (
	"runtime"
	"sync"

	"gorgonia.org/cu"
)

// preload is what Preload holds: GPU device's primary context, retained
// until the first New on that GPU has its own reference.
var preload struct {
	once     sync.Once
	mu       sync.Mutex
	device   int
	dev      cu.Device
	retained bool // the preload's reference is held
	handed   bool // New has taken over: the preload retains nothing more
}

// Preload starts making, on its own goroutine, what the first Backend on
// GPU device needs and every later one shares: the device's primary
// context (the driver makes it on the first reference and destroys it on
// the last: ListDevices' probe would otherwise destroy the one it made, and
// New make it again) and the cuBLAS library (dlopen of libcublas and
// libcublasLt). The CUDA worker calls it when it starts, so that this
// overlaps the plugin handshake and the job's preparation; New waits for
// what is still under way and takes the context over. Errors are left for
// New to report.
func Preload(device int) {
	preload.once.Do(func() {
		preload.device = device
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			preload.mu.Lock()
			if !preload.handed {
				if d, err := cu.GetDevice(device); err == nil {
					if _, err := d.RetainPrimaryCtx(); err == nil {
						preload.dev, preload.retained = d, true
					}
				}
			}
			preload.mu.Unlock()
			loadCublas() //nolint:errcheck // New reports it
		}()
	})
}

// handOffPreload is called by New once it holds its own reference to GPU
// device's primary context: the preload's reference goes (the context's
// life is again its backends'), waiting for a preload still making it.
func handOffPreload(device int) {
	preload.mu.Lock()
	defer preload.mu.Unlock()
	if preload.handed || preload.device != device {
		return
	}
	preload.handed = true
	if preload.retained {
		preload.dev.ReleasePrimaryCtx() //nolint:errcheck // New holds its own reference
		preload.retained = false
	}
}
