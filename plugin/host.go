package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"github.com/hashicorp/go-plugin/runner"
)

// Host side: find trainer plugins, start one, stream a run, cancel it, and
// explain its death.

const (
	// BinaryPrefix starts every trainer plugin's file name; the rest is the
	// backend: ollama-tune-trainer-cpu, ollama-tune-trainer-cuda.
	BinaryPrefix = "ollama-tune-trainer-"
	// PluginsEnv lists extra directories to search, colon-separated, before
	// the directory of the ollama-tune executable.
	PluginsEnv = "OLLAMA_TUNE_PLUGINS"
)

// ResumeCommand is what a crash report tells the user to run to continue.
var ResumeCommand = "ollama-tune train --resume"

// Binary is a trainer plugin executable found on disk.
type Binary struct {
	Backend string // the file name after BinaryPrefix
	Path    string
}

func (b Binary) Name() string { return filepath.Base(b.Path) }

// SearchDirs returns where plugins are looked for, in order: each directory
// of $OLLAMA_TUNE_PLUGINS (an explicit choice wins), then the directory of
// the running executable (where `make build` puts them).
func SearchDirs() []string {
	var dirs []string
	for _, d := range filepath.SplitList(os.Getenv(PluginsEnv)) {
		if d != "" {
			dirs = append(dirs, d)
		}
	}
	if exe, err := os.Executable(); err == nil {
		if real, err := filepath.EvalSymlinks(exe); err == nil {
			exe = real
		}
		dirs = append(dirs, filepath.Dir(exe))
	}
	return dirs
}

// Discover finds the trainer plugins in SearchDirs.
func Discover() []Binary { return DiscoverIn(SearchDirs()) }

var backendName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)

// DiscoverIn finds executables named ollama-tune-trainer-<backend> in dirs.
// The first directory that has a backend wins; within a directory, plugins
// come in name order. Missing directories are skipped.
func DiscoverIn(dirs []string) []Binary {
	var found []Binary
	seen := map[string]bool{}
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
		for _, e := range entries {
			name := strings.TrimSuffix(e.Name(), ".exe")
			backend, ok := strings.CutPrefix(name, BinaryPrefix)
			if !ok || !backendName.MatchString(backend) || seen[backend] {
				continue
			}
			path := filepath.Join(dir, e.Name())
			info, err := os.Stat(path) // follows symlinks
			if err != nil || !info.Mode().IsRegular() || info.Mode().Perm()&0o111 == 0 {
				continue
			}
			if abs, err := filepath.Abs(path); err == nil {
				path = abs
			}
			seen[backend] = true
			found = append(found, Binary{Backend: backend, Path: path})
		}
	}
	return found
}

// Options configure how a plugin is launched.
type Options struct {
	// Logger receives the plugin's log lines (go-plugin forwards them) and
	// go-plugin's own; nil means a logger on stderr at the level of
	// $OLLAMA_TUNE_LOG (default warn).
	Logger hclog.Logger
	// StartTimeout bounds the handshake; 0 means one minute.
	StartTimeout time.Duration
}

func (o Options) logger() hclog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	level := hclog.LevelFromString(os.Getenv("OLLAMA_TUNE_LOG"))
	if level == hclog.NoLevel {
		level = hclog.Warn
	}
	return hclog.New(&hclog.LoggerOptions{Name: "ollama-tune", Level: level, Output: os.Stderr})
}

// Process is a running trainer plugin.
type Process struct {
	Binary Binary

	client  *goplugin.Client
	proc    *procRunner
	trainer Trainer
	tail    *logTail

	killRequested atomic.Bool // Cancel(CancelImmediate) killed it on purpose

	mu             sync.Mutex
	lastCheckpoint string
}

