package gguf

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/ollama-tune/ollama-tune/internal/mmapfile"
)

// allKVs has one scalar and one array of every GGUF value type.
func allKVs() []tkv {
	return []tkv{
		{"general.architecture", "phi3"},
		{"t.u8", uint8(200)}, {"t.i8", int8(-100)},
		{"t.u16", uint16(60000)}, {"t.i16", int16(-30000)},
		{"t.u32", uint32(4000000000)}, {"t.i32", int32(-2000000000)},
		{"t.f32", float32(-1.5)}, {"t.bool", true},
		{"t.str", "héllo ▁world"}, {"t.u64", uint64(1) << 63}, {"t.i64", int64(-1) << 62},
		{"t.f64", 3.25},
		{"a.u8", []uint8{1, 2, 255}}, {"a.i8", []int8{-128, 0, 127}},
		{"a.u16", []uint16{0, 65535}}, {"a.i16", []int16{-32768, 32767}},
		{"a.u32", []uint32{7, 4294967295}}, {"a.i32", []int32{-1, 0, 1, 2147483647}},
		{"a.f32", []float32{1, -2.5, 1e-30}}, {"a.bool", []bool{true, false, true}},
		{"a.str", []string{"<unk>", "", "▁the"}}, {"a.u64", []uint64{0, 1 << 40}},
		{"a.i64", []int64{-5, 1 << 50}}, {"a.f64", []float64{0.1, -0.2}},
		{"a.empty", []string{}},
	}
}

func TestParseAllValueTypes(t *testing.T) {
	for _, version := range []uint32{2, 3} {
		kvs := allKVs()
		w := []float32{1, 2, 3, 4, 5, 6}
		b := encoder{version: version}.encode(kvs, []ttensor{
			{name: "w", typ: F32, dims: []uint64{3, 2}, data: f32bytes(w...)},
			{name: "v", typ: F32, dims: []uint64{1}, data: f32bytes(9)},
			{name: "empty", typ: F32, dims: []uint64{0}},
		})
		f, err := Parse("mem.gguf", b)
		if err != nil {
			t.Fatalf("v%d: %v", version, err)
		}
		if f.Version != version || f.Alignment != 32 || f.DataOffset%32 != 0 {
			t.Errorf("v%d: version %d alignment %d data offset %d", version, f.Version, f.Alignment, f.DataOffset)
		}
		if len(f.KVs) != len(kvs) {
			t.Fatalf("%d kvs, want %d", len(f.KVs), len(kvs))
		}
		for i, want := range kvs {
			got := f.KVs[i]
			if got.Key != want.key {
				t.Errorf("kv %d: key %q, want %q (file order)", i, got.Key, want.key)
			}
			wt, wa := valueType(want.val)
			if got.Type != wt || got.Array != wa {
				t.Errorf("%s: type %v array %v, want %v %v", want.key, got.Type, got.Array, wt, wa)
			}
			if !reflect.DeepEqual(got.Value, want.val) {
				t.Errorf("%s: value %#v, want %#v", want.key, got.Value, want.val)
			}
		}
		ti, ok := f.Tensor("w")
		if !ok {
			t.Fatal("tensor w missing")
		}
		if !slices.Equal(ti.Shape(), []int{2, 3}) || ti.Elements() != 6 || ti.Size != 24 {
			t.Errorf("w: shape %v elements %d size %d; want [2 3] (ne reversed), 6, 24", ti.Shape(), ti.Elements(), ti.Size)
		}
		got, shape, err := f.Float32("w")
		if err != nil || !slices.Equal(got, w) || !slices.Equal(shape, []int{2, 3}) {
			t.Errorf("Float32(w) = %v %v %v", got, shape, err)
		}
		v, _ := f.Tensor("v")
		if v.Offset != f.DataOffset+32 || v.Offset%32 != 0 {
			t.Errorf("v at %d, want data offset %d + 32 (24 bytes of w padded to 32)", v.Offset, f.DataOffset)
		}
		e, _, err := f.Float32("empty")
		if err != nil || len(e) != 0 {
			t.Errorf("empty tensor: %v %v", e, err)
		}
	}
}

