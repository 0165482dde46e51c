package finetune

import (
	"context"
	"fmt"
	"math"
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
// the fastest combination whose plan fits with 2 GiB to spare (both
// checkpointing off and the weights kept, checkpointing off, every
// activation checkpointing recomputes kept, the weights kept), with the
// plan's estimates; nothing where none fits, where the job already runs
// without them, or on a backend that cannot tell.
func TestMemoryForSpeedNote(t *testing.T) {
	model := tinyModelDir(t, smallModel.cfg, 5)
	base := smallJob(t, model, "", 6)
	base.Training.MaxSteps, base.Training.SaveSteps = 1, 0
	base.Training.GradientCheckpointing = true
	base.Quantization.LoadIn4bit = true
	base.Quantization.KeepDequantizedGB = 0
	// The plans the note compares, counted here the way the trainer does.
	plan := func(ckpt bool, keep, act float64) TrainPlan {
		c := base
		c.Training.OutputDir = filepath.Join(t.TempDir(), "out")
		c.Training.GradientCheckpointing, c.Quantization.KeepDequantizedGB, c.Training.GradientCheckpointingKeepGB = ckpt, keep, act
		p, err := Plan(context.Background(), newTestJob(t, c, ""))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	// Every output checkpointing could keep, in GB rounded up to a tenth;
	// the tiny model's dequantized weights: 1 GB rounds up from a few MB.
	act := math.Ceil(float64(plan(true, 0, 1000).KeptActivationBytes)/1e8) / 10
	ckpt := plan(true, 0, 0).EstimatedBytes
	options := []struct {
		est  int64
		sets string
	}{
		{plan(false, 1, 0).EstimatedBytes, "--set training.gradient_checkpointing=false --set quantization.keep_dequantized_gb=1 would use"},
		{plan(false, 0, 0).EstimatedBytes, "--set training.gradient_checkpointing=false would use"},
		{plan(true, 0, act).EstimatedBytes, fmt.Sprintf("--set training.gradient_checkpointing_keep_gb=%g would use", act)},
		{plan(true, 1, 0).EstimatedBytes, "--set quantization.keep_dequantized_gb=1 would use"},
	}
	const spare = 2 << 30
	// (Keeping activations moves the token embeddings to host memory: in
	// the tiny model that frees more than the kept outputs take.)
	lowest := ckpt
	for _, o := range options {
		lowest = min(lowest, o.est)
	}
	type tcase struct {
		name       string
		ckpt       bool
		keep       float64
		free       int64
		noBackend  bool // the plain CPU backend: no MemInfo
		want       []string
		wantNoNote bool
	}
	cases := []tcase{
		{name: "room for all", ckpt: true, free: 64 << 30,
			want: []string{"note: the device has 64.0 GiB free; " + options[0].sets, "with the same results", "instead of recomputing", "instead of dequantizing"}},
		{name: "no room", ckpt: true, free: spare + lowest - 1, wantNoNote: true},
		{name: "already without checkpointing, weights kept", ckpt: false, keep: 1, free: 64 << 30, wantNoNote: true},
		{name: "without checkpointing: the weights", ckpt: false, free: 64 << 30, want: []string{options[3].sets}},
		{name: "a backend that cannot tell", ckpt: true, free: 64 << 30, noBackend: true, wantNoNote: true},
	}
	// Room for option i exactly: the first option in the order that fits
	// (no more than option i's estimate).
	for i, o := range options {
		j := 0
		for options[j].est > o.est {
			j++
		}
		cases = append(cases, tcase{name: fmt.Sprintf("room for option %d", i), ckpt: true, free: spare + o.est, want: []string{options[j].sets}})
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
		})
	}
}
