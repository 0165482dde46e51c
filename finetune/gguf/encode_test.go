package gguf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
)

// A minimal GGUF encoder for tests only (the convert package owns the real
// writer). It writes exactly what docs/gguf.md describes, with the options
// a test needs to break the file on purpose.

type tkv struct {
	key string
	val any // a scalar of a GGUF Go type, or a slice of one (an array)
}

type ttensor struct {
	name string
	typ  Type
	dims []uint64 // ne, fastest first
	data []byte
	// offset, when set (>= 0 after the +1 shift), overrides the computed
	// data offset (relative to the data section), to build bad files.
	offset *uint64
}

type encoder struct {
	version   uint32
	alignment int // 0: DefaultAlignment (and general.alignment is not written unless in kvs)
}

func le(w *bytes.Buffer, v any) {
	if err := binary.Write(w, binary.LittleEndian, v); err != nil {
		panic(err)
	}
}

func putString(w *bytes.Buffer, s string) {
	le(w, uint64(len(s)))
	w.WriteString(s)
}

func valueType(v any) (t ValueType, array bool) {
	switch v.(type) {
	case uint8:
		return TypeUint8, false
	case int8:
		return TypeInt8, false
	case uint16:
		return TypeUint16, false
	case int16:
		return TypeInt16, false
	case uint32:
		return TypeUint32, false
	case int32:
		return TypeInt32, false
	case float32:
		return TypeFloat32, false
	case bool:
		return TypeBool, false
	case string:
		return TypeString, false
	case uint64:
		return TypeUint64, false
	case int64:
		return TypeInt64, false
	case float64:
		return TypeFloat64, false
	case []uint8:
		return TypeUint8, true
	case []int8:
		return TypeInt8, true
	case []uint16:
		return TypeUint16, true
	case []int16:
		return TypeInt16, true
	case []uint32:
		return TypeUint32, true
	case []int32:
		return TypeInt32, true
	case []float32:
		return TypeFloat32, true
	case []bool:
		return TypeBool, true
	case []string:
		return TypeString, true
	case []uint64:
		return TypeUint64, true
	case []int64:
		return TypeInt64, true
	case []float64:
		return TypeFloat64, true
	}
	panic(fmt.Sprintf("encoder: unsupported value %T", v))
}

func putScalar(w *bytes.Buffer, v any) {
	switch x := v.(type) {
	case string:
		putString(w, x)
	case bool:
		if x {
			w.WriteByte(1)
		} else {
			w.WriteByte(0)
		}
	default:
		le(w, x)
	}
}

func putValue(w *bytes.Buffer, v any) {
	t, array := valueType(v)
	if !array {
		le(w, uint32(t))
		putScalar(w, v)
		return
	}
	le(w, uint32(TypeArray))
	le(w, uint32(t))
	switch x := v.(type) {
	case []string:
		le(w, uint64(len(x)))
		for _, s := range x {
			putString(w, s)
		}
	case []bool:
		le(w, uint64(len(x)))
		for _, b := range x {
			putScalar(w, b)
		}
	default:
		n := 0
		switch y := v.(type) {
		case []uint8:
			n = len(y)
		case []int8:
			n = len(y)
		case []uint16:
			n = len(y)
		case []int16:
			n = len(y)
		case []uint32:
			n = len(y)
		case []int32:
			n = len(y)
		case []float32:
			n = len(y)
		case []uint64:
			n = len(y)
		case []int64:
			n = len(y)
		case []float64:
			n = len(y)
		}
		le(w, uint64(n))
		le(w, x)
	}
}

// encode writes a GGUF image: header, kvs in order, tensor infos, padding,
// then each tensor's data padded to the alignment.
func (e encoder) encode(kvs []tkv, tensors []ttensor) []byte {
	version := e.version
	if version == 0 {
		version = 3
	}
	align := e.alignment
	if align == 0 {
		align = DefaultAlignment
	}
	var w bytes.Buffer
	w.WriteString(Magic)
	le(&w, version)
	le(&w, uint64(len(tensors)))
	le(&w, uint64(len(kvs)))
	for _, kv := range kvs {
		putString(&w, kv.key)
		putValue(&w, kv.val)
	}
	pad := func(n int) int { return (n + align - 1) / align * align }
	off := 0
	for _, t := range tensors {
		putString(&w, t.name)
		le(&w, uint32(len(t.dims)))
		for _, d := range t.dims {
			le(&w, d)
		}
		le(&w, uint32(t.typ))
		if t.offset != nil {
			le(&w, *t.offset)
		} else {
			le(&w, uint64(off))
		}
		off = pad(off + len(t.data))
	}
	for w.Len()%align != 0 {
		w.WriteByte(0)
	}
	for _, t := range tensors {
		w.Write(t.data)
		for w.Len()%align != 0 {
			w.WriteByte(0)
		}
	}
	return w.Bytes()
}

func f32bytes(v ...float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}
