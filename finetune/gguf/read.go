package gguf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"sort"

	"github.com/ollama-tune/ollama-tune/internal/mmapfile"
)

// Magic is the first four bytes of every GGUF file.
const Magic = "GGUF"

// DefaultAlignment is the data alignment when general.alignment is absent.
const DefaultAlignment = 32

// MaxDims is GGML_MAX_DIMS: a tensor has at most four dimensions.
const MaxDims = 4

// ValueType is the type of a metadata value (enum gguf_type).
type ValueType uint32

const (
	TypeUint8   ValueType = 0
	TypeInt8    ValueType = 1
	TypeUint16  ValueType = 2
	TypeInt16   ValueType = 3
	TypeUint32  ValueType = 4
	TypeInt32   ValueType = 5
	TypeFloat32 ValueType = 6
	TypeBool    ValueType = 7
	TypeString  ValueType = 8
	TypeArray   ValueType = 9
	TypeUint64  ValueType = 10
	TypeInt64   ValueType = 11
	TypeFloat64 ValueType = 12
)

var valueTypeNames = [...]string{"UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
	"BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"}

func (t ValueType) String() string {
	if int(t) < len(valueTypeNames) {
		return valueTypeNames[t]
	}
	return fmt.Sprintf("gguf_type(%d)", uint32(t))
}

// size is the encoded size of a scalar of type t (0 for strings, whose
// size varies, and for unknown types).
func (t ValueType) size() int {
	switch t {
	case TypeUint8, TypeInt8, TypeBool:
		return 1
	case TypeUint16, TypeInt16:
		return 2
	case TypeUint32, TypeInt32, TypeFloat32:
		return 4
	case TypeUint64, TypeInt64, TypeFloat64:
		return 8
	}
	return 0
}

// KV is one metadata entry. Value holds a scalar as the matching Go type
// (uint8, int8, uint16, int16, uint32, int32, float32, bool, string,
// uint64, int64, float64) or, when Array is true, a slice of it ([]string,
// []float32, ...); Type is the scalar or element type.
type KV struct {
	Key   string
	Type  ValueType
	Array bool
	Value any
}

// TensorInfo describes one tensor of the file.
type TensorInfo struct {
	Name string
	Type Type
	// Dims are ggml's ne: Dims[0] is the fastest-varying dimension (the
	// columns of a matrix), the reverse of PyTorch's shape.
	Dims []int64
	// Offset is the absolute position of the data in the file; Size its
	// length in bytes.
	Offset, Size int64
}

// Shape is the tensor's shape in PyTorch (row-major) order: Dims reversed.
func (t *TensorInfo) Shape() []int {
	s := make([]int, len(t.Dims))
	for i, d := range t.Dims {
		s[len(s)-1-i] = int(d)
	}
	return s
}

// Elements is the number of elements.
func (t *TensorInfo) Elements() int64 {
	n := int64(1)
	for _, d := range t.Dims {
		n *= d
	}
	return n
}

// FormatError is a malformed file. Path names the file; Tensor or Key the
// entry at fault (both empty when the problem is the file as a whole).
type FormatError struct {
	Path   string
	Tensor string
	Key    string
	Msg    string
}

func (e *FormatError) Error() string {
	switch {
	case e.Tensor != "":
		return fmt.Sprintf("GGUF file %s: tensor %q: %s", e.Path, e.Tensor, e.Msg)
	case e.Key != "":
		return fmt.Sprintf("GGUF file %s: key %q: %s", e.Path, e.Key, e.Msg)
	}
	return fmt.Sprintf("GGUF file %s: %s", e.Path, e.Msg)
}

// ErrMissingKey is wrapped by the typed getters when a key is absent.
var ErrMissingKey = errors.New("key is missing")

// File is an open GGUF file. Its methods are safe for concurrent use until
// Close; the byte slices TensorData returns alias the file's memory map and
// are valid until Close.
type File struct {
	Path       string
	Version    uint32
	Alignment  int64
	DataOffset int64 // absolute start of the data section
	KVs        []KV
	Tensors    []TensorInfo

	kv      map[string]int
	tensors map[string]int
	buf     []byte         // the whole file
	mapped  *mmapfile.Data // what holds buf when Open read it; nil after Parse
}

// Open memory-maps path (reading it into memory where mapping fails) and
// validates its header, metadata and tensor table.
func Open(path string) (*File, error) {
	d, err := openFile(path)
	if err != nil {
		return nil, fmt.Errorf("open GGUF file: %w", err)
	}
	f, err := Parse(path, d.Bytes)
	if err != nil {
		d.Close()
		return nil, err
	}
	f.mapped = d
	return f, nil
}