func TestGetters(t *testing.T) {
	f, err := Parse("g.gguf", encoder{}.encode(allKVs(), nil))
	if err != nil {
		t.Fatal(err)
	}
	if s, err := f.String("t.str"); err != nil || s != "héllo ▁world" {
		t.Errorf("String = %q %v", s, err)
	}
	for key, want := range map[string]int64{"t.u8": 200, "t.i8": -100, "t.u16": 60000, "t.i16": -30000,
		"t.u32": 4000000000, "t.i32": -2000000000, "t.i64": -1 << 62} {
		if got, err := f.Int(key); err != nil || got != want {
			t.Errorf("Int(%s) = %d %v, want %d", key, got, err, want)
		}
	}
	if _, err := f.Int("t.u64"); err == nil || !strings.Contains(err.Error(), "out of range") {
		t.Errorf("Int(2^63) error %v", err)
	}
	if v, err := f.Float("t.f32"); err != nil || v != -1.5 {
		t.Errorf("Float(f32) = %v %v", v, err)
	}
	if v, err := f.Float("t.u32"); err != nil || v != 4e9 {
		t.Errorf("Float(u32) = %v %v", v, err)
	}
	if b, err := f.Bool("t.bool"); err != nil || !b {
		t.Errorf("Bool = %v %v", b, err)
	}
	if s, err := f.Strings("a.str"); err != nil || !slices.Equal(s, []string{"<unk>", "", "▁the"}) {
		t.Errorf("Strings = %q %v", s, err)
	}
	if s, err := f.Float32s("a.f32"); err != nil || len(s) != 3 || s[1] != -2.5 {
		t.Errorf("Float32s = %v %v", s, err)
	}
	if s, err := f.Int32s("a.u8"); err != nil || !slices.Equal(s, []int32{1, 2, 255}) {
		t.Errorf("Int32s(u8) = %v %v", s, err)
	}
	if _, err := f.Int32s("a.u32"); err == nil || !strings.Contains(err.Error(), "out of int32") {
		t.Errorf("Int32s(4294967295) error %v", err)
	}
	_, err = f.String("nope")
	if !errors.Is(err, ErrMissingKey) || !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), "g.gguf") {
		t.Errorf("missing key error %v", err)
	}
	_, err = f.String("t.u32")
	if err == nil || !strings.Contains(err.Error(), `key "t.u32": has type UINT32, want STRING`) {
		t.Errorf("wrong type error %v", err)
	}
	if _, err := f.Strings("t.str"); err == nil || !strings.Contains(err.Error(), "ARRAY of STRING") {
		t.Errorf("scalar as array error %v", err)
	}
	if !f.Has("t.f64") || f.Has("t.nope") {
		t.Error("Has")
	}
}

func TestAlignment(t *testing.T) {
	for _, a := range []int{1, 8, 64, 4096} {
		kvs := []tkv{{"general.alignment", uint32(a)}}
		b := encoder{alignment: a}.encode(kvs, []ttensor{
			{name: "a", typ: F32, dims: []uint64{3}, data: f32bytes(1, 2, 3)},
			{name: "b", typ: F32, dims: []uint64{2}, data: f32bytes(4, 5)},
		})
		f, err := Parse("al.gguf", b)
		if err != nil {
			t.Fatalf("alignment %d: %v", a, err)
		}
		if f.Alignment != int64(a) || f.DataOffset%int64(a) != 0 {
			t.Errorf("alignment %d: got %d, data at %d", a, f.Alignment, f.DataOffset)
		}
		x, _, err := f.Float32("b")
		if err != nil || !slices.Equal(x, []float32{4, 5}) {
			t.Errorf("alignment %d: b = %v %v", a, x, err)
		}
	}
}

