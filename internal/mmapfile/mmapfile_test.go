package mmapfile

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestOpenAndRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f.bin")
	want := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	if err := os.WriteFile(path, want, 0o644); err != nil {
		t.Fatal(err)
	}
	canMap := runtime.GOOS != "windows" && runtime.GOOS != "plan9" && runtime.GOOS != "js" && runtime.GOOS != "wasip1"
	for _, tc := range []struct {
		name   string
		open   func(string) (*Data, error)
		mapped bool
	}{{"Open", Open, canMap}, {"Read", Read, false}} {
		d, err := tc.open(path)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if d.Mapped() != tc.mapped {
			t.Errorf("%s: Mapped() = %v, want %v", tc.name, d.Mapped(), tc.mapped)
		}
		if !bytes.Equal(d.Bytes, want) {
			t.Errorf("%s: %d bytes differ from the file's %d", tc.name, len(d.Bytes), len(want))
		}
		if err := d.Close(); err != nil {
			t.Errorf("%s: Close: %v", tc.name, err)
		}
		if d.Bytes != nil || d.Mapped() {
			t.Errorf("%s: bytes still held after Close", tc.name)
		}
		if err := d.Close(); err != nil {
			t.Errorf("%s: second Close: %v", tc.name, err)
		}
	}
}

func TestEmptyFileIsRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.Mapped() || len(d.Bytes) != 0 {
		t.Errorf("empty file: mapped %v, %d bytes", d.Mapped(), len(d.Bytes))
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("directory: %v", err)
	}
	if _, err := Open(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v, want fs.ErrNotExist", err)
	}
	var d *Data
	if d.Mapped() || d.Close() != nil {
		t.Error("nil *Data: Mapped or Close misbehaves")
	}
}
