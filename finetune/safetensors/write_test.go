package safetensors

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/internal/mmapfile"
)

func f32Bytes(vals ...float32) []byte {
	b, _ := EncodeFloat32(F32, vals)
	return b
}

// Byte images from the reference Rust crate's own tests
// (safetensors/src/tensor.rs: test_serialization, test_empty,
// test_serialization_forced_alignement).
func TestEncodeMatchesReferenceImages(t *testing.T) {
	data := f32Bytes(0, 1, 2, 3, 4, 5)
	cases := []struct {
		name    string
		tensors []TensorInfo
		meta    map[string]string
		want    []byte
	}{
		{"serialization", []TensorInfo{{Name: "attn.0", DType: F32, Shape: []int{1, 2, 3}, Data: data}}, nil, []byte{
			64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
			116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
			58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
			101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
			0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64}},
		{"empty", nil, nil, []byte{8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32}},
		{"empty with metadata", nil, map[string]string{"framework": "pt"}, []byte{
			40, 0, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97, 116, 97, 95,
			95, 34, 58, 123, 34, 102, 114, 97, 109, 101, 119, 111, 114, 107, 34, 58, 34, 112,
			116, 34, 125, 125, 32, 32, 32, 32, 32}},
		{"forced alignment", []TensorInfo{{Name: "attn0", DType: F32, Shape: []int{1, 1, 2, 3}, Data: data}}, nil, []byte{
			72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116,
			121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58,
			91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102,
			115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32, 32, 32,
			32, 32, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0,
			160, 64}},
	}
	for _, c := range cases {
		var b bytes.Buffer
		if err := Encode(&b, c.tensors, c.meta); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !bytes.Equal(b.Bytes(), c.want) {
			t.Errorf("%s:\n got %q\nwant %q", c.name, b.Bytes(), c.want)
		}
		if _, err := Parse(c.name, b.Bytes()); err != nil {
			t.Errorf("%s: our own image does not parse: %v", c.name, err)
		}
	}
}

