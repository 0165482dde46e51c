package plugin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// CrashLogLines is how many of a plugin's last log lines a crash report shows.
const CrashLogLines = 20

// logTail keeps the last lines a plugin wrote (its hclog JSON lines made
// readable, and raw lines such as a Go panic or a CUDA driver message), so a
// crash report can show what the plugin was doing when it died.
type logTail struct {
	mu        sync.Mutex
	lines     []string // ring of the last n lines
	next      int
	full      bool
	panicLine string // the first "panic:" / "fatal error:" line, kept even when scrolled out
}

func newLogTail(n int) *logTail { return &logTail{lines: make([]string, n)} }

func (t *logTail) add(line string) {
	line = strings.TrimRight(line, "\r\n")
	if strings.TrimSpace(line) == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.panicLine == "" && (strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ")) {
		t.panicLine = line
	}
	t.lines[t.next] = line
	t.next = (t.next + 1) % len(t.lines)
	if t.next == 0 {
		t.full = true
	}
}

// Lines returns the kept lines, oldest first.
func (t *logTail) Lines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.full {
		return append([]string(nil), t.lines[:t.next]...)
	}
	return append(append([]string(nil), t.lines[t.next:]...), t.lines[:t.next]...)
}

func (t *logTail) PanicLine() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.panicLine
}

// writer returns an io.Writer that splits what it gets into lines for the
// tail; go-plugin writes a line and its newline in separate calls.
func (t *logTail) writer(prefix string) *tailWriter {
	return &tailWriter{tail: t, prefix: prefix}
}

type tailWriter struct {
	mu      sync.Mutex
	tail    *logTail
	prefix  string
	partial []byte
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.tail.add(w.prefix + formatLogLine(w.partial[:i]))
		w.partial = w.partial[i+1:]
	}
	if len(w.partial) > 64<<10 { // a runaway line without newline: keep its head
		w.tail.add(w.prefix + string(w.partial[:256]) + "...")
		w.partial = w.partial[:0]
	}
	return len(p), nil
}

// formatLogLine turns an hclog JSON line into "15:04:05 [INFO]  trainer: msg k=v";
// other lines pass through.
func formatLogLine(line []byte) string {
	if len(line) == 0 || line[0] != '{' {
		return string(line)
	}
	var m map[string]any
	if err := json.Unmarshal(line, &m); err != nil {
		return string(line)
	}
	msg, _ := m["@message"].(string)
	level, _ := m["@level"].(string)
	module, _ := m["@module"].(string)
	ts, _ := m["@timestamp"].(string)
	var b strings.Builder
	if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
		b.WriteString(t.Format("15:04:05 "))
	}
	fmt.Fprintf(&b, "[%-5s] ", strings.ToUpper(level))
	if module != "" {
		b.WriteString(module + ": ")
	}
	b.WriteString(msg)
	var keys []string
	for k := range m {
		if !strings.HasPrefix(k, "@") {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%v", k, m[k])
	}
	return b.String()
}
