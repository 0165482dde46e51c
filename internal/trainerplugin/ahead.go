package trainerplugin

import (
	"fmt"
	"time"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// aheadBackend opens a job's backend on its own goroutine as soon as the
// job's compute dtype is known, so that opening the device (on a GPU its
// context, cuBLAS and the kernels: a few tenths of a second) overlaps the
// CPU work the job does before its model load (tokenizer, data set,
// checkpoint headers, plan).
type aheadBackend struct {
	open  finetune.BackendFactory
	dtype finetune.DType
	debug func(string) // says what the opening took, when the job takes it
	done  chan struct{}
	// set by the opening goroutine before done is closed
	b    finetune.Backend
	err  error
	took time.Duration
	// taken: the job has had the backend (or release closed it); only the
	// job's goroutine reads and writes it.
	taken  bool
	waited time.Duration
}

// openAhead starts opening open(dtype) (finetune.CPUBackendFactory when
// open is nil); debug, when not nil, gets a line about it once the job
// takes it.
func openAhead(open finetune.BackendFactory, dtype finetune.DType, debug func(string)) *aheadBackend {
	if open == nil {
		open = finetune.CPUBackendFactory
	}
	a := &aheadBackend{open: open, dtype: dtype, debug: debug, done: make(chan struct{})}
	go func() {
		defer close(a.done)
		defer func() {
			if p := recover(); p != nil { // a panic here would end the process
				a.b, a.err = nil, fmt.Errorf("open the backend: %v", p)
			}
		}()
		t0 := time.Now()
		a.b, a.err = open(dtype)
		a.took = time.Since(t0)
	}()
	return a
}

// factory is the job's BackendFactory: the backend opened ahead, the first
// time it is asked for that dtype; a newly opened one otherwise.
func (a *aheadBackend) factory(dtype finetune.DType) (finetune.Backend, error) {
	if a.taken || dtype != a.dtype {
		return a.open(dtype)
	}
	t0 := time.Now()
	<-a.done
	a.waited, a.taken = time.Since(t0), true
	if a.debug != nil && a.err == nil && a.b != nil {
		a.debug(a.describe())
	}
	return a.b, a.err
}

// release closes the backend opened ahead if the job never took it (it
// failed before its model load); it waits for the opening to end.
func (a *aheadBackend) release() {
	if a.taken {
		return
	}
	<-a.done
	a.taken = true
	if a.b != nil {
		a.b.Close()
	}
}

// openTimer is a backend that can say what its opening took (cuda.Backend).
type openTimer interface{ OpenTimes() string }

// describe is the debug line about the backend the job took.
func (a *aheadBackend) describe() string {
	s := fmt.Sprintf("backend %s opened in %.2f s, beside the job's preparation (the job waited %.2f s for it)", a.b.Name(), a.took.Seconds(), a.waited.Seconds())
	if t, ok := a.b.(openTimer); ok {
		s += ": " + t.OpenTimes()
	}
	return s
}