// openFile is mmapfile.Open; tests of the read fallback swap it.
var openFile = mmapfile.Open

// Close releases the memory map. Slices from TensorData must not be used
// afterwards.
func (f *File) Close() error {
	d := f.mapped
	f.buf, f.mapped = nil, nil
	return d.Close()
}

// reader walks the header with bounds checks; every failure names the
// byte offset so that a damaged file can be inspected.
type reader struct {
	path string
	buf  []byte
	off  int64
}

func (r *reader) fail(format string, args ...any) error {
	return &FormatError{Path: r.path, Msg: fmt.Sprintf(format, args...)}
}

func (r *reader) need(n int64, what string) error {
	if n < 0 || n > int64(len(r.buf))-r.off {
		return r.fail("truncated: %s needs %d bytes at offset %d, but the file has %d", what, n, r.off, len(r.buf))
	}
	return nil
}

func (r *reader) u32(what string) (uint32, error) {
	if err := r.need(4, what); err != nil {
		return 0, err
	}
	v := binary.LittleEndian.Uint32(r.buf[r.off:])
	r.off += 4
	return v, nil
}

func (r *reader) u64(what string) (uint64, error) {
	if err := r.need(8, what); err != nil {
		return 0, err
	}
	v := binary.LittleEndian.Uint64(r.buf[r.off:])
	r.off += 8
	return v, nil
}

func (r *reader) str(what string) (string, error) {
	n, err := r.u64(what + " length")
	if err != nil {
		return "", err
	}
	if n > uint64(len(r.buf))-uint64(r.off) {
		return "", r.fail("truncated: %s of %d bytes at offset %d runs past the end of the file (%d bytes)", what, n, r.off, len(r.buf))
	}
	s := string(r.buf[r.off : r.off+int64(n)])
	r.off += int64(n)
	return s, nil
}

// Parse validates an in-memory GGUF image; path is used in errors. The
// returned File's tensor data alias buf.
func Parse(path string, buf []byte) (*File, error) {
	r := &reader{path: path, buf: buf}
	if len(buf) < 4 || string(buf[:4]) != Magic {
		n := min(len(buf), 4)
		return nil, r.fail("not a GGUF file: it starts with %q, not %q", buf[:n], Magic)
	}
	r.off = 4
	f := &File{Path: path, buf: buf, kv: map[string]int{}, tensors: map[string]int{}, Alignment: DefaultAlignment}
	var err error
	if f.Version, err = r.u32("version"); err != nil {
		return nil, err
	}
	switch {
	case f.Version == 2 || f.Version == 3:
	case f.Version == 1:
		return nil, r.fail("GGUF version 1 is no longer supported (llama.cpp dropped it too); convert the model again")
	case f.Version != 0 && f.Version&0xFFFF == 0 && bits.ReverseBytes32(f.Version) <= 3:
		return nil, r.fail("version field reads %#x: a big-endian GGUF file, which is not supported", f.Version)
	default:
		return nil, r.fail("unsupported GGUF version %d (versions 2 and 3 are read)", f.Version)
	}
	nTensors, err := r.u64("tensor count")
	if err != nil {
		return nil, err
	}
	nKV, err := r.u64("metadata count")
	if err != nil {
		return nil, err
	}
	// Each KV takes at least 12 bytes and each tensor info at least 24: a
	// count beyond what the file can hold is damage, not a huge model.
	rest := uint64(len(buf)) - uint64(r.off)
	if nKV > rest/12 {
		return nil, r.fail("metadata count %d is more than the %d remaining bytes can hold", nKV, rest)
	}
	if nTensors > rest/24 {
		return nil, r.fail("tensor count %d is more than the %d remaining bytes can hold", nTensors, rest)
	}

	f.KVs = make([]KV, 0, nKV)
	for i := uint64(0); i < nKV; i++ {
		kv, err := r.readKV(i)
		if err != nil {
			return nil, err
		}
		if _, dup := f.kv[kv.Key]; dup {
			return nil, &FormatError{Path: path, Key: kv.Key, Msg: "appears twice in the metadata"}
		}
		f.kv[kv.Key] = len(f.KVs)
		f.KVs = append(f.KVs, kv)
	}
	if i, ok := f.kv["general.alignment"]; ok {
		kv := f.KVs[i]
		a, isU32 := kv.Value.(uint32)
		if !isU32 || kv.Array {
			return nil, &FormatError{Path: path, Key: kv.Key, Msg: fmt.Sprintf("has type %s, want UINT32", kv.describeType())}
		}
		if a == 0 || a&(a-1) != 0 {
			return nil, &FormatError{Path: path, Key: kv.Key, Msg: fmt.Sprintf("is %d; the alignment must be a power of two", a)}
		}
		f.Alignment = int64(a)
	}

	f.Tensors = make([]TensorInfo, 0, nTensors)
	for i := uint64(0); i < nTensors; i++ {
		t, err := r.readTensorInfo(i)
		if err != nil {
			return nil, err
		}
		if _, dup := f.tensors[t.Name]; dup {
			return nil, &FormatError{Path: path, Tensor: t.Name, Msg: "appears twice in the tensor table"}
		}
		f.tensors[t.Name] = len(f.Tensors)
		f.Tensors = append(f.Tensors, t)
	}

	f.DataOffset = alignUp(r.off, f.Alignment)
	if err := f.checkData(); err != nil {
		return nil, err
	}
	return f, nil
}

