package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// The tests run the real go-plugin machinery against plugin/internal/testplugin,
// built once in TestMain: testBinary speaks this package's protocol,
// staleBinary is linked to speak version ProtocolVersion+1.
var (
	testBinary  string
	staleBinary string
	buildErr    error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "plugin-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buildErr = buildTestPlugins(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildTestPlugins(dir string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("no go tool to build the test plugin: %w", err)
	}
	build := func(out string, extra ...string) error {
		args := append([]string{"build"}, extra...)
		args = append(args, "-o", out, "./internal/testplugin")
		cmd := exec.Command(goTool, args...)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return nil
	}
	testBinary = filepath.Join(dir, "fresh", BinaryPrefix+"test")
	staleBinary = filepath.Join(dir, "stale", BinaryPrefix+"test")
	if err := build(testBinary); err != nil {
		return err
	}
	flag := fmt.Sprintf("-X github.com/ollama-tune/ollama-tune/plugin.protocolVersionOverride=%d", ProtocolVersion+1)
	return build(staleBinary, "-ldflags", flag)
}

func needPlugin(t *testing.T) {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("build test plugin: %v", buildErr)
	}
}

// testLogger collects the host-side log (go-plugin's and the plugin's
// forwarded lines) so a failing test can print it.
func testLogger(t *testing.T) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "host", Level: hclog.Debug, Output: testWriter{t}})
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func launch(t *testing.T, path string) *Process {
	t.Helper()
	needPlugin(t)
	p, err := Launch(Binary{Backend: "test", Path: path}, Options{Logger: testLogger(t), StartTimeout: 20 * time.Second})
	if err != nil {
		t.Fatalf("Launch: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

func cfg(t *testing.T, v map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func withTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestTrainEventsArriveInOrder(t *testing.T) {
	p := launch(t, testBinary)
	out := t.TempDir()
	var events []Event
	fin, err := p.Train(withTimeout(t, 20*time.Second), TrainRequest{
		Config:    cfg(t, map[string]any{"steps": 10, "step_ms": 1, "checkpoint_every": 4}),
		OutputDir: out,
	}, func(ev Event) { events = append(events, ev) })
	if err != nil {
		t.Fatalf("Train: %v", err)
	}
	var got []string
	for _, ev := range events {
		switch e := ev.(type) {
		case Started:
			got = append(got, fmt.Sprintf("started/%d", e.TotalSteps))
		case Step:
			got = append(got, fmt.Sprintf("step%d", e.Step))
		case CheckpointSaved:
			got = append(got, fmt.Sprintf("ckpt%d", e.Step))
			if e.Path != filepath.Join(out, fmt.Sprintf("checkpoint-%d", e.Step)) {
				t.Errorf("checkpoint path %q", e.Path)
			}
		case Log:
			got = append(got, "log:"+e.Message)
		case Finished:
			got = append(got, "finished")
		default:
			got = append(got, fmt.Sprintf("%T", ev))
		}
	}
	want := "started/10 log:test runner ready step1 step2 step3 step4 ckpt4 step5 step6 step7 step8 ckpt8 step9 step10 finished"
	if g := strings.Join(got, " "); g != want {
		t.Errorf("events:\n got %s\nwant %s", g, want)
	}
	if fin.AdapterDir != out || fin.Steps != 10 || fin.FinalLoss != 0.2 {
		t.Errorf("Finished = %+v", fin)
	}
	if _, err := os.Stat(filepath.Join(out, "adapter_model.safetensors")); err != nil {
		t.Error(err)
	}
	if p.LastCheckpoint() != filepath.Join(out, "checkpoint-8") {
		t.Errorf("LastCheckpoint = %q", p.LastCheckpoint())
	}

	// The same process takes a second run: the first one freed it.
	if _, err := p.Train(withTimeout(t, 20*time.Second), TrainRequest{
		Config: cfg(t, map[string]any{"steps": 2}), OutputDir: t.TempDir(),
	}, nil); err != nil {
		t.Fatalf("second Train: %v", err)
	}
}

func TestTrainFailureKeepsItsCode(t *testing.T) {
	p := launch(t, testBinary)
	out := t.TempDir()
	_, err := p.Train(withTimeout(t, 20*time.Second), TrainRequest{
		Config:    cfg(t, map[string]any{"steps": 10, "step_ms": 1, "checkpoint_every": 2, "fail_at": 5, "fail_code": "out_of_memory"}),
		OutputDir: out,
	}, nil)
	var te *TrainError
	if !errors.As(err, &te) {
		t.Fatalf("err = %v (%T), want *TrainError", err, err)
	}
	if te.Code != CodeOutOfMemory || !strings.Contains(te.Message, "step 5") {
		t.Errorf("TrainError = %+v", te)
	}
	if te.LastCheckpoint != filepath.Join(out, "checkpoint-4") {
		t.Errorf("LastCheckpoint = %q, want checkpoint-4", te.LastCheckpoint)
	}

	_, err = p.Train(withTimeout(t, 20*time.Second), TrainRequest{
		Config: cfg(t, map[string]any{"invalid": true}), OutputDir: out,
	}, nil)
	if CodeOf(err) != CodeInvalidConfig || !strings.Contains(err.Error(), "invalid: true") {
		t.Errorf("invalid config: err = %v", err)
	}
}

func TestGracefulCancelSavesThenStops(t *testing.T) {
	p := launch(t, testBinary)
	out := t.TempDir()
	ctx := withTimeout(t, 20*time.Second)
	var (
		events    []Event
		cancelled bool
	)
	_, err := p.Train(ctx, TrainRequest{
		Config:    cfg(t, map[string]any{"steps": 10000, "step_ms": 20}),
		OutputDir: out,
	}, func(ev Event) {
		events = append(events, ev)
		if s, ok := ev.(Step); ok && s.Step == 3 && !cancelled {
			cancelled = true
			if err := p.Cancel(ctx, CancelGraceful); err != nil {
				t.Errorf("Cancel: %v", err)
			}
		}
	})
	var te *TrainError
	if !errors.As(err, &te) || te.Code != CodeCancelled {
		t.Fatalf("err = %v, want a cancelled *TrainError", err)
	}
	n := len(events)
	if n < 2 {
		t.Fatalf("events = %v", events)
	}
	cp, ok := events[n-2].(CheckpointSaved)
	if !ok {
		t.Fatalf("event before the end = %#v, want CheckpointSaved", events[n-2])
	}
	if _, ok := events[n-1].(Failed); !ok {
		t.Fatalf("last event = %#v, want Failed", events[n-1])
	}
	if cp.Step < 3 || cp.Step > 5 {
		t.Errorf("checkpoint at step %d, want the step reached when cancelled (3..5)", cp.Step)
	}
	if te.LastCheckpoint != cp.Path {
		t.Errorf("LastCheckpoint = %q, want %q", te.LastCheckpoint, cp.Path)
	}
	if _, err := os.Stat(filepath.Join(cp.Path, "state.json")); err != nil {
		t.Errorf("checkpoint not on disk: %v", err)
	}
	if p.Exited() {
		t.Error("a graceful cancel must leave the plugin running")
	}
}

func TestKillMidRunIsReportedThenResumes(t *testing.T) {
	p := launch(t, testBinary)
	out := t.TempDir()
	var lastSeen string
	_, err := p.Train(withTimeout(t, 20*time.Second), TrainRequest{
		Config:    cfg(t, map[string]any{"steps": 10000, "step_ms": 50, "checkpoint_every": 3}),
		OutputDir: out,
	}, func(ev Event) {
		switch e := ev.(type) {
		case CheckpointSaved:
			lastSeen = e.Path
		case Step:
			if e.Step == 7 {
				if err := syscall.Kill(p.Pid(), syscall.SIGKILL); err != nil {
					t.Errorf("kill -9: %v", err)
				}
			}
		}
	})
	var crash *CrashError
	if !errors.As(err, &crash) {
		t.Fatalf("err = %v (%T), want *CrashError", err, err)
	}
	if lastSeen == "" || crash.LastCheckpoint != lastSeen {
		t.Errorf("LastCheckpoint = %q, want the last one reported, %q", crash.LastCheckpoint, lastSeen)
	}
	msg := crash.Error()
	for _, want := range []string{"died during training", "SIGKILL", "out-of-memory killer", lastSeen, ResumeCommand} {
		if !strings.Contains(msg, want) {
			t.Errorf("crash report lacks %q:\n%s", want, msg)
		}
	}
	stepLine := regexp.MustCompile(`\[INFO \] trainer: step \d+ `)
	if len(crash.LastLog) == 0 || len(crash.LastLog) > CrashLogLines || !stepLine.MatchString(crash.LastLog[len(crash.LastLog)-1]) {
		t.Errorf("last log lines (want <= %d, ending with a step line):\n%s", CrashLogLines, strings.Join(crash.LastLog, "\n"))
	}
	if !p.Exited() {
		t.Error("plugin still running after kill -9")
	}
	t.Logf("crash report:\n%s", msg)

	// Resume in a fresh plugin from the checkpoint the report named.
	p2 := launch(t, testBinary)
	var started Started
	var firstStep int64
	fin, err := p2.Train(withTimeout(t, 20*time.Second), TrainRequest{
		Config:    cfg(t, map[string]any{"steps": 9, "step_ms": 1}),
		OutputDir: out,
		Resume:    crash.LastCheckpoint,
	}, func(ev Event) {
		switch e := ev.(type) {
		case Started:
			started = e
		case Step:
			if firstStep == 0 {
				firstStep = e.Step
			}
		}
	})
	if err != nil {
		t.Fatalf("resumed Train: %v", err)
	}
	if started.ResumedFrom != crash.LastCheckpoint || started.StartStep != 6 || firstStep != 7 || fin.Steps != 9 {
		t.Errorf("resume: Started=%+v first step=%d Finished=%+v; want resumed from %s at step 6",
			started, firstStep, fin, crash.LastCheckpoint)
	}
}

func TestPanicInPluginIsReportedWithItsLog(t *testing.T) {
	p := launch(t, testBinary)
	_, err := p.Train(withTimeout(t, 20*time.Second), TrainRequest{
		Config:    cfg(t, map[string]any{"steps": 100, "step_ms": 1, "panic_at": 3}),
		OutputDir: t.TempDir(),
	}, nil)
	var crash *CrashError
	if !errors.As(err, &crash) {
		t.Fatalf("err = %v (%T), want *CrashError", err, err)
	}
	msg := crash.Error()
	for _, want := range []string{"exited with status 2", "panic: test plugin panics at step 3", "no checkpoint was saved"} {
		if !strings.Contains(msg, want) {
			t.Errorf("crash report lacks %q:\n%s", want, msg)
		}
	}
}

func TestInterruptTwiceStopsAtOnce(t *testing.T) {
	p := launch(t, testBinary)
	ctx := withTimeout(t, 20*time.Second)
	sigs := make(chan os.Signal, 2)
	var (
		mu    sync.Mutex
		notes []string
	)
	handled := make(chan struct{})
	go func() {
		HandleInterrupts(ctx, sigs, p, func(s string) { mu.Lock(); notes = append(notes, s); mu.Unlock() })
		close(handled)
	}()
	start := time.Now()
	_, err := p.Train(ctx, TrainRequest{
		// Saving takes 10 s, so only the second interrupt can end the run quickly.
		Config:    cfg(t, map[string]any{"steps": 10000, "step_ms": 20, "save_ms": 10000}),
		OutputDir: t.TempDir(),
	}, func(ev Event) {
		if s, ok := ev.(Step); ok && s.Step == 2 {
			sigs <- os.Interrupt
			time.Sleep(200 * time.Millisecond) // the plugin is now saving
			sigs <- os.Interrupt
		}
	})
	if elapsed := time.Since(start); elapsed > 8*time.Second {
		t.Errorf("the second interrupt took %v to stop the run", elapsed)
	}
	var te *TrainError
	if !errors.As(err, &te) || te.Code != CodeCancelled || !strings.Contains(te.Message, "killed on request") {
		t.Fatalf("err = %v, want a cancelled *TrainError from the kill", err)
	}
	if !p.Exited() {
		t.Error("plugin still running after the second interrupt")
	}
	<-handled
	mu.Lock()
	defer mu.Unlock()
	if len(notes) < 2 || !strings.Contains(notes[0], "save a checkpoint") || !strings.Contains(notes[1], "stopping the trainer now") {
		t.Errorf("notes = %q", notes)
	}
}

// recordCanceller records cancels; its graceful cancel blocks until
// release is closed (nil: never blocks), like a plugin too stuck to answer.
type recordCanceller struct {
	mu       sync.Mutex
	modes    []CancelMode
	graceful chan struct{} // closed when the graceful cancel arrives
	release  chan struct{}
}

func newRecordCanceller(release chan struct{}) *recordCanceller {
	return &recordCanceller{graceful: make(chan struct{}), release: release}
}

func (r *recordCanceller) Cancel(ctx context.Context, m CancelMode) error {
	r.mu.Lock()
	r.modes = append(r.modes, m)
	r.mu.Unlock()
	if m == CancelGraceful {
		close(r.graceful)
		if r.release != nil {
			select {
			case <-r.release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return nil
}

func (r *recordCanceller) got() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return fmt.Sprint(r.modes)
}

func TestHandleInterruptsEscalates(t *testing.T) {
	for _, stuck := range []bool{false, true} {
		var release chan struct{}
		if stuck { // the graceful cancel never answers; the second interrupt must still kill
			release = make(chan struct{})
		}
		rc := newRecordCanceller(release)
		sigs := make(chan os.Signal, 3)
		done := make(chan struct{})
		go func() { HandleInterrupts(context.Background(), sigs, rc, nil); close(done) }()
		sigs <- os.Interrupt
		select {
		case <-rc.graceful:
		case <-time.After(5 * time.Second):
			t.Fatalf("stuck=%v: no graceful cancel after the first interrupt", stuck)
		}
		sigs <- os.Interrupt
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("stuck=%v: HandleInterrupts did not return after the second interrupt", stuck)
		}
		if rc.got() != "[graceful immediate]" {
			t.Errorf("stuck=%v: modes = %s, want [graceful immediate]", stuck, rc.got())
		}
		sigs <- os.Interrupt // a third is left for the default handler
		if len(sigs) != 1 {
			t.Errorf("stuck=%v: the handler consumed a third interrupt", stuck)
		}
		if release != nil {
			close(release)
		}
	}

	// A finished run (ctx done) stops the handler without cancelling.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rc := newRecordCanceller(nil)
	HandleInterrupts(ctx, make(chan os.Signal), rc, nil)
	if rc.got() != "[]" {
		t.Errorf("modes = %s after ctx done, want none", rc.got())
	}
}

func TestProtocolMismatchIsRefused(t *testing.T) {
	needPlugin(t)
	var logBuf strings.Builder
	logger := hclog.New(&hclog.LoggerOptions{Level: hclog.Debug, Output: &logBuf})
	_, err := Launch(Binary{Backend: "test", Path: staleBinary}, Options{Logger: logger, StartTimeout: 20 * time.Second})
	var pm *ProtocolMismatchError
	if !errors.As(err, &pm) {
		t.Fatalf("err = %v (%T), want *ProtocolMismatchError", err, err)
	}
	if pm.PluginVersion != ProtocolVersion+1 || pm.HostVersion != ProtocolVersion {
		t.Errorf("versions: plugin %d host %d", pm.PluginVersion, pm.HostVersion)
	}
	msg := err.Error()
	for _, want := range []string{
		staleBinary,
		fmt.Sprintf("speaks trainer protocol version %d", ProtocolVersion+1),
		fmt.Sprintf("this ollama-tune speaks version %d", ProtocolVersion),
		"make build",
		// the plugin refuses the host too, in its own words
		fmt.Sprintf("this plugin (%s) speaks trainer protocol %d, the ollama-tune host speaks %d", staleBinary, ProtocolVersion+1, ProtocolVersion),
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
}

func TestCapabilitiesAndGenerateCrossTheWire(t *testing.T) {
	p := launch(t, testBinary)
	ctx := withTimeout(t, 20*time.Second)
	caps, err := p.Capabilities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if caps.Backend != "test" || caps.ProtocolVersion != ProtocolVersion || caps.TrainerVersion != "test" ||
		len(caps.Devices) != 1 || caps.Devices[0].TotalMemory != 1<<30 || caps.Devices[0].Detail != "1 core" ||
		fmt.Sprint(caps.ComputeDTypes) != "[fp32 bf16 (emulated)]" || fmt.Sprint(caps.Optimizers) != "[adamw_torch]" {
		t.Errorf("Capabilities = %+v", caps)
	}
	resp, err := p.Generate(ctx, GenerateRequest{PromptIDs: []int32{1, 2, 3}, Prompt: "hi", AdapterDir: "/a", MaxNewTokens: 2})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(resp.IDs) != "[3 2]" || resp.Text != "echo: hi adapter=/a" {
		t.Errorf("Generate = %+v", resp)
	}
}

func TestDiscoverOrderAndNames(t *testing.T) {
	a, b, exeDir := t.TempDir(), t.TempDir(), t.TempDir()
	write := func(dir, name string, mode os.FileMode) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(a, BinaryPrefix+"cpu", 0o755)
	write(a, BinaryPrefix+"notexec", 0o644)   // not executable
	write(a, BinaryPrefix+"cpu.log", 0o755)   // not a backend name
	write(a, "ollama-tune-other", 0o755)      // not a trainer
	write(b, BinaryPrefix+"cuda", 0o755)      // found in the second dir
	write(b, BinaryPrefix+"cpu", 0o755)       // shadowed by a's
	write(exeDir, BinaryPrefix+"rocm", 0o755) // found last
	if err := os.Mkdir(filepath.Join(a, BinaryPrefix+"dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	got := DiscoverIn([]string{a, filepath.Join(a, "missing"), b, exeDir})
	var names []string
	for _, bin := range got {
		names = append(names, bin.Backend+"@"+filepath.Base(filepath.Dir(bin.Path)))
	}
	want := []string{"cpu@" + filepath.Base(a), "cuda@" + filepath.Base(b), "rocm@" + filepath.Base(exeDir)}
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("DiscoverIn = %v, want %v", names, want)
	}

	t.Setenv(PluginsEnv, a+string(os.PathListSeparator)+b)
	dirs := SearchDirs()
	exe, _ := os.Executable()
	exe, _ = filepath.EvalSymlinks(exe)
	if len(dirs) != 3 || dirs[0] != a || dirs[1] != b || dirs[2] != filepath.Dir(exe) {
		t.Errorf("SearchDirs = %v, want [%s %s %s]", dirs, a, b, filepath.Dir(exe))
	}
}

func TestChooseDevice(t *testing.T) {
	cpu := Candidate{Binary: Binary{Backend: "cpu", Path: "/x/" + BinaryPrefix + "cpu"},
		Caps: Capabilities{Backend: "cpu", Devices: []Device{{Name: "cpu", TotalMemory: 24 << 30, Detail: "2 cores"}}}}
	gpu := Candidate{Binary: Binary{Backend: "cuda", Path: "/x/" + BinaryPrefix + "cuda"},
		Caps: Capabilities{Backend: "cuda", Devices: []Device{{Name: "NVIDIA H100", TotalMemory: 80 << 30}}}}
	noGPU := gpu
	noGPU.Caps.Devices = nil
	broken := gpu
	broken.Err = errors.New("libcuda.so.1: cannot open shared object file\nmore")

	for _, tc := range []struct {
		device  string
		cands   []Candidate
		backend string // "" = error
		why     string // substring of the reason or error
	}{
		{"auto", []Candidate{cpu, gpu}, "cuda", "device auto: chose cuda: NVIDIA H100, 80.0 GiB"},
		{"", []Candidate{gpu, cpu}, "cuda", "chose cuda"},
		{"auto", []Candidate{cpu, noGPU}, "cpu", "chose cpu (cpu, 24.0 GiB, 2 cores): " + BinaryPrefix + "cuda sees no GPU"},
		{"auto", []Candidate{cpu}, "cpu", "no " + BinaryPrefix + "cuda plugin found"},
		{"auto", []Candidate{broken, cpu}, "cpu", "failed to start: libcuda.so.1: cannot open shared object file"},
		{"auto", []Candidate{noGPU}, "", "no " + BinaryPrefix + "cpu plugin found either"},
		{"cpu", []Candidate{gpu, cpu}, "cpu", "device cpu: using cpu"},
		{"cuda", []Candidate{cpu}, "", "no " + BinaryPrefix + "cuda plugin found"},
		{"cuda", []Candidate{cpu, noGPU}, "", "reports no cuda device"},
		{"cuda", []Candidate{broken}, "", "libcuda.so.1"},
	} {
		c, why, err := ChooseDevice(tc.device, tc.cands)
		if tc.backend == "" {
			if err == nil || !strings.Contains(err.Error(), tc.why) {
				t.Errorf("%q: err = %v, want one containing %q", tc.device, err, tc.why)
			}
			continue
		}
		if err != nil || c.Binary.Backend != tc.backend || !strings.Contains(why, tc.why) {
			t.Errorf("%q: chose %q (%q, err %v), want %q with %q", tc.device, c.Binary.Backend, why, err, tc.backend, tc.why)
		}
	}
}

func TestSelectLaunchesAndChooses(t *testing.T) {
	needPlugin(t)
	dir := t.TempDir()
	var bins []Binary
	for _, backend := range []string{"cpu", "cuda"} {
		path := filepath.Join(dir, BinaryPrefix+backend)
		data, err := os.ReadFile(testBinary)
		if err == nil {
			err = os.WriteFile(path, data, 0o755)
		}
		if err != nil {
			t.Fatal(err)
		}
		bins = append(bins, Binary{Backend: backend, Path: path})
	}
	opts := Options{Logger: testLogger(t), StartTimeout: 20 * time.Second}
	ctx := withTimeout(t, 30*time.Second)

	t.Setenv("TESTPLUGIN_GPUS", "2")
	p, caps, why, err := Select(ctx, "auto", bins, opts)
	if err != nil {
		t.Fatal(err)
	}
	if p.Binary.Backend != "cuda" || caps.Backend != "cuda" || len(caps.Devices) != 2 || !strings.Contains(why, "chose cuda: Fake GPU 0") {
		t.Errorf("auto with GPUs: %s, caps %+v, %q", p.Binary.Backend, caps, why)
	}
	p.Close()

	t.Setenv("TESTPLUGIN_GPUS", "0")
	p, caps, why, err = Select(ctx, "auto", bins, opts)
	if err != nil {
		t.Fatal(err)
	}
	if p.Binary.Backend != "cpu" || caps.Backend != "cpu" || !strings.Contains(why, "sees no GPU") {
		t.Errorf("auto without GPUs: %s, %q", p.Binary.Backend, why)
	}
	p.Close()

	if _, _, _, err := Select(ctx, "cuda", bins, opts); err == nil || !strings.Contains(err.Error(), "reports no cuda device") {
		t.Errorf("device cuda without GPUs: err = %v", err)
	}
}

func TestLogTail(t *testing.T) {
	tail := newLogTail(3)
	w := tail.writer("")
	io.WriteString(w, `{"@level":"info","@message":"step 1","@module":"trainer","@timestamp":"2025-01-02T03:04:05.000000Z","loss":0.5}`)
	io.WriteString(w, "\n") // go-plugin writes the newline separately
	io.WriteString(w, "panic: boom\n\ngoroutine 1 [running]:\nmain.main()\n")
	lines := tail.Lines()
	want := []string{"panic: boom", "goroutine 1 [running]:", "main.main()"}
	if fmt.Sprint(lines) != fmt.Sprint(want) {
		t.Errorf("Lines = %q, want %q", lines, want)
	}
	if tail.PanicLine() != "panic: boom" {
		t.Errorf("PanicLine = %q", tail.PanicLine())
	}
	tail = newLogTail(3)
	io.WriteString(tail.writer(""), `{"@level":"info","@message":"step 1","@module":"trainer","@timestamp":"2025-01-02T03:04:05.000000Z","loss":0.5}`+"\n")
	if got := tail.Lines(); len(got) != 1 || got[0] != "03:04:05 [INFO ] trainer: step 1 loss=0.5" {
		t.Errorf("formatted = %q", got)
	}

	e := &CrashError{Plugin: "/x/p", Pid: 7, During: "training", Status: "exited with status 2",
		LastLog: []string{"a", "b"}, PanicLine: "panic: boom"}
	if msg := e.Error(); !strings.Contains(msg, "    panic: boom\n    ...\n    a\n    b") {
		t.Errorf("a scrolled-out panic line is not shown first:\n%s", msg)
	}
}

func TestErrorCodesCrossTheWire(t *testing.T) {
	for _, code := range []ErrorCode{CodeInvalidConfig, CodeOutOfMemory, CodeDevice, CodeCancelled, CodeUnimplemented, CodeInternal} {
		err := fromStatus("op", toStatus(Errorf(code, "msg %s", code)))
		var te *TrainError
		if !errors.As(err, &te) || te.Code != code || te.Message != "msg "+string(code) {
			t.Errorf("%s: round trip gave %v", code, err)
		}
	}
	if CodeOf(fmt.Errorf("wrap: %w", context.Canceled)) != CodeCancelled || CodeOf(errors.New("x")) != CodeInternal {
		t.Error("CodeOf")
	}
}
