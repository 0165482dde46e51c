package data

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/ollama-tune/ollama-tune/finetune/chat"
)

// Type says what an example holds, in TRL's terms.
type Type string

const (
	// TypePromptCompletion: a prompt and a completion, as strings (wrapped
	// into one user and one assistant turn when a chat template is used) or
	// as lists of messages (TRL's conversational prompt-completion).
	TypePromptCompletion Type = "prompt_completion"
	// TypeMessages: one conversation, a list of {role, content}; every
	// token is trained on.
	TypeMessages Type = "messages"
	// TypeText: plain text for language modelling.
	TypeText Type = "text"
)

// Source says where a data set comes from and how its columns map to an
// Example. The seed's: {HubID: "dvgodoy/yoda_sentences", Split: "train",
// Columns: {sentence: prompt, translation_extra: completion}, Remove:
// [translation], Type: prompt_completion}.
type Source struct {
	// Path is a local data file or a folder of them. A Path that does not
	// exist and looks like owner/name is taken as a Hub id.
	Path string
	// HubID is a Hub data set repository (owner/name), read through the
	// Resolver.
	HubID string
	// Split names the Hub split ("train" when empty). A local file is the
	// train split.
	Split string
	// Format of the files; auto (or "") goes by extension.
	Format Format
	// Columns renames columns, old name -> new name, all at once, as
	// datasets' rename_columns does.
	Columns map[string]string
	// Remove drops columns after renaming.
	Remove []string
	// Type of the examples; "" infers it from the columns: messages, else
	// prompt and completion, else text.
	Type Type
}

// Resolver finds the local files of a Hub data set split, downloading them
// as needed (finetune/hub's Client implements it).
type Resolver interface {
	DatasetFiles(ctx context.Context, repoID, split string) ([]string, error)
}

// Example is one training example after column mapping.
type Example struct {
	// Prompt and Completion of a prompt_completion example given as strings.
	Prompt, Completion string
	// Messages of a messages example; for a prompt_completion example given
	// as message lists, the prompt's turns followed by the completion's.
	Messages []chat.Message
	// PromptTurns is how many of Messages are the prompt (conversational
	// prompt_completion only).
	PromptTurns int
	// Text of a text example.
	Text string
	// Pos is where the example came from.
	Pos Pos
}

// Conversational reports whether the example is already a list of messages
// (TRL's is_conversational).
func (e *Example) Conversational() bool { return e.Messages != nil }

// Dataset is a loaded, mapped data set.
type Dataset struct {
	Type     Type
	Examples []Example
	Files    []string
	Columns  []string // after renaming and removing
	// Skipped are the rows that held nothing at all; they are dropped and
	// reported, not errors. A row with some values but an empty required
	// column is an error.
	Skipped []Pos
}

var repoIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$`)

// Load reads and maps a data set. hub may be nil when the source is local.
func Load(ctx context.Context, src Source, hub Resolver) (*Dataset, error) {
	files, err := sourceFiles(ctx, src, hub)
	if err != nil {
		return nil, err
	}
	var tables []*Table
	for _, f := range files {
		t, err := ReadFile(f, src.Format)
		if err != nil {
			return nil, err
		}
		tables = append(tables, t)
	}
	return MapTables(tables, src)
}

// sourceFiles lists the files a source names.
func sourceFiles(ctx context.Context, src Source, hub Resolver) ([]string, error) {
	id := src.HubID
	if id == "" && src.Path == "" {
		return nil, errors.New("dataset: no path; give a local CSV/JSON/JSONL/Parquet file or a Hub data set id such as dvgodoy/yoda_sentences")
	}
	if id == "" {
		st, err := os.Stat(src.Path)
		switch {
		case err == nil && st.IsDir():
			return dataFilesIn(src.Path)
		case err == nil:
			if src.Split != "" && src.Split != "train" {
				return nil, fmt.Errorf("dataset %s: a local file is the train split; split %q is not in it (hold out an eval split with eval_split instead)", src.Path, src.Split)
			}
			return []string{src.Path}, nil
		case errors.Is(err, fs.ErrNotExist) && repoIDPattern.MatchString(src.Path):
			id = src.Path
		default:
			return nil, fmt.Errorf("dataset %s: %w", src.Path, err)
		}
	}
	if hub == nil {
		return nil, fmt.Errorf("dataset %s: reading from the Hub needs a Hub client", id)
	}
	split := src.Split
	if split == "" {
		split = "train"
	}
	files, err := hub.DatasetFiles(ctx, id, split)
	if err != nil {
		return nil, fmt.Errorf("dataset %s (split %s): %w", id, split, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("dataset %s: no data files for split %q", id, split)
	}
	return files, nil
}

func dataFilesIn(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("dataset %s: %w", dir, err)
	}
	var files []string
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		switch strings.ToLower(filepath.Ext(e.Name())) {
		case ".csv", ".json", ".jsonl", ".ndjson", ".parquet":
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("dataset %s: the folder holds no .csv, .json, .jsonl or .parquet file", dir)
	}
	sort.Strings(files)
	return files, nil
}

// MapTables renames and removes columns and builds typed examples from the
// rows of one or more files (the files of a split, concatenated in order).
func MapTables(tables []*Table, src Source) (*Dataset, error) {
	ds := &Dataset{}
	for i, t := range tables {
		ds.Files = append(ds.Files, t.Path)
		ds.Skipped = append(ds.Skipped, t.Skipped...)
		cols, err := mapColumns(t, src)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			ds.Columns = cols
			ds.Type = src.Type
			if ds.Type == "" {
				ds.Type = inferType(cols)
			}
			switch ds.Type {
			case TypePromptCompletion, TypeMessages, TypeText:
			default:
				return nil, fmt.Errorf("dataset: unknown type %q; use prompt_completion, messages or text", ds.Type)
			}
		} else if !sameSet(cols, ds.Columns) {
			return nil, fmt.Errorf("%s: columns %s differ from %s's %s; the files of a split must have the same columns",
				t.Path, strings.Join(cols, ", "), tables[0].Path, strings.Join(ds.Columns, ", "))
		}
		if err := requireColumns(t.Path, cols, ds.Type); err != nil {
			return nil, err
		}
		for _, row := range t.Rows {
			ex, err := toExample(row, src.Columns, ds.Type)
			if err != nil {
				return nil, err
			}
			ds.Examples = append(ds.Examples, ex)
		}
	}
	if len(ds.Examples) == 0 {
		return nil, fmt.Errorf("dataset %s: no examples (every row is empty)", strings.Join(ds.Files, ", "))
	}
	return ds, nil
}

// mapColumns checks the rename and remove lists against a table and returns
// its column names after both.
func mapColumns(t *Table, src Source) ([]string, error) {
	have := map[string]bool{}
	for _, c := range t.Columns {
		have[c] = true
	}
	olds := make([]string, 0, len(src.Columns))
	for o := range src.Columns {
		olds = append(olds, o)
	}
	sort.Strings(olds)
	newNames := map[string]string{}
	for _, o := range olds {
		n := src.Columns[o]
		if !have[o] {
			return nil, fmt.Errorf("%s: cannot rename column %q: there is no such column (columns: %s)", t.Path, o, strings.Join(t.Columns, ", "))
		}
		if n == "" {
			return nil, fmt.Errorf("%s: cannot rename column %q to an empty name", t.Path, o)
		}
		if prev, dup := newNames[n]; dup {
			return nil, fmt.Errorf("%s: columns %q and %q are both renamed to %q", t.Path, prev, o, n)
		}
		if _, renamedAway := src.Columns[n]; have[n] && !renamedAway {
			return nil, fmt.Errorf("%s: cannot rename column %q to %q: a column %q exists already; remove it or rename it too", t.Path, o, n, n)
		}
		newNames[n] = o
	}
	var cols []string
	for _, c := range t.Columns {
		if n, ok := src.Columns[c]; ok {
			c = n
		}
		cols = append(cols, c)
	}
	for _, r := range src.Remove {
		i := indexOf(cols, r)
		if i < 0 {
			return nil, fmt.Errorf("%s: cannot remove column %q: there is no such column after renaming (columns: %s)", t.Path, r, strings.Join(cols, ", "))
		}
		cols = append(cols[:i:i], cols[i+1:]...)
	}
	return cols, nil
}

func inferType(cols []string) Type {
	switch {
	case indexOf(cols, "messages") >= 0:
		return TypeMessages
	case indexOf(cols, "prompt") >= 0 && indexOf(cols, "completion") >= 0:
		return TypePromptCompletion
	}
	return TypeText
}

func requireColumns(path string, cols []string, typ Type) error {
	var need []string
	switch typ {
	case TypePromptCompletion:
		need = []string{"prompt", "completion"}
	case TypeMessages:
		need = []string{"messages"}
	case TypeText:
		need = []string{"text"}
	}
	for _, n := range need {
		if indexOf(cols, n) < 0 {
			return fmt.Errorf("%s: a %s data set needs a column %q, but the columns are %s; map one to it with the dataset's rename, e.g. {%s: %s}",
				path, typ, n, strings.Join(cols, ", "), firstOr(cols, "old_name"), n)
		}
	}
	return nil
}

// toExample builds an Example from a row; rename maps old -> new names.
func toExample(row Row, rename map[string]string, typ Type) (Example, error) {
	get := func(name string) any {
		for o, n := range rename {
			if n == name {
				return row.Values[o]
			}
		}
		if _, renamed := rename[name]; renamed {
			return nil
		}
		return row.Values[name]
	}
	ex := Example{Pos: row.Pos}
	bad := func(col string, format string, args ...any) (Example, error) {
		return Example{}, &RowError{Pos: row.Pos, Column: col, Err: fmt.Errorf(format, args...)}
	}
	switch typ {
	case TypePromptCompletion:
		p, c := get("prompt"), get("completion")
		if isMessageList(p) || isMessageList(c) {
			pm, err := toMessages(p)
			if err != nil {
				return bad("prompt", "%v", err)
			}
			cm, err := toMessages(c)
			if err != nil {
				return bad("completion", "%v", err)
			}
			ex.Messages = append(pm, cm...)
			ex.PromptTurns = len(pm)
			return ex, nil
		}
		var err error
		if ex.Prompt, err = nonEmptyString(p); err != nil {
			return bad("prompt", "%v", err)
		}
		if ex.Completion, err = nonEmptyString(c); err != nil {
			return bad("completion", "%v", err)
		}
	case TypeMessages:
		m, err := toMessages(get("messages"))
		if err != nil {
			return bad("messages", "%v", err)
		}
		ex.Messages = m
	case TypeText:
		var err error
		if ex.Text, err = nonEmptyString(get("text")); err != nil {
			return bad("text", "%v", err)
		}
	}
	return ex, nil
}

func nonEmptyString(v any) (string, error) {
	switch x := v.(type) {
	case nil:
		return "", errors.New("is empty; fill it in or delete the row")
	case string:
		if strings.TrimSpace(x) == "" {
			return "", errors.New("is empty; fill it in or delete the row")
		}
		return x, nil
	}
	return "", fmt.Errorf("is %s, want text", describe(v))
}

func isMessageList(v any) bool {
	_, ok := v.([]any)
	return ok
}

// toMessages reads a list of {role, content} objects.
func toMessages(v any) ([]chat.Message, error) {
	list, ok := v.([]any)
	if !ok {
		if v == nil {
			return nil, errors.New("is empty; want a list of {\"role\": ..., \"content\": ...}")
		}
		return nil, fmt.Errorf("is %s, want a list of {\"role\": ..., \"content\": ...}", describe(v))
	}
	if len(list) == 0 {
		return nil, errors.New("is an empty list of messages")
	}
	msgs := make([]chat.Message, 0, len(list))
	for i, e := range list {
		m, ok := e.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("message %d is %s, want {\"role\": ..., \"content\": ...}", i+1, describe(e))
		}
		role, ok := m["role"].(string)
		if !ok || role == "" {
			return nil, fmt.Errorf("message %d has no role", i+1)
		}
		content, ok := m["content"].(string)
		if !ok {
			if m["content"] == nil {
				return nil, fmt.Errorf("message %d (%s) has no content", i+1, role)
			}
			return nil, fmt.Errorf("message %d (%s): content is %s, want text", i+1, role, describe(m["content"]))
		}
		msgs = append(msgs, chat.Message{Role: role, Content: content})
	}
	return msgs, nil
}

func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "text"
	case float64, int, int32, int64, float32:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("a %T", v)
}

func indexOf(xs []string, x string) int {
	for i, v := range xs {
		if v == x {
			return i
		}
	}
	return -1
}

func firstOr(xs []string, def string) string {
	if len(xs) > 0 {
		return xs[0]
	}
	return def
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if indexOf(b, x) < 0 {
			return false
		}
	}
	return true
}
