// Package hub downloads model and data set files from the Hugging Face Hub
// (or a mirror named by HF_ENDPOINT) into the cache that Python's
// huggingface_hub uses, so that either side reuses what the other fetched.
//
// The protocol and the cache follow huggingface_hub's file_download.py:
//
//   - GET {endpoint}/api/{models|datasets}/{repo}/revision/{rev} resolves a
//     branch or tag to a commit and lists the repository's files;
//   - HEAD {endpoint}/[datasets/]{repo}/resolve/{rev}/{file}, without
//     following redirects (except relative ones, a renamed repository), gives
//     the commit (X-Repo-Commit), the blob's ETag (X-Linked-Etag for LFS
//     files, whose body lives on a CDN, else ETag) and its size
//     (X-Linked-Size, else Content-Length);
//   - the body is fetched from the redirect's Location (without the token when
//     it is another host), appended to blobs/<etag>.incomplete and resumed
//     with a Range request after a dropped connection;
//   - the cache folder is HF_HUB_CACHE, else HF_HOME/hub, else
//     ~/.cache/huggingface/hub, holding
//     models--org--name/blobs/<etag>,
//     models--org--name/snapshots/<commit>/<path> (a relative symlink to the
//     blob) and models--org--name/refs/<revision> (the commit, no newline).
//
// Verification. The Hub's ETag names the content: for an LFS file it is the
// sha256 of the file, for a file kept in git it is the git blob id,
// sha1("blob <size>\x00" + content). Both are checked, together with the
// size, before a blob is moved into blobs/; a mismatch deletes the download
// and returns ErrChecksum. An ETag of any other form (some mirrors) can only
// be checked for size.
//
// Offline mode (HF_HUB_OFFLINE=1) serves from the cache only and reports a
// missing file as ErrNotCached. Online, a network failure or a Hub error
// other than "revision/file not found" falls back to the cache when the file
// is there, as huggingface_hub does.
//
// Progress is reported through Client.Progress; the terminal bar lives in the
// sub-package termprogress so the library itself draws nothing.
package hub
