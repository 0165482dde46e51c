//go:build !unix

package mmapfile

import (
	"errors"
	"os"
)

// mmap is not implemented here: Open reads the file instead.
func mmap(*os.File, int64) ([]byte, func([]byte) error, error) {
	return nil, nil, errors.ErrUnsupported
}
