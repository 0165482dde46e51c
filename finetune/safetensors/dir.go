package safetensors

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// The file names transformers' save_pretrained uses.
const (
	SingleFileName = "model.safetensors"
	IndexFileName  = "model.safetensors.index.json"
)

// Dir is a model's weights: one model.safetensors, or the shards listed by
// model.safetensors.index.json. Tensor names are unique across shards.
type Dir struct {
	path  string  // the directory
	index string  // the index file, "" for a single file
	files []*File // open shards, sorted by path
	where map[string]*File
	names []string
}

// OpenDir opens a model directory the way transformers does: model.safetensors
// if present, else model.safetensors.index.json and its shards. path may
// also name a .safetensors file or an index file directly.
func OpenDir(path string) (*Dir, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open model weights: %w", err)
	}
	if !st.IsDir() {
		if strings.HasSuffix(path, ".json") {
			return openIndex(filepath.Dir(path), path)
		}
		return openSingle(filepath.Dir(path), path)
	}
	single := filepath.Join(path, SingleFileName)
	if _, err := os.Stat(single); err == nil {
		return openSingle(path, single)
	}
	index := filepath.Join(path, IndexFileName)
	if _, err := os.Stat(index); err == nil {
		return openIndex(path, index)
	}
	return nil, noWeightsError(path)
}

func noWeightsError(dir string) error {
	var found []string
	hint := ""
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			found = append(found, e.Name())
			if strings.HasSuffix(e.Name(), ".bin") || strings.HasSuffix(e.Name(), ".pt") || strings.HasSuffix(e.Name(), ".pth") {
				hint = "; PyTorch pickle checkpoints (.bin/.pt) are not read: re-save the model with save_pretrained(safe_serialization=True)"
			}
			if strings.HasSuffix(e.Name(), ".gguf") {
				hint = "; GGUF files are not a training format: use the original Hugging Face checkpoint"
			}
		}
	}
	list := "it is empty"
	if len(found) > 0 {
		if len(found) > 12 {
			found = append(found[:12], "...")
		}
		list = "it holds " + strings.Join(found, ", ")
	}
	return fmt.Errorf("model directory %s has neither %s nor %s (%s)%s", dir, SingleFileName, IndexFileName, list, hint)
}

func openSingle(dir, file string) (*Dir, error) {
	f, err := Open(file)
	if err != nil {
		return nil, err
	}
	d := &Dir{path: dir, files: []*File{f}, where: map[string]*File{}, names: f.Names()}
	for _, n := range d.names {
		d.where[n] = f
	}
	return d, nil
}

type indexFile struct {
	Metadata  map[string]any     `json:"metadata"`
	WeightMap map[string]*string `json:"weight_map"`
}

func openIndex(dir, index string) (_ *Dir, err error) {
	raw, err := os.ReadFile(index)
	if err != nil {
		return nil, fmt.Errorf("read safetensors index: %w", err)
	}
	var ix indexFile
	if err := json.Unmarshal(raw, &ix); err != nil {
		return nil, fmt.Errorf("safetensors index %s is not valid JSON: %w", index, err)
	}
	if len(ix.WeightMap) == 0 {
		return nil, fmt.Errorf("safetensors index %s: \"weight_map\" is missing or empty; it must map each tensor name to its shard file", index)
	}
	d := &Dir{path: dir, index: index, where: map[string]*File{}}
	defer func() {
		if err != nil {
			d.Close()
		}
	}()

	// Open each distinct shard once, in name order.
	shardOf := map[string]string{}
	var shards []string
	for name, s := range ix.WeightMap {
		if s == nil || *s == "" {
			return nil, fmt.Errorf("safetensors index %s: tensor %q maps to no shard file", index, name)
		}
		if !filepath.IsLocal(*s) {
			return nil, fmt.Errorf("safetensors index %s: tensor %q maps to shard %q, which is not a file inside %s", index, name, *s, dir)
		}
		if !slices.Contains(shards, *s) {
			shards = append(shards, *s)
		}
		shardOf[name] = *s
	}
	sort.Strings(shards)
	open := map[string]*File{}
	for _, s := range shards {
		p := filepath.Join(dir, s)
		if _, err := os.Stat(p); err != nil {
			var example string
			for n, sh := range shardOf {
				if sh == s && (example == "" || n < example) {
					example = n
				}
			}
			return nil, fmt.Errorf("safetensors index %s lists shard %q (for tensor %q and others), but %s does not exist; the download is incomplete", index, s, example, p)
		}
		f, err := Open(p)
		if err != nil {
			return nil, err
		}
		d.files = append(d.files, f)
		open[s] = f
	}

	// Every shard's tensors, each in one shard only.
	for _, f := range d.files {
		for _, n := range f.names {
			if other, dup := d.where[n]; dup {
				return nil, fmt.Errorf("tensor %q is stored twice, in %s and in %s; a sharded checkpoint holds each tensor once", n, other.path, f.path)
			}
			d.where[n] = f
		}
	}
	// Every indexed tensor where the index says it is.
	var problems []error
	for _, name := range sortedKeys(shardOf) {
		f := open[shardOf[name]]
		if f.Has(name) {
			continue
		}
		msg := fmt.Sprintf("safetensors index %s lists tensor %q in %s, but that shard does not contain it", index, name, f.path)
		if other, ok := d.where[name]; ok {
			msg += fmt.Sprintf(" (it is in %s)", other.path)
		}
		problems = append(problems, errors.New(msg))
	}
	if len(problems) > 0 {
		return nil, errors.Join(problems...)
	}
	for n := range d.where {
		d.names = append(d.names, n)
	}
	sort.Strings(d.names)
	return d, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Path is the model directory.
func (d *Dir) Path() string { return d.path }

// IndexPath is the index file, "" for a single-file checkpoint.
func (d *Dir) IndexPath() string { return d.index }

// Files are the open shard files' paths.
func (d *Dir) Files() []string {
	out := make([]string, len(d.files))
	for i, f := range d.files {
		out[i] = f.path
	}
	return out
}

// Names lists every tensor of every shard, sorted.
func (d *Dir) Names() []string { return slices.Clone(d.names) }

// Has reports whether some shard holds name.
func (d *Dir) Has(name string) bool { _, ok := d.where[name]; return ok }

// FileOf is the path of the shard holding name ("" if none does).
func (d *Dir) FileOf(name string) string {
	if f, ok := d.where[name]; ok {
		return f.path
	}
	return ""
}

// Info is a tensor's dtype and shape without touching its data.
func (d *Dir) Info(name string) (dtype DType, shape []int, ok bool) {
	f, ok := d.where[name]
	if !ok {
		return "", nil, false
	}
	return f.Info(name)
}

// Tensor returns a tensor whose Data aliases its shard's memory map (valid
// until Close).
func (d *Dir) Tensor(name string) (TensorInfo, error) {
	f, ok := d.where[name]
	if !ok {
		where := d.path
		if d.index != "" {
			where = d.index
		} else if len(d.files) == 1 {
			where = d.files[0].path
		}
		return TensorInfo{}, fmt.Errorf("%s: no tensor %q (the checkpoint has %d tensors)", where, name, len(d.names))
	}
	return f.Tensor(name)
}

// Metadata is the first shard's __metadata__ (transformers writes the same
// {"format": "pt"} into every shard).
func (d *Dir) Metadata() map[string]string {
	if len(d.files) == 0 {
		return nil
	}
	return d.files[0].Metadata()
}

// Close closes every shard.
func (d *Dir) Close() error {
	var errs []error
	for _, f := range d.files {
		if err := f.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
