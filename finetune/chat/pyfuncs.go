package chat

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nikolalohinski/gonja/v2/exec"
	"github.com/nikolalohinski/gonja/v2/nodes"
	"github.com/nikolalohinski/gonja/v2/parser"
	"github.com/nikolalohinski/gonja/v2/tokens"
	"github.com/ollama-tune/ollama-tune/internal/pyjson"
)

// The helpers transformers adds to its jinja2 environment
// (chat_template_utils.py): raise_exception, strftime_now, tojson and the
// {% generation %} tag.

// raiseException is raise_exception(message): the template rejects the
// conversation.
func raiseException(params *exec.VarArgs) (*exec.Value, error) {
	msg := ""
	if len(params.Args) > 0 {
		msg = params.Args[0].String()
	}
	return nil, &RaiseError{Message: msg}
}

// now is the clock strftime_now reads; tests replace it.
var now = time.Now

// strftimeNow is strftime_now(format): the local time formatted with
// Python's strftime directives.
func strftimeNow(params *exec.VarArgs) (*exec.Value, error) {
	if len(params.Args) != 1 || !params.Args[0].IsString() {
		return nil, exec.ErrInvalidCall(fmt.Errorf("strftime_now takes one string, the format"))
	}
	return exec.AsValue(strftime(now(), params.Args[0].String())), nil
}

// strftime formats t with the C/Python strftime directives templates use.
// An unknown directive is copied through, as glibc does.
func strftime(t time.Time, format string) string {
	var b strings.Builder
	for i := 0; i < len(format); i++ {
		c := format[i]
		if c != '%' || i+1 == len(format) {
			b.WriteByte(c)
			continue
		}
		i++
		switch format[i] {
		case 'Y':
			fmt.Fprintf(&b, "%d", t.Year())
		case 'y':
			fmt.Fprintf(&b, "%02d", t.Year()%100)
		case 'm':
			fmt.Fprintf(&b, "%02d", int(t.Month()))
		case 'd':
			fmt.Fprintf(&b, "%02d", t.Day())
		case 'e':
			fmt.Fprintf(&b, "%2d", t.Day())
		case 'H':
			fmt.Fprintf(&b, "%02d", t.Hour())
		case 'I':
			h := t.Hour() % 12
			if h == 0 {
				h = 12
			}
			fmt.Fprintf(&b, "%02d", h)
		case 'M':
			fmt.Fprintf(&b, "%02d", t.Minute())
		case 'S':
			fmt.Fprintf(&b, "%02d", t.Second())
		case 'f':
			fmt.Fprintf(&b, "%06d", t.Nanosecond()/1000)
		case 'p':
			if t.Hour() < 12 {
				b.WriteString("AM")
			} else {
				b.WriteString("PM")
			}
		case 'b', 'h':
			b.WriteString(t.Month().String()[:3])
		case 'B':
			b.WriteString(t.Month().String())
		case 'a':
			b.WriteString(t.Weekday().String()[:3])
		case 'A':
			b.WriteString(t.Weekday().String())
		case 'j':
			fmt.Fprintf(&b, "%03d", t.YearDay())
		case 'w':
			fmt.Fprintf(&b, "%d", int(t.Weekday()))
		case 'Z':
			name, _ := t.Zone()
			b.WriteString(name)
		case 'z':
			_, off := t.Zone()
			sign := '+'
			if off < 0 {
				sign, off = '-', -off
			}
			fmt.Fprintf(&b, "%c%02d%02d", sign, off/3600, off/60%60)
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(format[i])
		}
	}
	return b.String()
}

// filterToJSON is transformers' tojson: json.dumps(x, ensure_ascii=False,
// indent=None, separators=None, sort_keys=False). Unlike jinja2's own
// tojson it does not HTML-escape, and unlike Go's encoding/json it keeps
// Python's ", " and ": " separators and dict order.
func filterToJSON(e *exec.Evaluator, in *exec.Value, params *exec.VarArgs) *exec.Value {
	if in.IsError() {
		return in
	}
	enc := jsonEncoder{itemSep: ", ", keySep: ": "}
	for i, a := range params.Args {
		if i == 0 {
			if a.IsBool() {
				enc.ensureASCII = a.Bool()
			}
			continue
		}
		return exec.AsValue(exec.ErrInvalidCall(fmt.Errorf("tojson takes at most one positional argument")))
	}
	for k, v := range params.KwArgs {
		switch k {
		case "ensure_ascii":
			enc.ensureASCII = v.Bool()
		case "indent":
			switch {
			case v.IsNil():
			case v.IsInteger():
				enc.indent, enc.indentSet = strings.Repeat(" ", v.Integer()), true
			case v.IsString():
				enc.indent, enc.indentSet = v.String(), true
			default:
				return exec.AsValue(exec.ErrInvalidCall(fmt.Errorf("tojson: indent must be an integer or a string")))
			}
		case "separators":
			if !v.IsList() || v.Len() != 2 {
				return exec.AsValue(exec.ErrInvalidCall(fmt.Errorf("tojson: separators must be a pair of strings")))
			}
			enc.itemSep, enc.keySep = v.Index(0).String(), v.Index(1).String()
			enc.sepSet = true
		case "sort_keys":
			enc.sortKeys = v.Bool()
		default:
			return exec.AsValue(exec.ErrInvalidCall(fmt.Errorf("tojson: unknown argument %q", k)))
		}
	}
	if enc.indentSet && !enc.sepSet {
		enc.itemSep = "," // Python drops the space after "," when indenting
	}
	var b strings.Builder
	if err := enc.encode(&b, in, 0); err != nil {
		return exec.AsValue(err)
	}
	return exec.AsSafeValue(b.String())
}

