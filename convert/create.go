package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/ollama/ollama/api"

	"github.com/ollama-tune/ollama-tune/finetune/chat"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

// CreateOptions describe `ollama-tune create`.
type CreateOptions struct {
	Name       string // the Ollama model to create
	AdapterDir string // the PEFT adapter folder
	// Base is an Ollama model name (phi3:mini), a GGUF file or a
	// safetensors model folder.
	Base string
	// BaseWeights is the base's safetensors folder, needed by the merged
	// route and by the served-output check's reference; "" uses Base when
	// it is a folder.
	BaseWeights string
	// TokenizerDir holds the tokenizer the adapter was trained with; ""
	// uses BaseWeights.
	TokenizerDir string
	// Route forces a route; "" chooses from the server's version.
	Route  Route
	System string
	// Template is the TEMPLATE the model is served with; "" is
	// Phi3Template. An adapter trained on an Ollama model's GGUF is served
	// with that model's own TEMPLATE, which training checked against the
	// chat template it rendered the data with.
	Template string
	// Params are extra PARAMETER lines (name, value), e.g. temperature 0.
	Params [][2]string
	// Quant is the merged model's type (default F16); AdapterDType the
	// adapter's ("" keeps the adapter file's).
	Quant        DType
	AdapterDType DType
	// OutDir receives the GGUF files and the Modelfile (default
	// <AdapterDir>/ollama).
	OutDir string
	// ModelfileOnly writes the files and the Modelfile without a server.
	ModelfileOnly bool
	// Prompts for the served-output check; NoCheck skips it.
	Prompts   []string
	MaxTokens int
	NoCheck   bool
	// Reference overrides the trainer's greedy answers (default: this
	// process's CPU backend on BaseWeights with the adapter).
	Reference Reference
	Log       io.Writer
}

// CreateResult says what Create did.
type CreateResult struct {
	Route       Route
	RouteReason string
	Version     Version
	Modelfile   string
	AdapterGGUF string // written always (checked export)
	ModelGGUF   string // base or merged model written by us, if any
	Check       *CheckReport
}

// DefaultPrompts are the served-output check's prompts when none are given.
var DefaultPrompts = []string{"The Force is strong in you!", "Hello, how are you today?"}

func isGGUFFile(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && strings.HasSuffix(strings.ToLower(p), ".gguf")
}

func isModelDir(p string) bool {
	st, err := os.Stat(filepath.Join(p, "config.json"))
	return err == nil && !st.IsDir()
}

// baseFromShow describes an Ollama model from /api/show's model_info.
func baseFromShow(name string, r *api.ShowResponse) (*Base, error) {
	archName, _ := r.ModelInfo["general.architecture"].(string)
	a, err := ArchFor(archName)
	if err != nil {
		return nil, fmt.Errorf("base model %s: %w", name, err)
	}
	num := func(k string) int {
		f, _ := r.ModelInfo[archName+"."+k].(float64)
		return int(f)
	}
	c := &HFConfig{
		Architectures: []string{a.HFArchitectures[0]}, HiddenSize: num("embedding_length"),
		IntermediateSize: num("feed_forward_length"), NumLayers: num("block_count"),
		NumHeads: num("attention.head_count"), NumKVHeads: num("attention.head_count_kv"),
	}
	if c.HiddenSize == 0 || c.NumHeads == 0 {
		return nil, fmt.Errorf("base model %s: the server's model_info lacks %s.embedding_length or attention.head_count", name, archName)
	}
	if c.NumKVHeads == 0 {
		c.NumKVHeads = c.NumHeads
	}
	c.HeadDim = c.HiddenSize / c.NumHeads
	return &Base{Arch: a, Config: c, Source: "Ollama model " + name}, nil
}

