package hub

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// File returns the local path of one file of a repository at a revision
// ("" means main), downloading it into the cache when it is not there yet.
// The path is inside snapshots/<commit>/ and stays valid while the cache does.
func (c *Client) File(ctx context.Context, kind RepoKind, repo, revision, path string) (string, error) {
	if revision == "" {
		revision = DefaultRevision
	}
	if err := c.check(kind, repo, revision); err != nil {
		return "", err
	}
	if err := checkRepoPath(path); err != nil {
		return "", err
	}
	storage := c.storageFolder(kind, repo)

	// A commit hash names immutable content: if the cache has it, no request.
	if isCommitHash(revision) || c.Offline {
		p, ok, err := lookupCached(storage, revision, path)
		if err != nil {
			return "", err
		}
		if ok {
			return p, nil
		}
		if c.Offline {
			return "", notCachedError(kind, repo, revision, path, c.CacheDir, true, nil)
		}
	}

	meta, err := c.fileMetadata(ctx, kind, repo, revision, path)
	if err != nil {
		return c.fromCacheAfter(ctx, err, kind, repo, revision, path)
	}
	local, err := c.fetch(ctx, kind, repo, path, meta)
	if err != nil {
		return "", err
	}
	if err := writeRef(storage, revision, meta.commit); err != nil {
		return "", err
	}
	return local, nil
}

func (c *Client) check(kind RepoKind, repo, revision string) error {
	if err := checkRepo(kind, repo); err != nil {
		return err
	}
	if err := checkRevision(revision); err != nil {
		return err
	}
	if c.CacheDir == "" {
		return errors.New("hub: Client.CacheDir is empty: build the client with hub.NewFromEnv or set CacheDir")
	}
	return nil
}

// fromCacheAfter is huggingface_hub's fallback when the HEAD call fails: a
// network error, a server error or a refused token still lets a cached copy
// be used; "this revision or file does not exist" does not.
func (c *Client) fromCacheAfter(ctx context.Context, cause error, kind RepoKind, repo, revision, path string) (string, error) {
	var se *StatusError
	isStatus := errors.As(cause, &se)
	if ctx.Err() != nil || (isStatus && se.notFoundHere()) {
		return "", cause
	}
	if p, ok, err := lookupCached(c.storageFolder(kind, repo), revision, path); err == nil && ok {
		return p, nil
	}
	if isStatus {
		return "", cause
	}
	return "", notCachedError(kind, repo, revision, path, c.CacheDir, false, cause)
}

// fileMeta is what the HEAD call tells about one file.
type fileMeta struct {
	commit   string // X-Repo-Commit
	etag     string // blob id: sha256 for LFS, git sha1 otherwise
	size     int64
	location string // where to GET the body (a CDN for LFS files)
	auth     bool   // location is on the Hub's host: send the token
}

// escapePath percent-encodes each segment of a repo path, keeping the
// slashes (Python's quote(filename)).
func escapePath(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return strings.Join(segs, "/")
}

func (c *Client) resolveURL(kind RepoKind, repo, revision, path string) string {
	return c.endpoint() + "/" + kind.urlPrefix() + repo + "/resolve/" + url.PathEscape(revision) + "/" + escapePath(path)
}

