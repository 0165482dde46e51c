package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strings"
)

// Snapshot downloads the files of a repository at a revision ("" means
// main) that match any of the allow patterns (fnmatch globs as
// huggingface_hub's allow_patterns: '*' also crosses '/', a pattern ending in
// '/' means the whole folder; none means every file) and returns the
// snapshot folder snapshots/<commit>/ that holds them.
//
// Files already cached cost no request: once the revision is resolved to a
// commit, each file is looked up in the snapshot first.
func (c *Client) Snapshot(ctx context.Context, kind RepoKind, repo, revision string, allow []string) (string, error) {
	if revision == "" {
		revision = DefaultRevision
	}
	if err := c.check(kind, repo, revision); err != nil {
		return "", err
	}
	match, err := compileGlobs(allow)
	if err != nil {
		return "", err
	}
	if c.Offline {
		return c.cachedSnapshot(kind, repo, revision, allow, match, nil)
	}
	info, err := c.repoInfo(ctx, kind, repo, revision)
	if err != nil {
		var se *StatusError
		if ctx.Err() != nil || (errors.As(err, &se) && se.notFoundHere()) {
			return "", err
		}
		dir, cerr := c.cachedSnapshot(kind, repo, revision, allow, match, err)
		if cerr != nil && se != nil {
			return "", err // the Hub's own answer says more than "not cached"
		}
		return dir, cerr
	}
	var files []string
	for _, f := range info.files {
		if match(f) {
			files = append(files, f)
		}
	}
	if len(files) == 0 {
		return "", fmt.Errorf("hub: no file of %s %s at revision %q matches %q; it has: %s", kind, repo, revision, allow, listSome(info.files))
	}
	for _, f := range files {
		if _, err := c.File(ctx, kind, repo, info.sha, f); err != nil {
			return "", err
		}
	}
	storage := c.storageFolder(kind, repo)
	if err := writeRef(storage, revision, info.sha); err != nil {
		return "", err
	}
	return pointerPath(storage, info.sha, ""), nil
}

// cachedSnapshot serves Snapshot from the cache: the revision's commit
// through refs/, and at least one file matching allow in its folder.
func (c *Client) cachedSnapshot(kind RepoKind, repo, revision string, allow []string, match func(string) bool, cause error) (string, error) {
	storage := c.storageFolder(kind, repo)
	commit, ok, err := cachedCommit(storage, revision)
	if err != nil {
		return "", err
	}
	if !ok {
		return "", notCachedError(kind, repo, revision, "", c.CacheDir, c.Offline, cause)
	}
	dir := pointerPath(storage, commit, "")
	files, err := snapshotFiles(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	for _, f := range files {
		if match(f) {
			return dir, nil
		}
	}
	what := ""
	if len(allow) > 0 {
		what = fmt.Sprintf(" (files matching %q)", allow)
	}
	return "", notCachedError(kind, repo, revision+what, "", c.CacheDir, c.Offline, cause)
}

// revisionInfo is what the revision API says about a repository.
type revisionInfo struct {
	sha   string
	files []string
}

// repoInfo is HfApi.model_info / dataset_info for one revision:
// GET /api/{models|datasets}/{repo}/revision/{revision}.
func (c *Client) repoInfo(ctx context.Context, kind RepoKind, repo, revision string) (*revisionInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, c.metadataTimeout())
	defer cancel()
	u := c.endpoint() + "/api/" + kind.plural() + "/" + repo + "/revision/" + url.PathEscape(revision)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("hub: bad endpoint %q (HF_ENDPOINT): %w", c.endpoint(), err)
	}
	c.setHeaders(req, true)
	resp, err := c.httpClient().Do(req)
	if err != nil {
		return nil, fmt.Errorf("hub: GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 400 {
		return nil, newStatusError(resp, kind, repo, revision, "", c.endpoint())
	}
	var raw struct {
		SHA      string `json:"sha"`
		Siblings []struct {
			RFilename string `json:"rfilename"`
		} `json:"siblings"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&raw); err != nil {
		return nil, fmt.Errorf("hub: GET %s: decode repository info: %w (is HF_ENDPOINT a Hugging Face Hub?)", u, err)
	}
	if !safeName.MatchString(raw.SHA) {
		return nil, fmt.Errorf("hub: GET %s: the answer has no valid commit \"sha\" (got %q)", u, raw.SHA)
	}
	info := &revisionInfo{sha: raw.SHA}
	for _, s := range raw.Siblings {
		if err := checkRepoPath(s.RFilename); err != nil {
			return nil, fmt.Errorf("hub: GET %s: %w", u, err)
		}
		info.files = append(info.files, s.RFilename)
	}
	sort.Strings(info.files)
	return info, nil
}

// compileGlobs turns allow patterns into one matcher. No pattern matches
// everything.
func compileGlobs(patterns []string) (func(string) bool, error) {
	if len(patterns) == 0 {
		return func(string) bool { return true }, nil
	}
	res := make([]*regexp.Regexp, 0, len(patterns))
	for _, p := range patterns {
		re, err := globRegexp(p)
		if err != nil {
			return nil, err
		}
		res = append(res, re)
	}
	return func(name string) bool {
		for _, re := range res {
			if re.MatchString(name) {
				return true
			}
		}
		return false
	}, nil
}

// globRegexp translates a Python fnmatch pattern: '*' is any run of
// characters (slashes included), '?' one character, [seq] and [!seq] a set.
// A trailing '/' selects everything below that folder (filter_repo_objects).
func globRegexp(pattern string) (*regexp.Regexp, error) {
	if strings.HasSuffix(pattern, "/") {
		pattern += "*"
	}
	var b strings.Builder
	b.WriteString(`^(?s:`)
	rs := []rune(pattern)
	for i := 0; i < len(rs); i++ {
		switch ch := rs[i]; ch {
		case '*':
			b.WriteString(`.*`)
		case '?':
			b.WriteString(`.`)
		case '[':
			j := i + 1
			if j < len(rs) && rs[j] == '!' {
				j++
			}
			if j < len(rs) && rs[j] == ']' {
				j++
			}
			for j < len(rs) && rs[j] != ']' {
				j++
			}
			if j >= len(rs) { // no closing bracket: a literal '['
				b.WriteString(`\[`)
				continue
			}
			set := string(rs[i+1 : j])
			neg := strings.HasPrefix(set, "!")
			if neg {
				set = set[1:]
			}
			set = strings.ReplaceAll(set, `\`, `\\`)
			set = strings.ReplaceAll(set, `[`, `\[`)
			if neg {
				b.WriteString(`[^` + set + `]`)
			} else if strings.HasPrefix(set, "^") {
				b.WriteString(`[\` + set + `]`)
			} else {
				b.WriteString(`[` + set + `]`)
			}
			i = j
		default:
			b.WriteString(regexp.QuoteMeta(string(ch)))
		}
	}
	b.WriteString(`)$`)
	re, err := regexp.Compile(b.String())
	if err != nil {
		return nil, fmt.Errorf("hub: bad file pattern %q: %w", pattern, err)
	}
	return re, nil
}

func listSome(files []string) string {
	const max = 20
	if len(files) == 0 {
		return "no files"
	}
	if len(files) > max {
		return strings.Join(files[:max], ", ") + fmt.Sprintf(", … (%d more)", len(files)-max)
	}
	return strings.Join(files, ", ")
}