// TestOpenFile reads through the memory map and through the fallback.
func TestOpenFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.gguf")
	b := encoder{}.encode([]tkv{{"general.architecture", "llama"}},
		[]ttensor{{name: "x", typ: F32, dims: []uint64{2}, data: f32bytes(7, 8)}})
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, fr := range []bool{false, true} {
		if fr {
			openFile = mmapfile.Read
		}
		f, err := Open(path)
		openFile = mmapfile.Open
		if err != nil {
			t.Fatal(err)
		}
		if mapped := f.mapped.Mapped(); mapped == fr {
			t.Errorf("forceRead=%v: mapped=%v", fr, mapped)
		}
		x, _, err := f.Float32("x")
		if err != nil || !slices.Equal(x, []float32{7, 8}) {
			t.Errorf("x = %v %v", x, err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		if _, _, err := f.TensorData("x"); err == nil {
			t.Error("TensorData after Close succeeded")
		}
	}
	if _, err := Open(filepath.Join(t.TempDir(), "absent.gguf")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("absent file: %v", err)
	}
	if _, err := Open(t.TempDir()); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Errorf("directory: %v", err)
	}
}

// TestTruncatedEverywhere cuts a valid file at every length: each prefix
// must be refused with a FormatError naming the file, never a panic.
func TestTruncatedEverywhere(t *testing.T) {
	b := encoder{}.encode(allKVs(), []ttensor{
		{name: "w", typ: Q8_0, dims: []uint64{32, 2}, data: make([]byte, 68)},
		{name: "n", typ: F32, dims: []uint64{5}, data: f32bytes(1, 2, 3, 4, 5)},
	})
	if _, err := Parse("full.gguf", b); err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(b); n++ {
		_, err := Parse("cut.gguf", b[:n])
		var fe *FormatError
		if err == nil {
			// The last tensor's padding may be cut without harm; its data may not.
			if n >= len(b)-12 {
				continue
			}
			t.Fatalf("prefix of %d of %d bytes parsed", n, len(b))
		}
		if !errors.As(err, &fe) || fe.Path != "cut.gguf" {
			t.Fatalf("prefix %d: error %v is not a FormatError naming the file", n, err)
		}
	}
}

func corrupt(t *testing.T, name string, b []byte, want ...string) {
	t.Helper()
	_, err := Parse(name, b)
	if err == nil {
		t.Errorf("%s: parsed", name)
		return
	}
	for _, w := range append(want, name) {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s: error %q does not mention %q", name, err, w)
		}
	}
}