// fileMetadata is get_hf_file_metadata: a HEAD that follows only relative
// redirects (a renamed repository) and reads the X-Repo-Commit,
// X-Linked-Etag/ETag and X-Linked-Size/Content-Length headers.
func (c *Client) fileMetadata(ctx context.Context, kind RepoKind, repo, revision, path string) (*fileMeta, error) {
	ctx, cancel := context.WithTimeout(ctx, c.metadataTimeout())
	defer cancel()
	first, err := url.Parse(c.resolveURL(kind, repo, revision, path))
	if err != nil {
		return nil, fmt.Errorf("hub: bad endpoint %q (HF_ENDPOINT): %w", c.endpoint(), err)
	}
	hc := c.noRedirectClient()
	cur := first
	for hops := 0; ; hops++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, cur.String(), nil)
		if err != nil {
			return nil, fmt.Errorf("hub: HEAD %s: %w", cur, err)
		}
		c.setHeaders(req, true)
		// The size must be the file's, not a compressed transfer's.
		req.Header.Set("Accept-Encoding", "identity")
		resp, err := hc.Do(req)
		if err != nil {
			return nil, fmt.Errorf("hub: HEAD %s: %w", cur, err)
		}
		resp.Body.Close()
		if resp.StatusCode >= 400 {
			return nil, newStatusError(resp, kind, repo, revision, path, c.endpoint())
		}
		m := &fileMeta{location: cur.String(), auth: true}
		if resp.StatusCode >= 300 {
			loc := resp.Header.Get("Location")
			target, err := cur.Parse(loc)
			if loc == "" || err != nil {
				return nil, fmt.Errorf("hub: HEAD %s: HTTP %d with a bad Location %q", cur, resp.StatusCode, loc)
			}
			if lu, _ := url.Parse(loc); lu != nil && lu.Host == "" {
				if hops >= 10 {
					return nil, fmt.Errorf("hub: HEAD %s: too many redirects", first)
				}
				cur = target
				continue
			}
			m.location = target.String()
			// A signed CDN URL on another host must not receive the token.
			m.auth = target.Host == first.Host
		}
		m.commit = resp.Header.Get("X-Repo-Commit")
		m.etag = normalizeETag(resp.Header.Get("X-Linked-Etag"))
		if m.etag == "" {
			m.etag = normalizeETag(resp.Header.Get("ETag"))
		}
		m.size = -1
		if v := resp.Header.Get("X-Linked-Size"); v != "" {
			m.size, _ = strconv.ParseInt(v, 10, 64)
		} else if v := resp.Header.Get("Content-Length"); v != "" {
			m.size, _ = strconv.ParseInt(v, 10, 64)
		} else if resp.ContentLength >= 0 {
			m.size = resp.ContentLength
		}
		switch {
		case m.commit == "":
			return nil, fmt.Errorf("hub: HEAD %s: no X-Repo-Commit header: %s does not answer like the Hugging Face Hub; check HF_ENDPOINT and any proxy", cur, c.endpoint())
		case !safeName.MatchString(m.commit):
			return nil, fmt.Errorf("hub: HEAD %s: X-Repo-Commit %q is not a commit id", cur, m.commit)
		case m.etag == "":
			return nil, fmt.Errorf("hub: HEAD %s: no ETag header, so the download could not be verified or cached", cur)
		case !safeName.MatchString(m.etag):
			return nil, fmt.Errorf("hub: HEAD %s: ETag %q cannot name a cache blob", cur, m.etag)
		case m.size < 0:
			return nil, fmt.Errorf("hub: HEAD %s: no X-Linked-Size or Content-Length header", cur)
		}
		return m, nil
	}
}

// normalizeETag strips the weak marker and the quotes (_normalize_etag).
func normalizeETag(v string) string {
	return strings.Trim(strings.TrimPrefix(strings.TrimSpace(v), "W/"), `"`)
}

// fetch puts the file's blob in the cache (if missing) and links
// snapshots/<commit>/<path> to it.
func (c *Client) fetch(ctx context.Context, kind RepoKind, repo, path string, m *fileMeta) (string, error) {
	storage := c.storageFolder(kind, repo)
	blob := blobPath(storage, m.etag)
	pointer := pointerPath(storage, m.commit, path)
	if fi, err := os.Stat(pointer); err == nil && fi.Mode().IsRegular() {
		return pointer, nil
	}
	if fi, err := os.Stat(blob); err == nil && fi.Mode().IsRegular() {
		return pointer, linkPointer(blob, pointer)
	}
	if err := os.MkdirAll(filepath.Dir(blob), 0o755); err != nil {
		return "", fmt.Errorf("hub: create cache folder %s: %w (set HF_HUB_CACHE to a writable folder)", filepath.Dir(blob), err)
	}
	unlock, err := lockFile(filepath.Join(c.CacheDir, ".locks", repoFolderName(kind, repo), m.etag+".lock"))
	if err != nil {
		return "", err
	}
	defer unlock()
	// Another process may have finished the blob while we waited.
	if _, err := os.Stat(blob); err != nil {
		if err := c.download(ctx, path, m, blob); err != nil {
			return "", err
		}
	}
	return pointer, linkPointer(blob, pointer)
}

// verifier hashes a file as it arrives, in the form its ETag names.
type verifier struct {
	check string // "sha256", "git-sha1" or "" (size only)
	h     hash.Hash
	want  string
	size  int64
}