// Launch starts the plugin b and completes the go-plugin handshake (with
// AutoMTLS). A plugin of another protocol version is refused with a
// *ProtocolMismatchError. Close the Process when done.
func Launch(b Binary, opts Options) (*Process, error) {
	p := &Process{Binary: b, tail: newLogTail(CrashLogLines)}
	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = time.Minute
	}
	p.client = goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig: Handshake(),
		Plugins:         pluginSet(nil),
		RunnerFunc: func(l hclog.Logger, spec *exec.Cmd, _ string) (runner.Runner, error) {
			// Called from p.client.Client() below, on this goroutine.
			r, err := newProcRunner(b.Path, spec)
			p.proc = r
			return r, err
		},
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		AutoMTLS:         true,
		Logger:           opts.logger(),
		Stderr:           p.tail.writer(""),
		SyncStderr:       p.tail.writer(""),
		SyncStdout:       p.tail.writer("stdout: "),
		StartTimeout:     timeout,
	})
	rpc, err := p.client.Client()
	if err != nil {
		p.client.Kill()
		return nil, p.startError(err)
	}
	raw, err := rpc.Dispense(pluginName)
	if err != nil {
		p.client.Kill()
		return nil, fmt.Errorf("start trainer plugin %s: %w", b.Path, err)
	}
	t, ok := raw.(Trainer)
	if !ok {
		p.client.Kill()
		return nil, fmt.Errorf("start trainer plugin %s: it served %T, not a Trainer", b.Path, raw)
	}
	p.trainer = t
	return p, nil
}

// ProtocolMismatchError is returned by Launch for a plugin built against
// another trainer protocol version.
type ProtocolMismatchError struct {
	Path           string
	PluginVersion  int // 0 if the plugin's answer could not be parsed
	HostVersion    int
	PluginComplain string // the plugin's own log line about it, if any
}

func (e *ProtocolMismatchError) Error() string {
	pv := "another version"
	if e.PluginVersion > 0 {
		pv = fmt.Sprintf("version %d", e.PluginVersion)
	}
	msg := fmt.Sprintf("trainer plugin %s speaks trainer protocol %s, but this ollama-tune speaks version %d: "+
		"they were built from different sources. Rebuild ollama-tune and its plugins together "+
		"(`make build` writes both to bin/), or remove the stale plugin from %s (searched: $%s, then the directory of ollama-tune)",
		e.Path, pv, e.HostVersion, filepath.Dir(e.Path), PluginsEnv)
	if e.PluginComplain != "" {
		msg += "\nthe plugin says: " + e.PluginComplain
	}
	return msg
}

var pluginVersionRe = regexp.MustCompile(`Plugin version: (\d+)`)

// startError explains why the handshake failed.
func (p *Process) startError(err error) error {
	if strings.Contains(err.Error(), "incompatible API version") {
		e := &ProtocolMismatchError{Path: p.Binary.Path, HostVersion: servedProtocolVersion()}
		if m := pluginVersionRe.FindStringSubmatch(err.Error()); m != nil {
			e.PluginVersion, _ = strconv.Atoi(m[1])
		}
		for _, l := range p.tail.Lines() {
			if strings.Contains(l, "protocol mismatch") {
				e.PluginComplain = l
			}
		}
		return e
	}
	msg := fmt.Sprintf("start trainer plugin %s: %v", p.Binary.Path, err)
	if p.proc != nil {
		select {
		case <-p.proc.done:
			msg += fmt.Sprintf("\nthe plugin %s", describeExit(p.proc.state))
		case <-time.After(time.Second):
		}
	}
	if lines := p.tail.Lines(); len(lines) > 0 {
		msg += "\nits last log lines:\n" + indent(lines)
	}
	return errors.New(msg)
}

// Pid is the plugin's process id.
func (p *Process) Pid() int {
	if p.proc == nil {
		return 0
	}
	return p.proc.pid
}

// LogTail returns the plugin's last log lines, oldest first.
func (p *Process) LogTail() []string { return p.tail.Lines() }

// Exited reports whether the plugin process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.proc.done:
		return true
	default:
		return false
	}
}

