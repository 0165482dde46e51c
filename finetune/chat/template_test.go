package chat

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sharedData returns ../shared/data next to the repository root (the folder
// holding go.mod), or skips the test when it is absent.
func sharedData(t *testing.T) string {
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
		t.Skipf("shared data not found at %s", data)
	}
	return data
}

func repoRoot(t *testing.T) string {
	t.Helper()
	dir, _ := os.Getwd()
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

func phi3(t *testing.T) *Template {
	t.Helper()
	tpl, err := FromTokenizerDir(filepath.Join(sharedData(t), "phi3-tokenizer"))
	if err != nil {
		t.Fatal(err)
	}
	return tpl
}

// The expected strings are written by hand from the template's text
// (chat_template.jinja): each message is '<|role|>\n' + content + '<|end|>\n';
// then '<|assistant|>\n' when add_generation_prompt, else eos_token.
func TestPhi3Render(t *testing.T) {
	tpl := phi3(t)
	if eos, _ := tpl.Special("eos_token"); eos != "<|endoftext|>" {
		t.Fatalf("eos_token = %q, want <|endoftext|>", eos)
	}
	if len(tpl.Warnings()) != 0 {
		t.Errorf("unexpected warnings: %v", tpl.Warnings())
	}
	user := Message{"user", "The birch canoe slid on the smooth planks."}
	asst := Message{"assistant", "On the smooth planks, the birch canoe slid. Yes, hrrrm."}
	sys := Message{"system", "You are Yoda.\nSpeak like him."}
	cases := []struct {
		name string
		msgs []Message
		gen  bool
		want string
	}{
		{"user+assistant", []Message{user, asst}, false,
			"<|user|>\nThe birch canoe slid on the smooth planks.<|end|>\n<|assistant|>\nOn the smooth planks, the birch canoe slid. Yes, hrrrm.<|end|>\n<|endoftext|>"},
		{"user+assistant, generation prompt", []Message{user, asst}, true,
			"<|user|>\nThe birch canoe slid on the smooth planks.<|end|>\n<|assistant|>\nOn the smooth planks, the birch canoe slid. Yes, hrrrm.<|end|>\n<|assistant|>\n"},
		{"user, generation prompt", []Message{user}, true,
			"<|user|>\nThe birch canoe slid on the smooth planks.<|end|>\n<|assistant|>\n"},
		{"user, no generation prompt", []Message{user}, false,
			"<|user|>\nThe birch canoe slid on the smooth planks.<|end|>\n<|endoftext|>"},
		{"system+user+assistant", []Message{sys, user, asst}, false,
			"<|system|>\nYou are Yoda.\nSpeak like him.<|end|>\n<|user|>\nThe birch canoe slid on the smooth planks.<|end|>\n<|assistant|>\nOn the smooth planks, the birch canoe slid. Yes, hrrrm.<|end|>\n<|endoftext|>"},
		{"system+user, generation prompt", []Message{sys, user}, true,
			"<|system|>\nYou are Yoda.\nSpeak like him.<|end|>\n<|user|>\nThe birch canoe slid on the smooth planks.<|end|>\n<|assistant|>\n"},
		{"unknown role is dropped", []Message{{"tool", "x"}, user}, true,
			"<|user|>\nThe birch canoe slid on the smooth planks.<|end|>\n<|assistant|>\n"},
		{"no messages", nil, false, "<|endoftext|>"},
	}
	for _, c := range cases {
		got, err := tpl.Render(c.msgs, c.gen)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got != c.want {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, c.want)
		}
	}
}

