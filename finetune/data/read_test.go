package data

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

func writeFile(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// wantRowError checks that err is a *RowError at the given line (0: any)
// and mentions every fragment.
func wantRowError(t *testing.T, what string, err error, line int, fragments ...string) {
	t.Helper()
	var re *RowError
	if !errors.As(err, &re) {
		t.Errorf("%s: err = %v, want a *RowError", what, err)
		return
	}
	if line != 0 && re.Pos.Line != line {
		t.Errorf("%s: line %d, want %d (%v)", what, re.Pos.Line, line, err)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("%s: %q lacks %q", what, err, f)
		}
	}
}

func TestCSVQuotedFieldsAndLines(t *testing.T) {
	p := writeFile(t, "d.csv", "a,b\n"+
		"1,\"x, y\"\n"+ // line 2
		"\"two\nlines\",\"say \"\"hi\"\"\"\n"+ // lines 3-4
		"\n"+ // line 5: blank, not a row
		",\n"+ // line 6: empty row, skipped
		"3,z\r\n") // line 7, CRLF
	tb, err := ReadFile(p, FormatAuto)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(tb.Columns, ",") != "a,b" {
		t.Errorf("columns %v", tb.Columns)
	}
	if len(tb.Rows) != 3 {
		t.Fatalf("%d rows, want 3", len(tb.Rows))
	}
	want := []struct {
		line, row int
		a, b      string
	}{{2, 1, "1", "x, y"}, {3, 2, "two\nlines", `say "hi"`}, {7, 4, "3", "z"}}
	for i, w := range want {
		r := tb.Rows[i]
		if r.Pos.Line != w.line || r.Pos.Row != w.row || r.Values["a"] != w.a || r.Values["b"] != w.b {
			t.Errorf("row %d = %+v, want line %d row %d a=%q b=%q", i, r, w.line, w.row, w.a, w.b)
		}
	}
	if len(tb.Skipped) != 1 || tb.Skipped[0].Line != 6 {
		t.Errorf("skipped %v, want the row at line 6", tb.Skipped)
	}
}

func TestCSVErrors(t *testing.T) {
	cases := []struct {
		name, body string
		line       int
		frags      []string
	}{
		{"field count", "a,b\n1,2\n3,4,5\n", 3, []string{"d.csv: line 3", "wrong number of fields"}},
		{"bare quote", "a,b\n1,2\n3,x\"y\n", 3, []string{"bare \""}},
		{"unterminated quote", "a,b\n1,2\n3,\"open\n4,5\n", 3, []string{"quote"}},
		{"header without a name", "a,,c\n1,2,3\n", 1, []string{"header column 2 has no name"}},
		{"duplicate header", "a,b,a\n1,2,3\n", 1, []string{`column "a" twice`}},
		{"invalid UTF-8", "a,b\n1,2\n3,caf\xe9\n", 3, []string{"invalid UTF-8", "0xe9"}},
	}
	for _, c := range cases {
		_, err := ReadFile(writeFile(t, "d.csv", c.body), FormatCSV)
		wantRowError(t, c.name, err, c.line, c.frags...)
	}
	if _, err := ReadFile(writeFile(t, "d.csv", ""), FormatCSV); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty file: %v", err)
	}
}

// The Yoda sentences: 720 rows, header sentence,translation,translation_extra,
// some fields quoted because they hold commas.
func TestYodaCSV(t *testing.T) {
	tb, err := ReadFile(testutil.SharedData(t, "yoda_sentences.csv"), FormatAuto)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tb.Columns, ","); got != "sentence,translation,translation_extra" {
		t.Errorf("columns %s", got)
	}
	if len(tb.Rows) != 720 || len(tb.Skipped) != 0 {
		t.Fatalf("%d rows, %d skipped; want 720, 0", len(tb.Rows), len(tb.Skipped))
	}
	first := tb.Rows[0]
	if first.Pos.Line != 2 || first.Values["sentence"] != "The birch canoe slid on the smooth planks." ||
		first.Values["translation_extra"] != "On the smooth planks, the birch canoe slid. Yes, hrrrm." {
		t.Errorf("first row %+v", first)
	}
}

func TestJSONArray(t *testing.T) {
	p := writeFile(t, "d.json", "[\n  {\"prompt\": \"p1\", \"completion\": \"c1\"},\n  {\"completion\": \"c2\",\n   \"prompt\": \"p2\", \"n\": 3},\n  {\"prompt\": null, \"completion\": \"\"}\n]\n")
	tb, err := ReadFile(p, FormatAuto)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(tb.Columns, ",") != "prompt,completion,n" {
		t.Errorf("columns %v", tb.Columns)
	}
	if len(tb.Rows) != 2 || tb.Rows[0].Pos.Line != 2 || tb.Rows[1].Pos.Line != 3 || tb.Rows[1].Pos.Row != 2 {
		t.Fatalf("rows %+v", tb.Rows)
	}
	if tb.Rows[1].Values["n"] != 3.0 || tb.Rows[1].Values["prompt"] != "p2" {
		t.Errorf("row 2 values %v", tb.Rows[1].Values)
	}
	if len(tb.Skipped) != 1 || tb.Skipped[0].Line != 5 || tb.Skipped[0].Row != 3 {
		t.Errorf("skipped %v, want row 3 at line 5", tb.Skipped)
	}
}