// Close stops the plugin: go-plugin asks it to exit, then kills it after 2 s.
func (p *Process) Close() { p.client.Kill() }

func (p *Process) Capabilities(ctx context.Context) (Capabilities, error) {
	caps, err := p.trainer.Capabilities(ctx)
	if err != nil {
		return Capabilities{}, p.explain("capabilities", err)
	}
	return caps, nil
}

func (p *Process) Generate(ctx context.Context, req GenerateRequest) (GenerateResponse, error) {
	resp, err := p.trainer.Generate(ctx, req)
	if err != nil {
		return GenerateResponse{}, p.explain("generation", err)
	}
	return resp, nil
}

// Cancel stops the running fine-tune. CancelGraceful asks the plugin to save
// a checkpoint and stop (Train then returns a *TrainError with
// CodeCancelled); CancelImmediate kills the plugin process at once.
func (p *Process) Cancel(ctx context.Context, mode CancelMode) error {
	if mode == CancelImmediate {
		p.killRequested.Store(true)
		return p.proc.Kill(ctx)
	}
	if err := p.trainer.Cancel(ctx, mode); err != nil {
		return p.explain("cancel", err)
	}
	return nil
}

// LastCheckpoint is the newest checkpoint the current or last run reported
// (or the one it resumed from).
func (p *Process) LastCheckpoint() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastCheckpoint
}

func (p *Process) setLastCheckpoint(path string) {
	p.mu.Lock()
	p.lastCheckpoint = path
	p.mu.Unlock()
}

// Train runs one fine-tune, calling onEvent for each event in order, and
// returns the Finished event. A run that ends in Failed returns a
// *TrainError; a plugin that dies returns a *CrashError naming the last
// checkpoint and showing the plugin's last log lines. Cancelling ctx
// abandons the run without a checkpoint; use Cancel (or HandleInterrupts)
// to stop it gracefully.
func (p *Process) Train(ctx context.Context, req TrainRequest, onEvent func(Event)) (Finished, error) {
	p.setLastCheckpoint(req.Resume)
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := p.trainer.Train(streamCtx, req)
	if err != nil {
		return Finished{}, p.runError(ctx, err)
	}
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			return Finished{}, p.runError(ctx, errors.New("the event stream ended without Finished or Failed"))
		}
		if err != nil {
			return Finished{}, p.runError(ctx, err)
		}
		if cp, ok := ev.(CheckpointSaved); ok {
			p.setLastCheckpoint(cp.Path)
		}
		if onEvent != nil {
			onEvent(ev)
		}
		switch e := ev.(type) {
		case Finished:
			return e, nil
		case Failed:
			return Finished{}, &TrainError{Code: e.Code, Message: e.Message, LastCheckpoint: p.LastCheckpoint()}
		}
	}
}

