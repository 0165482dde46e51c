package main

// create registers a fine-tune with an Ollama server and proves it serves
// what was trained.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ollama-tune/ollama-tune/convert"
	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/ollamastore"
	"github.com/ollama-tune/ollama-tune/finetune/peft"
)

type createFlags struct {
	adapter, base, baseWeights, tokenizer string
	route, quant, dtype, system, out      string
	prompts                               []string
	maxTokens                             int
	modelfileOnly, noCheck                bool
}

func newCreateCmd() *cobra.Command {
	f := &createFlags{}
	cmd := &cobra.Command{
		Use:   "create NAME --adapter DIR [--base phi3:mini] [--modelfile-only]",
		Short: "Create an Ollama model from a LoRA adapter and check that it serves what was trained",
		Long: `Create the Ollama model NAME from the PEFT adapter in --adapter.

The adapter is exported to GGUF and checked against the base first (a broken
adapter is refused here, not when Ollama fails to load it). The server
(OLLAMA_HOST, default 127.0.0.1:11434) is asked its version to pick the route:
up to 0.34.0 the model is the base plus the GGUF LoRA adapter (ADAPTER);
from 0.34.1 on, which refuse adapters, it is one GGUF with the adapter merged
into the weights (needs the base's safetensors: --base-weights, or --base as a
folder). The files are uploaded as blobs and /api/create is called with the
Phi-3 template and stop tokens.

--base is an Ollama model name (it must be pulled already), a GGUF file, or
the safetensors folder of the base (written as an F16 GGUF for you).

An adapter trained on an Ollama model (model: ollama://NAME, or train --base
NAME) is created FROM that model, whose weights must still be the blob it
was trained on (adapter_config.json's revision), with that model's own
TEMPLATE; the served-output check runs this program's decoding on the same
GGUF blob with the adapter. --base may be left out.

Then the served-output check runs: each --prompt goes through /api/generate
at temperature 0 and through this program's own greedy decoding with the
adapter (CPU, on --base-weights), and any difference is reported loudly: it
is what an adapter Ollama did not apply looks like. The check needs the base
weights; without them it is skipped with a note. A quantized base (the
library's phi3:mini) can change greedy answers by itself.

--modelfile-only writes the GGUF files and a Modelfile into --out (default
<adapter>/ollama) without a server: finish with ollama create NAME -f FILE.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return runCreate(cmd, args[0], f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.adapter, "adapter", "", "PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
	fl.StringVar(&f.base, "base", "phi3:mini", "base model: Ollama model name, GGUF file, or safetensors folder (default for an adapter trained on ollama://NAME: that model)")
	fl.StringVar(&f.baseWeights, "base-weights", "", "the base's safetensors folder (merged route, served-output check); default --base when it is a folder, else the adapter's base_model_name_or_path when it is a local folder")
	fl.StringVar(&f.tokenizer, "tokenizer", "", "tokenizer folder the adapter was trained with (default: the base weights folder)")
	fl.StringVar(&f.route, "route", "auto", "auto (from the server version), adapter, or merged")
	fl.StringVar(&f.quant, "quant", "f16", "merged model type: f16, f32, q8_0 or q4_0")
	fl.StringVar(&f.dtype, "dtype", "", "adapter GGUF type: f32 or f16 (default: the adapter file's own)")
	fl.StringVar(&f.system, "system", "", "SYSTEM prompt for the Modelfile")
	fl.StringVar(&f.out, "out", "", "folder for the GGUF files and the Modelfile (default <adapter>/ollama)")
	fl.StringArrayVar(&f.prompts, "prompt", nil, "prompt for the served-output check (repeatable)")
	fl.IntVar(&f.maxTokens, "max-tokens", 32, "tokens per answer in the served-output check")
	fl.BoolVar(&f.modelfileOnly, "modelfile-only", false, "write the GGUF files and the Modelfile only; no server")
	fl.BoolVar(&f.noCheck, "no-check", false, "skip the served-output check")
	_ = cmd.MarkFlagRequired("adapter")
	return cmd
}

func init() { rootCmd.AddCommand(newCreateCmd()) }

func runCreate(cmd *cobra.Command, name string, f *createFlags) error {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	o := convert.CreateOptions{
		Name: name, AdapterDir: f.adapter, Base: f.base, BaseWeights: f.baseWeights, TokenizerDir: f.tokenizer,
		System: f.system, OutDir: f.out, ModelfileOnly: f.modelfileOnly, Prompts: f.prompts,
		MaxTokens: f.maxTokens, NoCheck: f.noCheck, Log: cmd.ErrOrStderr(),
	}
	switch f.route {
	case "auto", "":
	case "adapter":
		o.Route = convert.RouteAdapter
	case "merged":
		o.Route = convert.RouteMerged
	default:
		return fmt.Errorf("--route %q: want auto, adapter or merged", f.route)
	}
	var err error
	if o.Quant, err = convert.ParseDType(f.quant); err != nil {
		return fmt.Errorf("--quant: %w", err)
	}
	if o.AdapterDType, err = parseAdapterDType(f.dtype, "--route merged"); err != nil {
		return err
	}
	c := convert.NewClient(nil, nil)
	if ref, revision := ollamaBaseOf(f.adapter); ref != "" {
		if cmd.Flags().Changed("base") && !sameOllamaModel(f.base, ref) {
			return fmt.Errorf("create: the adapter in %s was trained on %s; --base %s would serve it on other weights. Leave --base out (or pass the same model)", f.adapter, ref, f.base)
		}
		if f.baseWeights != "" || f.tokenizer != "" {
			return fmt.Errorf("create: the adapter in %s was trained on the GGUF of %s, which is the base for serving and for the check; --base-weights and --tokenizer do not apply", f.adapter, ref)
		}
		res, err := createOnOllamaBase(ctx, c, o, ref, revision)
		if err != nil {
			return err
		}
		return reportCreate(cmd.OutOrStdout(), name, res, f.modelfileOnly)
	}
	if o.BaseWeights == "" {
		o.BaseWeights = localBaseOf(f.adapter)
	}
	res, err := convert.Create(ctx, c, o)
	if err != nil {
		return err
	}
	return reportCreate(cmd.OutOrStdout(), name, res, f.modelfileOnly)
}

// ollamaBaseOf is the ollama:// base an adapter was trained on and the
// blob digest it recorded as its revision; "" when its base is not an
// Ollama model.
func ollamaBaseOf(adapterDir string) (ref, revision string) {
	cfg, err := peft.ReadConfig(filepath.Join(adapterDir, peft.ConfigName))
	if err != nil || !finetune.IsOllamaModel(cfg.BaseModelNameOrPath) {
		return "", ""
	}
	return strings.TrimSpace(cfg.BaseModelNameOrPath), cfg.Revision
}

// sameOllamaModel reports whether two references name one Ollama model
// (phi3:mini and ollama://registry.ollama.ai/library/phi3:mini do).
func sameOllamaModel(a, b string) bool {
	na, err1 := ollamastore.ParseName(a)
	nb, err2 := ollamastore.ParseName(b)
	return err1 == nil && err2 == nil && strings.EqualFold(na.String(), nb.String())
}

// createOnOllamaBase creates o.Name from an adapter trained on the Ollama
// model ref: FROM that model, after checking that its weights are the blob
// the adapter was trained on (locally and, unless --modelfile-only, on the
// server), with the model's own TEMPLATE (checked again against the GGUF's
// chat template, which rendered the training data), and runs the
// served-output check against this program's greedy decoding on the same
// GGUF with the adapter.
func createOnOllamaBase(ctx context.Context, c *convert.Client, o convert.CreateOptions, ref, revision string) (*convert.CreateResult, error) {
	r := ollamastore.Resolver{Host: c.Base}
	m, err := r.Resolve(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("create: the adapter was trained on %s: %w", ref, err)
	}
	changed := func(where, digest string) error {
		return fmt.Errorf("create: the adapter was trained on %s with the weights %s, but %s now holds %s (pulled or created again since?); served on other weights the adapter answers differently: train again on the model as it is now", ref, revision, where, digest)
	}
	if d := finetune.BlobDigest(m.GGUF); revision != "" && d != revision {
		return nil, changed(m.GGUF, d)
	}
	if !o.ModelfileOnly {
		show, err := c.Show(ctx, m.Name.Short())
		if err != nil {
			return nil, fmt.Errorf("create: %w", err)
		}
		if show == nil {
			return nil, fmt.Errorf("create: the Ollama server at %s has no model %s, which the adapter was trained on (found in %s); create it there first", c.Base, m.Name.Short(), m.GGUF)
		}
		if d := modelfileBlob(show.Modelfile); revision != "" && d != revision {
			return nil, changed("the server at "+c.Base.String(), d)
		}
	}
	base, err := finetune.LoadGGUFBase(m.GGUF)
	if err != nil {
		return nil, fmt.Errorf("create: %s: %w", ref, err)
	}
	defer base.Close()
	tmpl, err := base.ChatTemplateRenderer()
	if err != nil {
		return nil, fmt.Errorf("create: %s: %w", ref, err)
	}
	if err := finetune.CheckServingTemplate(base, tmpl, m.Template); err != nil {
		return nil, fmt.Errorf("create: %s: %w", ref, err)
	}
	o.Base, o.Template = m.Name.Short(), m.Template
	o.BaseWeights, o.TokenizerDir = "", ""
	noCheck := o.NoCheck
	o.NoCheck = true // run below, on the GGUF
	res, err := convert.Create(ctx, c, o)
	if err != nil || o.ModelfileOnly || noCheck {
		return res, err
	}
	prompts := o.Prompts
	if len(prompts) == 0 {
		prompts = convert.DefaultPrompts
	}
	system := o.System
	if system == "" {
		system = m.System // what Ollama puts before a prompt without one
	}
	// The reference: the GGUF base with the adapter on the CPU backend. The
	// linears stay GGUF blocks dequantized as the matmuls need them (the
	// same values as a dense copy, without holding phi3:mini in float32).
	gr := &convert.ModelReference{Load: func() (*finetune.Model, error) {
		return finetune.LoadGGUFModelWithAdapter(finetune.NewCPUBackend(finetune.CPUOptions{}), base, finetune.ModelOptions{}, true, o.AdapterDir)
	}}
	defer gr.Close()
	res.Check, err = convert.ServedOutputCheck(ctx, c, convert.CheckOptions{Model: o.Name, Prompts: prompts, MaxTokens: o.MaxTokens,
		System: system, Tokenizer: base.Tokenizer, Template: tmpl, Reference: gr})
	return res, err
}

// modelfileBlob is the digest of the blob a Modelfile from /api/show is
// FROM ("FROM /…/blobs/sha256-…"), "" when it names none.
func modelfileBlob(modelfile string) string {
	for _, line := range strings.Split(modelfile, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "FROM "); ok {
			return finetune.BlobDigest(strings.TrimSpace(rest))
		}
	}
	return ""
}

// localBaseOf is the adapter's base_model_name_or_path when it is a local
// model folder.
func localBaseOf(adapterDir string) string {
	cfg, err := peft.ReadConfig(filepath.Join(adapterDir, peft.ConfigName))
	if err != nil || cfg.BaseModelNameOrPath == "" {
		return ""
	}
	if st, err := os.Stat(filepath.Join(cfg.BaseModelNameOrPath, "config.json")); err == nil && !st.IsDir() {
		return cfg.BaseModelNameOrPath
	}
	return ""
}

// reportCreate prints the outcome; a failed served-output check is an
// error (exit status 1) after its loud report.
func reportCreate(w io.Writer, name string, res *convert.CreateResult, modelfileOnly bool) error {
	if modelfileOnly {
		fmt.Fprintf(w, "Modelfile and GGUF files written to %s\n", filepath.Dir(res.Modelfile))
		fmt.Fprintf(w, "finish with:  ollama create %s -f %s\n", name, res.Modelfile)
		return nil
	}
	fmt.Fprintf(w, "created %s (%s route)\n", name, res.Route)
	if res.Check != nil {
		res.Check.Print(w)
		if !res.Check.OK() {
			return errors.New("the served-output check failed (see above)")
		}
	}
	fmt.Fprintf(w, "try it:  ollama run %s\n", name)
	return nil
}

// ollamaReachable asks the server's version with a short timeout.
func ollamaReachable(ctx context.Context, c *convert.Client) (convert.Version, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return c.Version(ctx)
}
