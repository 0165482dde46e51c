package tokenizer

import (
	"sync"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

func phi3Dir(t testing.TB) string { return testutil.SharedData(t, "phi3-tokenizer") }

var (
	loadOnce sync.Map // key: Options -> *Tokenizer
)

// phi3 loads the shared Phi-3 tokenizer once per option set.
func phi3(t testing.TB, opt Options) *Tokenizer {
	t.Helper()
	dir := phi3Dir(t)
	if v, ok := loadOnce.Load(opt); ok {
		return v.(*Tokenizer)
	}
	tk, err := LoadWithOptions(dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	loadOnce.Store(opt, tk)
	return tk
}

type yodaRow struct{ sentence, translation, extra string }

func yodaRows(t testing.TB) []yodaRow {
	t.Helper()
	var rows []yodaRow
	for _, r := range testutil.YodaRows(t) {
		rows = append(rows, yodaRow{r[0], r[1], r[2]})
	}
	return rows
}

// renderChat is Phi-3's chat template for one user and one assistant
// message, written out by hand for these tests only (the Jinja engine is the
// chat package's job): each message is "<|role|>\n" + content + "<|end|>\n",
// then eos_token, or "<|assistant|>\n" with a generation prompt.
func renderChat(user, assistant string) string {
	return "<|user|>\n" + user + "<|end|>\n<|assistant|>\n" + assistant + "<|end|>\n<|endoftext|>"
}

func renderPrompt(user string) string {
	return "<|user|>\n" + user + "<|end|>\n<|assistant|>\n"
}
