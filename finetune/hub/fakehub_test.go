package hub

import (
	"bytes"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ollama-tune/ollama-tune/finetune/testutil"
)

// The fake Hub imitates huggingface.co's endpoints as huggingface_hub sees
// them: the revision API, resolve/ (a 302 to a CDN on another host, with
// X-Linked-Etag and X-Linked-Size, for LFS files; the body itself with a
// git-sha1 ETag otherwise), X-Repo-Commit on every answer and X-Error-Code
// on errors. Both servers listen on 127.0.0.1 only.

type fakeFile struct {
	data []byte
	lfs  bool
	etag string // sha256 for LFS, git blob sha1 otherwise
	body []byte // what is actually sent; nil means data (set to corrupt)
}

type fakeRepo struct {
	kind   RepoKind
	id     string
	commit string
	files  map[string]*fakeFile
	gated  bool // needs the fake's token
}

type fakeRequest struct {
	server string // "hub" or "cdn"
	method string
	path   string
	rng    string
	auth   string
	ua     string
}

type fakeHub struct {
	t        *testing.T
	hub, cdn *httptest.Server
	token    string

	mu        sync.Mutex
	repos     map[string]*fakeRepo // "models/org/name"
	renamed   map[string]string    // old repo id -> new
	log       []fakeRequest
	dropAfter map[string]int64 // etag -> cut the next body GET after n bytes
	stallOnce map[string]int64 // etag -> send n bytes then stall until the client gives up
	down      bool             // answer 503 to everything on the hub host
}

func newFakeHub(t *testing.T) *fakeHub {
	t.Helper()
	fh := &fakeHub{t: t, token: "hf_test_token", repos: map[string]*fakeRepo{}, renamed: map[string]string{},
		dropAfter: map[string]int64{}, stallOnce: map[string]int64{}}
	fh.hub = httptest.NewServer(http.HandlerFunc(fh.serveHub))
	fh.cdn = httptest.NewServer(http.HandlerFunc(fh.serveCDN))
	t.Cleanup(func() { fh.hub.Close(); fh.cdn.Close() })
	return fh
}

func gitBlobSHA1(b []byte) string {
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", len(b))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func (fh *fakeHub) addRepo(kind RepoKind, id, commit string, files map[string][]byte, lfs ...string) *fakeRepo {
	r := &fakeRepo{kind: kind, id: id, commit: commit, files: map[string]*fakeFile{}}
	isLFS := map[string]bool{}
	for _, f := range lfs {
		isLFS[f] = true
	}
	for name, data := range files {
		f := &fakeFile{data: data, lfs: isLFS[name]}
		if f.lfs {
			f.etag = sha256Hex(data)
		} else {
			f.etag = gitBlobSHA1(data)
		}
		r.files[name] = f
	}
	fh.mu.Lock()
	fh.repos[kind.plural()+"/"+id] = r
	fh.mu.Unlock()
	return r
}

func (fh *fakeHub) record(server string, r *http.Request) {
	fh.mu.Lock()
	defer fh.mu.Unlock()
	fh.log = append(fh.log, fakeRequest{server: server, method: r.Method, path: r.URL.Path,
		rng: r.Header.Get("Range"), auth: r.Header.Get("Authorization"), ua: r.Header.Get("User-Agent")})
}

func (fh *fakeHub) requests() []fakeRequest {
	fh.mu.Lock()
	defer fh.mu.Unlock()
	return append([]fakeRequest(nil), fh.log...)
}

func (fh *fakeHub) resetLog() {
	fh.mu.Lock()
	fh.log = nil
	fh.mu.Unlock()
}

// count counts requests on server whose path contains part.
func (fh *fakeHub) count(server, part string) int {
	n := 0
	for _, r := range fh.requests() {
		if r.server == server && strings.Contains(r.path, part) {
			n++
		}
	}
	return n
}

func hubError(w http.ResponseWriter, status int, code, commit string) {
	if code != "" {
		w.Header().Set("X-Error-Code", code)
	}
	if commit != "" {
		w.Header().Set("X-Repo-Commit", commit)
	}
	http.Error(w, code, status)
}

