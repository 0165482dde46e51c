package hub

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/ollama-tune/ollama-tune/internal/atomicfile"
)

// The cache layout is huggingface_hub's, so both tools share one cache:
//
//	<cache>/models--org--name/blobs/<etag>
//	<cache>/models--org--name/snapshots/<commit>/<path> -> ../../blobs/<etag>
//	<cache>/models--org--name/refs/<revision>   (the commit, no newline)
//	<cache>/.locks/models--org--name/<etag>.lock

// repoFolderName is huggingface_hub's repo_folder_name:
// "models--org--name", "datasets--org--name".
func repoFolderName(kind RepoKind, repo string) string {
	return kind.plural() + "--" + strings.ReplaceAll(repo, "/", "--")
}

func (c *Client) storageFolder(kind RepoKind, repo string) string {
	return filepath.Join(c.CacheDir, repoFolderName(kind, repo))
}

func pointerPath(storage, commit, file string) string {
	return filepath.Join(storage, "snapshots", commit, filepath.FromSlash(file))
}

func blobPath(storage, etag string) string {
	return filepath.Join(storage, "blobs", etag)
}

// cachedCommit maps a revision to a commit through refs/, as
// huggingface_hub's try_to_load_from_cache does. A full commit hash maps to
// itself. ok is false when the cache has never seen the revision.
func cachedCommit(storage, rev string) (commit string, ok bool, err error) {
	if isCommitHash(rev) {
		return rev, true, nil
	}
	ref := filepath.Join(storage, "refs", filepath.FromSlash(rev))
	b, err := os.ReadFile(ref)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("hub: read cached ref %s: %w", ref, err)
	}
	commit = strings.TrimSpace(string(b))
	if !safeName.MatchString(commit) {
		return "", false, fmt.Errorf("hub: cached ref %s holds %q, not a commit hash: delete the file and retry online", ref, commit)
	}
	return commit, true, nil
}

// writeRef records revision -> commit, as
// _cache_commit_hash_for_specific_revision: only when it changed (the cache
// may be read-only when it is already right), atomically, without a newline
// (Python reads the file verbatim).
func writeRef(storage, rev, commit string) error {
	if rev == commit {
		return nil
	}
	ref := filepath.Join(storage, "refs", filepath.FromSlash(rev))
	if b, err := os.ReadFile(ref); err == nil && strings.TrimSpace(string(b)) == commit {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(ref), 0o755); err != nil {
		return fmt.Errorf("hub: write ref %s: %w", ref, err)
	}
	if err := atomicfile.WriteFile(ref, []byte(commit)); err != nil {
		return fmt.Errorf("hub: %w", err)
	}
	return nil
}

// lookupCached returns the snapshot path of file at rev when the cache holds
// it (the symlink resolves to an existing blob).
func lookupCached(storage, rev, file string) (string, bool, error) {
	commit, ok, err := cachedCommit(storage, rev)
	if err != nil || !ok {
		return "", false, err
	}
	p := pointerPath(storage, commit, file)
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
		return p, true, nil
	}
	return "", false, nil
}

// linkPointer makes snapshots/<commit>/<file> point at the blob with a
// relative symlink (so the cache survives being moved), replacing whatever
// was there. Where symlinks are not allowed it copies the blob, as
// huggingface_hub does.
func linkPointer(blob, pointer string) error {
	dir := filepath.Dir(pointer)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("hub: create snapshot folder %s: %w", dir, err)
	}
	rel, err := filepath.Rel(dir, blob)
	if err != nil {
		rel = blob
	}
	tmp := pointer + atomicfile.TempMarker + randomSuffix()
	if err := os.Symlink(rel, tmp); err != nil {
		if err := atomicfile.Copy(blob, pointer); err != nil {
			return fmt.Errorf("hub: symlinks unavailable in %s and copy failed: %w", dir, err)
		}
		return nil
	}
	if err := os.Rename(tmp, pointer); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("hub: link %s: %w", pointer, err)
	}
	return nil
}

func randomSuffix() string {
	var b [6]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// snapshotFiles lists the files of a cached snapshot folder, repo-relative
// with forward slashes, skipping our own temporary names.
func snapshotFiles(dir string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || strings.Contains(d.Name(), atomicfile.TempMarker) {
			return nil
		}
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() {
			return nil // dangling link: the blob was deleted
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		files = append(files, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hub: list cached snapshot %s: %w", dir, err)
	}
	return files, nil
}
