package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"unicode/utf8"

	"github.com/ollama-tune/ollama-tune/internal/mmapfile"
)

// MaxHeaderSize is the largest header accepted, the reference
// implementation's limit (100 MB; Phi-3-mini's header is about 30 KB).
const MaxHeaderSize = 100_000_000

// FormatError is a malformed file: Path names the file, Tensor the tensor
// at fault ("" when the problem is the file as a whole).
type FormatError struct {
	Path   string
	Tensor string
	Msg    string
}

func (e *FormatError) Error() string {
	if e.Tensor != "" {
		return fmt.Sprintf("safetensors file %s: tensor %q: %s", e.Path, e.Tensor, e.Msg)
	}
	return fmt.Sprintf("safetensors file %s: %s", e.Path, e.Msg)
}

// entry is one tensor of the header, with offsets relative to the data
// section.
type entry struct {
	name       string
	dtype      DType
	shape      []int
	begin, end int
}

// File is an open .safetensors file. Its methods are safe for concurrent
// use until Close.
type File struct {
	path     string
	buf      []byte         // the whole file
	mapped   *mmapfile.Data // what holds buf when Open read it; nil after Parse
	data     []byte         // buf after the header
	tensors  map[string]entry
	names    []string
	metadata map[string]string
}

// Open memory-maps path (reading it into memory where mapping fails) and
// validates its header.
func Open(path string) (*File, error) {
	d, err := openFile(path)
	if err != nil {
		return nil, fmt.Errorf("open safetensors file: %w", err)
	}
	f, err := parse(path, d.Bytes)
	if err != nil {
		d.Close()
		return nil, err
	}
	f.mapped = d
	return f, nil
}

// openFile is mmapfile.Open; tests of the read fallback swap it.
var openFile = mmapfile.Open

// Parse validates an in-memory safetensors image; name is used in errors.
// The returned File's tensors alias buf.
func Parse(name string, buf []byte) (*File, error) { return parse(name, buf) }

func parse(path string, buf []byte) (*File, error) {
	bad := func(tensor, format string, args ...any) error {
		return &FormatError{Path: path, Tensor: tensor, Msg: fmt.Sprintf(format, args...)}
	}
	if len(buf) < 8 {
		return nil, bad("", "file is %d bytes, too short to hold the 8-byte header length; it is not a safetensors file or it was truncated", len(buf))
	}
	n := binary.LittleEndian.Uint64(buf[:8])
	switch {
	case n == 0:
		return nil, bad("", "header length is 0; a safetensors header is a JSON object of at least 2 bytes")
	case n > MaxHeaderSize:
		return nil, bad("", "header length %d is absurd (more than %d bytes); the file is not safetensors or is corrupt", n, MaxHeaderSize)
	case n > uint64(len(buf)-8):
		return nil, bad("", "header length %d runs past the end of the file (%d bytes after the length); the file was truncated", n, len(buf)-8)
	}
	hdr := buf[8 : 8+n]
	if !utf8.Valid(hdr) {
		return nil, bad("", "header is not valid UTF-8")
	}
	if t := bytes.TrimLeft(hdr, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return nil, bad("", "header does not start with '{'; it must be a JSON object")
	}
	f := &File{path: path, buf: buf, data: buf[8+n:], tensors: map[string]entry{}}

	dec := json.NewDecoder(bytes.NewReader(hdr))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil { // the '{' checked above
		return nil, bad("", "header is not valid JSON: %v", err)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, bad("", "header is not valid JSON: %v", err)
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, bad(key, "header is not valid JSON: %v", err)
		}
		if seen[key] {
			return nil, bad(key, "appears twice in the header")
		}
		seen[key] = true
		if key == "__metadata__" {
			if err := parseMetadata(raw, &f.metadata); err != nil {
				return nil, bad("", "%v", err)
			}
			continue
		}
		e, err := parseEntry(key, raw, len(f.data))
		if err != nil {
			return nil, bad(key, "%v", err)
		}
		f.tensors[key] = e
		f.names = append(f.names, key)
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return nil, bad("", "header is not valid JSON: %v", err)
	}
	if tok, err := dec.Token(); err != io.EOF {
		return nil, bad("", "header has trailing data after the JSON object (%v)", tok)
	}
	sort.Strings(f.names)
	if err := checkLayout(f); err != nil {
		return nil, err
	}
	return f, nil
}

func parseMetadata(raw json.RawMessage, dst *map[string]string) error {
	if string(raw) == "null" {
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("__metadata__ must be a JSON object mapping strings to strings: %v", err)
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("__metadata__[%q] is %s; metadata values must be strings", k, jsonKind(v))
		}
		out[k] = s
	}
	*dst = out
	return nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "a boolean"
	case float64, json.Number:
		return "a number"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// parseEntry reads {"dtype": ..., "shape": [...], "data_offsets": [b, e]}
