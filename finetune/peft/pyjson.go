package peft

import (
	"bytes"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"unicode/utf16"
)

// A small JSON writer that reproduces Python's json.dumps(obj, indent=2,
// sort_keys=True) byte for byte, which is how PEFT writes
// adapter_config.json: ", " is never used between items (indent mode puts
// each on its own line), ": " after keys, non-ASCII escaped as \uXXXX
// (ensure_ascii), "<>&" left alone, empty containers as [] and {}, and
// floats as Python's repr (0.0, 0.05, 1e-05).

// pyFloat is a float written as Python's repr writes it.
type pyFloat float64

// pyInt is an integer-valued number that PEFT keeps as a Python int
// (lora_alpha 16, not 16.0).
type pyInt int64

func formatPyFloat(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case f == 0:
		if math.Signbit(f) {
			return "-0.0"
		}
		return "0.0"
	}
	// repr uses scientific notation when the decimal exponent is < -4 or
	// >= 16, else positional with at least one fractional digit.
	e := strconv.FormatFloat(f, 'e', -1, 64) // shortest digits: 1e-05, 1.5e+16
	exp, _ := strconv.Atoi(e[strings.IndexByte(e, 'e')+1:])
	if exp < -4 || exp >= 16 {
		return e
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.ContainsAny(s, ".") {
		s += ".0"
	}
	return s
}

// writePyJSON appends v at the given indent level.
func writePyJSON(b *bytes.Buffer, v any, level int) error {
	nl := func(l int) {
		b.WriteByte('\n')
		b.WriteString(strings.Repeat("  ", l))
	}
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		if x {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case int:
		b.WriteString(strconv.Itoa(x))
	case pyInt:
		b.WriteString(strconv.FormatInt(int64(x), 10))
	case pyFloat:
		b.WriteString(formatPyFloat(float64(x)))
	case string:
		writePyString(b, x)
	case []string:
		if len(x) == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteByte('[')
		for i, s := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			nl(level + 1)
			writePyString(b, s)
		}
		nl(level)
		b.WriteByte(']')
	case []any:
		if len(x) == 0 {
			b.WriteString("[]")
			return nil
		}
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			nl(level + 1)
			if err := writePyJSON(b, e, level+1); err != nil {
				return err
			}
		}
		nl(level)
		b.WriteByte(']')
	case map[string]any:
		if len(x) == 0 {
			b.WriteString("{}")
			return nil
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys) // sort_keys=True compares str code points; for ASCII keys the same as bytes
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			nl(level + 1)
			writePyString(b, k)
			b.WriteString(": ")
			if err := writePyJSON(b, x[k], level+1); err != nil {
				return err
			}
		}
		nl(level)
		b.WriteByte('}')
	default:
		return fmt.Errorf("pyjson: cannot encode %T", v)
	}
	return nil
}

// writePyString writes s as json.dumps does with ensure_ascii=True.
func writePyString(b *bytes.Buffer, s string) {
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\b':
			b.WriteString(`\b`)
		case r == '\f':
			b.WriteString(`\f`)
		case r < 0x20 || (r >= 0x7f && r < 0x10000):
			if r == 0x7f {
				b.WriteByte(0x7f) // DEL is ASCII; Python leaves it
				continue
			}
			fmt.Fprintf(b, `\u%04x`, r)
		case r >= 0x10000:
			r1, r2 := utf16.EncodeRune(r)
			fmt.Fprintf(b, `\u%04x\u%04x`, r1, r2)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
}
