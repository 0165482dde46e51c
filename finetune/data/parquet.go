package data

import (
	"errors"
	"fmt"
	"io"
	"os"
	"unicode/utf8"

	"github.com/parquet-go/parquet-go"
)

// readParquet reads a Parquet file: string columns, numbers, booleans, and
// nested lists and structs such as a messages column of {role, content}
// (LIST of STRUCT, as pyarrow and the datasets library write it). A binary
// column without the STRING annotation is read as text when it is UTF-8.
func readParquet(path string) (t *Table, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	// parquet-go panics on some corrupt files; a user's file must give an
	// error instead.
	defer func() {
		if r := recover(); r != nil {
			t, err = nil, fmt.Errorf("read %s: not a readable Parquet file: %v", path, r)
		}
	}()
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		return nil, fmt.Errorf("read %s: not a readable Parquet file: %w", path, err)
	}
	t = &Table{Path: path}
	for _, field := range pf.Schema().Fields() {
		t.Columns = append(t.Columns, field.Name())
	}
	r := parquet.NewReader(pf)
	defer r.Close()
	for n := 1; ; n++ {
		values := map[string]any{}
		err := r.Read(&values)
		if errors.Is(err, io.EOF) {
			break
		}
		pos := Pos{Path: path, Row: n}
		if err != nil {
			return nil, &RowError{Pos: pos, Err: fmt.Errorf("cannot decode the row: %w", err)}
		}
		for k, v := range values {
			nv, err := textValues(v)
			if err != nil {
				return nil, &RowError{Pos: pos, Column: k, Err: err}
			}
			values[k] = nv
		}
		if allEmpty(values) {
			t.Skipped = append(t.Skipped, pos)
			continue
		}
		t.Rows = append(t.Rows, Row{Pos: pos, Values: values})
	}
	return t, nil
}

// textValues checks every string in v for UTF-8 and turns UTF-8 byte slices
// into strings.
func textValues(v any) (any, error) {
	switch x := v.(type) {
	case string:
		if !utf8.ValidString(x) {
			return nil, ErrInvalidUTF8
		}
	case []byte:
		if !utf8.Valid(x) {
			return nil, ErrInvalidUTF8
		}
		return string(x), nil
	case []any:
		for i, e := range x {
			ne, err := textValues(e)
			if err != nil {
				return nil, fmt.Errorf("item %d: %w", i+1, err)
			}
			x[i] = ne
		}
	case map[string]any:
		for k, e := range x {
			ne, err := textValues(e)
			if err != nil {
				return nil, fmt.Errorf("field %q: %w", k, err)
			}
			x[k] = ne
		}
	}
	return v, nil
}