// Create exports the adapter (checked against the base before anything is
// sent), picks the route from the server's version, uploads the blobs,
// creates the model and runs the served-output check.
func Create(ctx context.Context, c *Client, o CreateOptions) (*CreateResult, error) {
	logf := func(format string, args ...any) {
		if o.Log != nil {
			fmt.Fprintf(o.Log, format+"\n", args...)
		}
	}
	if o.Name == "" {
		return nil, errors.New("create: the model name is empty")
	}
	if o.OutDir == "" {
		o.OutDir = filepath.Join(o.AdapterDir, "ollama")
	}
	if o.BaseWeights == "" && isModelDir(o.Base) {
		o.BaseWeights = o.Base
	}
	if o.TokenizerDir == "" {
		o.TokenizerDir = o.BaseWeights
	}
	res := &CreateResult{}

	// 1. The adapter, checked against the base before any server sees it.
	baseKind := "ollama"
	switch {
	case isGGUFFile(o.Base):
		baseKind = "gguf"
	case isModelDir(o.Base):
		baseKind = "dir"
	case o.Base == "":
		return nil, errors.New("create: no base model; pass --base with an Ollama model name (phi3:mini), a GGUF file or the safetensors folder")
	default:
		if _, err := os.Stat(o.Base); err == nil {
			return nil, fmt.Errorf("create: base %s is neither a GGUF file nor a model folder with config.json", o.Base)
		}
	}
	var base *Base
	var err error
	switch baseKind {
	case "gguf", "dir":
		base, err = LoadBase(o.Base)
	default:
		if o.ModelfileOnly {
			base, err = FindBase(o.AdapterDir, o.BaseWeights)
			break
		}
		var show *api.ShowResponse
		if show, err = c.Show(ctx, o.Base); err == nil && show == nil {
			return nil, fmt.Errorf("create: base model %q is not on the Ollama server at %s; pull it first (`ollama pull %s`), or pass --base with a GGUF file or the safetensors folder", o.Base, c.Base, o.Base)
		}
		if err == nil {
			base, err = baseFromShow(o.Base, show)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create: %w", err)
	}
	res.AdapterGGUF = filepath.Join(o.OutDir, "adapter.gguf")
	lr, err := ExportLoRA(o.AdapterDir, base, res.AdapterGGUF, LoRAOptions{DType: o.AdapterDType, Name: o.Name + "-lora"})
	if err != nil {
		return nil, fmt.Errorf("create: %w", err)
	}
	logf("adapter %s checked against %s and exported: %s (%d modules, r=%d, alpha=%g, %s)", o.AdapterDir, base.Source, lr.Path, lr.Modules, lr.Rank, lr.Alpha, lr.DType)

	// 2. The route.
	res.Route = o.Route
	if !o.ModelfileOnly {
		if res.Version, err = c.Version(ctx); err != nil {
			return nil, fmt.Errorf("create: %w", err)
		}
	}
	if res.Route == "" {
		if o.ModelfileOnly {
			res.Route, res.RouteReason = RouteAdapter, "--modelfile-only: writing the adapter route (FROM the base, ADAPTER the GGUF adapter; Ollama <= 0.34.0)"
		} else {
			res.Route, res.RouteReason = ChooseRoute(res.Version)
		}
	} else {
		res.RouteReason = fmt.Sprintf("route %s chosen by the caller", res.Route)
	}
	logf("%s", res.RouteReason)

	// 3. The files and the Modelfile.
	mf := Phi3Modelfile("", "", o.System)
	mf.Params = o.Params
	if o.Template != "" {
		mf.Template = o.Template
	}
	files := map[string]string{} // name in the request -> local file
	var adapters map[string]string
	from := ""
	switch res.Route {
	case RouteAdapter:
		switch baseKind {
		case "ollama":
			from = o.Base
			mf.From = o.Base
		case "gguf":
			files["model.gguf"] = o.Base
			mf.From = o.Base
		case "dir":
			res.ModelGGUF = filepath.Join(o.OutDir, "base-f16.gguf")
			mr, err := WriteModel(res.ModelGGUF, ModelOptions{BaseDir: o.Base, TokenizerDir: o.TokenizerDir, Type: F16, Name: filepath.Base(filepath.Clean(o.Base))})
			if err != nil {
				return nil, fmt.Errorf("create: write the base as GGUF: %w", err)
			}
			logf("base %s written as %s (%s)", o.Base, mr.Path, mr.Type)
			files["model.gguf"] = res.ModelGGUF
			mf.From = res.ModelGGUF
		}
		adapters = map[string]string{"adapter.gguf": res.AdapterGGUF}
		mf.Adapter = res.AdapterGGUF
	case RouteMerged:
		if o.BaseWeights == "" {
			return nil, fmt.Errorf("create: the merged route needs the base model's safetensors weights to merge into; pass --base-weights with the folder of %s (config.json + *.safetensors)", o.Base)
		}
		adapter, err := ReadAdapter(o.AdapterDir)
		if err != nil {
			return nil, fmt.Errorf("create: %w", err)
		}
		q := o.Quant
		if q == "" {
			q = F16
		}
		res.ModelGGUF = filepath.Join(o.OutDir, "merged-"+string(q)+".gguf")
		mr, err := WriteModel(res.ModelGGUF, ModelOptions{BaseDir: o.BaseWeights, TokenizerDir: o.TokenizerDir, Adapter: adapter, Type: q, Name: o.Name})
		if err != nil {
			return nil, fmt.Errorf("create: write the merged model: %w", err)
		}
		logf("adapter merged into %s: %s (%s, %d linears)", o.BaseWeights, mr.Path, mr.Type, mr.Merged)
		files["model.gguf"] = res.ModelGGUF
		mf.From = res.ModelGGUF
	default:
		return nil, fmt.Errorf("create: unknown route %q (want adapter or merged)", res.Route)
	}
	// Paths in the Modelfile are relative to its folder when they lie in
	// it (Ollama resolves them so), so the folder can be moved whole.
	if baseKind != "ollama" || res.Route == RouteMerged {
		mf.From = modelfilePath(o.OutDir, mf.From)
	}
	if mf.Adapter != "" {
		mf.Adapter = modelfilePath(o.OutDir, mf.Adapter)
	}
	res.Modelfile = filepath.Join(o.OutDir, "Modelfile")
	if err := mf.Write(res.Modelfile); err != nil {
		return nil, fmt.Errorf("create: %w", err)
	}
	logf("Modelfile written: %s", res.Modelfile)
	if o.ModelfileOnly {
		return res, nil
	}

	// 4. Blobs, then /api/create.
	upload := func(m map[string]string) (map[string]string, error) {
		if len(m) == 0 {
			return nil, nil
		}
		out := map[string]string{}
		for name, path := range m {
			digest, sent, err := c.UploadBlob(ctx, path)
			if err != nil {
				return nil, fmt.Errorf("create: %w", err)
			}
			if sent {
				logf("uploaded %s as %s", path, digest)
			} else {
				logf("server already has %s (%s)", path, digest)
			}
			out[name] = digest
		}
		return out, nil
	}
	req := &api.CreateRequest{Model: o.Name, From: from, Template: mf.Template, System: o.System,
		Parameters: map[string]any{"stop": Phi3Stops}}
	for _, p := range o.Params {
		v, err := strconv.ParseFloat(p[1], 64)
		if err != nil {
			req.Parameters[p[0]] = p[1]
		} else {
			req.Parameters[p[0]] = v
		}
	}
	if req.Files, err = upload(files); err != nil {
		return nil, err
	}
	if req.Adapters, err = upload(adapters); err != nil {
		return nil, err
	}
	if err := c.Create(ctx, req, func(s string) { logf("ollama: %s", s) }); err != nil {
		return nil, fmt.Errorf("create: %w", err)
	}
	logf("created %s on %s", o.Name, c.Base)

	// 5. The served-output check.
	if o.NoCheck {
		return res, nil
	}
	if o.BaseWeights == "" || o.TokenizerDir == "" {
		logf("served-output check skipped: it needs the base's safetensors weights and tokenizer (--base-weights) to compute the trainer's own answers")
		return res, nil
	}
	tok, err := tokenizer.Load(o.TokenizerDir)
	if err != nil {
		return nil, fmt.Errorf("served-output check: %w", err)
	}
	tmpl, err := chat.FromTokenizerDir(o.TokenizerDir)
	if err != nil {
		return nil, fmt.Errorf("served-output check: %w", err)
	}
	ref := o.Reference
	if ref == nil {
		cr := NewCPUReference(o.BaseWeights, o.AdapterDir)
		defer cr.Close()
		ref = cr
	}
	prompts := o.Prompts
	if len(prompts) == 0 {
		prompts = DefaultPrompts
	}
	res.Check, err = ServedOutputCheck(ctx, c, CheckOptions{Model: o.Name, Prompts: prompts, MaxTokens: o.MaxTokens,
		System: o.System, Tokenizer: tok, Template: tmpl, Reference: ref})
	if err != nil {
		return res, err
	}
	return res, nil
}

// modelfilePath is path as a Modelfile in dir names it: "./name" inside
// dir, else absolute.
func modelfilePath(dir, path string) string {
	ad, err1 := filepath.Abs(dir)
	ap, err2 := filepath.Abs(path)
	if err1 != nil || err2 != nil {
		return path
	}
	if r, err := filepath.Rel(ad, ap); err == nil && !strings.HasPrefix(r, "..") {
		return "./" + filepath.ToSlash(r)
	}
	return ap
}
