// Package testutil holds small helpers for tests across the repository:
// finding the repository root and the read-only shared data next to it,
// copying a file, a writer that fails like a full disk.
//
// It imports nothing of this module, so every package's tests can use it,
// package finetune's and those of the packages finetune imports (chat,
// tokenizer, data, ...) included. Helpers that need finetune itself live in
// testutil/tinymodel.
package testutil

import (
	"encoding/csv"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// RepoRoot walks up from the test's working directory (its package
// directory) to the folder holding go.mod.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testutil: no go.mod above the test's directory")
		}
		dir = parent
	}
}

// SharedData is the path of rel under the shared data folder
// (../shared/data from the repository root); with no rel it is the folder
// itself. The test is skipped when that folder is absent (a checkout
// without the shared data); a missing file inside a present folder fails
// it, since that is a real error.
func SharedData(t testing.TB, rel ...string) string {
	t.Helper()
	root := filepath.Join(RepoRoot(t), "..", "shared", "data")
	if st, err := os.Stat(root); err != nil || !st.IsDir() {
		t.Skipf("shared data folder %s is absent", root)
	}
	p := filepath.Join(append([]string{root}, rel...)...)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("shared data: %v", err)
	}
	return p
}

// YodaHeader is the header row of the shared yoda_sentences.csv.
var YodaHeader = []string{"sentence", "translation", "translation_extra"}

// YodaRows are the data rows of the shared yoda_sentences.csv, each
// {sentence, translation, translation_extra}; the header is checked and
// dropped.
func YodaRows(t testing.TB) [][]string {
	t.Helper()
	p := SharedData(t, "yoda_sentences.csv")
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if len(recs) == 0 || !slices.Equal(recs[0], YodaHeader) {
		t.Fatalf("%s: header %v, want %v", p, recs[:min(len(recs), 1)], YodaHeader)
	}
	return recs[1:]
}

// YodaCSV writes the header and the first n rows of the shared
// yoda_sentences.csv to a CSV file in a fresh temporary folder and returns
// its path: a small data set in the seed's format.
func YodaCSV(t testing.TB, n int) string {
	t.Helper()
	rows := YodaRows(t)
	if n > len(rows) {
		t.Fatalf("YodaCSV: %d rows asked, the data set has %d", n, len(rows))
	}
	path := filepath.Join(t.TempDir(), "yoda.csv")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := csv.NewWriter(f).WriteAll(append([][]string{YodaHeader}, rows[:n]...)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// CopyFile copies the file src to dst (created or truncated).
func CopyFile(t testing.TB, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// ErrDiskFull is the error a FullDisk writer fails with.
var ErrDiskFull = errors.New("no space left on device (simulated)")

// FullDisk wraps w so that it takes n bytes, then fails with ErrDiskFull,
// like a full disk: the write that crosses the limit still writes the
// bytes up to it.
func FullDisk(w io.Writer, n int) io.Writer { return &fullDisk{w: w, n: n} }

type fullDisk struct {
	w io.Writer
	n int
}

func (f *fullDisk) Write(p []byte) (int, error) {
	if len(p) > f.n {
		k, _ := f.w.Write(p[:f.n])
		f.n = 0
		return k, ErrDiskFull
	}
	f.n -= len(p)
	return f.w.Write(p)
}
