package hub

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// DefaultEndpoint is the Hub's address when HF_ENDPOINT is unset.
const DefaultEndpoint = "https://huggingface.co"

// DefaultRevision is the branch used when no revision is given.
const DefaultRevision = "main"

// RepoKind says whether a repository holds a model or a data set; the two
// live under different URL and cache prefixes.
type RepoKind int

const (
	Model RepoKind = iota
	Dataset
)

func (k RepoKind) String() string {
	switch k {
	case Model:
		return "model"
	case Dataset:
		return "dataset"
	}
	return fmt.Sprintf("RepoKind(%d)", int(k))
}

// plural is the word the Hub's API and the cache use: "models", "datasets".
func (k RepoKind) plural() string { return k.String() + "s" }

// urlPrefix is what precedes the repo id in resolve and web URLs.
func (k RepoKind) urlPrefix() string {
	if k == Dataset {
		return "datasets/"
	}
	return ""
}

func (k RepoKind) valid() bool { return k == Model || k == Dataset }

// Client talks to one Hub endpoint and keeps files in one cache folder.
// The zero value is not usable; build it with NewFromEnv or fill at least
// CacheDir (Endpoint defaults to DefaultEndpoint, HTTP to a plain client).
type Client struct {
	Endpoint string       // e.g. https://huggingface.co, no trailing slash
	Token    string       // sent as "Authorization: Bearer" to Endpoint only
	CacheDir string       // the hub cache folder (holds models--org--name/)
	Offline  bool         // serve from CacheDir only, never touch the network
	HTTP     *http.Client // nil: a client with http.DefaultTransport

	// Progress, when set, is called as a file's body arrives: at the start
	// (done may be > 0 when resuming), after each chunk and at the end with
	// done == total. total is -1 when unknown. It runs on the downloading
	// goroutine; keep it cheap.
	Progress func(file string, done, total int64)

	// UserAgent overrides the default "ollama-tune/<version>; go/<version>".
	UserAgent string

	// MetadataTimeout bounds the API and HEAD calls; DownloadTimeout is how
	// long a body may stall before the connection is dropped and resumed.
	// Zero means 10 s each, as huggingface_hub's defaults.
	MetadataTimeout time.Duration
	DownloadTimeout time.Duration

	// retryDelay is the pause before resuming a dropped download (1 s by
	// default; tests shorten it). maxRetries bounds consecutive attempts
	// that bring no new byte.
	retryDelay time.Duration
	maxRetries int
}

// NewFromEnv builds a Client from the environment variables Python's
// huggingface_hub reads:
//
//	HF_ENDPOINT                                 Hub or mirror address
//	HF_TOKEN, else HUGGING_FACE_HUB_TOKEN       access token
//	HF_TOKEN_PATH, else HF_HOME/token           token file (huggingface-cli login)
//	HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE,        cache folder
//	  else HF_HOME/hub (HF_HOME defaults to $XDG_CACHE_HOME/huggingface
//	  or ~/.cache/huggingface)
//	HF_HUB_OFFLINE, else TRANSFORMERS_OFFLINE   1/ON/YES/TRUE: cache only
//	HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT  seconds
func NewFromEnv() (*Client, error) {
	home, err := hfHome()
	if err != nil {
		return nil, err
	}
	c := &Client{
		Endpoint: strings.TrimRight(os.Getenv("HF_ENDPOINT"), "/"),
		Offline:  envTrue(os.Getenv("HF_HUB_OFFLINE")) || (os.Getenv("HF_HUB_OFFLINE") == "" && envTrue(os.Getenv("TRANSFORMERS_OFFLINE"))),
	}
	if c.Endpoint == "" {
		c.Endpoint = DefaultEndpoint
	}
	switch {
	case os.Getenv("HF_HUB_CACHE") != "":
		c.CacheDir = expandHome(os.Getenv("HF_HUB_CACHE"))
	case os.Getenv("HUGGINGFACE_HUB_CACHE") != "":
		c.CacheDir = expandHome(os.Getenv("HUGGINGFACE_HUB_CACHE"))
	default:
		c.CacheDir = filepath.Join(home, "hub")
	}
	c.Token, err = tokenFromEnv(home)
	if err != nil {
		return nil, err
	}
	if c.MetadataTimeout, err = envSeconds("HF_HUB_ETAG_TIMEOUT"); err != nil {
		return nil, err
	}
	if c.DownloadTimeout, err = envSeconds("HF_HUB_DOWNLOAD_TIMEOUT"); err != nil {
		return nil, err
	}
	return c, nil
}

// envTrue is huggingface_hub's _is_true.
func envTrue(v string) bool {
	switch strings.ToUpper(strings.TrimSpace(v)) {
	case "1", "ON", "YES", "TRUE":
		return true
	}
	return false
}

func envSeconds(name string) (time.Duration, error) {
	v := strings.TrimSpace(os.Getenv(name))
	if v == "" {
		return 0, nil
	}
	s, err := strconv.ParseFloat(v, 64)
	if err != nil || s <= 0 {
		return 0, fmt.Errorf("environment variable %s=%q: want a positive number of seconds", name, v)
	}
	return time.Duration(s * float64(time.Second)), nil
}

