package peft

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"

	"github.com/ollama-tune/ollama-tune/finetune/safetensors"
	"github.com/ollama-tune/ollama-tune/internal/atomicfile"
)

// Tensor is one LoRA matrix, float32, row-major.
type Tensor struct {
	Name  string // base_model.model.<module>.lora_A.weight
	Shape []int  // [r, in] for A, [out, r] for B
	Data  []float32
}

// Adapter is a LoRA adapter: its configuration and its matrices.
type Adapter struct {
	Config  *Config
	Tensors []Tensor
}

// Module is one adapted linear layer with its two matrices.
type Module struct {
	Name string // e.g. model.layers.0.self_attn.qkv_proj
	A, B *Tensor
}

// Shape is a base linear layer's weight shape, [out, in] as nn.Linear
// stores it.
type Shape struct{ Out, In int }

// Base lists the linear layers of the base model an adapter may adapt,
// by full module name (model.layers.0.self_attn.qkv_proj).
type Base map[string]Shape

// TensorName is the adapter-file name of a module's matrix (which is "A"
// or "B"), as PEFT's get_peft_model_state_dict saves it (without the
// adapter name "default").
func TensorName(module, which string) string {
	return "base_model.model." + module + ".lora_" + which + ".weight"
}

// tensorNameRE matches a LoRA matrix's saved name; PEFT drops the adapter
// name when saving, but files from other tools sometimes keep ".default".
var tensorNameRE = regexp.MustCompile(`^base_model\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight$`)

// ParseTensorName splits a saved LoRA tensor name into the module and "A"
// or "B".
func ParseTensorName(name string) (module, which string, err error) {
	m := tensorNameRE.FindStringSubmatch(name)
	if m == nil {
		return "", "", fmt.Errorf("tensor %q is not a LoRA matrix (expected base_model.model.<module>.lora_A.weight or .lora_B.weight); embeddings, biases and modules_to_save are not supported", name)
	}
	return m[1], m[2], nil
}

