// Package chat renders Hugging Face chat templates (Jinja) the way
// transformers' apply_chat_template(tokenize=False) does, so the text a
// fine-tune trains on is byte-identical to what the Python stack would build.
//
// transformers compiles a template with jinja2's ImmutableSandboxedEnvironment
// (trim_blocks=True, lstrip_blocks=True, the loopcontrols extension and its
// own {% generation %} tag), adds the globals raise_exception and
// strftime_now and its own tojson filter, and renders with messages,
// add_generation_prompt and every special token (bos_token, eos_token, ...)
// in the context (transformers/utils/chat_template_utils.py,
// _compile_jinja_template and render_jinja_template). This package configures
// gonja the same way.
//
// Known differences of gonja v2.9.1 from jinja2, none of which the Phi-3
// template touches: negative list indexes (messages[-1]) fail to render,
// {{ none }} renders as "" (jinja2: "None"), and a string literal ending in
// an escaped backslash ('a\\') does not parse. Templates that need them fail
// with an error naming the template, never with silently different text.
package chat

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"

	"github.com/nikolalohinski/gonja/v2/builtins"
	"github.com/nikolalohinski/gonja/v2/config"
	"github.com/nikolalohinski/gonja/v2/exec"
	"github.com/nikolalohinski/gonja/v2/loaders"
	"github.com/nikolalohinski/gonja/v2/nodes"
	"github.com/nikolalohinski/gonja/v2/parser"
)

// Message is one turn of a conversation, as in the Hub's chat data sets.
type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// Template is a compiled chat template with the special tokens it renders
// with. It is safe for concurrent use: every Render gets its own context.
type Template struct {
	source   string            // where the template came from, for errors
	text     string            // the template itself
	special  map[string]string // bos_token, eos_token, ...
	tpl      *exec.Template
	warnings []string // from FromTokenizerDir
}

// RaiseError is what a template's raise_exception("...") becomes: the
// template refused the conversation (for example "Conversation roles must
// alternate user/assistant/user/assistant/...").
type RaiseError struct {
	Message string
}

func (e *RaiseError) Error() string { return raisePrefix + e.Message }

// templateName is the name gonja sees; errors name the caller's source.
const templateName = "/chat_template.jinja"

// New compiles a chat template. special holds the tokenizer's special tokens
// by their transformers names (bos_token, eos_token, unk_token, pad_token,
// ...): they are in the context of every render, as transformers puts them
// there. Filters and tests the engine does not know are reported here, at
// compile time, as jinja2 does, rather than on the first render.
func New(template string, special map[string]string) (*Template, error) {
	return NewNamed("chat template", template, special)
}

// NewNamed is New with the template's source (a file path, "tokenizer_config.json
// chat_template", ...) named in every error.
func NewNamed(source, template string, special map[string]string) (*Template, error) {
	if strings.TrimSpace(template) == "" {
		return nil, fmt.Errorf("%s: the chat template is empty; give the tokenizer's chat_template (tokenizer_config.json or chat_template.jinja)", source)
	}
	cfg := config.New()
	cfg.TrimBlocks = true
	cfg.LeftStripBlocks = true
	cfg.KeepTrailingNewline = false // jinja2's default, which transformers keeps

	loader, err := loaders.NewMemoryLoader(map[string]string{templateName: template})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", source, err)
	}
	tpl, err := exec.NewTemplate(templateName, cfg, loader, environment())
	if err != nil {
		return nil, fmt.Errorf("%s: cannot compile the chat template: %s", source, parseProblem(err))
	}
	if err := checkNames(tpl.Root()); err != nil {
		return nil, fmt.Errorf("%s: cannot compile the chat template: %w", source, err)
	}
	sp := make(map[string]string, len(special))
	for k, v := range special {
		sp[k] = v
	}
	return &Template{source: source, text: template, special: sp, tpl: tpl}, nil
}

// Source names where the template came from.
func (t *Template) Source() string { return t.source }

// Text returns the template as given.
func (t *Template) Text() string { return t.text }

// Special returns the special token named key ("eos_token", ...) and whether
// it is set.
func (t *Template) Special(key string) (string, bool) {
	v, ok := t.special[key]
	return v, ok
}

// Render renders a conversation. addGenerationPrompt asks the template to end
// with the header of an assistant turn (what inference and TRL's prompt
// rendering use).
func (t *Template) Render(messages []Message, addGenerationPrompt bool) (string, error) {
	return t.RenderWith(messages, addGenerationPrompt, nil)
}

