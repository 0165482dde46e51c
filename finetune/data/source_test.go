package data

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// seedSource is the seed notebook's mapping of the Yoda sentences.
func seedSource(path string) Source {
	return Source{
		Path:    path,
		Split:   "train",
		Format:  FormatAuto,
		Columns: map[string]string{"sentence": "prompt", "translation_extra": "completion"},
		Remove:  []string{"translation"},
		Type:    TypePromptCompletion,
	}
}

func TestLoadYodaAsTheSeedDoes(t *testing.T) {
	path := testutil.SharedData(t, "yoda_sentences.csv")
	ds, err := Load(context.Background(), seedSource(path), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Examples) != 720 || ds.Type != TypePromptCompletion || len(ds.Skipped) != 0 {
		t.Fatalf("%d examples of type %s, %d skipped", len(ds.Examples), ds.Type, len(ds.Skipped))
	}
	if got := strings.Join(ds.Columns, ","); got != "prompt,completion" {
		t.Errorf("columns after mapping: %s, want prompt,completion", got)
	}
	e := ds.Examples[0]
	if e.Prompt != "The birch canoe slid on the smooth planks." || e.Completion != "On the smooth planks, the birch canoe slid. Yes, hrrrm." {
		t.Errorf("first example %+v", e)
	}
	if e.Conversational() || e.Pos.Line != 2 {
		t.Errorf("first example: conversational %v, line %d", e.Conversational(), e.Pos.Line)
	}
	last := ds.Examples[719]
	if last.Pos.Row != 720 || last.Prompt == "" || last.Completion == "" {
		t.Errorf("last example %+v", last)
	}
}

// fakeHub resolves one data set id to local files.
type fakeHub struct {
	id, split string
	files     []string
	asked     []string
}

func (h *fakeHub) DatasetFiles(_ context.Context, repoID, split string) ([]string, error) {
	h.asked = append(h.asked, repoID+"@"+split)
	if repoID != h.id || split != h.split {
		return nil, errors.New("404: no such data set or split")
	}
	return h.files, nil
}

func TestLoadFromHub(t *testing.T) {
	a := writeFile(t, "train-a.jsonl", `{"prompt": "p1", "completion": "c1"}`+"\n")
	b := writeFile(t, "train-b.jsonl", `{"completion": "c2", "prompt": "p2"}`+"\n")
	hub := &fakeHub{id: "someone/pairs", split: "train", files: []string{a, b}}

	// A Path that does not exist but looks like owner/name is a Hub id; the
	// split defaults to train.
	ds, err := Load(context.Background(), Source{Path: "someone/pairs"}, hub)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Examples) != 2 || ds.Examples[1].Prompt != "p2" || ds.Type != TypePromptCompletion {
		t.Errorf("examples %+v, type %s", ds.Examples, ds.Type)
	}
	if strings.Join(hub.asked, ",") != "someone/pairs@train" {
		t.Errorf("asked %v", hub.asked)
	}

	_, err = Load(context.Background(), Source{HubID: "someone/pairs", Split: "test"}, hub)
	if err == nil || !strings.Contains(err.Error(), "someone/pairs (split test)") || !strings.Contains(err.Error(), "404") {
		t.Errorf("missing split: %v", err)
	}
	if _, err := Load(context.Background(), Source{HubID: "someone/pairs"}, nil); err == nil || !strings.Contains(err.Error(), "Hub client") {
		t.Errorf("no resolver: %v", err)
	}
	if _, err := Load(context.Background(), Source{Path: "no/such/file.csv"}, hub); err == nil || !strings.Contains(err.Error(), "no/such/file.csv") {
		t.Errorf("missing local file: %v", err)
	}
	if _, err := Load(context.Background(), Source{Path: a, Split: "test"}, nil); err == nil || !strings.Contains(err.Error(), "train split") {
		t.Errorf("local file with split test: %v", err)
	}
	// Files of one split must agree on their columns.
	c := writeFile(t, "train-c.jsonl", `{"prompt": "p3", "answer": "c3"}`+"\n")
	hub.files = []string{a, c}
	if _, err := Load(context.Background(), Source{HubID: "someone/pairs"}, hub); err == nil || !strings.Contains(err.Error(), "same columns") {
		t.Errorf("mismatched files: %v", err)
	}
}