func TestBadFiles(t *testing.T) {
	good := func() []byte {
		return encoder{}.encode([]tkv{{"general.architecture", "phi3"}},
			[]ttensor{{name: "blk.0.attn_norm.weight", typ: F32, dims: []uint64{4}, data: f32bytes(1, 2, 3, 4)}})
	}
	b := good()
	copy(b, "GGML")
	corrupt(t, "magic.gguf", b, "not a GGUF file", `"GGML"`)
	corrupt(t, "empty.gguf", nil, "not a GGUF file")

	for v, msg := range map[uint32]string{1: "version 1 is no longer supported", 4: "unsupported GGUF version 4", 0: "unsupported GGUF version 0"} {
		b = good()
		binary.LittleEndian.PutUint32(b[4:], v)
		corrupt(t, "version.gguf", b, msg)
	}
	b = good()
	binary.BigEndian.PutUint32(b[4:], 3)
	corrupt(t, "bigendian.gguf", b, "big-endian")

	corrupt(t, "type.gguf", encoder{}.encode(nil, []ttensor{{name: "t", typ: Type(4), dims: []uint64{4}, data: make([]byte, 16)}}),
		`tensor "t"`, "unknown ggml type 4")
	corrupt(t, "type99.gguf", encoder{}.encode(nil, []ttensor{{name: "t", typ: Type(99), dims: []uint64{4}, data: make([]byte, 16)}}),
		`tensor "t"`, "unknown ggml type 99")
	corrupt(t, "dims.gguf", encoder{}.encode(nil, []ttensor{{name: "t5", typ: F32, dims: []uint64{1, 1, 1, 1, 1}, data: make([]byte, 4)}}),
		`tensor "t5"`, "5 dimensions")
	corrupt(t, "block.gguf", encoder{}.encode(nil, []ttensor{{name: "q", typ: Q4_0, dims: []uint64{48}, data: make([]byte, 27)}}),
		`tensor "q"`, "48 elements per row, not a multiple of the Q4_0 block size 32")
	far := uint64(1 << 20)
	corrupt(t, "range.gguf", encoder{}.encode(nil, []ttensor{{name: "far", typ: F32, dims: []uint64{4}, data: make([]byte, 16), offset: &far}}),
		`tensor "far"`, "runs past the end of the file")
	odd := uint64(4)
	corrupt(t, "misaligned.gguf", encoder{}.encode(nil, []ttensor{
		{name: "a", typ: F32, dims: []uint64{1}, data: make([]byte, 4)},
		{name: "b", typ: F32, dims: []uint64{1}, data: make([]byte, 4), offset: &odd}}),
		`tensor "b"`, "not a multiple of the alignment 32")
	zero := uint64(0)
	corrupt(t, "overlap.gguf", encoder{}.encode(nil, []ttensor{
		{name: "a", typ: F32, dims: []uint64{8}, data: make([]byte, 32)},
		{name: "b", typ: F32, dims: []uint64{8}, data: make([]byte, 32), offset: &zero}}),
		"overlaps tensor")
	corrupt(t, "duptensor.gguf", encoder{}.encode(nil, []ttensor{
		{name: "a", typ: F32, dims: []uint64{1}, data: make([]byte, 4)},
		{name: "a", typ: F32, dims: []uint64{1}, data: make([]byte, 4)}}),
		`tensor "a"`, "twice")
	corrupt(t, "dupkey.gguf", encoder{}.encode([]tkv{{"k", uint32(1)}, {"k", uint32(2)}}, nil), `key "k"`, "twice")
	corrupt(t, "align3.gguf", encoder{}.encode([]tkv{{"general.alignment", uint32(3)}}, nil), `key "general.alignment"`, "power of two")
	corrupt(t, "align64.gguf", encoder{}.encode([]tkv{{"general.alignment", uint64(32)}}, nil), `key "general.alignment"`, "UINT64, want UINT32")
	// A BOOL whose byte is 2: patch the type of a UINT8 value to BOOL.
	b = encoder{}.encode([]tkv{{"b", uint8(2)}}, nil)
	binary.LittleEndian.PutUint32(b[4+4+8+8+8+1:], uint32(TypeBool))
	corrupt(t, "bool2.gguf", b, `key "b"`, "neither 0 nor 1")
	// Unknown value type 13.
	b = encoder{}.encode([]tkv{{"x", uint32(0)}}, nil)
	binary.LittleEndian.PutUint32(b[4+4+8+8+8+1:], 13)
	corrupt(t, "kvtype.gguf", b, `key "x"`, "unknown value type 13")
	// Arrays of arrays: patch the element type.
	b = encoder{}.encode([]tkv{{"arr", []uint32{1}}}, nil)
	binary.LittleEndian.PutUint32(b[4+4+8+8+8+3+4:], uint32(TypeArray))
	corrupt(t, "nested.gguf", b, `key "arr"`, "arrays of arrays")
	// A string length beyond the file.
	b = encoder{}.encode([]tkv{{"s", "abc"}}, nil)
	binary.LittleEndian.PutUint64(b[4+4+8+8+8+1+4:], 1<<40)
	corrupt(t, "strlen.gguf", b, `key "s"`, "runs past the end")
	// An array length beyond the file.
	b = encoder{}.encode([]tkv{{"a", []float32{1, 2}}}, nil)
	binary.LittleEndian.PutUint64(b[4+4+8+8+8+1+4+4:], 1<<60)
	corrupt(t, "arrlen.gguf", b, `key "a"`, "truncated")
	// Counts beyond the file.
	b = good()
	binary.LittleEndian.PutUint64(b[8:], 1<<40)
	corrupt(t, "ntensors.gguf", b, "tensor count")
	b = good()
	binary.LittleEndian.PutUint64(b[16:], 1<<40)
	corrupt(t, "nkv.gguf", b, "metadata count")
	// Too many elements.
	corrupt(t, "huge.gguf", encoder{}.encode(nil, []ttensor{{name: "h", typ: F32, dims: []uint64{1 << 40, 1 << 40}}}),
		`tensor "h"`, "too many elements")
}

