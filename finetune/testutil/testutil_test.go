package testutil_test

import (
	"bytes"
	"encoding/csv"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

func TestRepoRoot(t *testing.T) {
	root := testutil.RepoRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "module github.com/ollama-tune/ollama-tune\n"; string(raw[:len(want)]) != want {
		t.Errorf("go.mod at %s is not this module's", root)
	}
}

func TestSharedData(t *testing.T) {
	p := testutil.SharedData(t, "phi3-tokenizer", "tokenizer.json")
	if st, err := os.Stat(p); err != nil || st.Size() == 0 {
		t.Errorf("%s: %v", p, err)
	}
	if root := testutil.SharedData(t); root != filepath.Dir(filepath.Dir(p)) {
		t.Errorf("SharedData() = %s, want the folder above %s", root, filepath.Dir(p))
	}
}

func TestYodaRows(t *testing.T) {
	rows := testutil.YodaRows(t)
	if len(rows) != 720 {
		t.Fatalf("%d rows, want 720", len(rows))
	}
	for i, r := range rows {
		if len(r) != 3 || r[0] == "" || r[2] == "" {
			t.Fatalf("row %d: %q", i, r)
		}
	}
	if rows[0][0] == testutil.YodaHeader[0] {
		t.Error("the header was not dropped")
	}
}

func TestYodaCSV(t *testing.T) {
	p := testutil.YodaCSV(t, 3)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	recs, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	rows := testutil.YodaRows(t)
	if len(recs) != 4 || !slices.Equal(recs[0], testutil.YodaHeader) {
		t.Fatalf("%s: %d records, header %v", p, len(recs), recs[0])
	}
	for i := range 3 {
		if !slices.Equal(recs[i+1], rows[i]) {
			t.Errorf("row %d: %q, want %q", i, recs[i+1], rows[i])
		}
	}
}

func TestCopyFile(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	if err := os.WriteFile(src, []byte("content"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, []byte("a longer old content"), 0o644); err != nil {
		t.Fatal(err)
	}
	testutil.CopyFile(t, src, dst)
	if b, err := os.ReadFile(dst); err != nil || string(b) != "content" {
		t.Errorf("copy reads %q, %v; want %q", b, err, "content")
	}
}

func TestFullDisk(t *testing.T) {
	var b bytes.Buffer
	w := testutil.FullDisk(&b, 5)
	if n, err := w.Write([]byte("abc")); n != 3 || err != nil {
		t.Fatalf("first write: %d, %v", n, err)
	}
	if n, err := w.Write([]byte("defg")); n != 2 || !errors.Is(err, testutil.ErrDiskFull) {
		t.Fatalf("write over the limit: %d, %v; want 2, ErrDiskFull", n, err)
	}
	if n, err := w.Write([]byte("h")); n != 0 || !errors.Is(err, testutil.ErrDiskFull) {
		t.Fatalf("write on a full disk: %d, %v", n, err)
	}
	if b.String() != "abcde" {
		t.Errorf("wrote %q, want %q", b.String(), "abcde")
	}
}
