package data

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// Format is a data file's format.
type Format string

const (
	FormatAuto    Format = "auto" // by extension; a .json file holding one object per line is read as JSONL
	FormatCSV     Format = "csv"
	FormatJSON    Format = "json" // one array of objects
	FormatJSONL   Format = "jsonl"
	FormatParquet Format = "parquet"
)

// Row is one record of a data file: its values by column name. Strings stay
// strings; JSON numbers are float64, booleans bool, null nil, arrays []any
// and objects map[string]any; Parquet lists of structs become
// []any of map[string]any.
type Row struct {
	Pos    Pos
	Values map[string]any
}

// Pos says where a row is, as a user would look for it: the 1-based line
// where the record starts (CSV, JSON, JSONL), and the 1-based row among the
// file's data rows (the header is not a row).
type Pos struct {
	Path string
	Line int // 0 when the format has no lines (Parquet)
	Row  int
}

func (p Pos) String() string {
	switch {
	case p.Line > 0 && p.Row > 0:
		return fmt.Sprintf("%s: line %d (row %d)", p.Path, p.Line, p.Row)
	case p.Line > 0:
		return fmt.Sprintf("%s: line %d", p.Path, p.Line)
	case p.Row > 0:
		return fmt.Sprintf("%s: row %d", p.Path, p.Row)
	}
	return p.Path
}

// Table is what a data file holds.
type Table struct {
	Path    string
	Columns []string // in the file's order (for JSON: first appearance)
	Rows    []Row
	// Skipped are the rows that held nothing (every value empty or null).
	// They are dropped, not errors, as spreadsheet exports often end in
	// them; the caller reports how many. Blank lines are not rows at all
	// (CSV, JSONL) and are not counted.
	Skipped []Pos
}

// RowError is a problem with one row (or one spot) of a data file.
type RowError struct {
	Pos    Pos
	Column string // "" when the problem is not one column's
	Err    error
}

func (e *RowError) Error() string {
	if e.Column != "" {
		return fmt.Sprintf("%s: column %q: %v", e.Pos, e.Column, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Pos, e.Err)
}

func (e *RowError) Unwrap() error { return e.Err }

// ErrInvalidUTF8 is wrapped by errors about text that is not UTF-8.
var ErrInvalidUTF8 = errors.New("invalid UTF-8; save the file as UTF-8")

// ReadFile reads a data file. format may be FormatAuto (or "") to go by the
// extension.
func ReadFile(path string, format Format) (*Table, error) {
	f, err := detectFormat(path, format)
	if err != nil {
		return nil, err
	}
	if f == FormatParquet {
		return readParquet(path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if err := checkUTF8(path, b); err != nil {
		return nil, err
	}
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf")) // a BOM is not data
	switch f {
	case FormatCSV:
		return readCSV(path, b)
	case FormatJSON:
		if format == FormatAuto || format == "" {
			if first := firstNonSpace(b); first == '{' {
				return readJSONL(path, b) // datasets' json loader reads JSON lines too
			}
		}
		return readJSON(path, b)
	case FormatJSONL:
		return readJSONL(path, b)
	}
	return nil, fmt.Errorf("read %s: unsupported format %q", path, f)
}

// detectFormat resolves FormatAuto by extension.
func detectFormat(path string, format Format) (Format, error) {
	switch format {
	case FormatCSV, FormatJSON, FormatJSONL, FormatParquet:
		return format, nil
	case FormatAuto, "":
	default:
		return "", fmt.Errorf("read %s: unknown format %q; use auto, csv, json, jsonl or parquet", path, format)
	}
	switch strings.ToLower(filepath.Ext(path)) {
	case ".csv":
		return FormatCSV, nil
	case ".json":
		return FormatJSON, nil
	case ".jsonl", ".ndjson":
		return FormatJSONL, nil
	case ".parquet":
		return FormatParquet, nil
	}
	return "", fmt.Errorf("read %s: cannot tell the format from the extension %q; name it .csv, .json, .jsonl or .parquet, or set the dataset format", path, filepath.Ext(path))
}

// checkUTF8 reports the line and column of the first byte that is not
// UTF-8. It runs before parsing because Go's decoders would otherwise turn
// such bytes into U+FFFD silently.
func checkUTF8(path string, b []byte) error {
	if utf8.Valid(b) {
		return nil
	}
	line, col := 1, 1
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n <= 1 {
			return &RowError{Pos: Pos{Path: path, Line: line, Row: 0}, Err: fmt.Errorf("byte 0x%02x at column %d: %w", b[i], col, ErrInvalidUTF8)}
		}
		if b[i] == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
		i += n
	}
	return nil
}

// lineAt returns the 1-based line of byte offset off in b.
func lineAt(b []byte, off int64) int {
	if off > int64(len(b)) {
		off = int64(len(b))
	}
	return 1 + bytes.Count(b[:off], []byte("\n"))
}

func firstNonSpace(b []byte) byte {
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return c
	}
	return 0
}

// isEmptyValue reports a value that holds nothing: nil, "" or only spaces.
func isEmptyValue(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return strings.TrimSpace(x) == ""
	}
	return false
}

func allEmpty(values map[string]any) bool {
	for _, v := range values {
		if !isEmptyValue(v) {
			return false
		}
	}
	return true
}