func TestJSONErrors(t *testing.T) {
	cases := []struct {
		name, body string
		line       int
		frags      []string
	}{
		{"not an array", "{\"a\": 1}\n", 1, []string{"one array of objects", "jsonl"}},
		{"element not an object", "[\n {\"a\": 1},\n 7\n]", 3, []string{"row 2", "want an object", "a number"}},
		{"syntax", "[\n {\"a\": 1},\n {\"a\": 2,}\n]", 3, []string{"malformed JSON"}},
		{"truncated", "[\n {\"a\": 1},\n", 0, []string{"malformed JSON"}},
		{"trailing data", "[{\"a\": 1}]\n[]\n", 2, []string{"after the closing ]"}},
		{"invalid UTF-8", "[\n{\"a\": \"ok\"},\n{\"a\": \"\xff\"}]", 3, []string{"invalid UTF-8"}},
	}
	for _, c := range cases {
		_, err := ReadFile(writeFile(t, "d.json", c.body), FormatJSON)
		wantRowError(t, c.name, err, c.line, c.frags...)
	}
}

func TestJSONL(t *testing.T) {
	body := "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n\n{\"messages\": [], \"x\": 1}\r\n{\"messages\": null}\n"
	for _, name := range []string{"d.jsonl", "d.json"} { // a .json file of lines is JSONL under auto
		tb, err := ReadFile(writeFile(t, name, body), FormatAuto)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(tb.Rows) != 2 || tb.Rows[1].Pos.Line != 3 || tb.Rows[1].Pos.Row != 2 {
			t.Fatalf("%s: rows %+v", name, tb.Rows)
		}
		if len(tb.Skipped) != 1 || tb.Skipped[0].Line != 4 {
			t.Errorf("%s: skipped %v", name, tb.Skipped)
		}
		if strings.Join(tb.Columns, ",") != "messages,x" {
			t.Errorf("%s: columns %v", name, tb.Columns)
		}
		msgs, _ := tb.Rows[0].Values["messages"].([]any)
		if len(msgs) != 1 || msgs[0].(map[string]any)["content"] != "hi" {
			t.Errorf("%s: messages %v", name, tb.Rows[0].Values["messages"])
		}
	}
	cases := []struct {
		name, body string
		line       int
		frags      []string
	}{
		{"syntax", "{\"a\": 1}\n{\"a\": }\n", 2, []string{"d.jsonl: line 2", "column"}},
		{"array line", "{\"a\": 1}\n\n[1]\n", 3, []string{"want an object", "an array"}},
		{"two values", "{\"a\": 1} {\"a\": 2}\n", 1, []string{"more than one JSON value"}},
		{"invalid UTF-8", "{\"a\": 1}\n{\"a\": \"\xc3\x28\"}\n", 2, []string{"invalid UTF-8"}},
	}
	for _, c := range cases {
		_, err := ReadFile(writeFile(t, "d.jsonl", c.body), FormatJSONL)
		wantRowError(t, c.name, err, c.line, c.frags...)
	}
}

func TestFormatDetection(t *testing.T) {
	if _, err := ReadFile(writeFile(t, "d.txt", "a\n"), FormatAuto); err == nil || !strings.Contains(err.Error(), "cannot tell the format") {
		t.Errorf(".txt: %v", err)
	}
	if _, err := ReadFile(writeFile(t, "d.csv", "a\n"), "xml"); err == nil || !strings.Contains(err.Error(), "unknown format") {
		t.Errorf("xml: %v", err)
	}
	// An explicit format overrides the extension.
	tb, err := ReadFile(writeFile(t, "d.txt", "a\nx\n"), FormatCSV)
	if err != nil || len(tb.Rows) != 1 {
		t.Errorf("explicit csv: %v %v", tb, err)
	}
	// A BOM is not part of the first column's name.
	tb, err = ReadFile(writeFile(t, "d.csv", "\xef\xbb\xbfprompt,completion\np,c\n"), FormatAuto)
	if err != nil || tb.Columns[0] != "prompt" {
		t.Errorf("BOM: %v %v", tb, err)
	}
}

type pqMessage struct {
	Role    string `parquet:"role"`
	Content string `parquet:"content"`
}

type pqRow struct {
	Prompt     string      `parquet:"prompt,optional"`
	Completion *string     `parquet:"completion,optional"`
	Score      float64     `parquet:"score"`
	Messages   []pqMessage `parquet:"messages,list"`
}

