package trainerplugin

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/testutil"
	"github.com/ollama-tune/ollama-tune/finetune/testutil/tinymodel"
	"github.com/ollama-tune/ollama-tune/plugin"
)

// closeCounting is the CPU backend counting its Close calls.
type closeCounting struct {
	*finetune.CPUBackend
	closes *atomic.Int32
}

func (b closeCounting) Close() error { b.closes.Add(1); return b.CPUBackend.Close() }

// countingFactory opens closeCounting backends, counting the opens.
func countingFactory(opens, closes *atomic.Int32) finetune.BackendFactory {
	return func(finetune.DType) (finetune.Backend, error) {
		opens.Add(1)
		return closeCounting{finetune.NewCPUBackend(finetune.CPUOptions{}), closes}, nil
	}
}

// tinyJob is a one-step job on a tiny model, as the host sends it.
func tinyJob(t *testing.T, edit func(*finetune.TrainConfig)) []byte {
	t.Helper()
	cfg := finetune.Phi3Mini4k()
	cfg.HiddenSize, cfg.IntermediateSize, cfg.NumLayers, cfg.NumHeads, cfg.NumKVHeads = 32, 64, 1, 4, 4
	cfg.SlidingWindow = 0
	tc := finetune.DefaultTrainConfig()
	tc.Model = tinymodel.Dir(t, cfg, 3, finetune.F32)
	tc.Dataset.Path = testutil.YodaCSV(t, 4)
	tc.Training.MaxSteps, tc.Training.NumTrainEpochs = 1, 0
	if edit != nil {
		edit(&tc)
	}
	raw, err := json.Marshal(tc)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestOpenAhead: the runner opens the backend once, beside the job's
// preparation, and the job trains on that one (closed once, by the job)
// with a debug line saying what the opening took; a job that fails before
// its model load still has the backend opened ahead closed; an invalid
// config opens nothing.
func TestOpenAhead(t *testing.T) {
	for _, c := range []struct {
		name        string
		edit        func(*finetune.TrainConfig)
		opens, errs int32 // backends opened; 1 if Run fails
		code        plugin.ErrorCode
	}{
		{name: "trains", opens: 1},
		{name: "no model folder", edit: func(tc *finetune.TrainConfig) { tc.Model = filepath.Join(tc.Model, "missing") }, opens: 1, errs: 1, code: plugin.CodeInvalidConfig},
		{name: "invalid config", edit: func(tc *finetune.TrainConfig) { tc.LoRA.R = 0 }, opens: 0, errs: 1, code: plugin.CodeInvalidConfig},
	} {
		t.Run(c.name, func(t *testing.T) {
			var opens, closes atomic.Int32
			r := SFTRunner{NewBackend: countingFactory(&opens, &closes)}
			var debug []string
			err := r.Run(context.Background(), plugin.TrainRequest{Config: tinyJob(t, c.edit), OutputDir: filepath.Join(t.TempDir(), "out")}, func(e plugin.Event) {
				if l, ok := e.(plugin.Log); ok && l.Level == "debug" {
					debug = append(debug, l.Message)
				}
			})
			if (err != nil) != (c.errs == 1) || (err != nil && plugin.CodeOf(err) != c.code) {
				t.Fatalf("Run: %v (code %s), want failure %v with code %s", err, plugin.CodeOf(err), c.errs == 1, c.code)
			}
			if opens.Load() != c.opens || closes.Load() != c.opens {
				t.Errorf("%d backends opened and %d closes, want %d of each", opens.Load(), closes.Load(), c.opens)
			}
			if joined := strings.Join(debug, "\n"); err == nil && (!strings.Contains(joined, "backend cpu opened in") || !strings.Contains(joined, "ready to train after")) {
				t.Errorf("debug lines %q: want the backend's opening and the time to the first step", debug)
			}
		})
	}
}

// TestOpenAheadFactory: a second backend, or one of another dtype, is
// opened anew; a panic while opening is an error, not the process's end.
func TestOpenAheadFactory(t *testing.T) {
	var opens, closes atomic.Int32
	a := openAhead(countingFactory(&opens, &closes), finetune.BF16, nil)
	if _, err := a.factory(finetune.F32); err != nil {
		t.Fatalf("another dtype: %v", err)
	}
	b, err := a.factory(finetune.BF16) // waits for the opening ahead
	if err != nil || b == nil || opens.Load() != 2 {
		t.Fatalf("the dtype opened ahead: %v, %d opens, want 2 (one ahead, one for float32)", err, opens.Load())
	}
	if _, err := a.factory(finetune.BF16); err != nil || opens.Load() != 3 {
		t.Fatalf("asked again: %v, %d opens, want a third open", err, opens.Load())
	}
	a.release() // taken: the job closes it, not release
	if closes.Load() != 0 {
		t.Errorf("release closed a backend the job took")
	}
	p := openAhead(func(finetune.DType) (finetune.Backend, error) { panic("driver exploded") }, finetune.BF16, nil)
	if _, err := p.factory(finetune.BF16); err == nil || !strings.Contains(err.Error(), "driver exploded") {
		t.Errorf("a panicking factory: %v", err)
	}
	p.release()
}