func TestDequantizeErrors(t *testing.T) {
	if err := Dequantize(IQ2_XXS, make([]byte, 66), make([]float32, 256)); err == nil || !strings.Contains(err.Error(), "IQ2_XXS is not implemented") {
		t.Errorf("IQ2_XXS: %v", err)
	}
	if err := Dequantize(Type(77), nil, nil); err == nil || !strings.Contains(err.Error(), "unknown ggml type 77") {
		t.Errorf("type 77: %v", err)
	}
	if err := Dequantize(Q4_0, make([]byte, 18), make([]float32, 16)); err == nil || !strings.Contains(err.Error(), "multiple of the block size") {
		t.Errorf("partial block: %v", err)
	}
	if err := Dequantize(Q4_0, make([]byte, 17), make([]float32, 32)); err == nil || !strings.Contains(err.Error(), "need 18 bytes, got 17") {
		t.Errorf("short data: %v", err)
	}
	// Through the file: the error names file and tensor.
	f, err := Parse("iq.gguf", encoder{}.encode(nil, []ttensor{{name: "blk.0.ffn_up.weight", typ: IQ2_XXS, dims: []uint64{256}, data: make([]byte, 66)}}))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = f.Float32("blk.0.ffn_up.weight")
	if err == nil || !strings.Contains(err.Error(), `iq.gguf: tensor "blk.0.ffn_up.weight": dequantizing IQ2_XXS`) {
		t.Errorf("file error: %v", err)
	}
	if _, _, err := f.Float32("nope"); err == nil || !strings.Contains(err.Error(), `no tensor "nope"`) {
		t.Errorf("missing tensor: %v", err)
	}
}

func TestTypeSizes(t *testing.T) {
	// sizeof(block_*) from ggml-common.h's static_asserts.
	want := map[Type][2]int{Q4_0: {32, 18}, Q4_1: {32, 20}, Q5_0: {32, 22}, Q5_1: {32, 24}, Q8_0: {32, 34},
		Q2_K: {256, 84}, Q3_K: {256, 110}, Q4_K: {256, 144}, Q5_K: {256, 176}, Q6_K: {256, 210}, Q8_K: {256, 292},
		IQ4_NL: {32, 18}, IQ4_XS: {256, 136}, MXFP4: {32, 17}, TQ1_0: {256, 54}, TQ2_0: {256, 66},
		F16: {1, 2}, BF16: {1, 2}, F32: {1, 4}}
	for typ, w := range want {
		if typ.BlockSize() != w[0] || typ.TypeSize() != w[1] {
			t.Errorf("%v: block %d size %d, want %v", typ, typ.BlockSize(), typ.TypeSize(), w)
		}
	}
	if Q4_K.String() != "Q4_K" || Type(5).String() != "type(5)" || Type(5).Known() {
		t.Error("type names")
	}
	if FileType(15) != "Q4_K_M" || FileType(2) != "Q4_0" {
		t.Error("file type names")
	}
}
