package ollamastore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseName(t *testing.T) {
	for in, want := range map[string]string{
		"phi3:mini":                "registry.ollama.ai/library/phi3:mini",
		"ollama://phi3:mini":       "registry.ollama.ai/library/phi3:mini",
		"phi3":                     "registry.ollama.ai/library/phi3:latest",
		"me/tiny-phi3":             "registry.ollama.ai/me/tiny-phi3:latest",
		"localhost:5000/me/m:v1.2": "localhost:5000/me/m:v1.2",
		"registry.ollama.ai/library/phi3:3.8b-mini-4k-instruct-q4_K_M": "registry.ollama.ai/library/phi3:3.8b-mini-4k-instruct-q4_K_M",
	} {
		n, err := ParseName(in)
		if err != nil || n.String() != want {
			t.Errorf("ParseName(%q) = %v, %v; want %s", in, n, err, want)
		}
	}
	n, _ := ParseName("me/m:t")
	if n.Short() != "me/m:t" {
		t.Errorf("Short = %s", n.Short())
	}
	n, _ = ParseName("phi3")
	if n.Short() != "phi3:latest" {
		t.Errorf("Short = %s", n.Short())
	}
	for in, want := range map[string]string{
		"":           "empty",
		"phi3:":      "tag",
		"a/b/c/d":    "4 parts",
		"my.ns/m":    "namespace",
		"phi3:a:b":   "model",
		"-phi3":      "model",
		"phi 3:mini": "model",
	} {
		if _, err := ParseName(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseName(%q) error %v, want it to mention %q", in, err, want)
		}
	}
}

func TestParseHost(t *testing.T) {
	for in, want := range map[string]string{
		"":                       "http://127.0.0.1:11434",
		"0.0.0.0":                "http://127.0.0.1:11434",
		"0.0.0.0:8080":           "http://127.0.0.1:8080",
		":1234":                  "http://127.0.0.1:1234",
		"example.com":            "http://example.com:11434",
		"https://example.com":    "https://example.com:443",
		"http://10.0.0.2:99/api": "http://10.0.0.2:99/api",
		"[::]:11434":             "http://[::1]:11434",
	} {
		if got := parseHost(in).String(); got != want {
			t.Errorf("parseHost(%q) = %s, want %s", in, got, want)
		}
	}
}

// fakeStore lays out an Ollama store in a temporary folder: blobs named by
// their sha256 and a manifest listing them.
type fakeStore struct {
	t   *testing.T
	dir string
}

func (s *fakeStore) blob(content []byte) Layer {
	sum := sha256.Sum256(content)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	path, err := BlobPath(s.dir, digest)
	if err != nil {
		s.t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, content, 0o644); err != nil {
		s.t.Fatal(err)
	}
	return Layer{Digest: digest, Size: int64(len(content))}
}

func (s *fakeStore) add(name string, layers map[string][]byte, order []string) Name {
	n, err := ParseName(name)
	if err != nil {
		s.t.Fatal(err)
	}
	m := Manifest{SchemaVersion: 2, MediaType: "application/vnd.docker.distribution.manifest.v2+json"}
	m.Config = s.blob([]byte(`{"model_format":"gguf","model_family":"phi3"}`))
	m.Config.MediaType = "application/vnd.docker.container.image.v1+json"
	for _, mt := range order {
		l := s.blob(layers[mt])
		l.MediaType = mt
		m.Layers = append(m.Layers, l)
	}
	b, _ := json.Marshal(m)
	path := n.ManifestPath(s.dir)
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		s.t.Fatal(err)
	}
	return n
}

var (
	fakeGGUF     = []byte("GGUF\x03\x00\x00\x00 pretend weights")
	fakeTemplate = []byte("{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}<|assistant|>\n{{ .Response }}<|end|>\n")
	fakeParams   = []byte(`{"stop":["<|end|>","<|user|>","<|assistant|>"]}`)
)

func phi3Layers() (map[string][]byte, []string) {
	return map[string][]byte{MediaModel: fakeGGUF, MediaTemplate: fakeTemplate, MediaParams: fakeParams,
			MediaLicense: []byte("MIT"), MediaSystem: []byte("Be brief.")},
		[]string{MediaModel, MediaLicense, MediaTemplate, MediaParams, MediaSystem}
}