// tokenizer_config.json in the shared folder carries no chat_template; the
// loader must then use chat_template.jinja, and a config entry that differs
// from the file is reported.
func TestFromTokenizerDirSources(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("tokenizer_config.json", `{"chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}", "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"}`)
	tpl, err := FromTokenizerDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := tpl.Render([]Message{{"user", "a"}, {"assistant", "b"}}, false); got != "<s>ab" {
		t.Errorf("config template rendered %q, want <s>ab", got)
	}
	if !strings.HasSuffix(tpl.Source(), "tokenizer_config.json chat_template") {
		t.Errorf("source = %q", tpl.Source())
	}

	write("chat_template.jinja", "{{ eos_token }}")
	write("special_tokens_map.json", `{"eos_token": {"content": "<eos>"}}`)
	tpl, err = FromTokenizerDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := tpl.Render(nil, false); got != "<eos>" {
		t.Errorf("jinja file + special_tokens_map rendered %q, want <eos>", got)
	}
	if len(tpl.Warnings()) != 1 || !strings.Contains(tpl.Warnings()[0], "differ") {
		t.Errorf("warnings = %v, want one about the two templates differing", tpl.Warnings())
	}

	write("tokenizer_config.json", `{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}`)
	os.Remove(filepath.Join(dir, "chat_template.jinja"))
	tpl, err = FromTokenizerDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tpl.Text() != "D" {
		t.Errorf("named templates: got %q, want the default one", tpl.Text())
	}

	write("tokenizer_config.json", `{}`)
	if _, err := FromTokenizerDir(dir); err == nil || !strings.Contains(err.Error(), "no chat template") {
		t.Errorf("missing template: err = %v", err)
	}
}

// transformers renders with trim_blocks and lstrip_blocks; jinja2 gives
// "X\nY" for this source (the block lines vanish whole).
func TestTrimAndLstripBlocks(t *testing.T) {
	tpl, err := New("  {% if true %}\nX\n  {% endif %}\nY\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tpl.Render(nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if got != "X\nY" {
		t.Errorf("got %q, want %q", got, "X\nY")
	}
}

func TestRaiseException(t *testing.T) {
	src := `{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}ok`
	tpl, err := NewNamed("mistral.jinja", src, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tpl.Render([]Message{{"user", "hi"}}, false); err != nil || got != "ok" {
		t.Fatalf("user first: got %q, %v", got, err)
	}
	_, err = tpl.Render([]Message{{"assistant", "hi"}}, false)
	var raised *RaiseError
	if !errors.As(err, &raised) {
		t.Fatalf("err = %v, want a *RaiseError", err)
	}
	if raised.Message != "Conversation roles must alternate user/assistant/user/assistant/..." {
		t.Errorf("message = %q", raised.Message)
	}
	if !strings.HasPrefix(err.Error(), "mistral.jinja: ") {
		t.Errorf("error does not name the template source: %v", err)
	}
}

func TestTemplateErrors(t *testing.T) {
	cases := []struct {
		name, src string
		want      []string
	}{
		{"syntax", "{% if messages %}never closed", []string{"my.jinja", "cannot compile", "endif", "Line: 1"}},
		{"unknown filter", "{% for m in messages %}\n{{ m.content | shout }}{% endfor %}", []string{"my.jinja", `unknown filter "shout"`, "line 2"}},
		{"unknown filter in a branch", "{% if false %}{{ 'x' | nosuch }}{% endif %}", []string{`unknown filter "nosuch"`}},
		{"unknown test", "{% if messages is shiny %}{% endif %}", []string{`unknown test "shiny"`}},
		{"empty", "  \n", []string{"my.jinja", "empty"}},
	}
	for _, c := range cases {
		_, err := NewNamed("my.jinja", c.src, nil)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", c.name, err, w)
			}
		}
		if strings.Count(err.Error(), c.src) > 0 && len(c.src) > 12 {
			t.Errorf("%s: error echoes the whole template: %q", c.name, err)
		}
	}
	// A runtime failure names the source too.
	tpl, err := NewNamed("my.jinja", "{{ no_such_function() }}", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tpl.Render([]Message{{"user", "x"}}, false); err == nil || !strings.HasPrefix(err.Error(), "my.jinja: cannot render") {
		t.Errorf("runtime error = %v", err)
	}
}

// transformers' tojson is json.dumps(x, ensure_ascii=False): ", " and ": "
// separators, dict order kept, no HTML escaping.
func TestToJSON(t *testing.T) {
	cases := []struct{ src, want string }{
		{`{{ {'name': 'f', 'args': [1, 2.5, 'é<&>', none, true]} | tojson }}`, `{"name": "f", "args": [1, 2.5, "é<&>", null, true]}`},
		{`{{ {'b': 1, 'a': {}} | tojson(sort_keys=true) }}`, `{"a": {}, "b": 1}`},
		{`{{ ['x', 1] | tojson(indent=2) }}`, "[\n  \"x\",\n  1\n]"},
		{`{{ 'é"\tx' | tojson(ensure_ascii=true) }}`, `"\u00e9\"\tx"`},
		{`{{ [1e20, 0.0001, 100.0] | tojson }}`, `[1e+20, 0.0001, 100.0]`},
	}
	for _, c := range cases {
		tpl, err := New(c.src, nil)
		if err != nil {
			t.Fatalf("%s: %v", c.src, err)
		}
		got, err := tpl.Render(nil, false)
		if err != nil {
			t.Fatalf("%s: %v", c.src, err)
		}
		if got != c.want {
			t.Errorf("%s:\n got %q\nwant %q", c.src, got, c.want)
		}
	}
}

