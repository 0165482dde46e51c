package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// image builds a raw file: the 8-byte length of header, header, data.
func image(header string, data []byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, uint64(len(header)))
	b.WriteString(header)
	b.Write(data)
	return b.Bytes()
}

func writeRaw(t *testing.T, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bad.safetensors")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMalformedHeaders(t *testing.T) {
	withLen := func(n uint64, rest []byte) []byte {
		b := binary.LittleEndian.AppendUint64(nil, n)
		return append(b, rest...)
	}
	cases := []struct {
		name   string
		file   []byte
		tensor string // must appear in the error, quoted
		want   string
	}{
		{"short file", []byte{1, 2, 3}, "", "too short to hold the 8-byte header length"},
		{"zero length", withLen(0, []byte("{}")), "", "header length is 0"},
		{"absurd length", withLen(1<<40, []byte("{}")), "", "is absurd"},
		{"length past end", withLen(100, []byte(`{"a":1}`)), "", "header length 100 runs past the end of the file (7 bytes"},
		{"bad utf8", image("{\"\xff\":1}", nil), "", "not valid UTF-8"},
		{"not an object", image(`[1,2]   `, nil), "", "does not start with '{'"},
		{"truncated json", image(`{"a":{"dtype"`, nil), "", "not valid JSON"},
		{"trailing json", image(`{} {}`, nil), "", "trailing data"},
		{"metadata value", image(`{"__metadata__":{"format":1}}`, nil), "", `__metadata__["format"] is a number; metadata values must be strings`},
		{"metadata array", image(`{"__metadata__":[1]}`, nil), "", "__metadata__ must be a JSON object mapping strings to strings"},
		{"entry not object", image(`{"w":5}`, nil), "w", "entry must be an object"},
		{"unknown dtype", image(`{"w":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)), "w", `unknown dtype "F7"`},
		{"sub-byte dtype", image(`{"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}`, make([]byte, 1)), "w", "dtype F4 (packed sub-byte floats) is not supported"},
		{"missing dtype", image(`{"w":{"shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)), "w", `"dtype" is missing`},
		{"missing shape", image(`{"w":{"dtype":"F32","data_offsets":[0,4]}}`, make([]byte, 4)), "w", `"shape" is missing`},
		{"missing offsets", image(`{"w":{"dtype":"F32","shape":[1]}}`, make([]byte, 4)), "w", `"data_offsets" is missing`},
		{"negative dim", image(`{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, make([]byte, 4)), "w", "dimension 0 (-1) is not a non-negative integer"},
		{"fractional dim", image(`{"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}`, make([]byte, 4)), "w", "dimension 0 (1.5) is not a non-negative integer"},
		{"three offsets", image(`{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, make([]byte, 4)), "w", "must be two integers [begin, end]"},
		{"negative offset", image(`{"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}`, make([]byte, 4)), "w", "-4 is not a non-negative integer"},
		{"begin after end", image(`{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}`, make([]byte, 4)), "w", "begin is after end"},
		{"offsets past data", image(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 4)), "w", "run past the end of the data section (4 bytes)"},
		{"size mismatch", image(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, make([]byte, 4)), "w", "hold 4 bytes, but dtype F32 shape [2] needs 8"},
		{"shape overflow", image(`{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, make([]byte, 4)), "w", "is too large"},
		{"overlap", image(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, make([]byte, 12)), "b", `overlap tensor "a", which ends at 8`},
		{"gap", image(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}`, make([]byte, 12)), "b", `leave a gap of 4 bytes after tensor "a"`},
		{"gap at start", image(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8)), "a", "gap of 4 bytes after the start of the data section"},
		{"trailing bytes", image(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, make([]byte, 8)), "", "4 bytes follow the last tensor's data"},
		{"duplicate tensor", image(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, make([]byte, 1)), "a", "appears twice in the header"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := writeRaw(t, c.file)
			f, err := Open(path)
			if err == nil {
				f.Close()
				t.Fatalf("Open accepted a malformed file")
			}
			msg := err.Error()
			if !strings.Contains(msg, c.want) {
				t.Errorf("error %q\ndoes not say %q", msg, c.want)
			}
			if !strings.Contains(msg, path) {
				t.Errorf("error %q does not name the file", msg)
			}
			if c.tensor != "" && !strings.Contains(msg, `tensor "`+c.tensor+`"`) {
				t.Errorf("error %q does not name tensor %q", msg, c.tensor)
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Errorf("error is %T, not a *FormatError", err)
			}
		})
	}
}

func TestOpenMissingAndDirectory(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "nope.safetensors")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: err = %v, want one wrapping ErrNotExist", err)
	}
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("directory: err = %v", err)
	}
}

func TestParseValidEdgeCases(t *testing.T) {
	// A scalar (shape []), a zero-element tensor sharing an offset with
	// its neighbour, header whitespace padding, no metadata, names out of
	// order: all valid for the reference reader.
	hdr := `{"z":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},"a":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}   `
	data := []byte{0, 0, 0x80, 0x3f, 7, 9}
	f, err := Parse("mem", image(hdr, data))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(f.Names(), ","); got != "a,e,z" {
		t.Errorf("Names = %s, want sorted a,e,z", got)
	}
	if f.Metadata() != nil {
		t.Errorf("Metadata = %v, want nil", f.Metadata())
	}
	z, err := f.Tensor("z")
	if err != nil {
		t.Fatal(err)
	}
	v, err := ToFloat32(z)
	if err != nil || len(v) != 1 || v[0] != 1 {
		t.Errorf("scalar = %v, %v; want [1]", v, err)
	}
	e, _ := f.Tensor("e")
	if e.Numel() != 0 || len(e.Data) != 0 {
		t.Errorf("empty tensor: numel %d, %d bytes", e.Numel(), len(e.Data))
	}
	a, _ := f.Tensor("a")
	if !bytes.Equal(a.Data, []byte{7, 9}) || a.DType != U8 {
		t.Errorf("a = %v %v", a.DType, a.Data)
	}
	if _, err := f.Tensor("missing"); err == nil || !strings.Contains(err.Error(), `no tensor "missing"`) {
		t.Errorf("missing tensor: err = %v", err)
	}
	if dt, sh, ok := f.Info("e"); !ok || dt != F32 || len(sh) != 2 || sh[0] != 0 || sh[1] != 3 {
		t.Errorf("Info(e) = %v %v %v", dt, sh, ok)
	}
}

func TestMetadataNullAccepted(t *testing.T) {
	f, err := Parse("mem", image(`{"__metadata__":null}   `, nil))
	if err != nil {
		t.Fatal(err)
	}
	if f.Len() != 0 || f.Metadata() != nil {
		t.Errorf("Len %d, Metadata %v", f.Len(), f.Metadata())
	}
}
