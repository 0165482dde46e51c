//go:build cuda

package cuda

import (
	"fmt"
	"time"

	"github.com/ollama-tune/ollama-tune/finetune"
)

// rehearsalRoom is the free GPU memory RehearseStep wants beside what the
// job needs: the rehearsal holds about 1 GB while the model loads (its
// embedding and lm_head, one layer, the activations of one micro-batch),
// and a GPU with little to spare keeps that for the model.
const rehearsalRoom = 4 << 30

// rehearsalOn: OLLAMA_TUNE_CUDA_REFERENCE=rehearse turns RehearseStep off
// (the A/B of the first step's time).
var rehearsalOn = !envHas("OLLAMA_TUNE_CUDA_REFERENCE", "rehearse")

// RehearseStep implements finetune.StepRehearser. cuBLAS loads each of
// its kernels into the GPU's context on the kernel's first call, and its
// first call sets cuBLAS itself up: in a Phi-3-mini step ~0.17 s that
// later steps do not pay. The rehearsal pays it beside the model's load:
// on a backend of its own on the same GPU (its own stream and cuBLAS
// handle) it runs one training forward and backward of a model shaped as
// cfg but with one layer, random weights and opts, on a batch of rows x
// seq tokens, so the same GEMM shapes reach cuBLAS as in the real steps
// (the kernels it loads are the context's, shared with this backend).
// Then it frees everything. The returned function waits for it to end and
// reports what it took. Nothing runs unless the GPU has rehearsalRoom
// free beside need, nor on a backend with a MemoryLimit (a shared GPU); an
// error only ends the rehearsal.
func (b *Backend) RehearseStep(cfg *finetune.Config, opts finetune.ModelOptions, rows, seq int, need int64) (wait func() string) {
	free, _, err := b.MemInfo()
	if !rehearsalOn || err != nil || free < need+rehearsalRoom || b.opts.MemoryLimit > 0 || cfg == nil || rows <= 0 || seq <= 0 {
		return func() string { return "" }
	}
	done := make(chan struct{})
	var msg string
	o := b.opts
	go func() {
		defer close(done)
		t0 := time.Now()
		msg = rehearse(o, cfg, opts, rows, seq) + fmt.Sprintf(" in %.2f s", time.Since(t0).Seconds())
	}()
	return func() string { <-done; return msg }
}

// rehearse is RehearseStep's work; it says how it went.
func rehearse(o Options, cfg *finetune.Config, opts finetune.ModelOptions, rows, seq int) (msg string) {
	defer func() {
		if p := recover(); p != nil {
			msg = fmt.Sprintf("step rehearsal stopped: %v", p)
		}
	}()
	o.noStagerAhead = true // it loads nothing
	r, err := New(o)
	if err != nil {
		return fmt.Sprintf("step rehearsal: %v", err)
	}
	defer r.Close()
	c := *cfg
	c.NumLayers = 1
	m, err := r.RandomModel(&c, 1, opts)
	if err != nil {
		return fmt.Sprintf("step rehearsal: %v", err)
	}
	defer m.Free()
	T := rows * seq
	batch := &finetune.Batch{B: rows, S: seq, InputIDs: make([]int32, T), PositionIDs: make([]int32, T), Labels: make([]int32, T)}
	for t := range T {
		batch.InputIDs[t] = int32(finetune.Mix64(uint64(t)) % uint64(c.VocabSize))
		batch.Labels[t] = batch.InputIDs[t]
		batch.PositionIDs[t] = int32(t % seq)
	}
	m.ZeroGrads()
	if _, _, _, err := m.Forward(batch, true, 1); err != nil {
		return fmt.Sprintf("step rehearsal: %v", err)
	}
	if err := m.Backward(); err != nil {
		return fmt.Sprintf("step rehearsal: %v", err)
	}
	if err := r.Sync(); err != nil {
		return fmt.Sprintf("step rehearsal: %v", err)
	}
	return fmt.Sprintf("one-layer step rehearsed (%d x %d tokens) beside the load", rows, seq)
}

var _ finetune.StepRehearser = (*Backend)(nil)