func TestStrftimeNowAndGeneration(t *testing.T) {
	defer func(f func() time.Time) { now = f }(now)
	now = func() time.Time { return time.Date(2024, 7, 5, 14, 3, 9, 0, time.UTC) }
	tpl, err := New(`{{ strftime_now('%d %B %Y, %a %I:%M:%S %p') }}|{% generation %}{{ messages[0].content }}{% endgeneration %}`, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tpl.Render([]Message{{"assistant", "A"}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := "05 July 2024, Fri 02:03:09 PM|A"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestReferenceRenders compares every row of the GPU machine's reference
// fixture (transformers' apply_chat_template(tokenize=False) on the 720 Yoda
// rows) byte for byte. The fixture is written by another script; until it
// exists the test skips.
func TestReferenceRenders(t *testing.T) {
	path := filepath.Join(repoRoot(t), "finetune", "tokenizer", "testdata", "reference.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("no reference fixture yet (%v)", err)
	}
	rows, err := referenceRows(b)
	if err != nil {
		t.Skipf("%s: %v", path, err)
	}
	tpl := phi3(t)
	checked := 0
	for i, r := range rows {
		for _, want := range r.renders {
			got, err := tpl.Render(r.messages[:want.upto], want.gen)
			if err != nil {
				t.Fatalf("row %d: %v", i+1, err)
			}
			if got != want.text {
				t.Fatalf("row %d (%s):\n got %q\nwant %q", i+1, want.key, got, want.text)
			}
			checked++
		}
	}
	if checked == 0 {
		t.Skipf("%s: no rendered text fields recognised", path)
	}
	t.Logf("%d renders of %d rows match", checked, len(rows))
}

type refRender struct {
	key  string
	upto int // messages[:upto]
	gen  bool
	text string
}

type refRow struct {
	messages []Message
	renders  []refRender
}

// referenceRows reads the fixture leniently: a list of rows (top level or
// under "rows"), each with "messages" or "prompt"/"completion" (strings or
// message lists) and rendered texts under "text"/"chat_text"/"rendered"
// (the whole conversation) and "prompt_text" (the prompt with the
// generation prompt).
func referenceRows(b []byte) ([]refRow, error) {
	var top any
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, err
	}
	list, ok := top.([]any)
	if m, isMap := top.(map[string]any); isMap {
		list, ok = m["rows"].([]any)
	}
	if !ok {
		return nil, errors.New("no row list at the top level or under \"rows\"")
	}
	toMsgs := func(v any, role string) []Message {
		switch x := v.(type) {
		case string:
			return []Message{{role, x}}
		case []any:
			var ms []Message
			for _, e := range x {
				m, _ := e.(map[string]any)
				r, _ := m["role"].(string)
				c, _ := m["content"].(string)
				ms = append(ms, Message{r, c})
			}
			return ms
		}
		return nil
	}
	var rows []refRow
	for _, e := range list {
		m, _ := e.(map[string]any)
		var r refRow
		var nPrompt int
		if v, ok := m["messages"]; ok {
			r.messages = toMsgs(v, "user")
			nPrompt = len(r.messages) - 1
		} else if p, ok := m["prompt"]; ok {
			pm := toMsgs(p, "user")
			r.messages = append(pm, toMsgs(m["completion"], "assistant")...)
			nPrompt = len(pm)
		}
		if len(r.messages) == 0 {
			continue
		}
		for _, k := range []string{"text", "chat_text", "rendered"} {
			if s, ok := m[k].(string); ok {
				r.renders = append(r.renders, refRender{k, len(r.messages), false, s})
			}
		}
		if s, ok := m["prompt_text"].(string); ok && nPrompt > 0 {
			r.renders = append(r.renders, refRender{"prompt_text", nPrompt, true, s})
		}
		rows = append(rows, r)
	}
	return rows, nil
}