// access applies the Hub's rules for a repository that does not exist or
// is gated: 401 without a valid token, 404/403 with one.
func (fh *fakeHub) access(w http.ResponseWriter, r *http.Request, kind RepoKind, id string) (*fakeRepo, bool) {
	fh.mu.Lock()
	repo := fh.repos[kind.plural()+"/"+id]
	fh.mu.Unlock()
	authed := r.Header.Get("Authorization") == "Bearer "+fh.token
	switch {
	case repo == nil && !authed:
		hubError(w, http.StatusUnauthorized, "RepoNotFound", "")
	case repo == nil:
		hubError(w, http.StatusNotFound, "RepoNotFound", "")
	case repo.gated && r.Header.Get("Authorization") == "":
		hubError(w, http.StatusUnauthorized, "GatedRepo", "")
	case repo.gated && !authed:
		hubError(w, http.StatusForbidden, "GatedRepo", "")
	default:
		return repo, true
	}
	return nil, false
}

func (fh *fakeHub) serveHub(w http.ResponseWriter, r *http.Request) {
	fh.record("hub", r)
	fh.mu.Lock()
	down := fh.down
	fh.mu.Unlock()
	if down {
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
		return
	}
	p := strings.TrimPrefix(r.URL.Path, "/")
	if strings.HasPrefix(p, "api/") {
		fh.serveAPI(w, r, strings.TrimPrefix(p, "api/"))
		return
	}
	kind := Model
	if strings.HasPrefix(p, "datasets/") {
		kind, p = Dataset, strings.TrimPrefix(p, "datasets/")
	}
	i := strings.Index(p, "/resolve/")
	if i < 0 {
		http.NotFound(w, r)
		return
	}
	id, rest := p[:i], p[i+len("/resolve/"):]
	rev, file, _ := strings.Cut(rest, "/")
	fh.mu.Lock()
	newID, moved := fh.renamed[id]
	fh.mu.Unlock()
	if moved { // a renamed repository: a relative redirect, as the Hub does
		http.Redirect(w, r, "/"+kind.urlPrefix()+newID+"/resolve/"+rev+"/"+file, http.StatusTemporaryRedirect)
		return
	}
	repo, ok := fh.access(w, r, kind, id)
	if !ok {
		return
	}
	if rev != "main" && rev != repo.commit {
		hubError(w, http.StatusNotFound, "RevisionNotFound", "")
		return
	}
	w.Header().Set("X-Repo-Commit", repo.commit)
	f := repo.files[file]
	if f == nil {
		hubError(w, http.StatusNotFound, "EntryNotFound", repo.commit)
		return
	}
	if f.lfs {
		// The ETag of the redirect itself is the pointer file's; the client
		// must prefer X-Linked-Etag.
		w.Header().Set("ETag", `"`+gitBlobSHA1([]byte("pointer "+f.etag))+`"`)
		w.Header().Set("X-Linked-Etag", `"`+f.etag+`"`)
		w.Header().Set("X-Linked-Size", fmt.Sprint(len(f.data)))
		w.Header().Set("Location", fh.cdn.URL+"/blobs/"+f.etag+"?X-Amz-Signature=abc")
		w.WriteHeader(http.StatusFound)
		return
	}
	w.Header().Set("ETag", `"`+f.etag+`"`)
	fh.serveBody(w, r, f)
}

func (fh *fakeHub) serveAPI(w http.ResponseWriter, r *http.Request, p string) {
	var kind RepoKind
	switch {
	case strings.HasPrefix(p, "models/"):
		kind, p = Model, strings.TrimPrefix(p, "models/")
	case strings.HasPrefix(p, "datasets/"):
		kind, p = Dataset, strings.TrimPrefix(p, "datasets/")
	default:
		http.NotFound(w, r)
		return
	}
	i := strings.LastIndex(p, "/revision/")
	if i < 0 {
		http.NotFound(w, r)
		return
	}
	id, rev := p[:i], p[i+len("/revision/"):]
	repo, ok := fh.access(w, r, kind, id)
	if !ok {
		return
	}
	if rev != "main" && rev != repo.commit {
		hubError(w, http.StatusNotFound, "RevisionNotFound", "")
		return
	}
	type sibling struct {
		RFilename string `json:"rfilename"`
	}
	var sib []sibling
	for name := range repo.files {
		sib = append(sib, sibling{name})
	}
	sort.Slice(sib, func(i, j int) bool { return sib[i].RFilename < sib[j].RFilename })
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"_id": "x", "id": repo.id, "sha": repo.commit, "private": false, "siblings": sib})
}

