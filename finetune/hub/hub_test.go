package hub

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256Hex(b)
}

// noTempLeft fails if any .incomplete or temporary file is left in the cache.
func noTempLeft(t *testing.T, cache string) {
	t.Helper()
	filepath.WalkDir(cache, func(p string, d os.DirEntry, err error) error {
		if err == nil && (strings.HasSuffix(p, ".incomplete") || strings.Contains(d.Name(), ".tmp-")) {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
}

type progressLog struct {
	mu   sync.Mutex
	last map[string][2]int64
}

func (p *progressLog) record(file string, done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.last == nil {
		p.last = map[string][2]int64{}
	}
	if prev, ok := p.last[file]; ok && done < prev[0] {
		panic("progress went backwards for " + file)
	}
	p.last[file] = [2]int64{done, total}
}

func TestSnapshotDownloadsAndReusesCache(t *testing.T) {
	fh, files, _ := newFakeWithRepos(t)
	c := fh.client(t)
	var prog progressLog
	c.Progress = prog.record
	ctx := context.Background()

	dir, err := c.Snapshot(ctx, Model, phi3Repo, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	storage := filepath.Join(c.CacheDir, "models--microsoft--Phi-3-mini-4k-instruct")
	if want := filepath.Join(storage, "snapshots", phi3Commit); dir != want {
		t.Fatalf("snapshot dir %s, want %s", dir, want)
	}
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if got := fileSHA256(t, p); got != sha256Hex(data) {
			t.Errorf("%s: sha256 %s, want %s", name, got, sha256Hex(data))
		}
		// The layout Python's huggingface_hub reads: a relative link into
		// blobs/, the blob named by its ETag.
		etag := sha256Hex(data)
		if name != "tokenizer.json" && name != "tokenizer.model" {
			etag = gitBlobSHA1(data)
		}
		link, err := os.Readlink(p)
		if err != nil {
			t.Fatalf("%s is not a symlink: %v", name, err)
		}
		want := strings.Repeat("../", strings.Count(name, "/")+2) + "blobs/" + etag
		if link != filepath.FromSlash(want) {
			t.Errorf("%s links to %q, want %q", name, link, want)
		}
		if fi, err := os.Lstat(filepath.Join(storage, "blobs", etag)); err != nil || !fi.Mode().IsRegular() {
			t.Errorf("blob %s for %s: %v", etag, name, err)
		}
	}
	ref, err := os.ReadFile(filepath.Join(storage, "refs", "main"))
	if err != nil || string(ref) != phi3Commit {
		t.Errorf("refs/main = %q, %v; want the commit with no newline", ref, err)
	}
	noTempLeft(t, c.CacheDir)
	for name, data := range files {
		if got := prog.last[name]; got != [2]int64{int64(len(data)), int64(len(data))} {
			t.Errorf("last progress for %s = %v, want done = total = %d", name, got, len(data))
		}
	}
	// The bodies of LFS files came from the CDN, without the (absent) token,
	// and every request named ollama-tune.
	if n := fh.count("cdn", "/blobs/"); n != 2 {
		t.Errorf("%d CDN downloads, want 2 (tokenizer.json, tokenizer.model)", n)
	}
	for _, r := range fh.requests() {
		if !strings.HasPrefix(r.ua, "ollama-tune/") {
			t.Errorf("%s %s: User-Agent %q", r.method, r.path, r.ua)
		}
	}

	// Second call: one API call to resolve main, nothing else.
	fh.resetLog()
	dir2, err := c.Snapshot(ctx, Model, phi3Repo, "main", nil)
	if err != nil || dir2 != dir {
		t.Fatalf("second snapshot: %s, %v", dir2, err)
	}
	reqs := fh.requests()
	if len(reqs) != 1 || !strings.HasPrefix(reqs[0].path, "/api/models/"+phi3Repo+"/revision/main") {
		t.Errorf("second snapshot made requests %+v, want only the revision API call", reqs)
	}
	// A file at a commit already cached needs no request at all.
	fh.resetLog()
	if _, err := c.File(ctx, Model, phi3Repo, phi3Commit, "tokenizer.json"); err != nil {
		t.Fatal(err)
	}
	if reqs := fh.requests(); len(reqs) != 0 {
		t.Errorf("File at a cached commit made requests %+v", reqs)
	}
}

func TestSnapshotAllowPatterns(t *testing.T) {
	fh, _, _ := newFakeWithRepos(t)
	c := fh.client(t)
	dir, err := c.Snapshot(context.Background(), Model, phi3Repo, "", []string{"*.json", "original/"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := snapshotFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{nestedFile, "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"}
	if !slices.Equal(got, want) {
		t.Errorf("snapshot holds %q, want %q", got, want)
	}
	if _, err := c.Snapshot(context.Background(), Model, phi3Repo, "", []string{"*.safetensors"}); err == nil || !strings.Contains(err.Error(), "tokenizer.model") {
		t.Errorf("no-match patterns: %v, want an error listing the repository's files", err)
	}
}

func TestGlob(t *testing.T) {
	cases := []struct {
		pattern, name string
		want          bool
	}{
		{"*.json", "tokenizer.json", true},
		{"*.json", "sub/dir/x.json", true}, // fnmatch's '*' crosses '/'
		{"*.json", "tokenizer.model", false},
		{"tokenizer*", "tokenizer_config.json", true},
		{"model-0000?-of-00002.safetensors", "model-00001-of-00002.safetensors", true},
		{"[!t]*", "tokenizer.json", false},
		{"[!t]*", "config.json", true},
		{"[ct]*.json", "config.json", true},
		{"original/", "original/notes/readme.txt", true},
		{"original/", "originals.txt", false},
		{"a+b.txt", "a+b.txt", true},
		{"a+b.txt", "aab.txt", false},
		{"é*", "été.txt", true},
	}
	for _, tc := range cases {
		m, err := compileGlobs([]string{tc.pattern})
		if err != nil {
			t.Fatal(err)
		}
		if got := m(tc.name); got != tc.want {
			t.Errorf("%q matches %q = %v, want %v", tc.pattern, tc.name, got, tc.want)
		}
	}
}

func TestResumeAfterDroppedConnection(t *testing.T) {
	fh, files, _ := newFakeWithRepos(t)
	c := fh.client(t)
	data := files["tokenizer.json"]
	const cut = 1_000_000
	fh.dropAfter[sha256Hex(data)] = cut

	p, err := c.File(context.Background(), Model, phi3Repo, "", "tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	if got := fileSHA256(t, p); got != sha256Hex(data) {
		t.Errorf("sha256 after resume %s, want %s", got, sha256Hex(data))
	}
	var ranges []string
	for _, r := range fh.requests() {
		if r.server == "cdn" {
			ranges = append(ranges, r.rng)
		}
	}
	if want := []string{"", "bytes=1000000-"}; !slices.Equal(ranges, want) {
		t.Errorf("CDN Range headers %q, want %q", ranges, want)
	}
	noTempLeft(t, c.CacheDir)
}

func TestResumeFromIncompleteFile(t *testing.T) {
	fh, files, _ := newFakeWithRepos(t)
	c := fh.client(t)
	data := files["tokenizer.model"]
	etag := sha256Hex(data)
	blobs := filepath.Join(c.CacheDir, "models--microsoft--Phi-3-mini-4k-instruct", "blobs")
	os.MkdirAll(blobs, 0o755)
	// What an interrupted run (Go or Python) leaves behind.
	if err := os.WriteFile(filepath.Join(blobs, etag+".incomplete"), data[:12345], 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := c.File(context.Background(), Model, phi3Repo, "main", "tokenizer.model")
	if err != nil {
		t.Fatal(err)
	}
	if got := fileSHA256(t, p); got != etag {
		t.Errorf("sha256 %s, want %s", got, etag)
	}
	var ranges []string
	for _, r := range fh.requests() {
		if r.server == "cdn" {
			ranges = append(ranges, r.rng)
		}
	}
	if want := []string{"bytes=12345-"}; !slices.Equal(ranges, want) {
		t.Errorf("CDN Range headers %q, want %q", ranges, want)
	}
	noTempLeft(t, c.CacheDir)
}

func TestStalledBodyIsResumed(t *testing.T) {
	fh, files, _ := newFakeWithRepos(t)
	c := fh.client(t)
	c.DownloadTimeout = 200 * time.Millisecond
	data := files["tokenizer.model"]
	fh.stallOnce[sha256Hex(data)] = 4096
	p, err := c.File(context.Background(), Model, phi3Repo, "", "tokenizer.model")
	if err != nil {
		t.Fatal(err)
	}
	if got := fileSHA256(t, p); got != sha256Hex(data) {
		t.Errorf("sha256 %s, want %s", got, sha256Hex(data))
	}
	var ranges []string
	for _, r := range fh.requests() {
		if r.server == "cdn" {
			ranges = append(ranges, r.rng)
		}
	}
	if want := []string{"", "bytes=4096-"}; !slices.Equal(ranges, want) {
		t.Errorf("CDN Range headers %q, want %q", ranges, want)
	}
}

func TestChecksumMismatchIsRejected(t *testing.T) {
	for _, tc := range []struct {
		repo  RepoKind
		id    string
		file  string
		check string
	}{
		{Model, phi3Repo, "tokenizer.json", "sha256"},    // LFS: ETag is the sha256
		{Dataset, yodaRepo, "sentences.csv", "git-sha1"}, // git: ETag is the blob id
	} {
		t.Run(tc.check, func(t *testing.T) {
			fh, _, _ := newFakeWithRepos(t)
			c := fh.client(t)
			f := fh.repos[tc.repo.plural()+"/"+tc.id].files[tc.file]
			f.body = append([]byte(nil), f.data...)
			f.body[len(f.body)/2] ^= 0x20 // same size, one bit off
			_, err := c.File(context.Background(), tc.repo, tc.id, "", tc.file)
			if !errors.Is(err, ErrChecksum) {
				t.Fatalf("err = %v, want ErrChecksum", err)
			}
			var ce *ChecksumError
			if !errors.As(err, &ce) || ce.Check != tc.check || ce.Expected != f.etag || ce.Actual == f.etag || !strings.Contains(err.Error(), f.etag) {
				t.Errorf("error %v does not name the %s check with expected %s", err, tc.check, f.etag)
			}
			storage := filepath.Join(c.CacheDir, repoFolderName(tc.repo, tc.id))
			if _, err := os.Stat(filepath.Join(storage, "snapshots")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("snapshots/ exists after a failed download: %v", err)
			}
			if _, err := os.Stat(filepath.Join(storage, "blobs", f.etag)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a blob was kept: %v", err)
			}
			noTempLeft(t, c.CacheDir)
		})
	}
}

func TestOfflineServesFromCacheOnly(t *testing.T) {
	fh, files, _ := newFakeWithRepos(t)
	online := fh.client(t)
	ctx := context.Background()
	if _, err := online.Snapshot(ctx, Model, phi3Repo, "", []string{"tokenizer.json", "chat_template.jinja"}); err != nil {
		t.Fatal(err)
	}
	fh.resetLog()

	t.Setenv("HF_HUB_OFFLINE", "1")
	t.Setenv("HF_HUB_CACHE", online.CacheDir)
	t.Setenv("HF_ENDPOINT", fh.hub.URL)
	c, err := NewFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if !c.Offline {
		t.Fatal("HF_HUB_OFFLINE=1 did not set Offline")
	}
	p, err := c.File(ctx, Model, phi3Repo, "", "tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	if fileSHA256(t, p) != sha256Hex(files["tokenizer.json"]) {
		t.Error("offline file content differs")
	}
	dir, err := c.Snapshot(ctx, Model, phi3Repo, "main", []string{"*.jinja"})
	if err != nil || dir != filepath.Dir(p) {
		t.Errorf("offline snapshot %s, %v; want %s", dir, err, filepath.Dir(p))
	}
	_, err = c.File(ctx, Model, phi3Repo, "", "tokenizer.model")
	if !errors.Is(err, ErrNotCached) || !strings.Contains(err.Error(), "HF_HUB_OFFLINE") || !strings.Contains(err.Error(), "tokenizer.model") {
		t.Errorf("missing file offline: %v, want ErrNotCached naming the file and HF_HUB_OFFLINE", err)
	}
	if _, err := c.Snapshot(ctx, Model, phi3Repo, "", []string{"*.model"}); !errors.Is(err, ErrNotCached) {
		t.Errorf("offline snapshot of uncached files: %v, want ErrNotCached", err)
	}
	if _, err := c.DatasetFiles(ctx, yodaRepo, "train"); !errors.Is(err, ErrNotCached) {
		t.Errorf("offline data set never cached: %v, want ErrNotCached", err)
	}
	if reqs := fh.requests(); len(reqs) != 0 {
		t.Errorf("offline mode made requests: %+v", reqs)
	}
}

func TestNewFromEnv(t *testing.T) {
	for _, v := range []string{"HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_CACHE",
		"HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XDG_CACHE_HOME", "HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT"} {
		t.Setenv(v, "")
	}
	home := t.TempDir()
	t.Setenv("HF_HOME", home)
	c, err := NewFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if c.Endpoint != DefaultEndpoint || c.CacheDir != filepath.Join(home, "hub") || c.Token != "" || c.Offline {
		t.Errorf("defaults: %+v", c)
	}

	// The token file `huggingface-cli login` writes, then HF_TOKEN_PATH,
	// then HF_TOKEN over both.
	os.WriteFile(filepath.Join(home, "token"), []byte("hf_from_home\n"), 0o600)
	if c, _ = NewFromEnv(); c.Token != "hf_from_home" {
		t.Errorf("token from HF_HOME/token = %q", c.Token)
	}
	other := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(other, []byte("  hf_from_path "), 0o600)
	t.Setenv("HF_TOKEN_PATH", other)
	if c, _ = NewFromEnv(); c.Token != "hf_from_path" {
		t.Errorf("token from HF_TOKEN_PATH = %q", c.Token)
	}
	t.Setenv("HF_TOKEN", "hf_env")
	if c, _ = NewFromEnv(); c.Token != "hf_env" {
		t.Errorf("token from HF_TOKEN = %q", c.Token)
	}

	t.Setenv("HF_ENDPOINT", "https://hf-mirror.example/")
	t.Setenv("HF_HUB_CACHE", "/somewhere/hub")
	t.Setenv("TRANSFORMERS_OFFLINE", "yes")
	t.Setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2.5")
	c, err = NewFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if c.Endpoint != "https://hf-mirror.example" || c.CacheDir != "/somewhere/hub" || !c.Offline || c.DownloadTimeout != 2500*time.Millisecond {
		t.Errorf("overrides: %+v", c)
	}
	t.Setenv("HF_HUB_OFFLINE", "0") // huggingface_hub: HF_HUB_OFFLINE, when set, wins
	if c, _ = NewFromEnv(); c.Offline {
		t.Error("HF_HUB_OFFLINE=0 did not override TRANSFORMERS_OFFLINE")
	}
	t.Setenv("HF_HUB_ETAG_TIMEOUT", "soon")
	if _, err := NewFromEnv(); err == nil || !strings.Contains(err.Error(), "HF_HUB_ETAG_TIMEOUT") {
		t.Errorf("bad timeout: %v", err)
	}
}

func TestEndpointAndTokenFromEnv(t *testing.T) {
	fh, files, _ := newFakeWithRepos(t)
	fh.repos["models/"+phi3Repo].gated = true
	t.Setenv("HF_ENDPOINT", fh.hub.URL+"/")
	t.Setenv("HF_TOKEN", fh.token)
	t.Setenv("HF_HUB_CACHE", t.TempDir())
	t.Setenv("HF_HUB_OFFLINE", "")
	t.Setenv("TRANSFORMERS_OFFLINE", "")
	c, err := NewFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	c.retryDelay = time.Millisecond
	p, err := c.File(context.Background(), Model, phi3Repo, "", "tokenizer.json")
	if err != nil {
		t.Fatal(err)
	}
	if fileSHA256(t, p) != sha256Hex(files["tokenizer.json"]) {
		t.Error("content differs")
	}
	hubCalls, cdnCalls := 0, 0
	for _, r := range fh.requests() {
		switch r.server {
		case "hub":
			hubCalls++
			if r.auth != "Bearer "+fh.token {
				t.Errorf("%s %s to the Hub without the token (Authorization %q)", r.method, r.path, r.auth)
			}
		case "cdn":
			cdnCalls++
			if r.auth != "" {
				t.Errorf("the token leaked to the CDN: %q", r.auth)
			}
		}
	}
	if hubCalls == 0 || cdnCalls != 1 {
		t.Errorf("HF_ENDPOINT not used: %d Hub calls, %d CDN calls", hubCalls, cdnCalls)
	}
}

func TestAccessErrors(t *testing.T) {
	fh, _, _ := newFakeWithRepos(t)
	fh.repos["models/"+phi3Repo].gated = true
	ctx := context.Background()
	c := fh.client(t)

	_, err := c.File(ctx, Model, phi3Repo, "", "tokenizer.json")
	if !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "HF_TOKEN") || !strings.Contains(err.Error(), "gated") {
		t.Errorf("gated without token: %v", err)
	}
	c.Token = "hf_wrong"
	_, err = c.Snapshot(ctx, Model, phi3Repo, "", nil)
	var se *StatusError
	if !errors.Is(err, ErrUnauthorized) || !errors.As(err, &se) || se.Status != 403 {
		t.Errorf("gated with a wrong token: %v", err)
	}
	c.Token = fh.token
	if _, err := c.File(ctx, Model, phi3Repo, "", "tokenizer_config.json"); err != nil {
		t.Errorf("gated with the token: %v", err)
	}

	// Not found: the repository, a revision, a file; each named.
	_, err = c.File(ctx, Model, "nobody/nothing", "", "config.json")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "nobody/nothing") {
		t.Errorf("missing repo: %v", err)
	}
	c.Token = ""
	_, err = c.Snapshot(ctx, Dataset, "nobody/nothing", "", nil)
	if !errors.Is(err, ErrNotFound) || !errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "HF_TOKEN") {
		t.Errorf("missing repo without token (401): %v", err)
	}
	_, err = c.Snapshot(ctx, Dataset, yodaRepo, "v9", nil)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `revision "v9"`) {
		t.Errorf("missing revision: %v", err)
	}
	_, err = c.File(ctx, Dataset, yodaRepo, "", "missing.csv")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"missing.csv"`) {
		t.Errorf("missing file: %v", err)
	}
	// Bad input is refused before any request.
	fh.resetLog()
	for _, bad := range []struct{ repo, rev, file string }{
		{"../etc", "main", "x"}, {"a/b/c", "main", "x"}, {"a--b/c", "main", "x"},
		{yodaRepo, "../../x", "x"}, {yodaRepo, "main", "../x"}, {yodaRepo, "main", "/etc/passwd"},
	} {
		if _, err := c.File(ctx, Dataset, bad.repo, bad.rev, bad.file); err == nil {
			t.Errorf("File(%q, %q, %q) accepted", bad.repo, bad.rev, bad.file)
		}
	}
	if reqs := fh.requests(); len(reqs) != 0 {
		t.Errorf("bad input made requests: %+v", reqs)
	}
}

func TestHubDownFallsBackToCache(t *testing.T) {
	fh, _, _ := newFakeWithRepos(t)
	c := fh.client(t)
	ctx := context.Background()
	want, err := c.File(ctx, Model, phi3Repo, "", "tokenizer_config.json")
	if err != nil {
		t.Fatal(err)
	}
	fh.down = true
	got, err := c.File(ctx, Model, phi3Repo, "", "tokenizer_config.json")
	if err != nil || got != want {
		t.Errorf("cached file while the Hub is down: %s, %v", got, err)
	}
	if dir, err := c.Snapshot(ctx, Model, phi3Repo, "", []string{"tokenizer_config.json"}); err != nil || dir != filepath.Dir(want) {
		t.Errorf("cached snapshot while the Hub is down: %s, %v", dir, err)
	}
	_, err = c.File(ctx, Model, phi3Repo, "", "tokenizer.model")
	var se *StatusError
	if !errors.As(err, &se) || se.Status != 503 || !strings.Contains(err.Error(), "try again later") {
		t.Errorf("uncached file while the Hub is down: %v", err)
	}
	// Unreachable (nothing listens): the cache still serves, a missing file
	// is ErrNotCached.
	c.Endpoint = "http://127.0.0.1:1"
	if got, err := c.File(ctx, Model, phi3Repo, "", "tokenizer_config.json"); err != nil || got != want {
		t.Errorf("cached file with the Hub unreachable: %s, %v", got, err)
	}
	if _, err := c.File(ctx, Model, phi3Repo, "", "tokenizer.model"); !errors.Is(err, ErrNotCached) {
		t.Errorf("uncached file with the Hub unreachable: %v", err)
	}
}

func TestRenamedRepoRelativeRedirect(t *testing.T) {
	fh, files, _ := newFakeWithRepos(t)
	fh.renamed["old-org/phi3"] = phi3Repo
	c := fh.client(t)
	p, err := c.File(context.Background(), Model, "old-org/phi3", "", "special_tokens_map.json")
	if err != nil {
		t.Fatal(err)
	}
	if fileSHA256(t, p) != sha256Hex(files["special_tokens_map.json"]) {
		t.Error("content differs")
	}
	if !strings.Contains(p, "models--old-org--phi3") {
		t.Errorf("stored under %s, want the name asked for (as huggingface_hub)", p)
	}
}

// TestPythonCacheIsReused lays out a cache by hand the way Python's
// huggingface_hub writes it and checks that nothing is downloaded again.
func TestPythonCacheIsReused(t *testing.T) {
	fh, files, _ := newFakeWithRepos(t)
	cache := t.TempDir()
	storage := filepath.Join(cache, "models--microsoft--Phi-3-mini-4k-instruct")
	put := func(name, etag string) {
		blob := filepath.Join(storage, "blobs", etag)
		os.MkdirAll(filepath.Dir(blob), 0o755)
		if err := os.WriteFile(blob, files[name], 0o644); err != nil {
			t.Fatal(err)
		}
		ptr := filepath.Join(storage, "snapshots", phi3Commit, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(ptr), 0o755)
		rel := strings.Repeat("../", strings.Count(name, "/")+2) + "blobs/" + etag
		if err := os.Symlink(rel, ptr); err != nil {
			t.Fatal(err)
		}
	}
	put("tokenizer.json", sha256Hex(files["tokenizer.json"]))
	put("tokenizer_config.json", gitBlobSHA1(files["tokenizer_config.json"]))
	put(nestedFile, gitBlobSHA1(files[nestedFile]))
	os.MkdirAll(filepath.Join(storage, "refs"), 0o755)
	os.WriteFile(filepath.Join(storage, "refs", "main"), []byte(phi3Commit), 0o644)
	os.MkdirAll(filepath.Join(cache, ".locks", "models--microsoft--Phi-3-mini-4k-instruct"), 0o755)

	c := &Client{Endpoint: fh.hub.URL, CacheDir: cache}
	ctx := context.Background()
	dir, err := c.Snapshot(ctx, Model, phi3Repo, "", []string{"tokenizer.json", "tokenizer_config.json", "original/*"})
	if err != nil {
		t.Fatal(err)
	}
	if dir != filepath.Join(storage, "snapshots", phi3Commit) {
		t.Errorf("snapshot dir %s", dir)
	}
	if n := fh.count("hub", "/resolve/") + fh.count("cdn", "/"); n != 0 {
		t.Errorf("%d file requests for a cache Python filled", n)
	}
	// A branch still costs one HEAD (to learn the commit) and no body.
	fh.resetLog()
	p, err := c.File(ctx, Model, phi3Repo, "main", "tokenizer.json")
	if err != nil || fileSHA256(t, p) != sha256Hex(files["tokenizer.json"]) {
		t.Fatalf("File: %s, %v", p, err)
	}
	for _, r := range fh.requests() {
		if r.method != "HEAD" {
			t.Errorf("request %s %s for a cached file", r.method, r.path)
		}
	}
	// Offline reads it through refs/main.
	c.Offline = true
	if p2, err := c.File(ctx, Model, phi3Repo, "", nestedFile); err != nil || !strings.HasSuffix(p2, filepath.FromSlash(nestedFile)) {
		t.Errorf("offline nested file: %s, %v", p2, err)
	}
	// A file missing from that cache is fetched next to Python's files.
	c.Offline = false
	p, err = c.File(ctx, Model, phi3Repo, "", "tokenizer.model")
	if err != nil || fileSHA256(t, p) != sha256Hex(files["tokenizer.model"]) {
		t.Errorf("new file into a Python cache: %s, %v", p, err)
	}
}

func TestDatasetFiles(t *testing.T) {
	fh, _, csv := newFakeWithRepos(t)
	c := fh.client(t)
	ctx := context.Background()
	paths, err := c.DatasetFiles(ctx, yodaRepo, "train")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 1 || filepath.Base(paths[0]) != "sentences.csv" {
		t.Fatalf("train files %q, want [.../sentences.csv]", paths)
	}
	if fileSHA256(t, paths[0]) != sha256Hex(csv) {
		t.Error("sentences.csv content differs")
	}
	if want := filepath.Join(c.CacheDir, "datasets--dvgodoy--yoda_sentences", "snapshots", yodaCommit, "sentences.csv"); paths[0] != want {
		t.Errorf("path %s, want %s", paths[0], want)
	}
	if fh.count("hub", "/datasets/"+yodaRepo+"/resolve/") == 0 || fh.count("hub", "/api/datasets/"+yodaRepo+"/revision/main") != 1 {
		t.Errorf("data set URLs not used: %+v", fh.requests())
	}
	if _, err := c.DatasetFiles(ctx, yodaRepo, "test"); err == nil || !strings.Contains(err.Error(), `"train"`) {
		t.Errorf("split test: %v, want an error saying the files form train", err)
	}
	c.Offline = true
	if p2, err := c.DatasetFiles(ctx, yodaRepo, "train"); err != nil || !slices.Equal(p2, paths) {
		t.Errorf("offline: %q, %v", p2, err)
	}
}

func TestSplitFiles(t *testing.T) {
	cases := []struct {
		name  string
		files []string
		split string
		want  []string // nil: an error
	}{
		{"one file is train", []string{"README.md", ".gitattributes", "sentences.csv"}, "train", []string{"sentences.csv"}},
		{"one file, no test", []string{"sentences.csv"}, "test", nil},
		{"file names", []string{"train.csv", "test.csv", "valid.csv"}, "validation", []string{"valid.csv"}},
		{"file names test", []string{"my_train_file.jsonl", "my_test-1.jsonl", "eval.jsonl"}, "test", []string{"eval.jsonl", "my_test-1.jsonl"}},
		{"keyword must be delimited", []string{"trainer.csv", "data.csv"}, "train", []string{"data.csv", "trainer.csv"}},
		{"folders", []string{"data/training/a.parquet", "data/training/b.parquet", "data/test/c.parquet"}, "train", []string{"data/training/a.parquet", "data/training/b.parquet"}},
		{"sharded", []string{"data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "data/test-00000-of-00001.parquet"}, "train", []string{"data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"}},
		{"sharded custom split", []string{"data/train-00000-of-00001.parquet", "data/extra-00000-of-00001.parquet"}, "extra", []string{"data/extra-00000-of-00001.parquet"}},
		{"sharded names win over folders", []string{"data/train-00000-of-00001.parquet", "test/notes.csv"}, "train", []string{"data/train-00000-of-00001.parquet"}},
		{"custom split by name", []string{"train.json", "holdout.json"}, "holdout", []string{"holdout.json"}},
		{"missing split among named ones", []string{"train.csv", "test.csv"}, "validation", nil},
		{"hidden and metadata skipped", []string{".cache/x.csv", "__pycache__/y.json", "dataset_infos.json", "rows.JSONL"}, "train", []string{"rows.JSONL"}},
		{"no data files", []string{"README.md", "script.py"}, "train", nil},
	}
	for _, tc := range cases {
		got, err := splitFiles(tc.files, tc.split)
		if tc.want == nil {
			if err == nil {
				t.Errorf("%s: got %q, want an error", tc.name, got)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestGitBlobID(t *testing.T) {
	// huggingface_hub's utils.sha.git_hash docstring: git_hash(b"Hello, World!").
	v := newVerifier(&fileMeta{etag: "b45ef6fec89518d314f546fd6c3025367b721684", size: 13})
	v.Write([]byte("Hello, World!"))
	if err := v.verify("hello", 13); err != nil {
		t.Error(err)
	}
	v.reset()
	v.Write([]byte("Hello, World?"))
	if err := v.verify("hello", 13); !errors.Is(err, ErrChecksum) {
		t.Errorf("altered content passed: %v", err)
	}
}

func TestUnwritableCacheIsReported(t *testing.T) {
	fh, _, _ := newFakeWithRepos(t)
	c := fh.client(t)
	// A cache "folder" below a regular file cannot be created, even by root.
	blocker := filepath.Join(t.TempDir(), "not-a-folder")
	os.WriteFile(blocker, nil, 0o644)
	c.CacheDir = filepath.Join(blocker, "hub")
	_, err := c.File(context.Background(), Model, phi3Repo, "", "tokenizer_config.json")
	if err == nil || !strings.Contains(err.Error(), "HF_HUB_CACHE") || !strings.Contains(err.Error(), blocker) {
		t.Errorf("unwritable cache: %v, want an error naming the folder and HF_HUB_CACHE", err)
	}
}
