//go:build !unix

package gguf

import (
	"fmt"
	"os"
)

var forceRead = true

// mapFile reads the whole file where memory mapping is not implemented.
func mapFile(path string) ([]byte, func([]byte) error, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return nil, nil, fmt.Errorf("open GGUF file %s: it is a directory", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open GGUF file: %w", err)
	}
	return b, nil, nil
}