func alignUp(x, a int64) int64 { return (x + a - 1) / a * a }

func (kv *KV) describeType() string {
	if kv.Array {
		return "ARRAY of " + kv.Type.String()
	}
	return kv.Type.String()
}

func (r *reader) readKV(i uint64) (KV, error) {
	key, err := r.str(fmt.Sprintf("metadata key %d", i))
	if err != nil {
		return KV{}, err
	}
	bad := func(format string, args ...any) error {
		return &FormatError{Path: r.path, Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	t, err := r.u32("value type")
	if err != nil {
		return KV{}, bad("%s", msgOf(err))
	}
	kv := KV{Key: key, Type: ValueType(t)}
	if kv.Type == TypeArray {
		kv.Array = true
		et, err := r.u32("array element type")
		if err != nil {
			return KV{}, bad("%s", msgOf(err))
		}
		kv.Type = ValueType(et)
		if kv.Type == TypeArray {
			return KV{}, bad("arrays of arrays are not supported (nor by llama.cpp)")
		}
		n, err := r.u64("array length")
		if err != nil {
			return KV{}, bad("%s", msgOf(err))
		}
		if kv.Value, err = r.array(kv.Type, n); err != nil {
			return KV{}, bad("%s", msgOf(err))
		}
		return kv, nil
	}
	if kv.Value, err = r.scalar(kv.Type); err != nil {
		return KV{}, bad("%s", msgOf(err))
	}
	return kv, nil
}

func msgOf(err error) string {
	var fe *FormatError
	if errors.As(err, &fe) {
		return fe.Msg
	}
	return err.Error()
}

func (r *reader) scalar(t ValueType) (any, error) {
	if t == TypeString {
		return r.str("string value")
	}
	n := t.size()
	if n == 0 {
		return nil, r.fail("unknown value type %d", uint32(t))
	}
	if err := r.need(int64(n), t.String()+" value"); err != nil {
		return nil, err
	}
	b := r.buf[r.off:]
	r.off += int64(n)
	le := binary.LittleEndian
	switch t {
	case TypeUint8:
		return b[0], nil
	case TypeInt8:
		return int8(b[0]), nil
	case TypeBool:
		if b[0] > 1 {
			return nil, r.fail("BOOL value %d is neither 0 nor 1", b[0])
		}
		return b[0] == 1, nil
	case TypeUint16:
		return le.Uint16(b), nil
	case TypeInt16:
		return int16(le.Uint16(b)), nil
	case TypeUint32:
		return le.Uint32(b), nil
	case TypeInt32:
		return int32(le.Uint32(b)), nil
	case TypeFloat32:
		return math.Float32frombits(le.Uint32(b)), nil
	case TypeUint64:
		return le.Uint64(b), nil
	case TypeInt64:
		return int64(le.Uint64(b)), nil
	case TypeFloat64:
		return math.Float64frombits(le.Uint64(b)), nil
	}
	return nil, r.fail("unknown value type %d", uint32(t))
}

func (r *reader) array(t ValueType, n uint64) (any, error) {
	rest := uint64(len(r.buf)) - uint64(r.off)
	if t == TypeString {
		if n > rest/8 {
			return nil, r.fail("truncated: array of %d strings at offset %d cannot fit in the remaining %d bytes", n, r.off, rest)
		}
		out := make([]string, n)
		for i := range out {
			s, err := r.str(fmt.Sprintf("string %d of the array", i))
			if err != nil {
				return nil, err
			}
			out[i] = s
		}
		return out, nil
	}
	size := uint64(t.size())
	if size == 0 {
		return nil, r.fail("unknown array element type %d", uint32(t))
	}
	if n > rest/size {
		return nil, r.fail("truncated: array of %d %s values at offset %d needs %d bytes, but %d remain", n, t, r.off, n*size, rest)
	}
	b := r.buf[r.off : r.off+int64(n*size)]
	r.off += int64(n * size)
	le := binary.LittleEndian
	switch t {
	case TypeUint8:
		return slices.Clone(b), nil
	case TypeInt8:
		out := make([]int8, n)
		for i := range out {
			out[i] = int8(b[i])
		}
		return out, nil
	case TypeBool:
		out := make([]bool, n)
		for i := range out {
			if b[i] > 1 {
				return nil, r.fail("BOOL element %d is %d, neither 0 nor 1", i, b[i])
			}
			out[i] = b[i] == 1
		}
		return out, nil
	case TypeUint16:
		out := make([]uint16, n)
		for i := range out {
			out[i] = le.Uint16(b[2*i:])
		}
		return out, nil
	case TypeInt16:
		out := make([]int16, n)
		for i := range out {
			out[i] = int16(le.Uint16(b[2*i:]))
		}
		return out, nil
	case TypeUint32:
		out := make([]uint32, n)
		for i := range out {
			out[i] = le.Uint32(b[4*i:])
		}
		return out, nil
	case TypeInt32:
		out := make([]int32, n)
		for i := range out {
			out[i] = int32(le.Uint32(b[4*i:]))
		}
		return out, nil
	case TypeFloat32:
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(le.Uint32(b[4*i:]))
		}
		return out, nil
	case TypeUint64:
		out := make([]uint64, n)
		for i := range out {
			out[i] = le.Uint64(b[8*i:])
		}
		return out, nil
	case TypeInt64:
		out := make([]int64, n)
		for i := range out {
			out[i] = int64(le.Uint64(b[8*i:]))
		}
		return out, nil
	case TypeFloat64:
		out := make([]float64, n)
		for i := range out {
			out[i] = math.Float64frombits(le.Uint64(b[8*i:]))
		}
		return out, nil
	}
	return nil, r.fail("unknown array element type %d", uint32(t))
}

func (r *reader) readTensorInfo(i uint64) (TensorInfo, error) {
	name, err := r.str(fmt.Sprintf("name of tensor %d", i))
	if err != nil {
		return TensorInfo{}, err
	}
	bad := func(format string, args ...any) error {
		return &FormatError{Path: r.path, Tensor: name, Msg: fmt.Sprintf(format, args...)}
	}
	nd, err := r.u32("dimension count")
	if err != nil {
		return TensorInfo{}, bad("%s", msgOf(err))
	}
	if nd > MaxDims {
		return TensorInfo{}, bad("has %d dimensions; at most %d are allowed", nd, MaxDims)
	}
	t := TensorInfo{Name: name, Dims: make([]int64, nd)}
	total := uint64(1)
	for j := range t.Dims {
		d, err := r.u64("dimension")
		if err != nil {
			return TensorInfo{}, bad("%s", msgOf(err))
		}
		if d > math.MaxInt64 {
			return TensorInfo{}, bad("dimension %d is %d, larger than int64", j, d)
		}
		hi, lo := bits.Mul64(total, d)
		if hi != 0 || lo > math.MaxInt64 {
			return TensorInfo{}, bad("has dimensions %v: too many elements", t.Dims[:j+1])
		}
		total = lo
		t.Dims[j] = int64(d)
	}
	typ, err := r.u32("type")
	if err != nil {
		return TensorInfo{}, bad("%s", msgOf(err))
	}
	t.Type = Type(typ)
	if !t.Type.Known() {
		return TensorInfo{}, bad("has unknown ggml type %d (this reader knows ggml's types up to MXFP4 = 39)", typ)
	}
	if nd > 0 && t.Dims[0]%int64(t.Type.BlockSize()) != 0 {
		return TensorInfo{}, bad("has %d elements per row, not a multiple of the %s block size %d", t.Dims[0], t.Type, t.Type.BlockSize())
	}
	if nd == 0 && t.Type.BlockSize() != 1 {
		return TensorInfo{}, bad("is a scalar of block type %s", t.Type)
	}
	hi, size := bits.Mul64(total/uint64(t.Type.BlockSize()), uint64(t.Type.TypeSize()))
	if hi != 0 || size > math.MaxInt64 {
		return TensorInfo{}, bad("is too large (%d elements of %s)", total, t.Type)
	}
	t.Size = int64(size)
	off, err := r.u64("data offset")
	if err != nil {
		return TensorInfo{}, bad("%s", msgOf(err))
	}
	if off > math.MaxInt64 {
		return TensorInfo{}, bad("data offset %d is out of range", off)
	}
	t.Offset = int64(off) // relative for now; checkData makes it absolute
	return t, nil
}

// checkData validates the tensors' placement: aligned offsets inside the
// file, no two tensors overlapping.
func (f *File) checkData() error {
	fileSize := int64(len(f.buf))
	if f.DataOffset > fileSize && len(f.Tensors) > 0 {
		return &FormatError{Path: f.Path, Msg: fmt.Sprintf("truncated: the data section starts at byte %d, past the end of the file (%d bytes)", f.DataOffset, fileSize)}
	}
	for i := range f.Tensors {
		t := &f.Tensors[i]
		rel := t.Offset
		if rel%f.Alignment != 0 {
			return &FormatError{Path: f.Path, Tensor: t.Name, Msg: fmt.Sprintf("data offset %d is not a multiple of the alignment %d", rel, f.Alignment)}
		}
		if rel > fileSize-f.DataOffset || t.Size > fileSize-f.DataOffset-rel {
			return &FormatError{Path: f.Path, Tensor: t.Name, Msg: fmt.Sprintf("data [%d, %d) of the data section runs past the end of the file: the data section has %d bytes (file truncated or offset out of range)",
				rel, rel+t.Size, max(fileSize-f.DataOffset, 0))}
		}
		t.Offset = f.DataOffset + rel
	}
	order := make([]int, len(f.Tensors))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return f.Tensors[order[a]].Offset < f.Tensors[order[b]].Offset })
	for k := 1; k < len(order); k++ {
		p, q := &f.Tensors[order[k-1]], &f.Tensors[order[k]]
		if p.Size > 0 && q.Size > 0 && p.Offset+p.Size > q.Offset {
			return &FormatError{Path: f.Path, Tensor: q.Name, Msg: fmt.Sprintf("data at offset %d overlaps tensor %q [%d, %d)",
				q.Offset-f.DataOffset, p.Name, p.Offset-f.DataOffset, p.Offset-f.DataOffset+p.Size)}
		}
	}
	return nil
}

