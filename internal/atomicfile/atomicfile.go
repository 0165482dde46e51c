// Package atomicfile writes files a user keeps (checkpoints, configs, GGUF
// exports, Modelfiles, the Hub cache's refs) so that a reader, or a crash,
// sees either the old file or the whole new one, never half of it.
package atomicfile

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// TempMarker is in the name of every temporary file Write creates
// (".<name>.tmp-<random>", beside the target), so that folder listings can
// skip a write in progress or one a crash left behind.
const TempMarker = ".tmp-"

// Write writes path through a temporary file in the same folder: fill
// writes the content, then the file is made 0644, synced, closed and
// renamed over path, and the folder is synced where the system allows. On
// any failure the temporary file is removed and path is left as it was.
// The folder must exist. Errors name path.
func Write(path string, fill func(f *os.File) error) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+TempMarker+"*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	if err := fill(f); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	SyncDir(dir)
	return nil
}

// SyncDir syncs the folder dir, so that the renames and new entries in it
// survive a crash. Not every system can sync a folder; a failure is
// ignored, as there is nothing the caller could do about it.
func SyncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// WriteFile is Write with data as the content.
func WriteFile(path string, data []byte) error {
	return Write(path, func(f *os.File) error {
		_, err := f.Write(data)
		return err
	})
}

// Copy writes the content of the file src to dst with Write.
func Copy(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	return Write(dst, func(f *os.File) error {
		_, err := io.Copy(f, in)
		return err
	})
}
