package main

// Drawing a training run's events: a progress bar on a terminal, plain log
// lines otherwise (a file, a pipe, CI), so that a log reads well and a
// terminal does not scroll.

import (
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/schollz/progressbar/v3"

	"github.com/ollama-tune/ollama-tune/plugin"
)

// progressView shows a run's events; it is called from one goroutine at a
// time for events, and from the interrupt handler for notes.
type progressView interface {
	Event(ev plugin.Event)
	// Note is a line from the host (interrupts, device choice).
	Note(line string)
	// Close ends the display (the bar leaves its last state on screen).
	Close()
}

// newProgressView draws on w: a bar when w is a terminal, else lines.
func newProgressView(w io.Writer) progressView {
	if isTerminal(w) {
		return newBarView(w, time.Now)
	}
	return newLineView(w, time.Now)
}

// runClock turns steps and wall time into an ETA: the mean time per step
// since the run (or the resumed run) started, times the steps left.
type runClock struct {
	now       func() time.Time
	start     time.Time
	startStep int64
	total     int64
}

func (c *runClock) started(e plugin.Started) {
	c.start, c.startStep, c.total = c.now(), e.StartStep, e.TotalSteps
}

// eta is the estimated time left after step, or -1 when unknown.
func (c *runClock) eta(step int64) time.Duration {
	done := step - c.startStep
	if done <= 0 || c.start.IsZero() || c.total <= 0 {
		return -1
	}
	per := c.now().Sub(c.start) / time.Duration(done)
	return per * time.Duration(max(c.total-step, 0))
}

// formatETA prints a duration as 1h02m, 3m20s or 45s; "?" when unknown.
func formatETA(d time.Duration) string {
	if d < 0 {
		return "?"
	}
	d = d.Round(time.Second)
	h, m, s := int(d.Hours()), int(d.Minutes())%60, int(d.Seconds())%60
	switch {
	case h > 0:
		return fmt.Sprintf("%dh%02dm", h, m)
	case m > 0:
		return fmt.Sprintf("%dm%02ds", m, s)
	}
	return fmt.Sprintf("%ds", s)
}

// formatRate prints tokens per second with thousands separators.
func formatRate(r float64) string {
	if r <= 0 || math.IsNaN(r) || math.IsInf(r, 0) {
		return "-"
	}
	return commas(int64(math.Round(r)))
}

// eventLine is the plain-text line of an event ("" for none).
func eventLine(ev plugin.Event, clock *runClock) string {
	switch e := ev.(type) {
	case plugin.Started:
		var b strings.Builder
		fmt.Fprintf(&b, "training on %s: %d steps", orDash(e.Device), e.TotalSteps)
		if e.StartStep > 0 {
			fmt.Fprintf(&b, ", resuming after step %d from %s", e.StartStep, e.ResumedFrom)
		}
		if e.TotalParams > 0 {
			fmt.Fprintf(&b, "; trainable params: %s || all params: %s || trainable%%: %.4f",
				commas(e.TrainableParams), commas(e.TotalParams), 100*float64(e.TrainableParams)/float64(e.TotalParams))
		}
		return b.String()
	case plugin.Step:
		return fmt.Sprintf("step %d/%d  epoch %.2f  loss %.4f  grad_norm %.4f  lr %.3e  accuracy %.4f  %s tok/s  eta %s",
			e.Step, clock.total, e.Epoch, e.Loss, e.GradNorm, e.LearningRate, e.MeanTokenAccuracy,
			formatRate(e.TokensPerSecond), formatETA(clock.eta(e.Step)))
	case plugin.Eval:
		return fmt.Sprintf("eval at step %d: loss %.4f  accuracy %.4f", e.Step, e.Loss, e.MeanTokenAccuracy)
	case plugin.CheckpointSaved:
		return fmt.Sprintf("checkpoint at step %d: %s", e.Step, e.Path)
	case plugin.Log:
		switch e.Level {
		case "", "info":
			return e.Message
		case "trace", "debug":
			// shown where $OLLAMA_TUNE_LOG asks for that level (the plugin
			// logs' level too: plugin/host.go)
			if want := hclog.LevelFromString(os.Getenv("OLLAMA_TUNE_LOG")); want == hclog.NoLevel || want > hclog.LevelFromString(e.Level) {
				return ""
			}
		}
		return e.Level + ": " + e.Message
	case plugin.Finished:
		return fmt.Sprintf("finished after %d steps: final loss %.4f; adapter in %s", e.Steps, e.FinalLoss, e.AdapterDir)
	case plugin.Failed:
		return "" // the host reports the error
	}
	return ""
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// lineView prints one line per event.
type lineView struct {
	mu    sync.Mutex
	w     io.Writer
	clock runClock
}

func newLineView(w io.Writer, now func() time.Time) *lineView {
	return &lineView{w: w, clock: runClock{now: now}}
}

func (v *lineView) Event(ev plugin.Event) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if s, ok := ev.(plugin.Started); ok {
		v.clock.started(s)
	}
	if line := eventLine(ev, &v.clock); line != "" {
		fmt.Fprintln(v.w, line)
	}
}

func (v *lineView) Note(line string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	fmt.Fprintln(v.w, line)
}

func (v *lineView) Close() {}

// barView draws a progress bar (step/total, epoch, loss, tokens/s, ETA)
// with the other events printed above it.
type barView struct {
	mu    sync.Mutex
	w     io.Writer
	clock runClock
	bar   *progressbar.ProgressBar
}

func newBarView(w io.Writer, now func() time.Time) *barView {
	return &barView{w: w, clock: runClock{now: now}}
}

func (v *barView) Event(ev plugin.Event) {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch e := ev.(type) {
	case plugin.Started:
		v.clock.started(e)
		v.println(eventLine(e, &v.clock))
		v.bar = progressbar.NewOptions64(max(e.TotalSteps, 1),
			progressbar.OptionSetWriter(v.w),
			progressbar.OptionSetDescription("training"),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionSetPredictTime(false),
			progressbar.OptionSetRenderBlankState(true),
			progressbar.OptionThrottle(0),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(v.w) }),
		)
		if e.StartStep > 0 {
			_ = v.bar.Set64(e.StartStep)
		}
	case plugin.Step:
		if v.bar == nil {
			v.println(eventLine(e, &v.clock))
			return
		}
		v.bar.Describe(fmt.Sprintf("epoch %.2f  loss %.4f  %s tok/s  ETA %s",
			e.Epoch, e.Loss, formatRate(e.TokensPerSecond), formatETA(v.clock.eta(e.Step))))
		_ = v.bar.Set64(e.Step)
	default:
		v.println(eventLine(ev, &v.clock))
	}
}

// println prints a line above the bar (or plainly before it exists).
func (v *barView) println(line string) {
	if line == "" {
		return
	}
	if v.bar == nil || v.bar.IsFinished() {
		fmt.Fprintln(v.w, line)
		return
	}
	_, _ = progressbar.Bprintln(v.bar, line)
	_ = v.bar.RenderBlank()
}

func (v *barView) Note(line string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.println(line)
}

func (v *barView) Close() {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.bar != nil && !v.bar.IsFinished() {
		_ = v.bar.Exit()
		fmt.Fprintln(v.w)
	}
}
