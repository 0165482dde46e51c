package finetune

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// TestComputeNote: a job that computes in float32 on a backend with TF32
// tensor cores (tf32Backend, backend_hooks_test.go), training.tf32 unset, is told once what training.tf32 and
// bfloat16 compute would give and at what cost; a job that set
// training.tf32 (either way), computes in bfloat16, or runs on a backend
// without TF32 is not.
func TestComputeNote(t *testing.T) {
	model := tinyModelDir(t, smallModel.cfg, 5)
	on, off := true, false
	cases := []struct {
		name    string
		compute string
		tf32    *bool
		noTF32  bool // the plain CPU backend
		want    bool
	}{
		{name: "float32, tf32 unset", compute: "float32", want: true},
		{name: "float32, tf32 on", compute: "float32", tf32: &on},
		{name: "float32, tf32 off on purpose", compute: "float32", tf32: &off},
		{name: "bfloat16", compute: "bfloat16"},
		{name: "a backend without TF32", compute: "float32", noTF32: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := smallJob(t, model, "", 6)
			c.Training.MaxSteps, c.Training.SaveSteps = 1, 0
			c.Training.OutputDir = filepath.Join(t.TempDir(), "out")
			c.Quantization.Bnb4bitComputeDType, c.Training.TF32 = tc.compute, tc.tf32
			j := newTestJob(t, c, "")
			if !tc.noTF32 {
				j.NewBackend = func(DType) (Backend, error) { return &tf32Backend{CPUBackend: NewCPUBackend(CPUOptions{})}, nil }
			}
			emit, evs := collectEvents()
			if _, err := Train(context.Background(), j, emit); err != nil {
				t.Fatal(err)
			}
			var notes []string
			for _, e := range *evs {
				if l, ok := e.(LogEvent); ok && strings.HasPrefix(l.Message, "note: float32 compute") {
					notes = append(notes, l.Message)
				}
			}
			if !tc.want {
				if len(notes) != 0 {
					t.Fatalf("notes %q, want none", notes)
				}
				return
			}
			if len(notes) != 1 {
				t.Fatalf("notes %q, want one", notes)
			}
			for _, w := range []string{"--set training.tf32=true", "--set quantization.bnb_4bit_compute_dtype=bfloat16", "slightly different losses"} {
				if !strings.Contains(notes[0], w) {
					t.Errorf("note %q lacks %q", notes[0], w)
				}
			}
		})
	}
}