// runError classifies a run that ended without Finished or Failed.
func (p *Process) runError(ctx context.Context, err error) error {
	if p.killRequested.Load() {
		p.waitExit(5 * time.Second)
		return &TrainError{
			Code:           CodeCancelled,
			Message:        "stopped at once (the trainer plugin was killed on request; nothing after the last checkpoint was saved)",
			LastCheckpoint: p.LastCheckpoint(),
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("train with %s: %w", p.Binary.Name(), ctx.Err())
	}
	var te *TrainError
	if errors.As(err, &te) && !p.waitExit(200*time.Millisecond) {
		te.LastCheckpoint = p.LastCheckpoint()
		return te
	}
	return p.crash("training", err)
}

// explain turns an RPC error into a *CrashError when the plugin has died.
func (p *Process) explain(during string, err error) error {
	var tr *transportError
	wait := 200 * time.Millisecond
	if errors.As(err, &tr) {
		wait = 3 * time.Second // the connection broke: the process is probably dying
	}
	if p.waitExit(wait) {
		return p.crash(during, err)
	}
	return fmt.Errorf("%s with %s: %w", during, p.Binary.Name(), err)
}

// waitExit waits up to d for the plugin process to end and reports whether it did.
func (p *Process) waitExit(d time.Duration) bool {
	select {
	case <-p.proc.done:
		return true
	case <-time.After(d):
		return false
	}
}

// crash builds the report of a plugin that died (or stopped answering, in
// which case it is killed: a half-dead trainer may hold a GPU).
func (p *Process) crash(during string, err error) *CrashError {
	e := &CrashError{
		Plugin:         p.Binary.Path,
		Pid:            p.Pid(),
		During:         during,
		LastCheckpoint: p.LastCheckpoint(),
		Err:            err,
	}
	if p.waitExit(3 * time.Second) {
		e.Status = describeExit(p.proc.state)
	} else {
		e.Status = fmt.Sprintf("stopped answering (%v) and was killed", err)
		_ = p.proc.Kill(context.Background())
		p.waitExit(5 * time.Second)
	}
	// Let go-plugin's reader drain the last bytes of stderr into the tail.
	p.client.Kill()
	e.LastLog = p.tail.Lines()
	e.PanicLine = p.tail.PanicLine()
	return e
}

// CrashError reports a trainer plugin that died: how, what it logged last,
// and which checkpoint survives.
type CrashError struct {
	Plugin         string
	Pid            int
	During         string // "training", "generation", ...
	Status         string // how it ended, in words
	LastLog        []string
	PanicLine      string // the first "panic:" line, if it panicked
	LastCheckpoint string // "" if no checkpoint was saved
	Err            error  // the RPC error that revealed the death
}

func (e *CrashError) Unwrap() error { return e.Err }

func (e *CrashError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the trainer plugin died during %s: %s (pid %d) %s",
		e.During, filepath.Base(e.Plugin), e.Pid, e.Status)
	if len(e.LastLog) > 0 {
		fmt.Fprintf(&b, "\nlast %d lines of its log:\n", len(e.LastLog))
		if e.PanicLine != "" && !contains(e.LastLog, e.PanicLine) {
			b.WriteString(indent([]string{e.PanicLine, "..."}) + "\n")
		}
		b.WriteString(indent(e.LastLog))
	} else {
		b.WriteString("\nit wrote nothing to its log")
	}
	if e.During == "training" {
		if e.LastCheckpoint != "" {
			fmt.Fprintf(&b, "\nthe last checkpoint is intact: %s\ncontinue from it with: %s (it picks up %s)",
				e.LastCheckpoint, ResumeCommand, e.LastCheckpoint)
		} else {
			b.WriteString("\nno checkpoint was saved before the crash; the run must start over")
		}
	}
	return b.String()
}

func contains(lines []string, s string) bool {
	for _, l := range lines {
		if l == s {
			return true
		}
	}
	return false
}

func indent(lines []string) string {
	return "    " + strings.Join(lines, "\n    ")
}

// Canceller is what HandleInterrupts stops; *Process is one.
type Canceller interface {
	Cancel(ctx context.Context, mode CancelMode) error
}

// HandleInterrupts escalates interrupts into cancels: the first asks c to
// save a checkpoint and stop (CancelGraceful), the second stops it at once
// (CancelImmediate), then HandleInterrupts returns. It also returns when ctx
// is done. notify (may be nil) gets a line for the user at each step. The
// CLI runs it in a goroutine beside Train with
// signal.Notify(sigs, os.Interrupt), and calls signal.Stop after it returns
// so a third Ctrl-C ends the host itself.
func HandleInterrupts(ctx context.Context, sigs <-chan os.Signal, c Canceller, notify func(string)) {
	say := func(s string) {
		if notify != nil {
			notify(s)
		}
	}
	for n := 0; n < 2; n++ {
		select {
		case <-ctx.Done():
			return
		case <-sigs:
		}
		if n == 0 {
			say("interrupt: asking the trainer to save a checkpoint and stop (press Ctrl-C again to stop at once)")
			// Asynchronously: a plugin too stuck to answer must not keep the
			// second Ctrl-C from killing it.
			go func() {
				cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				if err := c.Cancel(cctx, CancelGraceful); err != nil && ctx.Err() == nil {
					say(fmt.Sprintf("graceful stop failed (%v); press Ctrl-C again to stop at once", firstLine(err)))
				}
			}()
			continue
		}
		say("second interrupt: stopping the trainer now, without saving")
		if err := c.Cancel(ctx, CancelImmediate); err != nil {
			say(fmt.Sprintf("could not stop the trainer: %v", err))
		}
	}
}

