package tokenizer

import (
	"encoding/csv"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// sharedData is ../shared/data seen from the repository root (the folder
// holding go.mod); the test is skipped when it is absent.
func sharedData(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("no go.mod above the test directory")
		}
		dir = parent
	}
	data := filepath.Join(dir, "..", "shared", "data")
	if _, err := os.Stat(data); err != nil {
		t.Skipf("shared data folder %s is absent", data)
	}
	return data
}

func phi3Dir(t testing.TB) string { return filepath.Join(sharedData(t), "phi3-tokenizer") }

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
	f, err := os.Open(filepath.Join(sharedData(t), "yoda_sentences.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) < 1 || len(recs[0]) != 3 || recs[0][0] != "sentence" || recs[0][2] != "translation_extra" {
		t.Fatalf("yoda_sentences.csv: unexpected header %v", recs[0])
	}
	var rows []yodaRow
	for _, r := range recs[1:] {
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
