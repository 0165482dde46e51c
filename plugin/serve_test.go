package plugin

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// drain reads a Train stream to its end.
func drain(t *testing.T, s EventStream) []Event {
	t.Helper()
	var evs []Event
	for {
		ev, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return evs
		}
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		evs = append(evs, ev)
	}
}

// A Runner emits Finished before it returns (and before any deferred
// clean-up), and a host starts the next run as soon as it sees Finished:
// the trainer must be free by then. Before the end was held, the second
// Train failed with "a fine-tune is already running in this plugin
// process" (TestTrainEventsArriveInOrder failed so once in a fresh
// clone's .ci/run, the window there being the few instructions between
// the test plugin's emit and its return).
func TestRunnerTrainerIsFreeWhenTheEndArrives(t *testing.T) {
	runs := 0
	tr := &RunnerTrainer{
		Logger: hclog.NewNullLogger(),
		Runner: RunnerFunc(func(ctx context.Context, req TrainRequest, emit func(Event)) error {
			runs++
			emit(Started{TotalSteps: 1})
			emit(Step{Step: 1, Loss: 0.5})
			emit(Finished{AdapterDir: req.OutputDir, FinalLoss: 0.5, Steps: 1})
			emit(Step{Step: 2})                // after the end: dropped
			time.Sleep(100 * time.Millisecond) // the clean-up
			return nil
		}),
	}
	ctx := context.Background()
	var prev EventStream
	for i := range 2 {
		s, err := tr.Train(ctx, TrainRequest{OutputDir: "out"})
		if err != nil {
			t.Fatalf("Train %d: %v", i+1, err)
		}
		if prev != nil {
			if rest := drain(t, prev); len(rest) != 0 {
				t.Errorf("Train %d: events after Finished: %v", i, rest)
			}
		}
		prev = s
		// Read up to the end only, as the host does, then go on at once.
		var got []Event
		for {
			ev, err := s.Recv()
			if err != nil {
				t.Fatalf("Train %d: Recv: %v (events %v)", i+1, err, got)
			}
			got = append(got, ev)
			if _, ok := ev.(Finished); ok {
				break
			}
		}
		if len(got) != 3 {
			t.Fatalf("Train %d: events %v, want Started, Step 1, Finished", i+1, got)
		}
		if f := got[2].(Finished); f.FinalLoss != 0.5 || f.Steps != 1 || f.AdapterDir != "out" {
			t.Errorf("Train %d: Finished = %+v, want the Runner's own", i+1, f)
		}
	}
	if rest := drain(t, prev); len(rest) != 0 {
		t.Errorf("Train 2: events after Finished: %v", rest)
	}
	if runs != 2 {
		t.Errorf("runs = %d, want 2", runs)
	}
}

// The first end wins: a Runner that emitted Finished and then returned an
// error is reported finished, and a run whose Runner emitted no end gets
// the one its error makes.
func TestRunnerTrainerFirstEndWins(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(emit func(Event)) error
		want Event
	}{
		{"Finished then an error", func(emit func(Event)) error {
			emit(Finished{AdapterDir: "out", FinalLoss: 1, Steps: 3})
			return errors.New("closing the backend failed")
		}, Finished{AdapterDir: "out", FinalLoss: 1, Steps: 3}},
		{"an error, no end emitted", func(emit func(Event)) error {
			return Errorf(CodeOutOfMemory, "out of memory")
		}, Failed{Code: CodeOutOfMemory, Message: "out of memory"}},
		{"nil, no end emitted", func(emit func(Event)) error { return nil }, Finished{AdapterDir: "out"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &RunnerTrainer{
				Logger: hclog.NewNullLogger(),
				Runner: RunnerFunc(func(_ context.Context, _ TrainRequest, emit func(Event)) error { return tc.run(emit) }),
			}
			s, err := tr.Train(context.Background(), TrainRequest{OutputDir: "out"})
			if err != nil {
				t.Fatal(err)
			}
			evs := drain(t, s)
			if len(evs) != 1 || evs[0] != tc.want {
				t.Errorf("events %#v, want only %#v", evs, tc.want)
			}
		})
	}
}