// ---- choosing a backend ----

// Candidate is a launched plugin (or the error launching it) considered for
// a config's device.
type Candidate struct {
	Binary Binary
	Caps   Capabilities
	Err    error // launch or Capabilities failed
}

// ChooseDevice picks the candidate for device ("auto", "cpu", "cuda" or
// another backend name; "" means auto) and says why, in one line. auto
// prefers a CUDA plugin that reports at least one device, then CPU.
func ChooseDevice(device string, cands []Candidate) (Candidate, string, error) {
	if device == "" {
		device = "auto"
	}
	find := func(backend string) (Candidate, bool) {
		for _, c := range cands {
			if c.Binary.Backend == backend {
				return c, true
			}
		}
		return Candidate{}, false
	}
	if device != "auto" {
		c, ok := find(device)
		switch {
		case !ok:
			return Candidate{}, "", fmt.Errorf("device: %s: no %s%s plugin found (searched %s); build it, or set device: auto",
				device, BinaryPrefix, device, searchedDirs())
		case c.Err != nil:
			return Candidate{}, "", fmt.Errorf("device: %s: %w", device, c.Err)
		case len(c.Caps.Devices) == 0:
			return Candidate{}, "", fmt.Errorf("device: %s: %s reports no %s device on this machine; set device: auto or cpu",
				device, c.Binary.Name(), device)
		}
		return c, fmt.Sprintf("device %s: using %s (%s)", device, describeDevices(c.Caps.Devices), c.Binary.Path), nil
	}

	why := "no " + BinaryPrefix + "cuda plugin found"
	if c, ok := find("cuda"); ok {
		switch {
		case c.Err != nil:
			why = fmt.Sprintf("%s failed to start: %v", c.Binary.Name(), firstLine(c.Err))
		case len(c.Caps.Devices) == 0:
			why = fmt.Sprintf("%s sees no GPU", c.Binary.Name())
		default:
			return c, fmt.Sprintf("device auto: chose cuda: %s (%s)", describeDevices(c.Caps.Devices), c.Binary.Path), nil
		}
	}
	c, ok := find("cpu")
	switch {
	case !ok:
		return Candidate{}, "", fmt.Errorf("device: auto: %s, and no %scpu plugin found either (searched %s); run `make build`",
			why, BinaryPrefix, searchedDirs())
	case c.Err != nil:
		return Candidate{}, "", fmt.Errorf("device: auto: %s, and the cpu plugin failed: %w", why, c.Err)
	}
	return c, fmt.Sprintf("device auto: chose cpu (%s): %s", describeDevices(c.Caps.Devices), why), nil
}

