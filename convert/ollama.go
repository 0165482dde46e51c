package convert

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/envconfig"
)

// Client talks to an Ollama server through Ollama's own api package; it
// adds the blob HEAD check the api package lacks and errors that say what
// to do next.
type Client struct {
	API  *api.Client
	Base *url.URL
	http *http.Client
}

// NewClient connects to base (nil: OLLAMA_HOST, else 127.0.0.1:11434, as
// the ollama CLI does). hc nil is http.DefaultClient.
func NewClient(base *url.URL, hc *http.Client) *Client {
	if base == nil {
		base = envconfig.Host()
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{API: api.NewClient(base, hc), Base: base, http: hc}
}

// wrap turns transport failures into an error with the next step.
func (c *Client) wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ne) || errors.Is(err, io.EOF) || strings.Contains(err.Error(), "connection refused") {
		return fmt.Errorf("%s: cannot reach the Ollama server at %s (%v); start it with `ollama serve`, or set OLLAMA_HOST to where it listens", what, c.Base, err)
	}
	return fmt.Errorf("%s (Ollama at %s): %w", what, c.Base, err)
}

// Version is an Ollama release number.
type Version struct {
	Major, Minor, Patch int
	Raw                 string
}

func (v Version) String() string { return v.Raw }

// Less compares release numbers.
func (v Version) Less(o Version) bool {
	if v.Major != o.Major {
		return v.Major < o.Major
	}
	if v.Minor != o.Minor {
		return v.Minor < o.Minor
	}
	return v.Patch < o.Patch
}

// ParseVersion reads "0.24.0", "v0.5.7-rc1" or "0.0.0".
func ParseVersion(s string) (Version, error) {
	v := Version{Raw: s}
	core := strings.TrimPrefix(strings.TrimSpace(s), "v")
	if i := strings.IndexAny(core, "-+ "); i >= 0 {
		core = core[:i]
	}
	parts := strings.Split(core, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return v, fmt.Errorf("unrecognised Ollama version %q", s)
	}
	nums := []*int{&v.Major, &v.Minor, &v.Patch}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return v, fmt.Errorf("unrecognised Ollama version %q", s)
		}
		*nums[i] = n
	}
	return v, nil
}

// Version asks the server its version (GET /api/version).
func (c *Client) Version(ctx context.Context) (Version, error) {
	s, err := c.API.Version(ctx)
	if err != nil {
		return Version{}, c.wrap("ask the Ollama version", err)
	}
	return ParseVersion(s)
}

// Route is how a fine-tune reaches Ollama.
type Route string

const (
	// RouteAdapter: the base model plus the GGUF LoRA adapter (ADAPTER);
	// Ollama's llama.cpp runner applies it (Ollama <= 0.34.0).
	RouteAdapter Route = "adapter"
	// RouteMerged: one GGUF with the adapter merged into the weights, for
	// Ollama >= 0.34.1, which refuses LoRA adapters.
	RouteMerged Route = "merged"
)

// firstMergedOnly is the first release that refuses adapters.
var firstMergedOnly = Version{Major: 0, Minor: 34, Patch: 1, Raw: "0.34.1"}

// ChooseRoute picks the route for a server version, with the reason.
func ChooseRoute(v Version) (Route, string) {
	if v.Major == 0 && v.Minor == 0 && v.Patch == 0 {
		return RouteAdapter, fmt.Sprintf("Ollama reports version %q (a development build without a release number); assuming it takes LoRA adapters like the releases up to 0.34.0 (use --route merged if it does not)", v.Raw)
	}
	if v.Less(firstMergedOnly) {
		return RouteAdapter, fmt.Sprintf("Ollama %s applies GGUF LoRA adapters (releases up to 0.34.0 do): creating the model from the base plus the adapter", v.Raw)
	}
	return RouteMerged, fmt.Sprintf("Ollama %s refuses LoRA adapters (from 0.34.1 on): creating the model from one GGUF with the adapter merged into the weights", v.Raw)
}

