//go:build unix

package gguf

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// forceRead disables memory mapping (tests of the fallback path).
var forceRead = false

// mapFile maps path read-only. Where mapping is impossible (an empty file,
// a file system without mmap, an address space too small) it reads the file
// instead; unmap is then nil.
func mapFile(path string) (buf []byte, unmap func([]byte) error, err error) {
	fd, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open GGUF file: %w", err)
	}
	defer fd.Close()
	st, err := fd.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("open GGUF file: %w", err)
	}
	if st.IsDir() {
		return nil, nil, fmt.Errorf("open GGUF file %s: it is a directory", path)
	}
	size := st.Size()
	if !forceRead && size > 0 && size == int64(int(size)) {
		b, err := unix.Mmap(int(fd.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
		if err == nil {
			return b, unix.Munmap, nil
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open GGUF file: %w", err)
	}
	return b, nil, nil
}
