package data

import (
	"bytes"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
)

// readCSV reads RFC 4180 CSV with a header row: quoted fields may hold
// commas, doubled quotes and newlines; every record must have as many fields
// as the header. Values stay strings (pandas, which the datasets library
// uses, would guess numbers and turn "" and "NA" into null; a fine-tune's
// text columns want the text as written).
func readCSV(path string, b []byte) (*Table, error) {
	r := csv.NewReader(bytes.NewReader(b))
	r.FieldsPerRecord = 0 // as many as the header
	header, err := r.Read()
	if err == io.EOF {
		return nil, fmt.Errorf("read %s: the file is empty; a CSV data set needs a header row naming its columns", path)
	}
	if err != nil {
		return nil, csvError(path, 0, err)
	}
	seen := map[string]int{}
	for i, name := range header {
		if name == "" {
			return nil, &RowError{Pos: Pos{Path: path, Line: 1}, Err: fmt.Errorf("header column %d has no name; name every column", i+1)}
		}
		if j, dup := seen[name]; dup {
			return nil, &RowError{Pos: Pos{Path: path, Line: 1}, Err: fmt.Errorf("header names column %q twice (columns %d and %d); give each column its own name", name, j+1, i+1)}
		}
		seen[name] = i
	}
	t := &Table{Path: path, Columns: header}
	for n := 1; ; n++ {
		rec, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, csvError(path, n, err)
		}
		line, _ := r.FieldPos(0)
		pos := Pos{Path: path, Line: line, Row: n}
		values := make(map[string]any, len(header))
		for i, name := range header {
			values[name] = rec[i]
		}
		if allEmpty(values) {
			t.Skipped = append(t.Skipped, pos)
			continue
		}
		t.Rows = append(t.Rows, Row{Pos: pos, Values: values})
	}
	return t, nil
}

// csvError turns encoding/csv's errors into RowErrors that name the line the
// record starts on and say what to fix.
func csvError(path string, row int, err error) error {
	var pe *csv.ParseError
	if !errors.As(err, &pe) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	pos := Pos{Path: path, Line: pe.StartLine, Row: row}
	switch {
	case errors.Is(pe.Err, csv.ErrFieldCount):
		return &RowError{Pos: pos, Err: fmt.Errorf("wrong number of fields (the header has a different count); quote fields that contain commas")}
	case errors.Is(pe.Err, csv.ErrQuote):
		return &RowError{Pos: pos, Err: fmt.Errorf("line %d, column %d: extraneous or missing \" in a quoted field; a quote inside a quoted field is written \"\"", pe.Line, pe.Column)}
	case errors.Is(pe.Err, csv.ErrBareQuote):
		return &RowError{Pos: pos, Err: fmt.Errorf("line %d, column %d: bare \" in a field that is not quoted; quote the field and double the quote", pe.Line, pe.Column)}
	}
	return &RowError{Pos: pos, Err: pe.Err}
}
