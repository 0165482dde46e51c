package chat

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

func phi3(t *testing.T) *Template {
	t.Helper()
	tpl, err := FromTokenizerDir(testutil.SharedData(t, "phi3-tokenizer"))
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
	if _, err := FromTokenizerDir(dir); !errors.Is(err, ErrNoTemplate) || !strings.Contains(err.Error(), dir) {
		t.Errorf("missing template: err = %v, want ErrNoTemplate naming the folder", err)
	}
	// An empty chat_template.jinja is no template either.
	write("chat_template.jinja", " \n")
	if _, err := FromTokenizerDir(dir); !errors.Is(err, ErrNoTemplate) {
		t.Errorf("empty chat_template.jinja: err = %v, want ErrNoTemplate", err)
	}
	os.Remove(filepath.Join(dir, "chat_template.jinja"))
	// A list without a default one is an error, not a missing template.
	write("tokenizer_config.json", `{"chat_template": [{"name": "tool_use", "template": "T"}]}`)
	if _, err := FromTokenizerDir(dir); err == nil || errors.Is(err, ErrNoTemplate) || !strings.Contains(err.Error(), "default") {
		t.Errorf("no default among named templates: err = %v", err)
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
// fixture (finetune/tokenizer/testdata/reference.json, written by
// gen_reference.py there: transformers' apply_chat_template(tokenize=False)
// on the 720 Yoda rows) byte for byte: "text" is the conversation (user =
// sentence, assistant = translation_extra) without a generation prompt,
// "prompt" the user turn with one. Until the fixture exists the test skips.
func TestReferenceRenders(t *testing.T) {
	path := filepath.Join(testutil.RepoRoot(t), "finetune", "tokenizer", "testdata", "reference.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("no reference fixture yet (%v)", err)
	}
	var ref struct {
		Rows []struct {
			I      int     `json:"i"`
			Text   *string `json:"text"`
			Prompt *string `json:"prompt"`
		} `json:"rows"`
	}
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	rows := testutil.YodaRows(t)
	tpl := phi3(t)
	checked := 0
	for _, r := range ref.Rows {
		if r.I < 0 || r.I >= len(rows) {
			t.Fatalf("reference row index %d outside the %d CSV rows", r.I, len(rows))
		}
		conv := []Message{{"user", rows[r.I][0]}, {"assistant", rows[r.I][2]}}
		if r.Text != nil {
			got, err := tpl.Render(conv, false)
			if err != nil {
				t.Fatal(err)
			}
			if got != *r.Text {
				t.Fatalf("row %d text:\n got %q\nwant %q", r.I, got, *r.Text)
			}
			checked++
		}
		if r.Prompt != nil {
			got, err := tpl.Render(conv[:1], true)
			if err != nil {
				t.Fatal(err)
			}
			if got != *r.Prompt {
				t.Fatalf("row %d prompt:\n got %q\nwant %q", r.I, got, *r.Prompt)
			}
			checked++
		}
	}
	if len(ref.Rows) != 720 || checked != 1440 {
		t.Errorf("%d reference rows, %d renders checked; want 720 and 1440", len(ref.Rows), checked)
	}
}
