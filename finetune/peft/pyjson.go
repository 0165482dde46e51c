package peft

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/ollama-tune/ollama-tune/internal/pyjson"
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
		b.WriteString(pyjson.Float(float64(x)))
	case string:
		pyjson.WriteString(b, x, true)
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
			pyjson.WriteString(b, s, true)
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
			pyjson.WriteString(b, k, true)
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
