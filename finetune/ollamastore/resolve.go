package ollamastore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Host is the server address from OLLAMA_HOST, parsed as Ollama's
// envconfig.Host does (default http://127.0.0.1:11434; "0.0.0.0" and "::"
// are bind addresses and are reached through the loopback).
func Host() *url.URL { return parseHost(os.Getenv("OLLAMA_HOST")) }

func parseHost(s string) *url.URL {
	defaultPort := "11434"
	s = strings.TrimSpace(s)
	scheme, hostport, ok := strings.Cut(s, "://")
	switch {
	case !ok:
		scheme, hostport = "http", s
	case scheme == "http":
		defaultPort = "80"
	case scheme == "https":
		defaultPort = "443"
	}
	hostport, path, _ := strings.Cut(hostport, "/")
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		host, port = "127.0.0.1", defaultPort
		if ip := net.ParseIP(strings.Trim(hostport, "[]")); ip != nil {
			host = ip.String()
		} else if hostport != "" {
			host = hostport
		}
	}
	if n, err := strconv.ParseInt(port, 10, 32); err != nil || n < 0 || n > 65535 {
		port = defaultPort
	}
	switch host {
	case "0.0.0.0", "":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	u := &url.URL{Scheme: scheme, Host: net.JoinHostPort(host, port)}
	if path != "" {
		u.Path = "/" + path
	}
	return u
}

// ShowResponse is the part of /api/show's answer used here.
type ShowResponse struct {
	Modelfile  string         `json:"modelfile"`
	Parameters string         `json:"parameters"`
	Template   string         `json:"template"`
	System     string         `json:"system"`
	License    string         `json:"license"`
	ModelInfo  map[string]any `json:"model_info"`
	Details    struct {
		Format            string `json:"format"`
		Family            string `json:"family"`
		ParameterSize     string `json:"parameter_size"`
		QuantizationLevel string `json:"quantization_level"`
	} `json:"details"`
}

// ErrNotInServer is wrapped when the server answers that it has no such
// model.
var ErrNotInServer = errors.New("the Ollama server does not have this model")

// Show asks the server at host for a model (POST /api/show).
func Show(ctx context.Context, client *http.Client, host *url.URL, name string) (*ShowResponse, error) {
	body, _ := json.Marshal(map[string]string{"model": name})
	u := host.JoinPath("api", "show")
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask the Ollama server at %s: %w", host, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("ask the Ollama server at %s: %w", host, err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("model %s: %w at %s", name, ErrNotInServer, host)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		return nil, fmt.Errorf("ask the Ollama server at %s about %s: %s: %s", host, name, resp.Status, msg)
	}
	var s ShowResponse
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("ask the Ollama server at %s about %s: malformed answer: %w", host, name, err)
	}
	return &s, nil
}

// modelfileFrom returns the arguments of the FROM and ADAPTER lines of a
// Modelfile as /api/show writes it ("FROM /path/to/blobs/sha256-...").
func modelfileFrom(modelfile string) (from, adapters []string) {
	for _, line := range strings.Split(modelfile, "\n") {
		line = strings.TrimSpace(line)
		cmd, arg, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		arg = strings.TrimSpace(arg)
		if len(arg) >= 2 && arg[0] == '"' && arg[len(arg)-1] == '"' {
			arg = arg[1 : len(arg)-1]
		}
		switch strings.ToUpper(cmd) {
		case "FROM":
			from = append(from, arg)
		case "ADAPTER":
			adapters = append(adapters, arg)
		}
	}
	return from, adapters
}

// Resolver finds models. The zero value uses ModelsDir(), Host() and a
// client with a 10-second timeout.
type Resolver struct {
	// ModelsDir is the store to look in first ("" = ModelsDir()).
	ModelsDir string
	// Host is the server to ask when the store has no manifest (nil =
	// Host()).
	Host *url.URL
	// Client is the HTTP client (nil = one with a 10 s timeout).
	Client *http.Client
	// NoAPI skips the server.
	NoAPI bool
}

// Resolve finds the model ref names ("ollama://phi3:mini", "phi3:mini")
// with the zero Resolver.
func Resolve(ctx context.Context, ref string) (*Model, error) {
	var r Resolver
	return r.Resolve(ctx, ref)
}

