// Package mmapfile gives read-only access to a whole file: memory-mapped
// where the platform and the file allow it, read into memory otherwise.
// The gguf and safetensors readers open checkpoints through it, so a
// multi-gigabyte model costs page cache rather than heap.
package mmapfile

import (
	"fmt"
	"os"
)

// Data is a file's bytes and what releases them.
type Data struct {
	// Bytes is the file's content; it must not be written to (a mapping is
	// read-only) nor used after Close.
	Bytes []byte
	unmap func([]byte) error // nil when the file was read into memory
}

// Open maps path read-only. Where mapping is impossible (an empty file, a
// file system or platform without mmap, an address space too small) it
// reads the file instead.
func Open(path string) (*Data, error) { return open(path, true) }

// Read reads path into memory without trying to map it: the fallback path
// of Open, for its tests and for callers that must own the bytes.
func Read(path string) (*Data, error) { return open(path, false) }

func open(path string, tryMap bool) (*Data, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		return nil, fmt.Errorf("%s is a directory", path)
	}
	if tryMap && st.Size() > 0 {
		if b, unmap, err := mmap(f, st.Size()); err == nil {
			return &Data{Bytes: b, unmap: unmap}, nil
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return &Data{Bytes: b}, nil
}

// Mapped reports whether the bytes are a memory map (false after Close).
func (d *Data) Mapped() bool { return d != nil && d.unmap != nil }

// Close releases the mapping (or drops the bytes read). A second Close, or
// Close of a nil *Data, does nothing.
func (d *Data) Close() error {
	if d == nil {
		return nil
	}
	b, unmap := d.Bytes, d.unmap
	d.Bytes, d.unmap = nil, nil
	if unmap != nil && b != nil {
		return unmap(b)
	}
	return nil
}
