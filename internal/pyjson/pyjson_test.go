package pyjson

import (
	"math"
	"strings"
	"testing"
)

// The wanted strings are what Python 3.12 prints for json.dumps(f),
// repr(f), json.dumps(s) and json.dumps(s, ensure_ascii=False).

func TestFloat(t *testing.T) {
	tenth, fifth := 0.1, 0.2
	for f, want := range map[float64]string{
		0: "0.0", math.Copysign(0, -1): "-0.0", 0.05: "0.05", 1e-5: "1e-05", 0.0001: "0.0001", 1: "1.0", 16: "16.0",
		1e6: "1000000.0", 1e16: "1e+16", 1e15: "1000000000000000.0", tenth + fifth: "0.30000000000000004",
		-2.5e-7: "-2.5e-07", 1.5e300: "1.5e+300", math.Inf(1): "Infinity", math.Inf(-1): "-Infinity", math.NaN(): "NaN",
	} {
		if got := Float(f); got != want {
			t.Errorf("Float(%v) = %s, Python's repr is %s", f, got, want)
		}
	}
}

func TestRepr(t *testing.T) {
	for f, want := range map[float64]string{
		1e-05: "1e-05", 0.05: "0.05", 0: "0.0", 1: "1.0", 123: "123.0", 1e-4: "0.0001", 1.5e-7: "1.5e-07",
		1e16: "1e+16", 1e15: "1000000000000000.0", 0.1: "0.1", 2.5e-5: "2.5e-05",
		math.Inf(1): "inf", math.Inf(-1): "-inf", math.NaN(): "nan",
	} {
		if got := Repr(f); got != want {
			t.Errorf("Repr(%v) = %s, Python's repr is %s", f, got, want)
		}
	}
}

func TestWriteString(t *testing.T) {
	for _, tc := range []struct {
		in          string
		ascii, utf8 string
	}{
		{"é<&>\"\\\n\U0001F600", `"\u00e9<&>\"\\\n\ud83d\ude00"`, "\"é<&>\\\"\\\\\\n\U0001F600\""},
		{"\x00\x1f\t\r\b\f", `"\u0000\u001f\t\r\b\f"`, `"\u0000\u001f\t\r\b\f"`},
		{"~\x7f", `"~\u007f"`, "\"~\x7f\""},
		{"a\xffb", `"a\ufffdb"`, "\"a\ufffdb\""},
	} {
		var b strings.Builder
		WriteString(&b, tc.in, true)
		if b.String() != tc.ascii {
			t.Errorf("json.dumps(%q) = %s, want %s", tc.in, b.String(), tc.ascii)
		}
		b.Reset()
		WriteString(&b, tc.in, false)
		if b.String() != tc.utf8 {
			t.Errorf("json.dumps(%q, ensure_ascii=False) = %s, want %s", tc.in, b.String(), tc.utf8)
		}
	}
}
