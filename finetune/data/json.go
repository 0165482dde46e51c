package data

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// readJSON reads one JSON array of objects.
func readJSON(path string, b []byte) (*Table, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return nil, jsonError(path, b, 0, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, &RowError{Pos: Pos{Path: path, Line: lineAt(b, dec.InputOffset())},
			Err: errors.New("a JSON data set is one array of objects, [{...}, {...}]; for one object per line use the jsonl format")}
	}
	t := &Table{Path: path}
	cols := columnSet{}
	for n := 1; dec.More(); n++ {
		start := skipSpaceComma(b, dec.InputOffset())
		pos := Pos{Path: path, Line: lineAt(b, start), Row: n}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, jsonError(path, b, n, err)
		}
		values, order, err := decodeObject(raw)
		if err != nil {
			return nil, &RowError{Pos: pos, Err: err}
		}
		cols.add(order)
		if allEmpty(values) {
			t.Skipped = append(t.Skipped, pos)
			continue
		}
		t.Rows = append(t.Rows, Row{Pos: pos, Values: values})
	}
	if _, err := dec.Token(); err != nil { // the closing ]
		return nil, jsonError(path, b, 0, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &RowError{Pos: Pos{Path: path, Line: lineAt(b, dec.InputOffset())}, Err: errors.New("data after the closing ] of the array")}
	}
	t.Columns = cols.names
	return t, nil
}

// readJSONL reads one JSON object per line; blank lines are skipped.
func readJSONL(path string, b []byte) (*Table, error) {
	t := &Table{Path: path}
	cols := columnSet{}
	line, n := 0, 0
	for len(b) > 0 {
		line++
		var text []byte
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			text, b = b[:i], b[i+1:]
		} else {
			text, b = b, nil
		}
		text = bytes.TrimRight(text, "\r")
		if len(bytes.TrimSpace(text)) == 0 {
			continue
		}
		n++
		pos := Pos{Path: path, Line: line, Row: n}
		values, order, err := decodeObject(text)
		if err != nil {
			var se *json.SyntaxError
			if errors.As(err, &se) {
				return nil, &RowError{Pos: pos, Err: fmt.Errorf("column %d: %v", se.Offset, se)}
			}
			return nil, &RowError{Pos: pos, Err: err}
		}
		cols.add(order)
		if allEmpty(values) {
			t.Skipped = append(t.Skipped, pos)
			continue
		}
		t.Rows = append(t.Rows, Row{Pos: pos, Values: values})
	}
	t.Columns = cols.names
	return t, nil
}

// decodeObject decodes one JSON object, returning its values and its keys in
// order of appearance.
func decodeObject(raw []byte) (map[string]any, []string, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err != nil {
		return nil, nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, nil, fmt.Errorf("want an object {\"column\": value, ...}, got %s", jsonKind(tok))
	}
	values := map[string]any{}
	var order []string
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return nil, nil, err
		}
		key := k.(string)
		var v any
		if err := dec.Decode(&v); err != nil {
			return nil, nil, err
		}
		if _, dup := values[key]; !dup {
			order = append(order, key)
		}
		values[key] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		if err == nil {
			err = errors.New("more than one JSON value on the line")
		}
		return nil, nil, err
	}
	return values, order, nil
}

func jsonKind(tok json.Token) string {
	switch v := tok.(type) {
	case json.Delim:
		if v == '[' {
			return "an array"
		}
		return string(v)
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", tok)
}

// jsonError names the line of a syntax error in an array file.
func jsonError(path string, b []byte, row int, err error) error {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return &RowError{Pos: Pos{Path: path, Line: lineAt(b, se.Offset), Row: row}, Err: fmt.Errorf("malformed JSON: %v", se)}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &RowError{Pos: Pos{Path: path, Line: lineAt(b, int64(len(b))), Row: row}, Err: errors.New("malformed JSON: the file ends inside the array")}
	}
	return fmt.Errorf("read %s: %w", path, err)
}

func skipSpaceComma(b []byte, off int64) int64 {
	for off < int64(len(b)) {
		switch b[off] {
		case ' ', '\t', '\r', '\n', ',':
			off++
			continue
		}
		break
	}
	return off
}

// columnSet keeps column names in order of first appearance.
type columnSet struct {
	names []string
	seen  map[string]bool
}

func (c *columnSet) add(names []string) {
	if c.seen == nil {
		c.seen = map[string]bool{}
	}
	for _, n := range names {
		if !c.seen[n] {
			c.seen[n] = true
			c.names = append(c.names, n)
		}
	}
}
