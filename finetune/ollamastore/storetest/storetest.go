// Package storetest lays out Ollama model stores for tests, as `ollama
// create` or `ollama pull` leave them: blobs named by their sha256 and a
// manifest per model.
//
// It imports only ollamastore, so package finetune's own tests can use it.
package storetest

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/ollama-tune/ollama-tune/finetune/ollamastore"
)

// Put writes the model name into the store modelsDir: the GGUF file
// ggufPath and the template (no template layer when it is "") as blobs, an
// empty config blob and the manifest. It returns the path of the model
// blob.
func Put(t testing.TB, modelsDir, name, ggufPath, template string) string {
	t.Helper()
	blob := func(b []byte) (string, string) {
		sum := sha256.Sum256(b)
		digest := "sha256:" + hex.EncodeToString(sum[:])
		p, err := ollamastore.BlobPath(modelsDir, digest)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return digest, p
	}
	g, err := os.ReadFile(ggufPath)
	if err != nil {
		t.Fatal(err)
	}
	gd, gp := blob(g)
	layers := []ollamastore.Layer{{MediaType: ollamastore.MediaModel, Digest: gd, Size: int64(len(g))}}
	if template != "" {
		td, _ := blob([]byte(template))
		layers = append(layers, ollamastore.Layer{MediaType: ollamastore.MediaTemplate, Digest: td, Size: int64(len(template))})
	}
	cd, _ := blob([]byte("{}"))
	man := ollamastore.Manifest{SchemaVersion: 2, MediaType: "application/vnd.docker.distribution.manifest.v2+json",
		Config: ollamastore.Layer{MediaType: "application/vnd.docker.container.image.v1+json", Digest: cd, Size: 2}, Layers: layers}
	n, err := ollamastore.ParseName(name)
	if err != nil {
		t.Fatal(err)
	}
	mp := n.ManifestPath(modelsDir)
	if err := os.MkdirAll(filepath.Dir(mp), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(man)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return gp
}
