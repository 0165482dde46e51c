package hub

import (
	"context"
	"errors"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"
)

// DatasetFiles returns the local paths of the data files of one split of a
// data set repository at main, downloading them as needed. It is the
// interface the data package takes.
func (c *Client) DatasetFiles(ctx context.Context, repoID, split string) ([]string, error) {
	return c.DatasetFilesAt(ctx, repoID, DefaultRevision, split)
}

// DatasetFilesAt is DatasetFiles at a given revision.
//
// Which files make a split follows the datasets library's default rules
// (data_files.py), without the README's "configs" section:
//
//  1. data files are .csv, .json, .jsonl and .parquet files outside hidden
//     (".x", "__x") folders;
//  2. if some are named data/<split>-NNNNN-of-NNNNN…, those give the splits;
//  3. else if some folder is named after a split keyword (train/training,
//     validation/valid/dev/val, test/testing/eval/evaluation, or the split
//     itself), delimited by -._ space or digits, folders give the splits;
//  4. else if some file name holds a keyword so delimited (train.csv,
//     my_test-1.jsonl), file names give the splits;
//  5. else every data file belongs to "train".
func (c *Client) DatasetFilesAt(ctx context.Context, repoID, revision, split string) ([]string, error) {
	if revision == "" {
		revision = DefaultRevision
	}
	if split == "" {
		split = "train"
	}
	if err := c.check(Dataset, repoID, revision); err != nil {
		return nil, err
	}
	commit, files, err := c.listFiles(ctx, Dataset, repoID, revision)
	if err != nil {
		return nil, err
	}
	chosen, err := splitFiles(files, split)
	if err != nil {
		return nil, fmt.Errorf("hub: dataset %s at revision %q: %w", repoID, revision, err)
	}
	paths := make([]string, 0, len(chosen))
	for _, f := range chosen {
		p, err := c.File(ctx, Dataset, repoID, commit, f)
		if err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	if !c.Offline {
		if err := writeRef(c.storageFolder(Dataset, repoID), revision, commit); err != nil {
			return nil, err
		}
	}
	return paths, nil
}

// listFiles resolves a revision and lists its files: from the Hub, or from
// the cached snapshot when offline or when the Hub cannot be used.
func (c *Client) listFiles(ctx context.Context, kind RepoKind, repo, revision string) (string, []string, error) {
	var cause error
	if !c.Offline {
		info, err := c.repoInfo(ctx, kind, repo, revision)
		if err == nil {
			return info.sha, info.files, nil
		}
		var se *StatusError
		if ctx.Err() != nil || (errors.As(err, &se) && se.notFoundHere()) {
			return "", nil, err
		}
		cause = err
	}
	storage := c.storageFolder(kind, repo)
	commit, ok, err := cachedCommit(storage, revision)
	if err != nil {
		return "", nil, err
	}
	if ok {
		if files, err := snapshotFiles(pointerPath(storage, commit, "")); err == nil && len(files) > 0 {
			return commit, files, nil
		}
	}
	var se *StatusError
	if errors.As(cause, &se) {
		return "", nil, cause // the Hub's own answer says more than "not cached"
	}
	return "", nil, notCachedError(kind, repo, revision, "", c.CacheDir, c.Offline, cause)
}

var dataExtensions = map[string]bool{".csv": true, ".json": true, ".jsonl": true, ".parquet": true}

// metadataFiles are JSON files the datasets library writes beside the data.
var metadataFiles = map[string]bool{"dataset_infos.json": true, "dataset_info.json": true, "dataset_dict.json": true, "state.json": true}

// splitKeywords is datasets' SPLIT_KEYWORDS.
var splitKeywords = map[string][]string{
	"train":      {"train", "training"},
	"validation": {"validation", "valid", "dev", "val"},
	"test":       {"test", "testing", "eval", "evaluation"},
}

// sep is datasets' NON_WORDS_CHARS: what may delimit a split keyword.
const sep = `[-._ 0-9]`

var shardedPattern = regexp.MustCompile(`^data/(\w+(?:\.\w+)*)-[0-9]{5}-of-[0-9]{5}[^/]*\.[^/]*$`)

// splitFiles picks the files of split among a repository's files.
func splitFiles(files []string, split string) ([]string, error) {
	var data []string
	for _, f := range files {
		if isDataFile(f) {
			data = append(data, f)
		}
	}
	sort.Strings(data)
	if len(data) == 0 {
		return nil, fmt.Errorf("no data files (.csv, .json, .jsonl, .parquet) among %s", listSome(files))
	}

	// data/<split>-00000-of-00001.parquet, as push_to_hub writes.
	sharded := map[string][]string{}
	for _, f := range data {
		if m := shardedPattern.FindStringSubmatch(f); m != nil {
			sharded[m[1]] = append(sharded[m[1]], f)
		}
	}
	if len(sharded) > 0 {
		return pick(sharded, split)
	}

	names := []string{"train", "validation", "test"}
	if splitKeywords[split] == nil {
		names = append(names, split)
	}
	for _, inDir := range []bool{true, false} {
		found := map[string][]string{}
		for _, name := range names {
			kws := splitKeywords[name]
			if kws == nil {
				kws = []string{name}
			}
			match := keywordMatcher(kws, inDir)
			for _, f := range data {
				if match(f) {
					found[name] = append(found[name], f)
				}
			}
		}
		if len(found) > 0 {
			return pick(found, split)
		}
	}
	if split == "train" {
		return data, nil
	}
	return nil, fmt.Errorf("no split %q: no file or folder is named after it, so all data files (%s) form the split \"train\"", split, listSome(data))
}

func pick(splits map[string][]string, split string) ([]string, error) {
	if fs := splits[split]; len(fs) > 0 {
		return fs, nil
	}
	var have []string
	for s := range splits {
		have = append(have, s)
	}
	sort.Strings(have)
	return nil, fmt.Errorf("no split %q: the data files form the splits %s", split, strings.Join(have, ", "))
}

func isDataFile(f string) bool {
	for _, part := range strings.Split(f, "/") {
		if strings.HasPrefix(part, ".") || strings.HasPrefix(part, "__") {
			return false
		}
	}
	base := path.Base(f)
	return dataExtensions[strings.ToLower(path.Ext(base))] && !metadataFiles[base]
}

// keywordMatcher tells whether one of kws, delimited by sep characters or
// the ends of the name, appears in a folder name of a path (inDir) or in its
// file name (datasets' KEYWORDS_IN_DIR_NAME / _IN_FILENAME patterns).
func keywordMatcher(kws []string, inDir bool) func(string) bool {
	alt := make([]string, len(kws))
	for i, kw := range kws {
		alt[i] = regexp.QuoteMeta(kw)
	}
	k := `(?:` + strings.Join(alt, `|`) + `)`
	if !inDir {
		re := regexp.MustCompile(`(?:^|` + sep + `)` + k + sep)
		return func(f string) bool { return re.MatchString(path.Base(f)) }
	}
	re := regexp.MustCompile(`(?:^|` + sep + `)` + k + `(?:$|` + sep + `)`)
	return func(f string) bool {
		parts := strings.Split(f, "/")
		for _, d := range parts[:len(parts)-1] {
			if re.MatchString(d) {
				return true
			}
		}
		return false
	}
}
