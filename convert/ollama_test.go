package convert

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ollama/ollama/api"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

// fakeOllama is an httptest server speaking the parts of Ollama's API that
// create uses, recording every call.
type fakeOllama struct {
	t       *testing.T
	version string
	models  map[string]map[string]any // name -> model_info
	mu      sync.Mutex
	calls   []string
	blobs   map[string][]byte
	created []api.CreateRequest
	// answer is what /api/generate replies for a prompt.
	answer        func(model, prompt string) (string, []int)
	refuseCreate  string
	generateCalls []api.GenerateRequest
}

func newFakeOllama(t *testing.T, version string) (*fakeOllama, *Client) {
	f := &fakeOllama{t: t, version: version, models: map[string]map[string]any{}, blobs: map[string][]byte{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	return f, NewClient(u, srv.Client())
}

func (f *fakeOllama) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	body, _ := io.ReadAll(r.Body)
	reply := func(code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		json.NewEncoder(w).Encode(v)
	}
	switch {
	case r.URL.Path == "/api/version":
		reply(200, map[string]string{"version": f.version})
	case strings.HasPrefix(r.URL.Path, "/api/blobs/"):
		digest := strings.TrimPrefix(r.URL.Path, "/api/blobs/")
		switch r.Method {
		case http.MethodHead:
			if _, ok := f.blobs[digest]; ok {
				w.WriteHeader(200)
			} else {
				w.WriteHeader(404)
			}
		case http.MethodPost:
			sum := sha256.Sum256(body)
			if "sha256:"+hex.EncodeToString(sum[:]) != digest {
				reply(400, map[string]string{"error": "digest mismatch"})
				return
			}
			f.blobs[digest] = body
			w.WriteHeader(201)
		}
	case r.URL.Path == "/api/show":
		var req api.ShowRequest
		json.Unmarshal(body, &req)
		info, ok := f.models[req.Model]
		if !ok {
			reply(404, map[string]string{"error": "model '" + req.Model + "' not found"})
			return
		}
		reply(200, api.ShowResponse{ModelInfo: info})
	case r.URL.Path == "/api/create":
		var req api.CreateRequest
		if err := json.Unmarshal(body, &req); err != nil {
			reply(400, map[string]string{"error": err.Error()})
			return
		}
		for _, d := range req.Files {
			if _, ok := f.blobs[d]; !ok {
				reply(400, map[string]string{"error": "blob " + d + " missing"})
				return
			}
		}
		for _, d := range req.Adapters {
			if _, ok := f.blobs[d]; !ok {
				reply(400, map[string]string{"error": "blob " + d + " missing"})
				return
			}
		}
		if f.refuseCreate != "" {
			reply(400, map[string]string{"error": f.refuseCreate})
			return
		}
		f.created = append(f.created, req)
		f.models[req.Model] = map[string]any{"general.architecture": "phi3"}
		w.Header().Set("Content-Type", "application/x-ndjson")
		json.NewEncoder(w).Encode(api.ProgressResponse{Status: "parsing GGUF"})
		json.NewEncoder(w).Encode(api.ProgressResponse{Status: "success"})
	case r.URL.Path == "/api/generate":
		var req api.GenerateRequest
		json.Unmarshal(body, &req)
		f.generateCalls = append(f.generateCalls, req)
		text, ctx := f.answer(req.Model, req.Prompt)
		reply(200, api.GenerateResponse{Model: req.Model, Response: text, Done: true, Context: ctx})
	default:
		reply(404, map[string]string{"error": "not found"})
	}
}

func (f *fakeOllama) count(prefix string) int {
	n := 0
	for _, c := range f.calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

// stubReference answers every prompt with fixed ids.
type stubReference struct{ ids []int32 }

func (s stubReference) Greedy(ctx context.Context, prompt []int32, maxNew int, stop []int32) ([]int32, error) {
	return s.ids, nil
}

func phi3Info(cfg *finetune.Config) map[string]any {
	return map[string]any{
		"general.architecture": "phi3", "phi3.embedding_length": float64(cfg.HiddenSize),
		"phi3.feed_forward_length": float64(cfg.IntermediateSize), "phi3.block_count": float64(cfg.NumLayers),
		"phi3.attention.head_count": float64(cfg.NumHeads), "phi3.attention.head_count_kv": float64(cfg.NumKVHeads),
	}
}

func TestChooseRoute(t *testing.T) {
	for _, c := range []struct {
		v    string
		want Route
	}{{"0.24.0", RouteAdapter}, {"0.33.9", RouteAdapter}, {"0.34.0", RouteAdapter}, {"0.34.1", RouteMerged}, {"v0.35.0-rc1", RouteMerged}, {"1.0.0", RouteMerged}, {"0.0.0", RouteAdapter}} {
		v, err := ParseVersion(c.v)
		if err != nil {
			t.Fatal(err)
		}
		if got, why := ChooseRoute(v); got != c.want || !strings.Contains(why, v.Raw) {
			t.Errorf("%s: route %s (%s), want %s", c.v, got, why, c.want)
		}
	}
	if _, err := ParseVersion("banana"); err == nil {
		t.Error("version banana accepted")
	}
}

func TestCreateAdapterRouteAgainstFakeOllama(t *testing.T) {
	dir := tinyModelDir(t, finetune.F32)
	cfg := tinyConfig()
	adapter := writeAdapter(t, randomAdapter(cfg, 4, 8, 5))
	f, c := newFakeOllama(t, "0.24.0")
	f.models["phi3:mini-tiny"] = phi3Info(cfg)
	f.answer = func(model, prompt string) (string, []int) { return " Strong in you, the Force is!", nil }
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	ref := stubReference{ids: tok.Encode("Strong in you, the Force is!", false)}
	var log bytes.Buffer
	res, err := Create(context.Background(), c, CreateOptions{Name: "yoda", AdapterDir: adapter, Base: "phi3:mini-tiny",
		BaseWeights: dir, OutDir: filepath.Join(t.TempDir(), "out"), Prompts: []string{"The Force is strong in you!"}, Reference: ref, Log: &log})
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	if res.Route != RouteAdapter || !strings.Contains(log.String(), "applies GGUF LoRA adapters") {
		t.Errorf("route %s; log:\n%s", res.Route, log.String())
	}
	// The calls, in order: the base's shape, the version, the adapter blob
	// (HEAD then POST), create, generate.
	want := []string{"POST /api/show", "GET /api/version", "HEAD /api/blobs/", "POST /api/blobs/", "POST /api/create", "POST /api/generate"}
	if len(f.calls) != len(want) {
		t.Fatalf("calls %v, want %v", f.calls, want)
	}
	for i := range want {
		if !strings.HasPrefix(f.calls[i], want[i]) {
			t.Fatalf("call %d = %s, want %s (all: %v)", i, f.calls[i], want[i], f.calls)
		}
	}
	req := f.created[0]
	if req.Model != "yoda" || req.From != "phi3:mini-tiny" || len(req.Files) != 0 || len(req.Adapters) != 1 || req.Template != Phi3Template {
		t.Fatalf("create request %+v", req)
	}
	// The uploaded adapter is the exported file, byte for byte.
	disk, _ := os.ReadFile(res.AdapterGGUF)
	if !bytes.Equal(f.blobs[req.Adapters["adapter.gguf"]], disk) {
		t.Error("uploaded adapter differs from the exported file")
	}
	stops, _ := req.Parameters["stop"].([]any)
	if len(stops) != 4 {
		t.Errorf("stop parameters %v", req.Parameters)
	}
	g := f.generateCalls[0]
	if g.Options["temperature"] != float64(0) || g.Prompt != "The Force is strong in you!" {
		t.Errorf("generate request %+v", g)
	}
	if !res.Check.OK() {
		var b bytes.Buffer
		res.Check.Print(&b)
		t.Fatalf("check failed:\n%s", b.String())
	}
	mf, _ := os.ReadFile(res.Modelfile)
	if !strings.Contains(string(mf), "FROM phi3:mini-tiny\nADAPTER ./adapter.gguf\n") {
		t.Errorf("Modelfile:\n%s", mf)
	}

	// Creating the same model again finds the blob already there: HEAD only.
	f.calls = nil
	if _, err := Create(context.Background(), c, CreateOptions{Name: "yoda", AdapterDir: adapter, Base: "phi3:mini-tiny", OutDir: filepath.Join(t.TempDir(), "o2"), NoCheck: true}); err != nil {
		t.Fatal(err)
	}
	if f.count("POST /api/blobs") != 0 || f.count("HEAD /api/blobs") != 1 {
		t.Errorf("re-upload of a known blob: %v", f.calls)
	}

	// A mismatch is loud.
	f.answer = func(model, prompt string) (string, []int) { return "The Force is strong in you!", nil }
	res, err = Create(context.Background(), c, CreateOptions{Name: "yoda3", AdapterDir: adapter, Base: "phi3:mini-tiny",
		BaseWeights: dir, OutDir: filepath.Join(t.TempDir(), "o3"), Prompts: []string{"The Force is strong in you!"}, Reference: ref})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	res.Check.Print(&b)
	if res.Check.OK() || !strings.Contains(b.String(), "SERVED-OUTPUT CHECK FAILED") || !strings.Contains(b.String(), "not apply") {
		t.Errorf("mismatch not reported:\n%s", b.String())
	}

	// Served prompt ids that differ from training's fail the check too.
	f.answer = func(model, prompt string) (string, []int) {
		return "Strong in you, the Force is!", []int{32010, 29871, 13, 450}
	}
	res, err = Create(context.Background(), c, CreateOptions{Name: "yoda4", AdapterDir: adapter, Base: "phi3:mini-tiny",
		BaseWeights: dir, OutDir: filepath.Join(t.TempDir(), "o4"), Prompts: []string{"The Force is strong in you!"}, Reference: ref})
	if err != nil {
		t.Fatal(err)
	}
	if res.Check.OK() || res.Check.Results[0].PromptParity {
		t.Error("different served prompt ids passed the check")
	}
}

func TestCreateMergedRouteAgainstFakeOllama(t *testing.T) {
	dir := tinyModelDir(t, finetune.F32)
	cfg := tinyConfig()
	adapter := writeAdapter(t, randomAdapter(cfg, 4, 8, 6))
	f, c := newFakeOllama(t, "0.35.2")
	out := filepath.Join(t.TempDir(), "out")
	var log bytes.Buffer
	res, err := Create(context.Background(), c, CreateOptions{Name: "yoda", AdapterDir: adapter, Base: dir, Quant: Q8_0, OutDir: out, NoCheck: true, Log: &log})
	if err != nil {
		t.Fatal(err)
	}
	if res.Route != RouteMerged || !strings.Contains(log.String(), "refuses LoRA adapters") {
		t.Fatalf("route %s, log:\n%s", res.Route, log.String())
	}
	req := f.created[0]
	if len(req.Adapters) != 0 || len(req.Files) != 1 || req.From != "" {
		t.Fatalf("merged create request %+v", req)
	}
	g, err := ReadGGUF(res.ModelGGUF)
	if err != nil {
		t.Fatal(err)
	}
	if g.KV().FileType().String() != "Q8_0" {
		t.Errorf("file type %s", g.KV().FileType())
	}
	// Without base weights the merged route cannot run.
	f.models["phi3:mini-tiny"] = phi3Info(cfg)
	_, err = Create(context.Background(), c, CreateOptions{Name: "y", AdapterDir: adapter, Base: "phi3:mini-tiny", OutDir: filepath.Join(t.TempDir(), "o")})
	if err == nil || !strings.Contains(err.Error(), "--base-weights") {
		t.Errorf("merged route without weights: %v", err)
	}
}

func TestCreateErrors(t *testing.T) {
	cfg := tinyConfig()
	adapter := writeAdapter(t, randomAdapter(cfg, 4, 8, 7))

	// Unreachable server.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	u, _ := url.Parse("http://" + addr)
	_, err := Create(context.Background(), NewClient(u, nil), CreateOptions{Name: "y", AdapterDir: adapter, Base: "phi3:mini", OutDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "cannot reach the Ollama server") || !strings.Contains(err.Error(), "ollama serve") {
		t.Errorf("unreachable: %v", err)
	}

	// Missing base model.
	f, c := newFakeOllama(t, "0.24.0")
	_, err = Create(context.Background(), c, CreateOptions{Name: "y", AdapterDir: adapter, Base: "phi3:mini", OutDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "ollama pull phi3:mini") {
		t.Errorf("missing base: %v", err)
	}

	// Base of another architecture.
	f.models["llama3:tiny"] = map[string]any{"general.architecture": "llama", "llama.embedding_length": 64.0, "llama.feed_forward_length": 96.0,
		"llama.block_count": 2.0, "llama.attention.head_count": 4.0, "llama.attention.head_count_kv": 2.0}
	_, err = Create(context.Background(), c, CreateOptions{Name: "y", AdapterDir: adapter, Base: "llama3:tiny", OutDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "different architecture") {
		t.Errorf("llama base: %v", err)
	}

	// Rejected create.
	f.models["phi3:mini"] = phi3Info(cfg)
	f.refuseCreate = "unsupported adapter"
	_, err = Create(context.Background(), c, CreateOptions{Name: "y", AdapterDir: adapter, Base: "phi3:mini", OutDir: t.TempDir(), NoCheck: true})
	if err == nil || !strings.Contains(err.Error(), "refused to create y: unsupported adapter") {
		t.Errorf("refused create: %v", err)
	}

	// A corrupted adapter never reaches the server.
	bad := filepath.Join(t.TempDir(), "bad")
	os.CopyFS(bad, os.DirFS(adapter))
	os.WriteFile(filepath.Join(bad, peft.WeightsName), []byte("not safetensors"), 0o644)
	f.calls = nil
	dir := tinyModelDir(t, finetune.F32)
	_, err = Create(context.Background(), c, CreateOptions{Name: "y", AdapterDir: bad, Base: dir, OutDir: t.TempDir()})
	if err == nil || len(f.calls) != 0 {
		t.Errorf("corrupted adapter: err %v, calls %v", err, f.calls)
	}
}

func TestModelfileText(t *testing.T) {
	m := Phi3Modelfile("phi3:mini", "./adapter.gguf", "You speak like Yoda.")
	want := "FROM phi3:mini\nADAPTER ./adapter.gguf\n" +
		"TEMPLATE \"\"\"" + Phi3Template + "\"\"\"\n" +
		"SYSTEM \"\"\"You speak like Yoda.\"\"\"\n" +
		"PARAMETER stop \"<|end|>\"\nPARAMETER stop \"<|user|>\"\nPARAMETER stop \"<|assistant|>\"\nPARAMETER stop \"<|endoftext|>\"\n"
	if got := m.String(); got != want {
		t.Fatalf("Modelfile:\n%s\nwant:\n%s", got, want)
	}
	for _, tok := range []string{"<|user|>\n", "<|assistant|>\n", "<|end|>\n", "<|system|>\n"} {
		if strings.Contains(Phi3Template, tok) {
			t.Errorf("template has a newline after %q, which llama.cpp would tokenize", tok)
		}
	}
	p, err := RenderPrompt(Phi3Template, "Be Yoda.", "Hi")
	if err != nil || p != "<|system|>Be Yoda.<|end|><|user|>Hi<|end|><|assistant|>" {
		t.Errorf("rendered %q, %v", p, err)
	}
	bad := Phi3Modelfile("x", "", `say """`)
	if err := bad.Write(filepath.Join(t.TempDir(), "Modelfile")); err == nil {
		t.Error(`SYSTEM with """ accepted`)
	}
}

func TestClientHonoursOLLAMA_HOST(t *testing.T) {
	f, c := newFakeOllama(t, "0.24.0")
	_ = f
	t.Setenv("OLLAMA_HOST", c.Base.Host)
	v, err := NewClient(nil, nil).Version(context.Background())
	if err != nil || v.Raw != "0.24.0" {
		t.Fatalf("version via OLLAMA_HOST=%s: %v %v", c.Base.Host, v, err)
	}
}