// Select launches the plugins that device may use, in preference order,
// and returns the chosen one running, its capabilities and why it was
// chosen. The others are closed.
func Select(ctx context.Context, device string, bins []Binary, opts Options) (*Process, Capabilities, string, error) {
	if device == "" {
		device = "auto"
	}
	order := []string{device}
	if device == "auto" {
		order = []string{"cuda", "cpu"}
	}
	var cands []Candidate
	procs := map[string]*Process{}
	closeAll := func(keep string) {
		for name, p := range procs {
			if name != keep {
				p.Close()
			}
		}
	}
	for _, backend := range order {
		var bin *Binary
		for i := range bins {
			if bins[i].Backend == backend {
				bin = &bins[i]
				break
			}
		}
		if bin == nil {
			continue
		}
		c := Candidate{Binary: *bin}
		p, err := Launch(*bin, opts)
		if err == nil {
			procs[backend] = p
			c.Caps, err = p.Capabilities(ctx)
		}
		c.Err = err
		cands = append(cands, c)
		// auto stops at the first usable GPU plugin.
		if device == "auto" && backend == "cuda" && err == nil && len(c.Caps.Devices) > 0 {
			break
		}
	}
	chosen, why, err := ChooseDevice(device, cands)
	if err != nil {
		closeAll("")
		return nil, Capabilities{}, "", err
	}
	closeAll(chosen.Binary.Backend)
	return procs[chosen.Binary.Backend], chosen.Caps, why, nil
}

func describeDevices(ds []Device) string {
	if len(ds) == 0 {
		return "no devices"
	}
	var parts []string
	for _, d := range ds {
		s := d.Name
		if d.TotalMemory > 0 {
			s += fmt.Sprintf(", %s", FormatBytes(d.TotalMemory))
		}
		if d.Detail != "" {
			s += ", " + d.Detail
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

// FormatBytes prints a size in GiB or MiB.
func FormatBytes(n uint64) string {
	if n >= 1<<30 {
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	}
	return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
}

func searchedDirs() string {
	dirs := SearchDirs()
	if len(dirs) == 0 {
		return "nowhere"
	}
	return strings.Join(dirs, ", ")
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// ---- the plugin process ----

// procRunner is go-plugin's runner for a local executable (like its internal
// CmdRunner) that also keeps the exit status, so a crash report can say how
// the plugin died.
type procRunner struct {
	cmd    *exec.Cmd
	stdout io.ReadCloser
	stderr io.ReadCloser
	path   string
	pid    int

	waitOnce sync.Once
	waitErr  error
	state    *os.ProcessState
	done     chan struct{} // closed when the process has been reaped
}

var _ runner.Runner = (*procRunner)(nil)

// newProcRunner builds the command from go-plugin's spec (which carries the
// handshake and mTLS environment). The plugin's stdin stays closed.
func newProcRunner(path string, spec *exec.Cmd) (*procRunner, error) {
	cmd := exec.Command(path)
	cmd.Env = spec.Env
	cmd.SysProcAttr = procAttr()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	return &procRunner{cmd: cmd, stdout: stdout, stderr: stderr, path: path, done: make(chan struct{})}, nil
}

func (r *procRunner) Start(context.Context) error {
	if err := r.cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", r.path, err)
	}
	r.pid = r.cmd.Process.Pid
	return nil
}

// Wait is called by go-plugin once the plugin's stdout and stderr are drained.
func (r *procRunner) Wait(context.Context) error {
	r.waitOnce.Do(func() {
		r.waitErr = r.cmd.Wait()
		r.state = r.cmd.ProcessState
		close(r.done)
	})
	<-r.done
	return r.waitErr
}

func (r *procRunner) Kill(context.Context) error {
	if r.cmd.Process == nil {
		return nil
	}
	if err := r.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill trainer plugin (pid %d): %w", r.pid, err)
	}
	return nil
}

func (r *procRunner) Stdout() io.ReadCloser { return r.stdout }
func (r *procRunner) Stderr() io.ReadCloser { return r.stderr }
func (r *procRunner) Name() string          { return r.path }
func (r *procRunner) ID() string            { return strconv.Itoa(r.pid) }

func (r *procRunner) Diagnose(context.Context) string {
	return fmt.Sprintf("%s did not answer the go-plugin handshake: is it an ollama-tune trainer plugin, "+
		"built for this machine (GOOS/GOARCH), with its shared libraries present?", r.path)
}

func (r *procRunner) PluginToHost(network, addr string) (string, string, error) {
	return network, addr, nil
}

func (r *procRunner) HostToPlugin(network, addr string) (string, string, error) {
	return network, addr, nil
}