// hfHome is HF_HOME, else $XDG_CACHE_HOME/huggingface, else
// ~/.cache/huggingface (huggingface_hub's constants.HF_HOME).
func hfHome() (string, error) {
	if v := os.Getenv("HF_HOME"); v != "" {
		return expandHome(v), nil
	}
	if v := os.Getenv("XDG_CACHE_HOME"); v != "" {
		return filepath.Join(expandHome(v), "huggingface"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("find the Hugging Face cache: %w (set HF_HOME or HF_HUB_CACHE)", err)
	}
	return filepath.Join(home, ".cache", "huggingface"), nil
}

func expandHome(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, p[1:])
		}
	}
	return p
}

// tokenFromEnv is huggingface_hub's get_token: the environment first, then
// the file `huggingface-cli login` writes. A missing file is no token.
func tokenFromEnv(home string) (string, error) {
	if t := strings.TrimSpace(os.Getenv("HF_TOKEN")); t != "" {
		return t, nil
	}
	if t := strings.TrimSpace(os.Getenv("HUGGING_FACE_HUB_TOKEN")); t != "" {
		return t, nil
	}
	path := os.Getenv("HF_TOKEN_PATH")
	if path == "" {
		path = filepath.Join(home, "token")
	}
	b, err := os.ReadFile(expandHome(path))
	if err != nil {
		if os.IsNotExist(err) {
			return "", nil
		}
		return "", fmt.Errorf("read Hugging Face token file %s: %w (fix its permissions, or set HF_TOKEN)", path, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func (c *Client) endpoint() string {
	if c.Endpoint == "" {
		return DefaultEndpoint
	}
	return strings.TrimRight(c.Endpoint, "/")
}

func (c *Client) httpClient() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return &http.Client{Transport: http.DefaultTransport}
}

// noRedirectClient is c.HTTP with redirects handed back to the caller, for
// the HEAD call that must see the Hub's 302 and its X-Linked-* headers.
func (c *Client) noRedirectClient() *http.Client {
	hc := *c.httpClient()
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &hc
}

func (c *Client) metadataTimeout() time.Duration {
	if c.MetadataTimeout > 0 {
		return c.MetadataTimeout
	}
	return 10 * time.Second
}

func (c *Client) downloadTimeout() time.Duration {
	if c.DownloadTimeout > 0 {
		return c.DownloadTimeout
	}
	return 10 * time.Second
}

func (c *Client) retryPause() time.Duration {
	if c.retryDelay > 0 {
		return c.retryDelay
	}
	return time.Second
}

func (c *Client) retries() int {
	if c.maxRetries > 0 {
		return c.maxRetries
	}
	return 5
}

func (c *Client) userAgent() string {
	if c.UserAgent != "" {
		return c.UserAgent
	}
	return defaultUserAgent
}

var defaultUserAgent = func() string {
	v := "(devel)"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		v = bi.Main.Version
	}
	return "ollama-tune/" + v + "; go/" + strings.TrimPrefix(runtime.Version(), "go")
}()

// setHeaders adds what every Hub request carries. auth is false for a
// CDN on another host: its URL is signed, and a token there would leak.
func (c *Client) setHeaders(req *http.Request, auth bool) {
	req.Header.Set("User-Agent", c.userAgent())
	if auth && c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
}

// repoIDPattern follows huggingface_hub's validate_repo_id: "name" or
// "namespace/name" of letters, digits, '-', '_', '.'.
var repoIDPattern = regexp.MustCompile(`^([A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$`)

func checkRepo(kind RepoKind, repo string) error {
	if !kind.valid() {
		return fmt.Errorf("hub: unknown repository kind %d (want hub.Model or hub.Dataset)", int(kind))
	}
	if !repoIDPattern.MatchString(repo) || strings.Contains(repo, "--") || strings.Contains(repo, "..") || len(repo) > 96 {
		return fmt.Errorf("hub: %s repository id %q is not valid: want \"org/name\" (letters, digits, '-', '_', '.'; no \"--\" or \"..\")", kind, repo)
	}
	return nil
}

// checkRevision keeps a revision usable as refs/<revision> inside the cache.
func checkRevision(rev string) error {
	if rev == "" || !filepath.IsLocal(filepath.FromSlash(rev)) || strings.ContainsAny(rev, "\\\x00") {
		return fmt.Errorf("hub: revision %q is not valid: want a branch, tag or commit such as \"main\"", rev)
	}
	return nil
}

// checkRepoPath refuses file names that would leave the snapshot folder.
func checkRepoPath(p string) error {
	if p == "" || strings.HasPrefix(p, "/") || strings.ContainsAny(p, "\\\x00") || !filepath.IsLocal(filepath.FromSlash(p)) {
		return fmt.Errorf("hub: file name %q is not a relative path inside the repository", p)
	}
	return nil
}

var (
	commitPattern = regexp.MustCompile(`^[0-9a-f]{40}$`)
	sha256Pattern = regexp.MustCompile(`^[0-9a-f]{64}$`)
	// safeName is what a server-given commit or ETag must look like before
	// it becomes a file name in the cache.
	safeName = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$`)
)

func isCommitHash(rev string) bool { return commitPattern.MatchString(rev) }