// Tensor returns the tensor named name.
func (f *File) Tensor(name string) (*TensorInfo, bool) {
	i, ok := f.tensors[name]
	if !ok {
		return nil, false
	}
	return &f.Tensors[i], true
}

// TensorData returns the raw bytes of a tensor, aliasing the file (valid
// until Close).
func (f *File) TensorData(name string) (*TensorInfo, []byte, error) {
	t, ok := f.Tensor(name)
	if !ok {
		return nil, nil, fmt.Errorf("GGUF file %s: no tensor %q", f.Path, name)
	}
	if f.buf == nil {
		return nil, nil, fmt.Errorf("GGUF file %s: read tensor %q after Close", f.Path, name)
	}
	return t, f.buf[t.Offset : t.Offset+t.Size : t.Offset+t.Size], nil
}

// Float32 dequantizes a tensor to float32 and returns it with its shape in
// PyTorch order.
func (f *File) Float32(name string) ([]float32, []int, error) {
	t, data, err := f.TensorData(name)
	if err != nil {
		return nil, nil, err
	}
	out := make([]float32, t.Elements())
	if err := DequantizeParallel(t.Type, data, out); err != nil {
		return nil, nil, fmt.Errorf("GGUF file %s: tensor %q: %w", f.Path, name, err)
	}
	return out, t.Shape(), nil
}