func TestColumnMappingErrors(t *testing.T) {
	csv := writeFile(t, "d.csv", "sentence,translation,translation_extra\na,b,c\n")
	cases := []struct {
		name  string
		src   Source
		frags []string
	}{
		{"rename a missing column", Source{Columns: map[string]string{"sentense": "prompt", "translation_extra": "completion"}},
			[]string{`rename column "sentense"`, "no such column", "sentence, translation, translation_extra"}},
		{"rename onto an existing column", Source{Columns: map[string]string{"sentence": "translation"}},
			[]string{`a column "translation" exists already`}},
		{"two onto one", Source{Columns: map[string]string{"sentence": "prompt", "translation": "prompt"}},
			[]string{`both renamed to "prompt"`}},
		{"remove a missing column", Source{Columns: map[string]string{"sentence": "prompt", "translation_extra": "completion"}, Remove: []string{"sentence"}},
			[]string{`remove column "sentence"`, "prompt, translation, completion"}},
		{"no prompt column", Source{Type: TypePromptCompletion},
			[]string{`needs a column "prompt"`, "rename"}},
		{"no messages column", Source{Type: TypeMessages}, []string{`needs a column "messages"`}},
		{"unknown type", Source{Type: "chat"}, []string{`unknown type "chat"`}},
	}
	for _, c := range cases {
		c.src.Path = csv
		_, err := Load(context.Background(), c.src, nil)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		for _, f := range c.frags {
			if !strings.Contains(err.Error(), f) {
				t.Errorf("%s: %q lacks %q", c.name, err, f)
			}
		}
	}
	// Renames happen all at once: swapping two names is fine.
	ds, err := Load(context.Background(), Source{Path: csv, Columns: map[string]string{"sentence": "completion", "translation": "prompt"}, Remove: []string{"translation_extra"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if ds.Examples[0].Prompt != "b" || ds.Examples[0].Completion != "a" {
		t.Errorf("swap: %+v", ds.Examples[0])
	}
}

func TestRowValueErrors(t *testing.T) {
	cases := []struct {
		name, file, body string
		typ              Type
		frags            []string
	}{
		{"empty completion cell", "d.csv", "prompt,completion\na,b\nc,\n", TypePromptCompletion,
			[]string{"line 3 (row 2)", `column "completion"`, "is empty"}},
		{"spaces only", "d.csv", "prompt,completion\n  ,b\n", TypePromptCompletion, []string{`column "prompt"`, "is empty"}},
		{"number prompt", "d.jsonl", `{"prompt": 3, "completion": "x"}`, TypePromptCompletion, []string{"line 1", "a number, want text"}},
		{"messages not a list", "d.jsonl", `{"messages": "hi"}`, TypeMessages, []string{"text, want a list"}},
		{"message without role", "d.jsonl", `{"messages": [{"content": "hi"}]}`, TypeMessages, []string{"message 1 has no role"}},
		{"message not an object", "d.jsonl", `{"messages": [{"role": "user", "content": "a"}, 5]}`, TypeMessages, []string{"message 2 is a number"}},
		{"empty message list", "d.jsonl", `{"messages": []}`, TypeMessages, []string{"empty list"}},
		{"empty text", "d.jsonl", `{"text": ""}` + "\n" + `{"text": "x"}`, TypeText, nil}, // a row of only "" is skipped, not an error
		{"only empty rows", "d.csv", "text\n\"\"\n", TypeText, []string{"no examples"}},
		{"completion messages not a list", "d.jsonl", `{"prompt": [{"role": "user", "content": "q"}], "completion": "a"}`, TypePromptCompletion,
			[]string{`column "completion"`, "want a list"}},
	}
	for _, c := range cases {
		ds, err := Load(context.Background(), Source{Path: writeFile(t, c.file, c.body), Type: c.typ}, nil)
		if c.frags == nil {
			if err != nil || len(ds.Examples) != 1 || len(ds.Skipped) != 1 {
				t.Errorf("%s: %v (%+v)", c.name, err, ds)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		for _, f := range c.frags {
			if !strings.Contains(err.Error(), f) {
				t.Errorf("%s: %q lacks %q", c.name, err, f)
			}
		}
	}
}

func TestConversationalPromptCompletionAndInference(t *testing.T) {
	p := writeFile(t, "d.jsonl", `{"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]}`+"\n")
	ds, err := Load(context.Background(), Source{Path: p}, nil) // type inferred
	if err != nil {
		t.Fatal(err)
	}
	e := ds.Examples[0]
	if ds.Type != TypePromptCompletion || !e.Conversational() || e.PromptTurns != 2 || len(e.Messages) != 3 || e.Messages[2].Content != "A" {
		t.Errorf("type %s, example %+v", ds.Type, e)
	}
	ds, err = Load(context.Background(), Source{Path: writeFile(t, "t.csv", "text,n\nhello,1\n")}, nil)
	if err != nil || ds.Type != TypeText || ds.Examples[0].Text != "hello" {
		t.Errorf("text inference: %v %+v", err, ds)
	}
	dir := filepath.Dir(writeFile(t, "a.csv", "prompt,completion\np,c\n"))
	if _, err := Load(context.Background(), Source{Path: dir}, nil); err != nil {
		t.Errorf("a folder of one CSV: %v", err)
	}
}