func TestFromStore(t *testing.T) {
	s := &fakeStore{t: t, dir: t.TempDir()}
	layers, order := phi3Layers()
	n := s.add("phi3:mini", layers, order)
	m, err := FromStore(s.dir, n)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(m.GGUF)
	if err != nil || string(b) != string(fakeGGUF) || m.GGUFSize != int64(len(fakeGGUF)) {
		t.Errorf("GGUF %s: %q %v", m.GGUF, b, err)
	}
	if !strings.HasPrefix(m.GGUF, filepath.Join(s.dir, "blobs", "sha256-")) {
		t.Errorf("GGUF path %s", m.GGUF)
	}
	if m.Template != string(fakeTemplate) || m.System != "Be brief." || len(m.License) != 1 || m.Via != "store" {
		t.Errorf("model %+v", m)
	}
	if want := []any{"<|end|>", "<|user|>", "<|assistant|>"}; !reflect.DeepEqual(m.Params["stop"], want) {
		t.Errorf("params %v", m.Params)
	}

	// Through Resolve with OLLAMA_MODELS and no server.
	t.Setenv("OLLAMA_MODELS", s.dir)
	r := Resolver{NoAPI: true}
	m2, err := r.Resolve(context.Background(), "ollama://phi3:mini")
	if err != nil || m2.GGUF != m.GGUF {
		t.Errorf("Resolve: %v %v", m2, err)
	}
}

func TestFromStoreErrors(t *testing.T) {
	s := &fakeStore{t: t, dir: t.TempDir()}
	layers, order := phi3Layers()

	n, _ := ParseName("absent:1")
	if _, err := FromStore(s.dir, n); !errors.Is(err, ErrNotInStore) || !strings.Contains(err.Error(), "absent:1") {
		t.Errorf("absent: %v", err)
	}

	n = s.add("gone:1", layers, order)
	m, _ := FromStore(s.dir, n)
	os.Remove(m.GGUF)
	if _, err := FromStore(s.dir, n); err == nil || !strings.Contains(err.Error(), "is missing") || !strings.Contains(err.Error(), "ollama pull gone:1") {
		t.Errorf("missing blob: %v", err)
	}

	n = s.add("short:1", layers, order)
	m, _ = FromStore(s.dir, n)
	os.WriteFile(m.GGUF, fakeGGUF[:6], 0o644)
	if _, err := FromStore(s.dir, n); err == nil || !strings.Contains(err.Error(), "incomplete download") {
		t.Errorf("short blob: %v", err)
	}

	notGGUF := map[string][]byte{MediaModel: []byte("\x00\x01safetensors?")}
	n = s.add("notgguf:1", notGGUF, []string{MediaModel})
	if _, err := FromStore(s.dir, n); err == nil || !strings.Contains(err.Error(), "not a GGUF file") {
		t.Errorf("not GGUF: %v", err)
	}

	n = s.add("tensors:1", map[string][]byte{MediaTensor: []byte("x"), MediaTemplate: fakeTemplate}, []string{MediaTensor, MediaTemplate})
	if _, err := FromStore(s.dir, n); err == nil || !strings.Contains(err.Error(), "separate tensor layers") {
		t.Errorf("tensor layers: %v", err)
	}

	n = s.add("badparams:1", map[string][]byte{MediaModel: fakeGGUF, MediaParams: []byte("[1")}, []string{MediaModel, MediaParams})
	if _, err := FromStore(s.dir, n); err == nil || !strings.Contains(err.Error(), "params layer") {
		t.Errorf("bad params: %v", err)
	}

	n, _ = ParseName("badjson:1")
	os.MkdirAll(filepath.Dir(n.ManifestPath(s.dir)), 0o755)
	os.WriteFile(n.ManifestPath(s.dir), []byte("{"), 0o644)
	if _, err := FromStore(s.dir, n); err == nil || !strings.Contains(err.Error(), "not valid JSON") {
		t.Errorf("bad manifest: %v", err)
	}
	if _, err := BlobPath(s.dir, "sha256:1234"); err == nil {
		t.Error("short digest accepted")
	}
}