func writeParquet(t *testing.T, rows []pqRow) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "d.parquet")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	w := parquet.NewGenericWriter[pqRow](f)
	if _, err := w.Write(rows); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParquet(t *testing.T) {
	c := "c1"
	p := writeParquet(t, []pqRow{
		{Prompt: "p1", Completion: &c, Score: 0.5, Messages: []pqMessage{{"user", "hi"}, {"assistant", "yo"}}},
		{Score: 2}, // a number is a value: the row is kept
		{Prompt: "p3", Score: 1},
	})
	tb, err := ReadFile(p, FormatAuto)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(tb.Columns, ",") != "prompt,completion,score,messages" {
		t.Errorf("columns %v", tb.Columns)
	}
	if len(tb.Rows) != 3 {
		t.Fatalf("%d rows (a zero score is a value, so no row is empty)", len(tb.Rows))
	}
	r := tb.Rows[0]
	if r.Pos.Row != 1 || r.Pos.Line != 0 || r.Values["prompt"] != "p1" || r.Values["completion"] != "c1" {
		t.Errorf("row 1 %+v", r)
	}
	msgs, ok := r.Values["messages"].([]any)
	if !ok || len(msgs) != 2 {
		t.Fatalf("messages %#v", r.Values["messages"])
	}
	if m := msgs[1].(map[string]any); m["role"] != "assistant" || m["content"] != "yo" {
		t.Errorf("message 2 %v", m)
	}
	if tb.Rows[2].Values["completion"] != nil || tb.Rows[2].Pos.Row != 3 {
		t.Errorf("row 3 %+v", tb.Rows[2])
	}

	// The seed's mapping works on Parquet as on CSV.
	ds, err := MapTables([]*Table{tb}, Source{Type: TypePromptCompletion, Remove: []string{"messages", "score"}})
	if err == nil {
		t.Errorf("row 2 has no prompt; want an error, got %d examples", len(ds.Examples))
	} else {
		wantRowError(t, "parquet empty prompt", err, 0, "d.parquet: row 2", `column "prompt"`, "empty")
	}

	// A messages column of structs maps to a messages data set.
	p = writeParquet(t, []pqRow{{Score: 1, Messages: []pqMessage{{"user", "hi"}, {"assistant", "yo"}}}})
	tb, err = ReadFile(p, FormatParquet)
	if err != nil {
		t.Fatal(err)
	}
	ds, err = MapTables([]*Table{tb}, Source{})
	if err != nil {
		t.Fatal(err)
	}
	if ds.Type != TypeMessages || len(ds.Examples) != 1 || len(ds.Examples[0].Messages) != 2 || ds.Examples[0].Messages[1].Content != "yo" {
		t.Errorf("messages data set %+v", ds)
	}
}

func TestParquetErrors(t *testing.T) {
	_, err := ReadFile(writeFile(t, "d.parquet", "PAR1 this is not parquet PAR1"), FormatAuto)
	if err == nil || !strings.Contains(err.Error(), "d.parquet") || !strings.Contains(err.Error(), "Parquet") {
		t.Errorf("corrupt file: %v", err)
	}
	p := writeParquet(t, []pqRow{{Prompt: "ok", Score: 1}, {Prompt: "caf\xe9", Score: 2}})
	_, err = ReadFile(p, FormatAuto)
	var re *RowError
	if !errors.As(err, &re) || re.Pos.Row != 2 || re.Column != "prompt" || !errors.Is(err, ErrInvalidUTF8) {
		t.Errorf("invalid UTF-8: %v", err)
	}
}

// pyarrow (and so the datasets library) writes every field optional and a
// list of structs as an optional LIST group of optional elements.
type pqArrowMessage struct {
	Content *string `parquet:"content,optional"`
	Role    *string `parquet:"role,optional"`
}

type pqArrowRow struct {
	Messages []*pqArrowMessage `parquet:"messages,optional,list"`
}

func TestParquetArrowLayout(t *testing.T) {
	str := func(s string) *string { return &s }
	p := filepath.Join(t.TempDir(), "train-00000-of-00001.parquet")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	w := parquet.NewGenericWriter[pqArrowRow](f)
	if _, err := w.Write([]pqArrowRow{
		{Messages: []*pqArrowMessage{{str("Hello"), str("user")}, {str("Hi!"), str("assistant")}}},
		{Messages: []*pqArrowMessage{{str("Q"), str("user")}, {nil, str("assistant")}}},
	}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	tb, err := ReadFile(p, FormatAuto)
	if err != nil {
		t.Fatal(err)
	}
	_, err = MapTables([]*Table{tb}, Source{Type: TypeMessages})
	wantRowError(t, "null content", err, 0, "row 2", "message 2 (assistant) has no content")
	tb.Rows = tb.Rows[:1]
	ds, err := MapTables([]*Table{tb}, Source{Type: TypeMessages})
	if err != nil {
		t.Fatal(err)
	}
	if m := ds.Examples[0].Messages; len(m) != 2 || m[0].Role != "user" || m[0].Content != "Hello" || m[1].Content != "Hi!" {
		t.Errorf("messages %+v", m)
	}
}