// Lookup returns the metadata entry key.
func (f *File) Lookup(key string) (KV, bool) {
	i, ok := f.kv[key]
	if !ok {
		return KV{}, false
	}
	return f.KVs[i], true
}

// Has reports whether the metadata has key.
func (f *File) Has(key string) bool { _, ok := f.kv[key]; return ok }

func (f *File) get(key string) (KV, error) {
	kv, ok := f.Lookup(key)
	if !ok {
		return KV{}, fmt.Errorf("GGUF file %s: key %q: %w", f.Path, key, ErrMissingKey)
	}
	return kv, nil
}

func (f *File) wrongType(kv KV, want string) error {
	return &FormatError{Path: f.Path, Key: kv.Key, Msg: fmt.Sprintf("has type %s, want %s", kv.describeType(), want)}
}

// String returns a STRING value.
func (f *File) String(key string) (string, error) {
	kv, err := f.get(key)
	if err != nil {
		return "", err
	}
	s, ok := kv.Value.(string)
	if !ok || kv.Array {
		return "", f.wrongType(kv, "STRING")
	}
	return s, nil
}

// Bool returns a BOOL value.
func (f *File) Bool(key string) (bool, error) {
	kv, err := f.get(key)
	if err != nil {
		return false, err
	}
	b, ok := kv.Value.(bool)
	if !ok || kv.Array {
		return false, f.wrongType(kv, "BOOL")
	}
	return b, nil
}

