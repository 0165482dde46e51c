//go:build cuda

package cuda

import (
	"path"
	"testing"

	"gorgonia.org/cu"
)

// BenchmarkPTXLoad times loading each embedded PTX module (the driver's JIT
// compilation for the card: run with CUDA_CACHE_DISABLE=1 to time the
// compilation a machine's first run pays, without it the cache's load).
func BenchmarkPTXLoad(b *testing.B) {
	entries, err := ptxFiles.ReadDir("kernels")
	if err != nil {
		b.Fatal(err)
	}
	for _, e := range entries {
		src, err := ptxFiles.ReadFile(path.Join("kernels", e.Name()))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(e.Name(), func(b *testing.B) {
			defer gpu.enter("BenchmarkPTXLoad")() // this goroutine's thread
			for range b.N {
				mod, err := cu.LoadData(string(src))
				if err != nil {
					b.Fatal(err)
				}
				if err := mod.Unload(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
