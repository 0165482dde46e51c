package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
)

// stderr is the process's standard error as it was at start. go-plugin's
// Serve later points os.Stderr at a pipe it forwards over gRPC; logs must go
// to the real fd 2, which the host parses (JSON lines, forwarded to its
// hclog logger) and keeps the tail of for crash reports.
var stderr = os.Stderr

// LogLevelEnv sets a plugin's log level (trace, debug, info, warn, error);
// the default is info. The host inherits its environment to the plugin.
const LogLevelEnv = "OLLAMA_TUNE_PLUGIN_LOG"

// NewLogger returns a logger for code running inside a plugin: JSON lines on
// the real stderr, which go-plugin forwards to the host's logger.
func NewLogger(name string) hclog.Logger {
	level := hclog.LevelFromString(os.Getenv(LogLevelEnv))
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      level,
		Output:     stderr,
		JSONFormat: true,
	})
}

// Serve serves impl as a trainer plugin and does not return. Call it from a
// plugin binary's main; run by hand (without the host), it prints a hint and
// exits 1.
func Serve(impl Trainer) {
	logger := NewLogger("trainer")
	if os.Getenv(MagicCookieKey) == MagicCookieValue {
		checkHostProtocol(logger)
		go exitWithParent(logger, os.Getppid())
	}
	goplugin.Serve(&goplugin.ServeConfig{
		HandshakeConfig: Handshake(),
		Plugins:         pluginSet(impl),
		GRPCServer:      goplugin.DefaultGRPCServer,
		Logger:          logger,
	})
}

// checkHostProtocol logs, from the plugin's side, that the host speaks other
// protocol versions. The handshake goes on so the host learns this plugin's
// version and refuses it with a message of its own.
func checkHostProtocol(logger hclog.Logger) {
	hostVersions := os.Getenv("PLUGIN_PROTOCOL_VERSIONS") // set by go-plugin's client
	if hostVersions == "" {
		return
	}
	mine := servedProtocolVersion()
	for _, v := range strings.Split(hostVersions, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n == mine {
			return
		}
	}
	exe, _ := os.Executable()
	logger.Error(fmt.Sprintf("protocol mismatch: this plugin (%s) speaks trainer protocol %d, "+
		"the ollama-tune host speaks %s; rebuild the plugin and ollama-tune from the same source (make build)",
		exe, mine, hostVersions))
}

// exitWithParent ends the plugin when the host dies without killing it (kill
// -9 of the host): nobody would read its events, and it may hold a GPU.
func exitWithParent(logger hclog.Logger, ppid int) {
	for range time.Tick(time.Second) {
		if os.Getppid() != ppid {
			logger.Error("the ollama-tune host is gone; stopping", "host_pid", ppid)
			os.Exit(1)
		}
	}
}

// Runner is a fine-tune loop: finetune's SFT loop implements it (issue 5).
//
// Run emits Started first, then Step/Eval/CheckpointSaved/Log events, and
// returns nil when done (emitting Finished itself, or letting the Trainer
// emit Finished{AdapterDir: req.OutputDir}). It returns an error to fail the
// run (a *TrainError to choose the code) and never emits Failed itself.
//
// When ctx is cancelled, Run stops at the next safe point. If
// SaveCheckpointOnCancel(ctx) is true it first saves a checkpoint and emits
// CheckpointSaved, then returns ctx.Err().
type Runner interface {
	Run(ctx context.Context, req TrainRequest, emit func(Event)) error
}

// RunnerFunc adapts a function to Runner.
type RunnerFunc func(ctx context.Context, req TrainRequest, emit func(Event)) error

func (f RunnerFunc) Run(ctx context.Context, req TrainRequest, emit func(Event)) error {
	return f(ctx, req, emit)
}

// cancelState travels in a run's context so the Runner can tell a graceful
// cancel (save first) from an immediate one or a vanished host.
type cancelState struct {
	requested atomic.Bool
	mode      atomic.Int32
}

type cancelKey struct{}

// CancelRequested reports whether the host asked this run to stop, and how.
func CancelRequested(ctx context.Context) (CancelMode, bool) {
	st, _ := ctx.Value(cancelKey{}).(*cancelState)
	if st == nil || !st.requested.Load() {
		return 0, false
	}
	return CancelMode(st.mode.Load()), true
}

// SaveCheckpointOnCancel reports whether the run was cancelled gracefully,
// so the Runner should save a checkpoint before it returns.
func SaveCheckpointOnCancel(ctx context.Context) bool {
	mode, ok := CancelRequested(ctx)
	return ok && mode == CancelGraceful
}

// RunnerTrainer is a Trainer around a Runner: it runs one fine-tune at a
// time, streams its events, turns its error into a typed Failed event and
// implements Cancel by cancelling the run's context.
type RunnerTrainer struct {
	// Caps reports the backend's capabilities; ProtocolVersion is filled in.
	Caps   func(ctx context.Context) (Capabilities, error)
	Runner Runner
	// Generator serves Generate; nil answers CodeUnimplemented.
	Generator func(ctx context.Context, req GenerateRequest) (GenerateResponse, error)
	// Logger gets one line per event (the tail of the plugin's log is what
	// the host shows when the plugin crashes); nil means NewLogger("trainer").
	Logger hclog.Logger

	mu  sync.Mutex
	run *activeRun
}

type activeRun struct {
	cancel context.CancelFunc
	state  *cancelState
}

func (t *RunnerTrainer) logger() hclog.Logger {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.Logger == nil {
		t.Logger = NewLogger("trainer")
	}
	return t.Logger
}

