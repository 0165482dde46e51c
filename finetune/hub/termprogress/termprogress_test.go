package termprogress

import (
	"bytes"
	"strings"
	"testing"
)

func TestBarsDrawEachFile(t *testing.T) {
	var out bytes.Buffer
	b := New(&out)
	b.Update("tokenizer.json", 0, 2048)
	b.Update("tokenizer.json", 1024, 2048)
	b.Update("tokenizer.json", 2048, 2048)
	b.Update("sentences.csv", 10, 100) // a failed download, closed by Finish
	b.Finish()
	s := out.String()
	for _, want := range []string{"tokenizer.json", "100%", "2.0 kB", "sentences.csv"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%q", want, s)
		}
	}
	if b.bar != nil {
		t.Error("a bar is still open after Finish")
	}
}