func TestWriteOrderIsPythons(t *testing.T) {
	u8 := []byte{1}
	ts := []TensorInfo{
		{Name: "a", DType: BF16, Shape: []int{1}, Data: []byte{0, 0}},
		{Name: "e", DType: U8, Shape: []int{1}, Data: u8},
		{Name: "c", DType: F32, Shape: []int{1}, Data: f32Bytes(3)},
		{Name: "d", DType: I64, Shape: []int{1}, Data: make([]byte, 8)},
		{Name: "b", DType: F32, Shape: []int{1}, Data: f32Bytes(2)},
		{Name: "f", DType: F16, Shape: []int{1}, Data: []byte{0, 0}},
	}
	var b bytes.Buffer
	if err := Encode(&b, ts, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Parse("mem", b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	// Descending dtype alignment (I64 > F32 > BF16 > F16 > U8), then name.
	want := []string{"d", "b", "c", "a", "f", "e"}
	off := -1
	for _, n := range want {
		e := f.tensors[n]
		if e.begin <= off {
			t.Errorf("tensor %s at %d is not after the previous (%d); want file order %v", n, e.begin, off, want)
		}
		off = e.begin
	}
	if hdr := b.String(); strings.Index(hdr, `"d"`) > strings.Index(hdr, `"b"`) {
		t.Errorf("header lists tensors out of file order: %s", hdr[8:])
	}
}

func randomTensors(r *rand.Rand) []TensorInfo {
	var ts []TensorInfo
	for i, dt := range []DType{F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL, U16, U32, U64, F8E4M3} {
		shape := []int{1 + r.IntN(3), 1 + r.IntN(5)}
		if i == 3 {
			shape = []int{} // scalar
		}
		if i == 4 {
			shape = []int{0, 7} // empty
		}
		n, _ := numel(shape, 1)
		data := make([]byte, n*dt.Size())
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		if dt == BOOL {
			for j := range data {
				data[j] &= 1
			}
		}
		ts = append(ts, TensorInfo{Name: "t." + string(dt) + "/é\"x", DType: dt, Shape: shape, Data: data})
	}
	return ts
}

func TestWriteRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	ts := randomTensors(r)
	meta := map[string]string{"format": "pt", "note": "ünïcode \"quoted\" <tag>"}
	dir := t.TempDir()
	path := filepath.Join(dir, "rt.safetensors")
	if err := Write(path, ts, meta); err != nil {
		t.Fatal(err)
	}
	for _, mmap := range []bool{true, false} {
		if !mmap {
			openFile = mmapfile.Read
		}
		f, err := Open(path)
		openFile = mmapfile.Open
		if err != nil {
			t.Fatal(err)
		}
		if f.mapped.Mapped() != mmap {
			t.Errorf("mmap=%v: file mapped = %v", mmap, f.mapped.Mapped())
		}
		if f.Len() != len(ts) {
			t.Errorf("Len = %d, want %d", f.Len(), len(ts))
		}
		names := f.Names()
		for i := 1; i < len(names); i++ {
			if names[i-1] >= names[i] {
				t.Errorf("Names not sorted: %v", names)
			}
		}
		for _, want := range ts {
			got, err := f.Tensor(want.Name)
			if err != nil {
				t.Fatal(err)
			}
			if got.DType != want.DType || !slices.Equal(got.Shape, want.Shape) || !bytes.Equal(got.Data, want.Data) {
				t.Errorf("tensor %q: got %s %v %d bytes, want %s %v %d bytes", want.Name, got.DType, got.Shape, len(got.Data), want.DType, want.Shape, len(want.Data))
			}
		}
		m := f.Metadata()
		if len(m) != 2 || m["format"] != "pt" || m["note"] != meta["note"] {
			t.Errorf("Metadata = %v", m)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := f.Tensor(ts[0].Name); err == nil {
			t.Errorf("Tensor after Close succeeded")
		}
		if err := f.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries after Write, want only the file", len(ents))
	}
	// The header is padded to 8 bytes so the data section is aligned.
	raw, _ := os.ReadFile(path)
	if n := int(raw[0]) | int(raw[1])<<8 | int(raw[2])<<16; n%8 != 0 {
		t.Errorf("header length %d is not a multiple of 8", n)
	}
}

func TestWriteIsAtomicOnFailure(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "model.safetensors")
	if err := os.WriteFile(path, []byte("previous"), 0o644); err != nil {
		t.Fatal(err)
	}
	hdrs := []TensorInfo{{Name: "a", DType: F32, Shape: []int{4}}, {Name: "b", DType: F32, Shape: []int{2}}}
	boom := errors.New("boom")
	err := WriteFunc(path, hdrs, nil, func(i int, w io.Writer) error {
		if hdrs[i].Name == "b" {
			return boom
		}
		_, err := w.Write(make([]byte, 16))
		return err
	})
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), `tensor "b"`) {
		t.Errorf("err = %v, want boom naming tensor b", err)
	}
	err = WriteFunc(path, hdrs, nil, func(i int, w io.Writer) error {
		_, err := w.Write(make([]byte, 3))
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "3 bytes were written, but dtype F32 shape [4] needs 16") {
		t.Errorf("short fill: err = %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "previous" {
		t.Errorf("failed writes clobbered the existing file: %q", b)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("temporary files left behind: %v", names)
	}
	// WriteFunc streams: fill sees tensors in file order, one at a time.
	var seen []string
	err = WriteFunc(path, hdrs, map[string]string{"format": "pt"}, func(i int, w io.Writer) error {
		seen = append(seen, hdrs[i].Name)
		_, err := w.Write(f32Bytes(make([]float32, hdrs[i].Numel())...))
		return err
	})
	if err != nil || strings.Join(seen, ",") != "a,b" {
		t.Errorf("WriteFunc: %v, fill order %v", err, seen)
	}
	if f, err := Open(path); err != nil {
		t.Errorf("streamed file does not open: %v", err)
	} else {
		f.Close()
	}
}

func TestWriteRejectsBadTensors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		ts   []TensorInfo
		want string
	}{
		{[]TensorInfo{{Name: "a", DType: F32, Shape: []int{2}, Data: make([]byte, 4)}}, "has 4 bytes of data, but dtype F32 shape [2] needs 8"},
		{[]TensorInfo{{Name: "a", DType: "F7", Shape: []int{1}, Data: make([]byte, 4)}}, `unknown dtype "F7"`},
		{[]TensorInfo{{Name: "a", DType: U8, Shape: []int{-1}}}, "negative dimension"},
		{[]TensorInfo{{Name: "a", DType: U8, Shape: []int{1}, Data: []byte{1}}, {Name: "a", DType: U8, Shape: []int{1}, Data: []byte{1}}}, `tensor "a" is given twice`},
		{[]TensorInfo{{Name: "__metadata__", DType: U8, Shape: []int{1}, Data: []byte{1}}}, "cannot be named"},
	}
	for _, c := range cases {
		p := filepath.Join(dir, "x.safetensors")
		err := Write(p, c.ts, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Write: err = %v, want %q", err, c.want)
		}
		if _, err := os.Stat(p); err == nil {
			t.Errorf("a failed Write left %s", p)
		}
	}
}