// Modules pairs the adapter's matrices by module, sorted by name. It fails
// when a module has an A without a B (or the reverse) or a matrix twice.
func (a *Adapter) Modules() ([]Module, error) {
	byName := map[string]*Module{}
	for i := range a.Tensors {
		t := &a.Tensors[i]
		mod, which, err := ParseTensorName(t.Name)
		if err != nil {
			return nil, err
		}
		m := byName[mod]
		if m == nil {
			m = &Module{Name: mod}
			byName[mod] = m
		}
		slot := &m.A
		if which == "B" {
			slot = &m.B
		}
		if *slot != nil {
			return nil, fmt.Errorf("tensor %q is given twice", t.Name)
		}
		*slot = t
	}
	out := make([]Module, 0, len(byName))
	for _, m := range byName {
		switch {
		case m.B == nil:
			return nil, fmt.Errorf("tensor %q has no matching %q: every lora_A needs its lora_B", m.A.Name, TensorName(m.Name, "B"))
		case m.A == nil:
			return nil, fmt.Errorf("tensor %q has no matching %q: every lora_B needs its lora_A", m.B.Name, TensorName(m.Name, "A"))
		}
		out = append(out, *m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Validate checks the adapter against its config and, when base is not
// nil, against the base model's linears: shapes [r, in] and [out, r] with
// the config's r, modules that exist in the base, and every module the
// config targets present in the weights.
func (a *Adapter) Validate(base Base) error {
	if a.Config == nil {
		return errors.New("adapter has no config")
	}
	if err := a.Config.validate(); err != nil {
		return err
	}
	mods, err := a.Modules()
	if err != nil {
		return err
	}
	if len(mods) == 0 {
		return errors.New("adapter has no LoRA matrices")
	}
	r := a.Config.R
	have := map[string]bool{}
	for _, m := range mods {
		have[m.Name] = true
		for _, t := range []*Tensor{m.A, m.B} {
			if len(t.Shape) != 2 {
				return fmt.Errorf("tensor %q: shape %v is not a matrix", t.Name, t.Shape)
			}
			if len(t.Data) != t.Shape[0]*t.Shape[1] {
				return fmt.Errorf("tensor %q: %d values for shape %v", t.Name, len(t.Data), t.Shape)
			}
		}
		if m.A.Shape[0] != r {
			return fmt.Errorf("tensor %q: shape %v has rank %d, but adapter_config.json says r = %d", m.A.Name, m.A.Shape, m.A.Shape[0], r)
		}
		if m.B.Shape[1] != r {
			return fmt.Errorf("tensor %q: shape %v has rank %d, but adapter_config.json says r = %d", m.B.Name, m.B.Shape, m.B.Shape[1], r)
		}
		if base == nil {
			continue
		}
		s, ok := base[m.Name]
		if !ok {
			return fmt.Errorf("tensor %q: the base model has no linear module %q (%s)", m.A.Name, m.Name, describeBase(base))
		}
		if m.A.Shape[1] != s.In {
			return fmt.Errorf("tensor %q: shape %v, but %s takes %d inputs, so lora_A must be [%d, %d]; the adapter was trained on another base model", m.A.Name, m.A.Shape, m.Name, s.In, r, s.In)
		}
		if m.B.Shape[0] != s.Out {
			return fmt.Errorf("tensor %q: shape %v, but %s has %d outputs, so lora_B must be [%d, %d]; the adapter was trained on another base model", m.B.Name, m.B.Shape, m.Name, s.Out, s.Out, r)
		}
		if !a.Config.Targets(m.Name) {
			return fmt.Errorf("tensor %q: module %s is not among adapter_config.json's target_modules %v", m.A.Name, m.Name, a.Config.targetsString())
		}
	}
	if base != nil {
		var missing []string
		for name := range base {
			if a.Config.Targets(name) && !have[name] {
				missing = append(missing, name)
			}
		}
		if len(missing) > 0 {
			slices.Sort(missing)
			return fmt.Errorf("adapter_config.json targets %s, but the weights have no lora_A/lora_B for %s", a.Config.targetsString(), summarize(missing))
		}
	}
	return nil
}

func (c *Config) targetsString() string {
	if c.TargetRegex != "" {
		return strconv.Quote(c.TargetRegex)
	}
	return fmt.Sprint(c.TargetModules)
}

func describeBase(base Base) string {
	names := make([]string, 0, len(base))
	for n := range base {
		names = append(names, n)
	}
	slices.Sort(names)
	return "its linears are " + summarize(names)
}

func summarize(names []string) string {
	if len(names) <= 4 {
		return fmt.Sprint(names)
	}
	return fmt.Sprintf("%v and %d more", names[:4], len(names)-4)
}

// Read loads the adapter in dir (adapter_config.json and
// adapter_model.safetensors) and validates it against base (nil skips the
// checks against the base model). Matrices stored as F16, BF16 or F64 are
// converted to float32.
func Read(dir string, base Base) (*Adapter, error) {
	cfg, err := ReadConfig(filepath.Join(dir, ConfigName))
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, WeightsName)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		if _, err := os.Stat(filepath.Join(dir, "adapter_model.bin")); err == nil {
			return nil, fmt.Errorf("read adapter %s: only adapter_model.bin (a pickle) is there; save the adapter with safe_serialization=True", dir)
		}
	}
	f, err := safetensors.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read adapter: %w", err)
	}
	defer f.Close()
	a := &Adapter{Config: cfg}
	for _, name := range f.Names() {
		if _, _, err := ParseTensorName(name); err != nil {
			return nil, fmt.Errorf("read adapter %s: %w", path, err)
		}
		ti, err := f.Tensor(name)
		if err != nil {
			return nil, fmt.Errorf("read adapter %s: %w", path, err)
		}
		if !ti.DType.IsFloat() {
			return nil, fmt.Errorf("read adapter %s: tensor %q has dtype %s; LoRA matrices must be floats", path, name, ti.DType)
		}
		v, err := safetensors.ToFloat32(ti)
		if err != nil {
			return nil, fmt.Errorf("read adapter %s: tensor %q: %w", path, name, err)
		}
		a.Tensors = append(a.Tensors, Tensor{Name: name, Shape: slices.Clone(ti.Shape), Data: v})
	}
	if err := a.Validate(base); err != nil {
		return nil, fmt.Errorf("read adapter %s: %w", dir, err)
	}
	return a, nil
}

// headers returns the safetensors entries of the adapter's matrices (F32).
func (a *Adapter) headers() ([]safetensors.TensorInfo, error) {
	out := make([]safetensors.TensorInfo, len(a.Tensors))
	for i, t := range a.Tensors {
		if _, _, err := ParseTensorName(t.Name); err != nil {
			return nil, err
		}
		out[i] = safetensors.TensorInfo{Name: t.Name, DType: safetensors.F32, Shape: slices.Clone(t.Shape)}
	}
	return out, nil
}