func (fh *fakeHub) serveCDN(w http.ResponseWriter, r *http.Request) {
	fh.record("cdn", r)
	etag := strings.TrimPrefix(r.URL.Path, "/blobs/")
	var f *fakeFile
	fh.mu.Lock()
	for _, repo := range fh.repos {
		for _, ff := range repo.files {
			if ff.etag == etag {
				f = ff
			}
		}
	}
	fh.mu.Unlock()
	if f == nil || r.URL.Query().Get("X-Amz-Signature") != "abc" {
		http.Error(w, "AccessDenied", http.StatusForbidden)
		return
	}
	w.Header().Set("ETag", `"cdn-`+etag[:8]+`"`)
	fh.serveBody(w, r, f)
}

// serveBody sends a file with Range support, or misbehaves as configured.
func (fh *fakeHub) serveBody(w http.ResponseWriter, r *http.Request, f *fakeFile) {
	body := f.data
	if f.body != nil {
		body = f.body
	}
	fh.mu.Lock()
	drop, dropping := fh.dropAfter[f.etag]
	stall, stalling := fh.stallOnce[f.etag]
	if r.Method == http.MethodGet {
		delete(fh.dropAfter, f.etag)
		delete(fh.stallOnce, f.etag)
	} else {
		dropping, stalling = false, false
	}
	fh.mu.Unlock()
	switch {
	case dropping:
		// Promise the whole file, send part of it, then cut the connection.
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			fh.t.Errorf("hijack: %v", err)
			return
		}
		fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: application/octet-stream\r\n\r\n", len(body))
		buf.Write(body[:drop])
		buf.Flush()
		conn.Close()
	case stalling:
		w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		w.WriteHeader(http.StatusOK)
		w.Write(body[:stall])
		w.(http.Flusher).Flush()
		select { // until the client gives up on us
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
			fh.t.Errorf("the client never gave up on a stalled body")
		}
	default:
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	}
}

func readShared(t *testing.T, rel ...string) []byte {
	t.Helper()
	b, err := os.ReadFile(testutil.SharedData(t, rel...))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const (
	phi3Repo    = "microsoft/Phi-3-mini-4k-instruct"
	phi3Commit  = "0a67737cc96d2554230f90338b163bc6380a2a85"
	yodaRepo    = "dvgodoy/yoda_sentences"
	yodaCommit  = "1b2c3d4e5f60718293a4b5c6d7e8f90112233445"
	nestedFile  = "original/notes/readme.txt"
	nestedBytes = "a nested file, to check symlinks three folders deep\n"
)

// phi3Files are the Phi-3 tokenizer files as the model repository serves
// them (tokenizer.json and tokenizer.model through LFS), plus one nested
// file.
func phi3Files(t *testing.T) map[string][]byte {
	files := map[string][]byte{nestedFile: []byte(nestedBytes)}
	for _, f := range []string{"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"} {
		files[f] = readShared(t, "phi3-tokenizer", f)
	}
	return files
}

// newFakeWithRepos serves the Phi-3 model and the yoda data set.
func newFakeWithRepos(t *testing.T) (*fakeHub, map[string][]byte, []byte) {
	fh := newFakeHub(t)
	files := phi3Files(t)
	fh.addRepo(Model, phi3Repo, phi3Commit, files, "tokenizer.json", "tokenizer.model")
	csv := readShared(t, "yoda_sentences.csv")
	fh.addRepo(Dataset, yodaRepo, yodaCommit, map[string][]byte{
		"sentences.csv":  csv,
		"README.md":      []byte("---\nlicense: apache-2.0\n---\n# yoda_sentences\n"),
		".gitattributes": []byte("*.parquet filter=lfs diff=lfs merge=lfs -text\n"),
	})
	return fh, files, csv
}

func (fh *fakeHub) client(t *testing.T) *Client {
	return &Client{Endpoint: fh.hub.URL, CacheDir: t.TempDir(), retryDelay: time.Millisecond}
}
