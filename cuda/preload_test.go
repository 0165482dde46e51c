//go:build cuda

package cuda

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// TestPreload: Preload holds GPU 0's primary context until a New has its
// own reference, then lets it go (the context's life is the backends'
// again); the backend New made after it works and says what its opening
// took, and its first load uses the pinned buffers New started making.
func TestPreload(t *testing.T) {
	preload.mu.Lock()
	preload.handed, preload.retained = false, false
	preload.mu.Unlock()
	preload.once = sync.Once{}
	Preload(0)
	deadline := time.Now().Add(10 * time.Second)
	for {
		preload.mu.Lock()
		held := preload.retained
		preload.mu.Unlock()
		if held {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Preload did not retain GPU 0's primary context within 10 s")
		}
		time.Sleep(time.Millisecond)
	}
	if _, _, err := ListDevices(); err != nil { // the plugin's capabilities probe
		t.Fatal(err)
	}
	b, err := New(Options{ComputeDType: finetune.BF16})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	preload.mu.Lock()
	handed, held := preload.handed, preload.retained
	preload.mu.Unlock()
	if !handed || held {
		t.Errorf("after New: handed %v, preload's reference held %v; want handed and let go", handed, held)
	}
	if !strings.Contains(b.OpenTimes(), "context") || !strings.Contains(b.OpenTimes(), "kernels") {
		t.Errorf("OpenTimes %q", b.OpenTimes())
	}
	// The first load takes the pinned buffers New started making; a
	// later one makes its own.
	ck := randomCheckpoint(t, smallConfig(), 3, finetune.BF16)
	for k, want := range []bool{true, false} {
		m, err := b.LoadModel(ck, finetune.ModelOptions{Quantize: true, DoubleQuant: true})
		if err != nil {
			t.Fatal(err)
		}
		m.Free()
		lt := b.LoadTimes()
		if !strings.Contains(lt, "pinned memory") || strings.Contains(lt, "made beside") != want {
			t.Errorf("load %d: LoadTimes %q; want the pinned memory made ahead: %v", k+1, lt, want)
		}
	}
	x := b.Alloc(3)
	b.Upload(x, []float32{1, 2, 3})
	if got := b.Download(x); got[0] != 1 || got[2] != 3 {
		t.Errorf("round trip on the new backend: %v", got)
	}
	b.Free(x)
	Preload(0) // once a process: nothing more
	preload.mu.Lock()
	held = preload.retained
	preload.mu.Unlock()
	if held {
		t.Error("a second Preload retained the context again")
	}
}
