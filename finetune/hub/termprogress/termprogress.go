// Package termprogress draws hub downloads as terminal progress bars. It is
// kept apart from package hub so the library itself never writes to a
// terminal: hand New's result to hub.Client.Progress.
package termprogress

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
)

// Bars draws one bar per file, one file at a time, on w.
type Bars struct {
	w    io.Writer
	mu   sync.Mutex
	file string
	bar  *progressbar.ProgressBar
}

// New returns bars writing to w (usually os.Stderr).
func New(w io.Writer) *Bars { return &Bars{w: w} }

// Update has the signature of hub.Client.Progress.
func (b *Bars) Update(file string, done, total int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bar == nil || file != b.file || done < b.bar.State().CurrentNum {
		b.finishLocked()
		b.file = file
		w := b.w
		b.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(file),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowTotalBytes(true),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
		)
	}
	b.bar.Set64(done)
	if total >= 0 && done >= total {
		b.finishLocked()
	}
}

// Finish closes the bar in progress, if any (a download that failed).
func (b *Bars) Finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.finishLocked()
}

func (b *Bars) finishLocked() {
	if b.bar != nil && !b.bar.IsFinished() {
		b.bar.Exit()
	}
	b.bar = nil
	b.file = ""
}
