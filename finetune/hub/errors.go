package hub

import (
	"errors"
	"fmt"
	"net/http"
)

// Sentinel errors, for errors.Is. The errors returned carry the repository,
// revision and file involved and say what to do.
var (
	// ErrUnauthorized: HTTP 401/403 or a gated repository. Set HF_TOKEN.
	ErrUnauthorized = errors.New("access denied")
	// ErrNotFound: the repository, revision or file does not exist.
	ErrNotFound = errors.New("not found")
	// ErrNotCached: offline (or the Hub unreachable) and the file is not in
	// the cache.
	ErrNotCached = errors.New("not in the local cache")
	// ErrChecksum: the downloaded bytes do not match the size or hash the
	// Hub announced; the download was deleted.
	ErrChecksum = errors.New("checksum mismatch")
)

// StatusError is a Hub answer other than success. Code is the Hub's
// X-Error-Code header (RepoNotFound, RevisionNotFound, EntryNotFound,
// GatedRepo), which tells the 404s apart.
type StatusError struct {
	Kind     RepoKind
	Repo     string
	Revision string
	File     string // "" for repository-level calls
	URL      string
	Status   int
	Code     string
	Message  string // X-Error-Message, if any
	endpoint string
}

func newStatusError(resp *http.Response, kind RepoKind, repo, rev, file, endpoint string) *StatusError {
	return &StatusError{
		Kind: kind, Repo: repo, Revision: rev, File: file,
		URL:      resp.Request.URL.String(),
		Status:   resp.StatusCode,
		Code:     resp.Header.Get("X-Error-Code"),
		Message:  resp.Header.Get("X-Error-Message"),
		endpoint: endpoint,
	}
}

// Unwrap gives ErrUnauthorized, ErrNotFound or both: the Hub answers 401
// RepoNotFound both for a missing repository and for a private one seen
// without a valid token.
func (e *StatusError) Unwrap() []error {
	var errs []error
	if e.Status == http.StatusUnauthorized || e.Status == http.StatusForbidden || e.Code == "GatedRepo" {
		errs = append(errs, ErrUnauthorized)
	}
	switch e.Code {
	case "RepoNotFound", "RevisionNotFound", "EntryNotFound":
		errs = append(errs, ErrNotFound)
	default:
		if e.Status == http.StatusNotFound {
			errs = append(errs, ErrNotFound)
		}
	}
	return errs
}

// notFoundHere is a 404 that names a revision or a file of a repository the
// Hub did find: the cache cannot stand in for it (huggingface_hub re-raises
// these instead of falling back to the cache).
func (e *StatusError) notFoundHere() bool {
	return e.Code == "RevisionNotFound" || e.Code == "EntryNotFound"
}

func (e *StatusError) Error() string {
	what := fmt.Sprintf("%s %s", e.Kind, e.Repo)
	if e.File != "" {
		what = fmt.Sprintf("%s %s, file %q at revision %q", e.Kind, e.Repo, e.File, e.Revision)
	} else if e.Revision != "" {
		what = fmt.Sprintf("%s %s at revision %q", e.Kind, e.Repo, e.Revision)
	}
	status := fmt.Sprintf("HTTP %d", e.Status)
	if e.Code != "" {
		status += " " + e.Code
	}
	if e.Message != "" {
		status += ": " + e.Message
	}
	page := e.endpoint + "/" + e.Kind.urlPrefix() + e.Repo
	var why string
	switch {
	case e.Code == "GatedRepo":
		why = fmt.Sprintf("the repository is gated: accept its terms at %s and set HF_TOKEN to a token of that account", page)
	case e.Code == "RevisionNotFound":
		why = fmt.Sprintf("revision %q does not exist in %s %s: check the branch, tag or commit", e.Revision, e.Kind, e.Repo)
	case e.Code == "EntryNotFound":
		why = fmt.Sprintf("file %q does not exist in %s %s at revision %q", e.File, e.Kind, e.Repo, e.Revision)
	case e.Status == http.StatusUnauthorized || e.Code == "RepoNotFound":
		// The Hub answers 401 for a repository that does not exist as well
		// as for a private one when no valid token is sent.
		why = fmt.Sprintf("the %s repository %q does not exist, or it is private or gated: check the id (and that it is a %s), and set HF_TOKEN to a token that can read it", e.Kind, e.Repo, e.Kind)
	case e.Status == http.StatusForbidden:
		why = fmt.Sprintf("the token has no access to %s %s: request access at %s, or set HF_TOKEN to a token with read permission", e.Kind, e.Repo, page)
	case e.Status == http.StatusNotFound:
		if e.File != "" {
			why = fmt.Sprintf("%s %s, revision %q or file %q was not found", e.Kind, e.Repo, e.Revision, e.File)
		} else {
			why = fmt.Sprintf("%s %s or revision %q was not found", e.Kind, e.Repo, e.Revision)
		}
	case e.Status >= 500:
		why = "the Hub (or mirror) is failing: try again later"
	case e.Status == http.StatusTooManyRequests:
		why = "rate limited by the Hub: wait and retry, or set HF_TOKEN to get a higher limit"
	default:
		why = "unexpected answer from the Hub"
	}
	return fmt.Sprintf("hub: %s: %s (%s at %s)", what, why, status, e.URL)
}

// ChecksumError tells which file failed verification and how.
type ChecksumError struct {
	File     string
	Check    string // "size", "sha256" or "git-sha1"
	Expected string
	Actual   string
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("hub: %s: %s mismatch: expected %s, got %s; the download was deleted, retry (a persisting mismatch means a broken mirror or proxy)", e.File, e.Check, e.Expected, e.Actual)
}

func (e *ChecksumError) Unwrap() error { return ErrChecksum }

// notCachedError says the file is missing from the cache and why the network
// could not be used.
func notCachedError(kind RepoKind, repo, rev, file, cacheDir string, offline bool, cause error) error {
	what := fmt.Sprintf("%s %s at revision %q", kind, repo, rev)
	if file != "" {
		what = fmt.Sprintf("file %q of %s", file, what)
	}
	if offline {
		return fmt.Errorf("hub: %s is %w %s and offline mode is on (HF_HUB_OFFLINE): unset HF_HUB_OFFLINE to download it, or fetch it once on a connected machine into that cache", what, ErrNotCached, cacheDir)
	}
	return fmt.Errorf("hub: %s is %w %s, and the Hub could not be used: %w", what, ErrNotCached, cacheDir, cause)
}