// Int returns an integer value of any integer type as int64; an unsigned
// value above MaxInt64 is an error.
func (f *File) Int(key string) (int64, error) {
	kv, err := f.get(key)
	if err != nil {
		return 0, err
	}
	if kv.Array {
		return 0, f.wrongType(kv, "an integer")
	}
	switch v := kv.Value.(type) {
	case uint8:
		return int64(v), nil
	case int8:
		return int64(v), nil
	case uint16:
		return int64(v), nil
	case int16:
		return int64(v), nil
	case uint32:
		return int64(v), nil
	case int32:
		return int64(v), nil
	case int64:
		return v, nil
	case uint64:
		if v > math.MaxInt64 {
			return 0, &FormatError{Path: f.Path, Key: key, Msg: fmt.Sprintf("value %d is out of range", v)}
		}
		return int64(v), nil
	}
	return 0, f.wrongType(kv, "an integer")
}

// Float returns a FLOAT32 or FLOAT64 value (integers are accepted too).
func (f *File) Float(key string) (float64, error) {
	kv, err := f.get(key)
	if err != nil {
		return 0, err
	}
	switch v := kv.Value.(type) {
	case float32:
		if !kv.Array {
			return float64(v), nil
		}
	case float64:
		if !kv.Array {
			return v, nil
		}
	}
	i, err := f.Int(key)
	if err != nil {
		return 0, f.wrongType(kv, "a float")
	}
	return float64(i), nil
}

// Strings returns an ARRAY of STRING.
func (f *File) Strings(key string) ([]string, error) {
	kv, err := f.get(key)
	if err != nil {
		return nil, err
	}
	s, ok := kv.Value.([]string)
	if !ok {
		return nil, f.wrongType(kv, "ARRAY of STRING")
	}
	return s, nil
}

// Float32s returns an ARRAY of FLOAT32.
func (f *File) Float32s(key string) ([]float32, error) {
	kv, err := f.get(key)
	if err != nil {
		return nil, err
	}
	s, ok := kv.Value.([]float32)
	if !ok {
		return nil, f.wrongType(kv, "ARRAY of FLOAT32")
	}
	return s, nil
}

// Int32s returns an ARRAY of any integer type up to 32 bits as int32
// (token types are INT32 in llama.cpp's files, some writers use UINT32 or
// smaller); values out of int32's range are an error.
func (f *File) Int32s(key string) ([]int32, error) {
	kv, err := f.get(key)
	if err != nil {
		return nil, err
	}
	conv := func(n int, at func(i int) int64) ([]int32, error) {
		out := make([]int32, n)
		for i := range out {
			v := at(i)
			if v < math.MinInt32 || v > math.MaxInt32 {
				return nil, &FormatError{Path: f.Path, Key: key, Msg: fmt.Sprintf("element %d is %d, out of int32's range", i, v)}
			}
			out[i] = int32(v)
		}
		return out, nil
	}
	switch v := kv.Value.(type) {
	case []int32:
		return v, nil
	case []uint32:
		return conv(len(v), func(i int) int64 { return int64(v[i]) })
	case []int8:
		return conv(len(v), func(i int) int64 { return int64(v[i]) })
	case []uint8:
		return conv(len(v), func(i int) int64 { return int64(v[i]) })
	case []int16:
		return conv(len(v), func(i int) int64 { return int64(v[i]) })
	case []uint16:
		return conv(len(v), func(i int) int64 { return int64(v[i]) })
	}
	return nil, f.wrongType(kv, "ARRAY of INT32")
}