func (t *RunnerTrainer) Capabilities(ctx context.Context) (Capabilities, error) {
	if t.Caps == nil {
		return Capabilities{}, Errorf(CodeInternal, "this trainer reports no capabilities")
	}
	caps, err := t.Caps(ctx)
	if err != nil {
		return Capabilities{}, err
	}
	caps.ProtocolVersion = servedProtocolVersion()
	return caps, nil
}

func (t *RunnerTrainer) Generate(ctx context.Context, req GenerateRequest) (GenerateResponse, error) {
	if t.Generator == nil {
		return GenerateResponse{}, Errorf(CodeUnimplemented, "this trainer plugin cannot generate")
	}
	return t.Generator(ctx, req)
}

func (t *RunnerTrainer) Cancel(_ context.Context, mode CancelMode) error {
	t.mu.Lock()
	r := t.run
	t.mu.Unlock()
	if r == nil {
		return nil // finished meanwhile: nothing to stop
	}
	r.state.mode.Store(int32(mode))
	r.state.requested.Store(true)
	r.cancel()
	return nil
}

// Train starts the Runner and returns its events. The run stops when ctx
// (the host's call) ends: a host that went away does not train on.
func (t *RunnerTrainer) Train(ctx context.Context, req TrainRequest) (EventStream, error) {
	if t.Runner == nil {
		return nil, Errorf(CodeUnimplemented, "this trainer plugin has no training loop")
	}
	logger := t.logger()
	state := &cancelState{}
	runCtx, cancel := context.WithCancel(context.WithValue(ctx, cancelKey{}, state))
	run := &activeRun{cancel: cancel, state: state}

	t.mu.Lock()
	if t.run != nil {
		t.mu.Unlock()
		cancel()
		return nil, Errorf(CodeInternal, "a fine-tune is already running in this plugin process")
	}
	t.run = run
	t.mu.Unlock()

	events := make(chan Event, 64)
	send := func(ev Event) {
		logEvent(logger, ev)
		select {
		case events <- ev:
		case <-ctx.Done(): // the host is gone; the run is being cancelled
		}
	}
	// The run's end (Finished or Failed), the Runner's own or the one made
	// from its error below, is sent only after the Runner has returned and
	// the plugin is free, so that a host starting its next run as soon as
	// it sees the end does not find this one still running (a Runner emits
	// Finished before it returns; TestTrainEventsArriveInOrder's second run
	// once came in between). The first end wins; later events are dropped.
	var end Event
	var emitMu sync.Mutex // a Runner may emit from several goroutines
	emit := func(ev Event) {
		emitMu.Lock()
		defer emitMu.Unlock()
		if end != nil {
			return
		}
		switch ev.(type) {
		case Finished, Failed:
			end = ev
			return
		}
		send(ev)
	}

	go func() {
		defer close(events)
		defer cancel()
		err := runRecovered(runCtx, t.Runner, req, emit, logger)

		emitMu.Lock()
		final := end
		switch {
		case final != nil:
		case err == nil:
			final = Finished{AdapterDir: req.OutputDir}
		default:
			code, msg := CodeOf(err), err.Error()
			var te *TrainError
			if errors.As(err, &te) {
				msg = te.Message
			}
			if _, ok := CancelRequested(runCtx); ok && (code == CodeInternal || code == CodeCancelled) {
				code, msg = CodeCancelled, "cancelled by the user"
			}
			final = Failed{Code: code, Message: msg}
		}
		end = final // a Runner goroutine still emitting is dropped from here on
		emitMu.Unlock()
		// Free the plugin for the next run before the host sees the end.
		t.mu.Lock()
		t.run = nil
		t.mu.Unlock()
		send(final)
	}()
	return chanStream(events), nil
}

// runRecovered runs r and turns a panic in its goroutine into an internal
// error (a panic in a goroutine the runner started still kills the process;
// the host reports that as a crash).
func runRecovered(ctx context.Context, r Runner, req TrainRequest, emit func(Event), logger hclog.Logger) (err error) {
	defer func() {
		if p := recover(); p != nil {
			logger.Error("trainer panicked", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			err = Errorf(CodeInternal, "trainer panicked: %v (stack in the plugin log)", p)
		}
	}()
	return r.Run(ctx, req, emit)
}

func logEvent(l hclog.Logger, ev Event) {
	switch e := ev.(type) {
	case Started:
		l.Info("started", "total_steps", e.TotalSteps, "start_step", e.StartStep, "resumed_from", e.ResumedFrom, "device", e.Device)
	case Step:
		l.Info(fmt.Sprintf("step %d", e.Step), "loss", e.Loss, "grad_norm", e.GradNorm, "lr", e.LearningRate, "tokens_per_s", e.TokensPerSecond)
	case Eval:
		l.Info(fmt.Sprintf("eval at step %d", e.Step), "loss", e.Loss)
	case CheckpointSaved:
		l.Info(fmt.Sprintf("checkpoint saved at step %d", e.Step), "path", e.Path)
	case Finished:
		l.Info("finished", "adapter_dir", e.AdapterDir, "final_loss", e.FinalLoss)
	case Failed:
		l.Error("failed", "code", string(e.Code), "message", e.Message)
	case Log:
		level := hclog.LevelFromString(e.Level)
		if level == hclog.NoLevel {
			level = hclog.Info
		}
		l.Log(level, e.Message)
	}
}

type chanStream <-chan Event

func (c chanStream) Recv() (Event, error) {
	ev, ok := <-c
	if !ok {
		return nil, io.EOF
	}
	return ev, nil
}
