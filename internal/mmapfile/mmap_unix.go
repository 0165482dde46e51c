//go:build unix

package mmapfile

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// mmap maps the first size bytes of f read-only and shared.
func mmap(f *os.File, size int64) ([]byte, func([]byte) error, error) {
	if size != int64(int(size)) {
		return nil, nil, errors.New("file larger than the address space")
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	return b, unix.Munmap, nil
}
