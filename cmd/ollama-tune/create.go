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
	"time"

	"github.com/spf13/cobra"

	"github.com/ollama-tune/ollama-tune/convert"
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
	fl.StringVar(&f.base, "base", "phi3:mini", "base model: Ollama model name, GGUF file, or safetensors folder")
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
	if o.BaseWeights == "" {
		o.BaseWeights = localBaseOf(f.adapter)
	}
	res, err := convert.Create(ctx, convert.NewClient(nil, nil), o)
	if err != nil {
		return err
	}
	return reportCreate(cmd.OutOrStdout(), name, res, f.modelfileOnly)
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