// fakeServer answers /api/show like Ollama for the models it has; its
// store is a folder the resolver is not told about.
func fakeServer(t *testing.T, models map[string]string) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/show" || r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		var req struct {
			Model string `json:"model"`
		}
		b, _ := io.ReadAll(r.Body)
		json.Unmarshal(b, &req)
		blob, ok := models[req.Model]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintf(w, `{"error":"model '%s' not found"}`, req.Model)
			return
		}
		json.NewEncoder(w).Encode(map[string]any{
			"modelfile": "# Modelfile generated by \"ollama show\"\n# To build a new Modelfile based on this, replace FROM with:\n# FROM " + req.Model +
				"\n\nFROM " + blob + "\nTEMPLATE \"\"\"" + string(fakeTemplate) + "\"\"\"\nPARAMETER stop <|end|>\n",
			"parameters": fmt.Sprintf("%-30s %#v\n%-30s %#v\n%-30s %#v", "stop", "<|end|>", "stop", "<|user|>", "temperature", 0.5),
			"template":   string(fakeTemplate),
			"model_info": map[string]any{"general.architecture": "phi3", "phi3.block_count": 2},
		})
	}))
}

func TestResolveThroughAPI(t *testing.T) {
	// The server's store is elsewhere; this process's OLLAMA_MODELS is empty.
	server := &fakeStore{t: t, dir: t.TempDir()}
	layers, order := phi3Layers()
	n := server.add("phi3:mini", layers, order)
	inStore, _ := FromStore(server.dir, n)
	loose := filepath.Join(t.TempDir(), "sha256-"+strings.Repeat("ab", 32))
	os.WriteFile(loose, fakeGGUF, 0o644)

	srv := fakeServer(t, map[string]string{"phi3:mini": inStore.GGUF, "loose:latest": loose,
		"remote:latest": "/nonexistent/blobs/sha256-" + strings.Repeat("cd", 32)})
	defer srv.Close()
	host, _ := url.Parse(srv.URL)
	r := Resolver{ModelsDir: t.TempDir(), Host: host}

	m, err := r.Resolve(context.Background(), "phi3:mini")
	if err != nil {
		t.Fatal(err)
	}
	if m.Via != "api" || m.GGUF != inStore.GGUF || m.ModelsDir != server.dir || m.Template != string(fakeTemplate) ||
		m.ModelInfo["general.architecture"] != "phi3" || len(m.Params["stop"].([]any)) != 3 {
		t.Errorf("via API with the server's store: %+v", m)
	}

	m, err = r.Resolve(context.Background(), "loose")
	if err != nil {
		t.Fatal(err)
	}
	if m.GGUF != loose || m.ModelsDir != "" || m.Template != string(fakeTemplate) ||
		!reflect.DeepEqual(m.Params["stop"], []any{"<|end|>", "<|user|>"}) || m.Params["temperature"] != 0.5 {
		t.Errorf("via API without a store: %+v", m)
	}

	if _, err := r.Resolve(context.Background(), "remote"); err == nil || !strings.Contains(err.Error(), "cannot read") {
		t.Errorf("unreadable blob: %v", err)
	}
	if _, err := r.Resolve(context.Background(), "nope:1"); err == nil || !strings.Contains(err.Error(), "ollama pull nope:1") {
		t.Errorf("unknown model: %v", err)
	}
	srv.Close()
	if _, err := r.Resolve(context.Background(), "phi3:mini"); err == nil || !strings.Contains(err.Error(), "OLLAMA_MODELS") {
		t.Errorf("server down: %v", err)
	}
}

func TestModelfileFrom(t *testing.T) {
	from, ad := modelfileFrom("# FROM phi3\nFROM /a/blobs/sha256-1\nADAPTER \"/b c/x\"\nFROM /p\nPARAMETER stop x\n")
	if !reflect.DeepEqual(from, []string{"/a/blobs/sha256-1", "/p"}) || !reflect.DeepEqual(ad, []string{"/b c/x"}) {
		t.Errorf("from %v adapters %v", from, ad)
	}
}