// WeightsMetadata is the safetensors metadata PEFT writes.
var WeightsMetadata = map[string]string{"format": "pt"}

// EncodeWeights writes adapter_model.safetensors' bytes to w (F32, in
// safetensors.torch.save_file's layout, so the file is byte-identical to
// PEFT's for the same values).
func (a *Adapter) EncodeWeights(w io.Writer) error {
	tensors, err := a.tensorInfos()
	if err != nil {
		return err
	}
	return safetensors.Encode(w, tensors, WeightsMetadata)
}

func (a *Adapter) tensorInfos() ([]safetensors.TensorInfo, error) {
	hs, err := a.headers()
	if err != nil {
		return nil, err
	}
	for i := range hs {
		b, err := safetensors.EncodeFloat32(safetensors.F32, a.Tensors[i].Data)
		if err != nil {
			return nil, err
		}
		hs[i].Data = b
	}
	return hs, nil
}

// Write stores the adapter in dir. Nothing is ever half-written: when dir
// does not exist, both files are written into a sibling temporary folder
// that is renamed to dir at the end; when it exists, both files are first
// written completely (synced) under temporary names inside it and only
// then renamed over the old ones, the weights first.
func Write(dir string, a *Adapter) error {
	if err := a.Validate(nil); err != nil {
		return fmt.Errorf("write adapter %s: %w", dir, err)
	}
	cfgJSON, err := a.Config.Marshal()
	if err != nil {
		return fmt.Errorf("write adapter %s: %w", dir, err)
	}
	files := []File{
		NewFile(WeightsName, a.EncodeWeights),
		NewFile(ConfigName, func(w io.Writer) error { _, err := w.Write(cfgJSON); return err }),
	}
	if err := WriteFiles(dir, files); err != nil {
		return fmt.Errorf("write adapter %s: %w", dir, err)
	}
	return nil
}

// File is a file for WriteFiles: its name inside the folder and a function
// that writes its bytes.
type File struct {
	name  string
	write func(io.Writer) error
}

// NewFile describes a file for WriteFiles.
func NewFile(name string, write func(io.Writer) error) File { return File{name: name, write: write} }

// WriteFiles writes a set of files into dir all or nothing (see Write):
// into a fresh sibling folder renamed to dir when dir does not exist, else
// as complete, synced temporary files inside dir renamed over their final
// names only once every one of them is written.
func WriteFiles(dir string, files []File) (err error) {
	if _, statErr := os.Stat(dir); errors.Is(statErr, fs.ErrNotExist) {
		parent := filepath.Dir(filepath.Clean(dir))
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return err
		}
		tmp, mkErr := os.MkdirTemp(parent, "."+filepath.Base(dir)+atomicfile.TempMarker+"*")
		if mkErr != nil {
			return mkErr
		}
		defer func() {
			if err != nil {
				os.RemoveAll(tmp)
			}
		}()
		if err := os.Chmod(tmp, 0o755); err != nil {
			return err
		}
		for _, f := range files {
			if err := writeSynced(filepath.Join(tmp, f.name), f.write); err != nil {
				return err
			}
		}
		atomicfile.SyncDir(tmp)
		if err := os.Rename(tmp, dir); err != nil {
			return err
		}
		atomicfile.SyncDir(parent)
		return nil
	} else if statErr != nil {
		return statErr
	}
	var temps []string
	defer func() {
		if err != nil {
			for _, t := range temps {
				os.Remove(t)
			}
		}
	}()
	for _, f := range files {
		t, err := os.CreateTemp(dir, "."+f.name+atomicfile.TempMarker+"*")
		if err != nil {
			return err
		}
		name := t.Name()
		t.Close()
		temps = append(temps, name)
		if err := writeSynced(name, f.write); err != nil {
			return err
		}
	}
	for i, f := range files {
		if err := os.Rename(temps[i], filepath.Join(dir, f.name)); err != nil {
			return err
		}
	}
	atomicfile.SyncDir(dir)
	return nil
}

// writeSynced writes path (created or truncated) with write, makes it 0644
// as atomicfile.Write does (os.CreateTemp made WriteFiles' temporary files
// 0600, which the rename would have kept), then syncs it.
func writeSynced(path string, write func(io.Writer) error) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	err = write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