func newVerifier(m *fileMeta) *verifier {
	v := &verifier{want: m.etag, size: m.size}
	v.reset()
	return v
}

func (v *verifier) reset() {
	switch {
	case sha256Pattern.MatchString(v.want):
		v.check, v.h = "sha256", sha256.New()
	case commitPattern.MatchString(v.want):
		// git's blob id: sha1 over a "blob <size>\0" header and the content.
		v.check, v.h = "git-sha1", sha1.New()
		fmt.Fprintf(v.h, "blob %d\x00", v.size)
	default:
		v.check, v.h = "", nil
	}
}

func (v *verifier) Write(p []byte) (int, error) {
	if v.h != nil {
		v.h.Write(p)
	}
	return len(p), nil
}

func (v *verifier) verify(file string, got int64) error {
	if got != v.size {
		return &ChecksumError{File: file, Check: "size", Expected: fmt.Sprintf("%d bytes", v.size), Actual: fmt.Sprintf("%d bytes", got)}
	}
	if v.h == nil {
		return nil
	}
	if sum := hex.EncodeToString(v.h.Sum(nil)); sum != v.want {
		return &ChecksumError{File: file, Check: v.check, Expected: v.want, Actual: sum}
	}
	return nil
}

// partial is a download in progress: blobs/<etag>.incomplete, how much of it
// is there, and the hash of that much.
type partial struct {
	f    *os.File
	have int64
	v    *verifier
}

func (p *partial) restart() error {
	if err := p.f.Truncate(0); err != nil {
		return err
	}
	if _, err := p.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	p.have = 0
	p.v.reset()
	return nil
}

// download fills blob from m.location, as _download_to_tmp_and_move and
// http_get: append to <blob>.incomplete (resuming what a previous run left
// with a Range request), retry a dropped connection from where it stopped,
// verify, then rename into place.
func (c *Client) download(ctx context.Context, file string, m *fileMeta, blob string) error {
	incomplete := blob + ".incomplete"
	f, err := os.OpenFile(incomplete, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("hub: download %s: %w (set HF_HUB_CACHE to a writable folder)", file, err)
	}
	p := &partial{f: f, v: newVerifier(m)}
	keep := false // keep the .incomplete file for a later resume
	defer func() {
		f.Close()
		if !keep {
			os.Remove(incomplete)
		}
	}()

	// Hash what an earlier run left, so the whole file is verified.
	if p.have, err = io.Copy(p.v, f); err != nil {
		return fmt.Errorf("hub: read partial download %s: %w", incomplete, err)
	}
	if p.have > m.size {
		if err := p.restart(); err != nil {
			return fmt.Errorf("hub: reset partial download %s: %w", incomplete, err)
		}
	}
	if free := freeSpace(filepath.Dir(blob)); free >= 0 && free < m.size-p.have {
		return fmt.Errorf("hub: download %s: %d bytes needed but only %d free in %s: free some space or set HF_HUB_CACHE to a larger disk", file, m.size-p.have, free, filepath.Dir(blob))
	}

	retries := c.retries()
	for p.have < m.size || m.size == 0 {
		before := p.have
		done, err := c.getBody(ctx, file, m, p)
		if err == nil && (done || p.have >= m.size) {
			break
		}
		if ctx.Err() != nil {
			keep = true
			return fmt.Errorf("hub: download %s: %w (run again to resume)", file, ctx.Err())
		}
		var fatal *fatalError
		if errors.As(err, &fatal) {
			keep = fatal.keep
			return fatal.err
		}
		if p.have > before {
			retries = c.retries()
		} else if retries--; retries <= 0 {
			keep = true
			return fmt.Errorf("hub: download %s from %s: %w (gave up after %d attempts without progress; run again to resume from byte %d)", file, redact(m.location), err, c.retries(), p.have)
		}
		select {
		case <-ctx.Done():
			keep = true
			return fmt.Errorf("hub: download %s: %w (run again to resume)", file, ctx.Err())
		case <-time.After(c.retryPause()):
		}
	}

	if err := p.v.verify(file, p.have); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("hub: write %s: %w", incomplete, err)
	}
	if err := os.Rename(incomplete, blob); err != nil {
		return fmt.Errorf("hub: move %s into the cache: %w", blob, err)
	}
	keep = true // renamed: nothing to remove
	return nil
}

