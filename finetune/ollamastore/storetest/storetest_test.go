package storetest_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/ollamastore"
	"github.com/ollama-tune/ollama-tune/finetune/ollamastore/storetest"
)

// A model Put writes is what ollamastore finds in the store: the GGUF
// blob, and the template only when there is one.
func TestPut(t *testing.T) {
	dir := t.TempDir()
	gguf := filepath.Join(dir, "m.gguf")
	if err := os.WriteFile(gguf, []byte("GGUF pretend weights"), 0o644); err != nil {
		t.Fatal(err)
	}
	models := filepath.Join(dir, "models")
	for _, tc := range []struct{ name, template string }{{"withtemplate", "{{ .Prompt }}"}, {"me/none:v1", ""}} {
		blob := storetest.Put(t, models, tc.name, gguf, tc.template)
		if b, err := os.ReadFile(blob); err != nil || !bytes.Equal(b, []byte("GGUF pretend weights")) {
			t.Fatalf("%s: blob %s reads %q, %v", tc.name, blob, b, err)
		}
		n, err := ollamastore.ParseName(tc.name)
		if err != nil {
			t.Fatal(err)
		}
		m, err := ollamastore.FromStore(models, n)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if m.GGUF != blob || m.Template != tc.template {
			t.Errorf("%s: store gives GGUF %s template %q; want %s and %q", tc.name, m.GGUF, m.Template, blob, tc.template)
		}
	}
}
