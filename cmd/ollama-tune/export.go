package main

// export turns a PEFT adapter into what Ollama loads: a GGUF LoRA adapter,
// or (--merge) a whole GGUF model with the adapter merged in.

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/spf13/cobra"

	"github.com/ollama-tune/ollama-tune/convert"
)

type exportFlags struct {
	adapter, out, base, tokenizer string
	dtype, quant, name            string
	merge                         bool
}

func newExportCmd() *cobra.Command {
	f := &exportFlags{}
	cmd := &cobra.Command{
		Use:   "export --adapter DIR --out FILE.gguf [--dtype f32|f16] | --merge --base DIR --out FILE.gguf [--quant f16|q8_0|q4_0]",
		Short: "Convert a PEFT LoRA adapter to GGUF for Ollama (adapter or merged model)",
		Long: `Convert the PEFT LoRA adapter the trainer wrote into a GGUF file Ollama and
llama.cpp load.

Without --merge the output is a GGUF LoRA adapter (general.type adapter,
adapter.lora.alpha, tensors blk.N.<name>.weight.lora_a/lora_b) for a Modelfile's
ADAPTER line, usable with Ollama up to 0.34.0. Every matrix is checked against
the base model's shapes first: --base names the base's folder, its
config.json or a GGUF file; without it the adapter's base_model_name_or_path
is used when it is a local folder or a known Phi-3 checkpoint. --dtype keeps
the adapter's own type by default (bytes copied unchanged).

With --merge the adapter is merged into the base weights in float32
(W + alpha/r * B A) and a whole phi3 GGUF model is written, with the tokenizer
and chat template (--tokenizer, default the base folder), as F16, Q8_0 or
Q4_0 (llama.cpp's reference quantization): one file for a Modelfile's FROM,
for Ollama 0.34.1 and later, which refuse adapters. --merge without --adapter
writes the base model alone.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runExport(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.adapter, "adapter", "", "PEFT adapter folder (adapter_config.json + adapter_model.safetensors)")
	fl.StringVar(&f.out, "out", "", "output GGUF file")
	fl.StringVar(&f.base, "base", "", "base model: folder with config.json (and weights for --merge), config.json, GGUF file, or Hugging Face repo id")
	fl.StringVar(&f.tokenizer, "tokenizer", "", "tokenizer folder for --merge (default: the base folder)")
	fl.StringVar(&f.dtype, "dtype", "", "adapter tensor type: f32 or f16 (default: the adapter file's own)")
	fl.StringVar(&f.quant, "quant", "f16", "merged model type: f16, f32, q8_0 or q4_0")
	fl.StringVar(&f.name, "name", "", "general.name written into the file")
	fl.BoolVar(&f.merge, "merge", false, "write a whole model with the adapter merged into the base weights")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func init() { rootCmd.AddCommand(newExportCmd()) }

func runExport(cmd *cobra.Command, f *exportFlags) error {
	ctx := cmd.Context()
	w := cmd.OutOrStdout()
	if !f.merge {
		if f.adapter == "" {
			return errors.New("export: --adapter is required (or --merge --base DIR to write a base model)")
		}
		dt, err := parseAdapterDType(f.dtype, "--merge")
		if err != nil {
			return err
		}
		base := f.base
		if base != "" && !isLocal(base) && repoIDPattern.MatchString(base) {
			dir, err := resolveDir(ctx, "base model", base, configFiles, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			base = dir
		}
		b, err := convert.FindBase(f.adapter, base)
		if err != nil {
			return fmt.Errorf("export: %w", err)
		}
		res, err := convert.ExportLoRA(f.adapter, b, f.out, convert.LoRAOptions{DType: dt, Name: f.name})
		if err != nil {
			return fmt.Errorf("export: %w", err)
		}
		_, err = fmt.Fprintf(w, "wrote %s: %s LoRA adapter, %d modules, r=%d, alpha=%g, %s (checked against %s)\n",
			res.Path, res.Arch, res.Modules, res.Rank, res.Alpha, res.DType, b.Source)
		return err
	}
	if f.base == "" {
		return errors.New("export --merge: --base is required (the base model's folder with config.json and the safetensors weights, or a Hugging Face repo id)")
	}
	q, err := convert.ParseDType(f.quant)
	if err != nil {
		return fmt.Errorf("--quant: %w", err)
	}
	dir, err := resolveDir(ctx, "base model", f.base, append(slices.Clone(weightFiles), tokenizerFiles...), cmd.ErrOrStderr())
	if err != nil {
		return err
	}
	opts := convert.ModelOptions{BaseDir: dir, TokenizerDir: f.tokenizer, Type: q, Name: f.name}
	if f.adapter != "" {
		if opts.Adapter, err = convert.ReadAdapter(f.adapter); err != nil {
			return fmt.Errorf("export: %w", err)
		}
	}
	res, err := convert.WriteModel(f.out, opts)
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	what := "base model"
	if f.adapter != "" {
		what = fmt.Sprintf("model with the adapter merged into %d linears", res.Merged)
	}
	_, err = fmt.Fprintf(w, "wrote %s: phi3 %s, %s, %d tensors, general.name %q\n", res.Path, what, res.Type, res.Tensors, res.Name)
	return err
}

// isLocal reports whether p exists on disk.
func isLocal(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// parseAdapterDType reads --dtype, the type of a GGUF LoRA adapter's
// tensors: "" (the adapter file's own), f32 or f16. mergeFlags are the
// command's flags for a merged model, which a quantized type calls for.
func parseAdapterDType(s, mergeFlags string) (convert.DType, error) {
	if s == "" {
		return "", nil
	}
	dt, err := convert.ParseDType(s)
	if err != nil {
		return "", fmt.Errorf("--dtype: %w", err)
	}
	if dt != convert.F32 && dt != convert.F16 {
		return "", fmt.Errorf("--dtype %s: a LoRA adapter is written as f32 or f16 (lora_b rows are r long, too short for q8_0 blocks); use %s --quant %s for a quantized model", s, mergeFlags, s)
	}
	return dt, nil
}