type jsonEncoder struct {
	ensureASCII      bool
	indent           string
	indentSet        bool
	itemSep, keySep  string
	sepSet, sortKeys bool
}

func (j *jsonEncoder) newline(b *strings.Builder, level int) {
	if !j.indentSet {
		return
	}
	b.WriteByte('\n')
	for i := 0; i < level; i++ {
		b.WriteString(j.indent)
	}
}

func (j *jsonEncoder) encode(b *strings.Builder, v *exec.Value, level int) error {
	switch {
	case v.IsNil():
		b.WriteString("null")
	case v.IsBool():
		if v.Bool() {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case v.IsInteger():
		b.WriteString(strconv.Itoa(v.Integer()))
	case v.IsFloat():
		b.WriteString(pyjson.Float(v.Float()))
	case v.IsString():
		pyjson.WriteString(b, v.String(), j.ensureASCII)
	case v.IsDict():
		type kv struct {
			k string
			v *exec.Value
		}
		var items []kv
		if d, ok := v.Interface().(*exec.Dict); ok {
			for _, p := range d.Pairs {
				items = append(items, kv{p.Key.String(), p.Value})
			}
		} else {
			for _, k := range v.Keys() {
				item, _ := v.GetItem(k.Interface())
				items = append(items, kv{k.String(), item})
			}
			// A Go map has no order; sorted keys keep the output stable.
			sort.SliceStable(items, func(a, c int) bool { return items[a].k < items[c].k })
		}
		if j.sortKeys {
			sort.SliceStable(items, func(a, c int) bool { return items[a].k < items[c].k })
		}
		if len(items) == 0 {
			b.WriteString("{}")
			return nil
		}
		b.WriteByte('{')
		for i, it := range items {
			if i > 0 {
				b.WriteString(j.itemSep)
			}
			j.newline(b, level+1)
			pyjson.WriteString(b, it.k, j.ensureASCII)
			b.WriteString(j.keySep)
			if err := j.encode(b, it.v, level+1); err != nil {
				return err
			}
		}
		j.newline(b, level)
		b.WriteByte('}')
	case v.IsList():
		n := v.Len()
		if n == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteByte('[')
		for i := 0; i < n; i++ {
			if i > 0 {
				b.WriteString(j.itemSep)
			}
			j.newline(b, level+1)
			if err := j.encode(b, v.Index(i), level+1); err != nil {
				return err
			}
		}
		j.newline(b, level)
		b.WriteByte(']')
	default:
		return fmt.Errorf("tojson: Object of type %T is not JSON serializable", v.Interface())
	}
	return nil
}

// generationBlock is transformers' {% generation %}...{% endgeneration %}:
// it marks the assistant's tokens for return_assistant_tokens_mask and
// renders its body unchanged.
type generationBlock struct {
	position *tokens.Token
	body     *nodes.Wrapper
}

func (g *generationBlock) Position() *tokens.Token { return g.position }

func (g *generationBlock) String() string {
	return fmt.Sprintf("GenerationControlStructure(Line=%d Col=%d)", g.position.Line, g.position.Col)
}

func (g *generationBlock) Execute(r *exec.Renderer, _ *nodes.ControlStructureBlock) error {
	return r.ExecuteWrapper(g.body)
}

func generationParser(p *parser.Parser, args *parser.Parser) (nodes.ControlStructure, error) {
	g := &generationBlock{position: p.Current()}
	if !args.End() {
		return nil, args.Error("generation takes no arguments", nil)
	}
	body, _, err := p.WrapUntil("endgeneration")
	if err != nil {
		return nil, err
	}
	g.body = body
	return g, nil
}