// fatalError ends a download without retrying (an HTTP error status, a
// disk error). keep says whether the partial file is still good.
type fatalError struct {
	err  error
	keep bool
}

func (e *fatalError) Error() string { return e.err.Error() }
func (e *fatalError) Unwrap() error { return e.err }

// redact drops the query of a signed CDN URL from messages.
func redact(u string) string {
	if i := strings.IndexByte(u, '?'); i >= 0 {
		return u[:i] + "?…"
	}
	return u
}

// getBody makes one GET for the rest of the file and appends it to p.
// It returns done when the server says there is nothing left (416 with the
// file complete). Errors that a retry may cure are returned plain; others
// wrapped in fatalError.
func (c *Client) getBody(ctx context.Context, file string, m *fileMeta, p *partial) (bool, error) {
	// The body may stall: cancel the attempt when no byte came for a while.
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	stall := time.AfterFunc(c.downloadTimeout(), cancel)
	defer stall.Stop()

	req, err := http.NewRequestWithContext(actx, http.MethodGet, m.location, nil)
	if err != nil {
		return false, &fatalError{err: fmt.Errorf("hub: download %s: %w", file, err), keep: true}
	}
	c.setHeaders(req, m.auth)
	req.Header.Set("Accept-Encoding", "identity")
	if p.have > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", p.have))
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()

	switch {
	case resp.StatusCode == http.StatusPartialContent && p.have > 0:
		if start, ok := contentRangeStart(resp.Header.Get("Content-Range")); !ok || start != p.have {
			// Not the bytes we asked for: start over.
			if err := p.restart(); err != nil {
				return false, &fatalError{err: fmt.Errorf("hub: reset %s: %w", p.f.Name(), err)}
			}
			return false, fmt.Errorf("server sent Content-Range %q for Range bytes=%d-", resp.Header.Get("Content-Range"), p.have)
		}
	case resp.StatusCode == http.StatusOK:
		if p.have > 0 { // the server ignored Range: take the whole body
			if err := p.restart(); err != nil {
				return false, &fatalError{err: fmt.Errorf("hub: reset %s: %w", p.f.Name(), err)}
			}
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && p.have > 0:
		if p.have == m.size {
			return true, nil
		}
		if err := p.restart(); err != nil {
			return false, &fatalError{err: fmt.Errorf("hub: reset %s: %w", p.f.Name(), err)}
		}
		return false, fmt.Errorf("HTTP 416 for Range bytes=%d-", p.have)
	case resp.StatusCode >= 500:
		return false, fmt.Errorf("HTTP %d", resp.StatusCode)
	default:
		return false, &fatalError{err: fmt.Errorf("hub: download %s from %s: HTTP %d (%s): retry later; if it persists check HF_TOKEN and HF_ENDPOINT", file, redact(m.location), resp.StatusCode, http.StatusText(resp.StatusCode)), keep: true}
	}

	if c.Progress != nil {
		c.Progress(file, p.have, m.size)
	}
	buf := make([]byte, 1<<20)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			stall.Reset(c.downloadTimeout())
			if p.have+int64(n) > m.size {
				return false, &fatalError{err: &ChecksumError{File: file, Check: "size", Expected: fmt.Sprintf("%d bytes", m.size), Actual: fmt.Sprintf("more than %d bytes", m.size)}}
			}
			if _, err := p.f.Write(buf[:n]); err != nil {
				return false, &fatalError{err: fmt.Errorf("hub: write %s: %w (check free space and permissions of HF_HUB_CACHE)", p.f.Name(), err), keep: true}
			}
			p.v.Write(buf[:n])
			p.have += int64(n)
			if c.Progress != nil {
				c.Progress(file, p.have, m.size)
			}
		}
		if rerr == io.EOF {
			if p.have < m.size {
				return false, fmt.Errorf("body ended at byte %d of %d", p.have, m.size)
			}
			return false, nil
		}
		if rerr != nil {
			return false, rerr
		}
	}
}

// contentRangeStart parses "bytes <start>-<end>/<total>".
func contentRangeStart(v string) (int64, bool) {
	v = strings.TrimSpace(v)
	if !strings.HasPrefix(v, "bytes ") {
		return 0, false
	}
	v = strings.TrimPrefix(v, "bytes ")
	dash := strings.IndexByte(v, '-')
	if dash <= 0 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:dash], 10, 64)
	return n, err == nil
}