// and checks it against itself and the data section's size.
func parseEntry(name string, raw json.RawMessage, dataLen int) (entry, error) {
	var r struct {
		DType   *string       `json:"dtype"`
		Shape   []json.Number `json:"shape"`
		Offsets []json.Number `json:"data_offsets"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&r); err != nil {
		return entry{}, fmt.Errorf("entry must be an object {\"dtype\", \"shape\", \"data_offsets\"}: %v", err)
	}
	var e entry
	e.name = name
	switch {
	case r.DType == nil:
		return e, fmt.Errorf("\"dtype\" is missing")
	case r.Shape == nil:
		return e, fmt.Errorf("\"shape\" is missing (a scalar has shape [])")
	case r.Offsets == nil:
		return e, fmt.Errorf("\"data_offsets\" is missing")
	}
	e.dtype = DType(*r.DType)
	if err := checkDType(e.dtype); err != nil {
		return e, err
	}
	e.shape = make([]int, len(r.Shape))
	for i, d := range r.Shape {
		v, err := strconv.ParseInt(string(d), 10, 64)
		if err != nil || v < 0 || v > int64(maxInt) {
			return e, fmt.Errorf("shape %v: dimension %d (%s) is not a non-negative integer", r.Shape, i, d)
		}
		e.shape[i] = int(v)
	}
	if len(r.Offsets) != 2 {
		return e, fmt.Errorf("data_offsets %v must be two integers [begin, end]", r.Offsets)
	}
	var off [2]int
	for i, d := range r.Offsets {
		v, err := strconv.ParseInt(string(d), 10, 64)
		if err != nil || v < 0 || v > int64(maxInt) {
			return e, fmt.Errorf("data_offsets %v: %s is not a non-negative integer", r.Offsets, d)
		}
		off[i] = int(v)
	}
	e.begin, e.end = off[0], off[1]
	if e.begin > e.end {
		return e, fmt.Errorf("data_offsets [%d, %d]: begin is after end", e.begin, e.end)
	}
	if e.end > dataLen {
		return e, fmt.Errorf("data_offsets [%d, %d] run past the end of the data section (%d bytes); the file was truncated or the header is wrong", e.begin, e.end, dataLen)
	}
	n, err := numel(e.shape, e.dtype.Size())
	if err != nil {
		return e, err
	}
	if want := n * e.dtype.Size(); e.end-e.begin != want {
		return e, fmt.Errorf("data_offsets [%d, %d] hold %d bytes, but dtype %s shape %v needs %d", e.begin, e.end, e.end-e.begin, e.dtype, e.shape, want)
	}
	return e, nil
}

// checkLayout requires the tensors to tile the data section exactly, as the
// reference reader does: sorted by offset, each starts where the previous
// ends (no overlap, no gap) and the last ends at the end of the file.
func checkLayout(f *File) error {
	order := make([]entry, 0, len(f.tensors))
	for _, e := range f.tensors {
		order = append(order, e)
	}
	slices.SortFunc(order, func(a, b entry) int {
		if a.begin != b.begin {
			return a.begin - b.begin
		}
		if a.end != b.end {
			return a.end - b.end
		}
		return bytes.Compare([]byte(a.name), []byte(b.name))
	})
	pos, prev := 0, ""
	for _, e := range order {
		switch {
		case e.begin < pos:
			return &FormatError{Path: f.path, Tensor: e.name, Msg: fmt.Sprintf("data_offsets [%d, %d] overlap tensor %q, which ends at %d", e.begin, e.end, prev, pos)}
		case e.begin > pos:
			after := "the start of the data section"
			if prev != "" {
				after = fmt.Sprintf("tensor %q", prev)
			}
			return &FormatError{Path: f.path, Tensor: e.name, Msg: fmt.Sprintf("data_offsets [%d, %d] leave a gap of %d bytes after %s; tensors must be stored back to back", e.begin, e.end, e.begin-pos, after)}
		}
		pos, prev = e.end, e.name
	}
	if pos != len(f.data) {
		return &FormatError{Path: f.path, Msg: fmt.Sprintf("%d bytes follow the last tensor's data (the data section is %d bytes, the tensors cover %d); the file is corrupt or has trailing garbage", len(f.data)-pos, len(f.data), pos)}
	}
	return nil
}

// Path is the file's path (or the name given to Parse).
func (f *File) Path() string { return f.path }

// Names lists the tensors, sorted.
func (f *File) Names() []string { return slices.Clone(f.names) }

// Len is the number of tensors.
func (f *File) Len() int { return len(f.names) }

// Has reports whether the file holds a tensor named name.
func (f *File) Has(name string) bool { _, ok := f.tensors[name]; return ok }

// Metadata is the header's "__metadata__" map (nil when absent).
func (f *File) Metadata() map[string]string {
	if f.metadata == nil {
		return nil
	}
	out := make(map[string]string, len(f.metadata))
	for k, v := range f.metadata {
		out[k] = v
	}
	return out
}

// Info is a tensor's dtype and shape without touching its data.
func (f *File) Info(name string) (dtype DType, shape []int, ok bool) {
	e, ok := f.tensors[name]
	if !ok {
		return "", nil, false
	}
	return e.dtype, slices.Clone(e.shape), true
}

// Tensor returns a tensor whose Data aliases the file (valid until Close).
func (f *File) Tensor(name string) (TensorInfo, error) {
	if f.buf == nil {
		return TensorInfo{}, fmt.Errorf("safetensors file %s: read tensor %q after Close", f.path, name)
	}
	e, ok := f.tensors[name]
	if !ok {
		return TensorInfo{}, fmt.Errorf("safetensors file %s: no tensor %q (the file has %d tensors)", f.path, name, len(f.names))
	}
	return TensorInfo{Name: name, DType: e.dtype, Shape: slices.Clone(e.shape), Data: f.data[e.begin:e.end:e.end]}, nil
}

// Close releases the memory map. Tensors' Data must not be used after it.
func (f *File) Close() error {
	d := f.mapped
	f.buf, f.data, f.mapped = nil, nil, nil
	if err := d.Close(); err != nil {
		return fmt.Errorf("close safetensors file %s: %w", f.path, err)
	}
	return nil
}
