package finetune

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// memBackend is the CPU backend reporting free device memory.
type memBackend struct {
	*CPUBackend
	free int64
}

func (b *memBackend) MemInfo() (free, total int64, err error) { return b.free, 2 * b.free, nil }

// TestMemoryForSpeedNote: with a MemoryReporter backend the trainer says,
// once, which memory-saving settings the free memory makes unnecessary:
// the fastest combination whose plan fits with 2 GiB to spare (both,
// checkpointing off, the weights kept), with the plan's estimates; nothing
// where none fits, where the job already runs without them, or on a
// backend that cannot tell.
func TestMemoryForSpeedNote(t *testing.T) {
	model := tinyModelDir(t, smallModel.cfg, 5)
	base := smallJob(t, model, "", 6)
	base.Training.MaxSteps, base.Training.SaveSteps = 1, 0
	base.Training.GradientCheckpointing = true
	base.Quantization.LoadIn4bit = true
	base.Quantization.KeepDequantizedGB = 0
	// The plans the note compares, counted here the way the trainer does.
	plan := func(ckpt bool, keep float64) int64 {
		c := base
		c.Training.OutputDir = filepath.Join(t.TempDir(), "out")
		c.Training.GradientCheckpointing, c.Quantization.KeepDequantizedGB = ckpt, keep
		p, err := Plan(context.Background(), newTestJob(t, c, ""))
		if err != nil {
			t.Fatal(err)
		}
		return p.EstimatedBytes
	}
	// The tiny model's dequantized weights: 1 GB rounds up from a few MB.
	ckpt, noCkpt, keep, both := plan(true, 0), plan(false, 0), plan(true, 1), plan(false, 1)
	// (The kept-weights-only case needs them smaller than the activations
	// checkpointing saves, as they are in the tiny model.)
	if !(both > noCkpt && noCkpt > keep && keep > ckpt) {
		t.Fatalf("plans: checkpointing %d, without %d, kept weights %d, both %d", ckpt, noCkpt, keep, both)
	}
	const spare = 2 << 30
	cases := []struct {
		name       string
		ckpt       bool
		keep       float64
		free       int64
		noBackend  bool // the plain CPU backend: no MemInfo
		want, not  []string
		wantNoNote bool
	}{
		{name: "room for both", ckpt: true, free: 64 << 30,
			want: []string{"note: the device has 64.0 GiB free; --set training.gradient_checkpointing=false --set quantization.keep_dequantized_gb=1 would use about",
				"with the same results", "instead of recomputing", "instead of dequantizing"}},
		{name: "room without checkpointing only", ckpt: true, free: spare + noCkpt + (both-noCkpt)/2,
			want: []string{"--set training.gradient_checkpointing=false would use", "instead of recomputing"},
			not:  []string{"keep_dequantized_gb"}},
		{name: "room for the kept weights only", ckpt: true, free: spare + keep,
			want: []string{"--set quantization.keep_dequantized_gb=1 would use", "instead of dequantizing"},
			not:  []string{"gradient_checkpointing=false"}},
		{name: "no room", ckpt: true, free: spare + ckpt, wantNoNote: true},
		{name: "already without checkpointing, weights kept", ckpt: false, keep: 1, free: 64 << 30, wantNoNote: true},
		{name: "without checkpointing: the weights", ckpt: false, free: 64 << 30,
			want: []string{"--set quantization.keep_dequantized_gb=1 would use"}, not: []string{"gradient_checkpointing"}},
		{name: "a backend that cannot tell", ckpt: true, free: 64 << 30, noBackend: true, wantNoNote: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			c.Training.OutputDir = filepath.Join(t.TempDir(), "out")
			c.Training.GradientCheckpointing, c.Quantization.KeepDequantizedGB = tc.ckpt, tc.keep
			j := newTestJob(t, c, "")
			if !tc.noBackend {
				j.NewBackend = func(DType) (Backend, error) { return &memBackend{NewCPUBackend(CPUOptions{}), tc.free}, nil }
			}
			emit, evs := collectEvents()
			if _, err := Train(context.Background(), j, emit); err != nil {
				t.Fatal(err)
			}
			var notes []string
			for _, e := range *evs {
				if l, ok := e.(LogEvent); ok && strings.HasPrefix(l.Message, "note: the device has") {
					notes = append(notes, l.Message)
				}
			}
			if tc.wantNoNote {
				if len(notes) != 0 {
					t.Fatalf("notes %q, want none", notes)
				}
				return
			}
			if len(notes) != 1 {
				t.Fatalf("notes %q, want one", notes)
			}
			t.Log(notes[0])
			for _, w := range tc.want {
				if !strings.Contains(notes[0], w) {
					t.Errorf("note %q lacks %q", notes[0], w)
				}
			}
			for _, w := range tc.not {
				if strings.Contains(notes[0], w) {
					t.Errorf("note %q has %q", notes[0], w)
				}
			}
		})
	}
}