// FileDigest is the "sha256:<hex>" digest of a file, Ollama's blob name.
func FileDigest(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// HasBlob asks whether the server already holds a blob (HEAD
// /api/blobs/<digest>: 200 yes, 404 no).
func (c *Client) HasBlob(ctx context.Context, digest string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, c.Base.JoinPath("/api/blobs", digest).String(), nil)
	if err != nil {
		return false, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return false, c.wrap("check blob "+digest, err)
	}
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		return true, nil
	case http.StatusNotFound:
		return false, nil
	}
	return false, fmt.Errorf("check blob %s (Ollama at %s): HTTP %s", digest, c.Base, resp.Status)
}

// UploadBlob makes sure the server holds the file as a blob and returns
// its digest: HEAD first, POST /api/blobs/<digest> only when missing.
func (c *Client) UploadBlob(ctx context.Context, path string) (digest string, uploaded bool, err error) {
	digest, err = FileDigest(path)
	if err != nil {
		return "", false, err
	}
	has, err := c.HasBlob(ctx, digest)
	if err != nil {
		return "", false, err
	}
	if has {
		return digest, false, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	if err := c.API.CreateBlob(ctx, digest, f); err != nil {
		return "", false, c.wrap("upload "+path, err)
	}
	return digest, true, nil
}

// Show returns a model's details, or nil when the server does not have it.
func (c *Client) Show(ctx context.Context, name string) (*api.ShowResponse, error) {
	r, err := c.API.Show(ctx, &api.ShowRequest{Model: name})
	if err != nil {
		var se api.StatusError
		if errors.As(err, &se) && se.StatusCode == http.StatusNotFound {
			return nil, nil
		}
		return nil, c.wrap("look up model "+name, err)
	}
	return r, nil
}

// Create sends /api/create and follows its progress; status lines go to
// progress (nil discards them). A refusal comes back as an error naming
// what was sent.
func (c *Client) Create(ctx context.Context, req *api.CreateRequest, progress func(string)) error {
	last := ""
	err := c.API.Create(ctx, req, func(p api.ProgressResponse) error {
		if progress != nil && p.Status != "" && p.Status != last {
			progress(p.Status)
		}
		last = p.Status
		return nil
	})
	if err != nil {
		var se api.StatusError
		if errors.As(err, &se) {
			return fmt.Errorf("Ollama at %s refused to create %s: %s (HTTP %d)", c.Base, req.Model, se.ErrorMessage, se.StatusCode)
		}
		return c.wrap("create "+req.Model, err)
	}
	return nil
}

// Generated is one non-streamed /api/generate answer.
type Generated struct {
	Response string
	// Context is the ids of the rendered prompt plus the answer, as the
	// server's tokenizer gives them (Ollama re-tokenizes prompt+answer).
	Context    []int
	DoneReason string
	PromptEval int
	Eval       int
}

// Generate runs one prompt through the model's TEMPLATE at temperature 0
// (greedy), at most maxTokens new tokens.
func (c *Client) Generate(ctx context.Context, model, prompt string, maxTokens int) (*Generated, error) {
	stream := false
	req := &api.GenerateRequest{
		Model:  model,
		Prompt: prompt,
		Stream: &stream,
		// Greedy, and no repetition penalty (Ollama's default is 1.1), so
		// the answer is the argmax chain the trainer's greedy decoding gives.
		Options: map[string]any{
			"temperature":    0,
			"top_k":          1,
			"repeat_penalty": 1,
			"seed":           0,
			"num_predict":    maxTokens,
		},
	}
	var out Generated
	err := c.API.Generate(ctx, req, func(r api.GenerateResponse) error {
		out.Response += r.Response
		if r.Done {
			out.Context = r.Context
			out.DoneReason = r.DoneReason
			out.PromptEval = r.PromptEvalCount
			out.Eval = r.EvalCount
		}
		return nil
	})
	if err != nil {
		var se api.StatusError
		if errors.As(err, &se) {
			return nil, fmt.Errorf("generate with %s (Ollama at %s): %s (HTTP %d); if the model failed to load, look at the server log (llama runner errors name the tensor or key at fault)", model, c.Base, se.ErrorMessage, se.StatusCode)
		}
		return nil, c.wrap("generate with "+model, err)
	}
	return &out, nil
}
