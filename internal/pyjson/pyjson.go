// Package pyjson writes numbers and strings as Python's json module (and
// repr) writes them, for output that must match Python's byte for byte: PEFT's
// adapter_config.json, a config.json transformers reads, Jinja's tojson in
// chat templates.
package pyjson

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"unicode/utf16"
)

// Float formats f as json.dumps writes a float: Repr's digits, with NaN,
// Infinity and -Infinity for the values JSON has no number for.
func Float(f float64) string {
	switch {
	case math.IsNaN(f):
		return "NaN"
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	}
	return Repr(f)
}

// Repr formats f as Python's repr(float): the shortest digits that round
// trip, in positional notation with at least one fractional digit (0.0,
// 16.0, 0.0001) when the decimal exponent is in [-4, 16), else scientific
// with a two-digit exponent (1e-05, 1.5e+16); nan, inf and -inf.
func Repr(f float64) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	case f == 0:
		if math.Signbit(f) {
			return "-0.0"
		}
		return "0.0"
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // shortest digits: 1e-05, 1.5e+16
	exp, _ := strconv.Atoi(e[strings.IndexByte(e, 'e')+1:])
	if exp < -4 || exp >= 16 {
		return e
	}
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if !strings.Contains(s, ".") {
		s += ".0"
	}
	return s
}

// Writer is what WriteString writes to: a *strings.Builder or a
// *bytes.Buffer.
type Writer interface {
	io.Writer
	io.ByteWriter
	io.StringWriter
	WriteRune(r rune) (int, error)
}

// WriteString writes s quoted as json.dumps does. The quote, the backslash
// and the control characters are always escaped (\n, \t, ... or \u00XX);
// with ensureASCII (json.dumps' default) so is everything outside U+0020 to
// U+007E, DEL included, as \uXXXX and a UTF-16 surrogate pair above the
// BMP. "<", ">" and "&" are left alone. Invalid UTF-8 is written as
// U+FFFD.
func WriteString(w Writer, s string, ensureASCII bool) {
	w.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			w.WriteString(`\"`)
		case '\\':
			w.WriteString(`\\`)
		case '\n':
			w.WriteString(`\n`)
		case '\r':
			w.WriteString(`\r`)
		case '\t':
			w.WriteString(`\t`)
		case '\b':
			w.WriteString(`\b`)
		case '\f':
			w.WriteString(`\f`)
		default:
			switch {
			case r < 0x20:
				fmt.Fprintf(w, `\u%04x`, r)
			case ensureASCII && r >= 0x10000:
				r1, r2 := utf16.EncodeRune(r)
				fmt.Fprintf(w, `\u%04x\u%04x`, r1, r2)
			case ensureASCII && r > 0x7e:
				fmt.Fprintf(w, `\u%04x`, r)
			default:
				w.WriteRune(r)
			}
		}
	}
	w.WriteByte('"')
}