// Resolve looks in the store first (no server needed); when the store has
// no manifest for the name it asks the server, whose store may be
// elsewhere (a system service keeps its models under its own user's home),
// and reads the blob path from the Modelfile the server reports.
func (r *Resolver) Resolve(ctx context.Context, ref string) (*Model, error) {
	n, err := ParseName(ref)
	if err != nil {
		return nil, err
	}
	dir := r.ModelsDir
	if dir == "" {
		if dir, err = ModelsDir(); err != nil {
			return nil, err
		}
	}
	m, storeErr := FromStore(dir, n)
	if storeErr == nil || !errors.Is(storeErr, ErrNotInStore) || r.NoAPI {
		return m, storeErr
	}
	host := r.Host
	if host == nil {
		host = Host()
	}
	client := r.Client
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	show, err := Show(ctx, client, host, n.Short())
	if err != nil {
		if errors.Is(err, ErrNotInServer) {
			return nil, fmt.Errorf("model %s is neither in the store %s nor known to the Ollama server at %s; pull it first: ollama pull %s", n.Short(), dir, host, n.Short())
		}
		return nil, fmt.Errorf("model %s is not in the store %s (set OLLAMA_MODELS to the folder Ollama keeps its models in), and the server could not be asked: %w", n.Short(), dir, err)
	}
	return fromShow(n, show, host)
}

// fromShow builds the Model from /api/show's answer. When the blob lies in
// a store ("…/blobs/sha256-…" with the manifest beside it), that store is
// read as well, for the layers /api/show leaves out (params as JSON).
func fromShow(n Name, s *ShowResponse, host *url.URL) (*Model, error) {
	from, adapters := modelfileFrom(s.Modelfile)
	if len(from) == 0 {
		return nil, fmt.Errorf("model %s: the Modelfile from the server at %s has no FROM line", n.Short(), host)
	}
	blob := from[0]
	if !filepath.IsAbs(blob) || !digestRE.MatchString(filepath.Base(blob)) {
		return nil, fmt.Errorf("model %s: the server at %s reports its weights as %q, not a blob on disk; only local GGUF models can be trained on", n.Short(), host, blob)
	}
	st, err := os.Stat(blob)
	if err != nil {
		return nil, fmt.Errorf("model %s: the server at %s keeps it in %s, which this process cannot read (%v); run ollama-tune on the server's machine as a user that can read Ollama's models, or set OLLAMA_MODELS to that folder",
			n.Short(), host, blob, err)
	}
	if dir := filepath.Dir(filepath.Dir(blob)); filepath.Base(filepath.Dir(blob)) == "blobs" {
		if m, err := FromStore(dir, n); err == nil && m.GGUF == blob {
			m.Via, m.ModelInfo = "api", s.ModelInfo
			return m, nil
		}
	}
	if err := checkGGUF(blob, n); err != nil {
		return nil, err
	}
	m := &Model{Name: n, Via: "api", GGUF: blob, GGUFSize: st.Size(), Template: s.Template, System: s.System,
		ModelInfo: s.ModelInfo, Adapters: adapters, Projectors: from[1:]}
	if s.License != "" {
		m.License = []string{s.License}
	}
	if s.Parameters != "" {
		m.Params = parseParameters(s.Parameters)
	}
	return m, nil
}

// parseParameters reads /api/show's "parameters" text ("stop \"<|end|>\"\n
// temperature 0.7"): repeated keys become lists, as in the params layer;
// numbers stay numbers.
func parseParameters(text string) map[string]any {
	out := map[string]any{}
	for _, line := range strings.Split(text, "\n") {
		key, val, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		var v any = val
		if uq, err := strconv.Unquote(val); err == nil {
			v = uq
		} else if f, err := strconv.ParseFloat(val, 64); err == nil {
			v = f
		}
		switch old := out[key].(type) {
		case nil:
			if key == "stop" {
				out[key] = []any{v}
			} else {
				out[key] = v
			}
		case []any:
			out[key] = append(old, v)
		default:
			out[key] = []any{old, v}
		}
	}
	return out
}