// RenderWith is Render with extra context variables (transformers'
// chat_template_kwargs, tools, ...). They override the special tokens but
// not messages or add_generation_prompt.
func (t *Template) RenderWith(messages []Message, addGenerationPrompt bool, extra map[string]any) (string, error) {
	msgs := make([]map[string]any, len(messages))
	for i, m := range messages {
		msgs[i] = map[string]any{"role": m.Role, "content": m.Content}
	}
	ctx := make(map[string]any, len(t.special)+len(extra)+2)
	for k, v := range t.special {
		ctx[k] = v
	}
	for k, v := range extra {
		ctx[k] = v
	}
	ctx["messages"] = msgs
	ctx["add_generation_prompt"] = addGenerationPrompt

	out, err := t.tpl.ExecuteToString(exec.NewContext(ctx))
	if err != nil {
		var raised *RaiseError
		if errors.As(err, &raised) {
			return "", fmt.Errorf("%s: %w", t.source, raised)
		}
		if msg, ok := raisedMessage(err); ok {
			return "", fmt.Errorf("%s: %w", t.source, &RaiseError{Message: msg})
		}
		return "", fmt.Errorf("%s: cannot render the chat template: %v", t.source, err)
	}
	return out, nil
}

// raisePrefix marks a raise_exception error as it travels through gonja,
// which flattens a function's error into the text of its own error; the
// message is what follows the last marker.
const raisePrefix = "template raised: "

func raisedMessage(err error) (string, bool) {
	s := err.Error()
	i := strings.LastIndex(s, raisePrefix)
	if i < 0 {
		return "", false
	}
	return s[i+len(raisePrefix):], true
}

// parseProblem drops gonja's echo of the whole template source from a parse
// error ("failed to parse template '<source>': <problem>"), keeping the
// problem and its line and column.
func parseProblem(err error) string {
	s := err.Error()
	if strings.HasPrefix(s, "failed to parse template '") {
		if i := strings.LastIndex(s, "': "); i >= 0 {
			return s[i+3:]
		}
	}
	return s
}

// environment builds a gonja environment like transformers' jinja2 one: the
// builtins, plus raise_exception and strftime_now, a tojson that writes what
// Python's json.dumps writes, and the {% generation %} tag. The builtin sets
// are copied so nothing global is changed.
func environment() *exec.Environment {
	filters := exec.NewFilterSet(map[string]exec.FilterFunction{}).Update(builtins.Filters)
	_ = filters.Replace("tojson", filterToJSON)
	controls := exec.NewControlStructureSet(map[string]parser.ControlStructureParser{}).Update(builtins.ControlStructures)
	_ = controls.Register("generation", generationParser)
	globals := exec.NewContext(map[string]any{
		"raise_exception": raiseException,
		"strftime_now":    strftimeNow,
	})
	return &exec.Environment{
		Context:           exec.EmptyContext().Update(builtins.GlobalFunctions).Update(builtins.GlobalVariables).Update(globals),
		Filters:           filters,
		Tests:             exec.NewTestSet(map[string]exec.TestFunction{}).Update(builtins.Tests),
		ControlStructures: controls,
		Methods:           builtins.Methods,
	}
}

var (
	filterCallType = reflect.TypeFor[*nodes.FilterCall]()
	testCallType   = reflect.TypeFor[*nodes.TestCall]()
)

// where formats a *tokens.Token field as " at line L, column C".
func where(tok reflect.Value) string {
	if tok.Kind() != reflect.Pointer || tok.IsNil() {
		return ""
	}
	t := tok.Elem()
	return fmt.Sprintf(" at line %d, column %d", t.FieldByName("Line").Int(), t.FieldByName("Col").Int())
}

// checkNames walks the parsed template and reports the first filter or test
// the environment does not define, with its line and column. gonja itself
// would only fail when the expression is first evaluated, perhaps on a
// branch no test reaches.
func checkNames(root *nodes.Template) error {
	env := environment()
	var problems []string
	seen := map[uintptr]bool{}
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Pointer:
			if v.IsNil() || seen[v.Pointer()] {
				return
			}
			seen[v.Pointer()] = true
			// Read through reflect, not Interface(): the node may sit in an
			// unexported field of a control structure.
			switch v.Type() {
			case filterCallType:
				if name := v.Elem().FieldByName("Name").String(); !env.Filters.Exists(name) {
					problems = append(problems, fmt.Sprintf("unknown filter %q%s", name, where(v.Elem().FieldByName("Token"))))
				}
			case testCallType:
				if name := v.Elem().FieldByName("Name").String(); !env.Tests.Exists(name) {
					problems = append(problems, fmt.Sprintf("unknown test %q%s", name, where(v.Elem().FieldByName("Token"))))
				}
			}
			walk(v.Elem())
		case reflect.Interface:
			if !v.IsNil() {
				walk(v.Elem())
			}
		case reflect.Struct:
			for i := 0; i < v.NumField(); i++ {
				walk(v.Field(i))
			}
		case reflect.Slice, reflect.Array:
			for i := 0; i < v.Len(); i++ {
				walk(v.Index(i))
			}
		case reflect.Map:
			keys := v.MapKeys()
			sort.Slice(keys, func(i, j int) bool { return fmt.Sprint(keys[i]) < fmt.Sprint(keys[j]) })
			for _, k := range keys {
				walk(v.MapIndex(k))
			}
		}
	}
	walk(reflect.ValueOf(root))
	if len(problems) > 0 {
		return errors.New(problems[0])
	}
	return nil
}
