package main

import (
	"errors"
	"fmt"
	"slices"

	"github.com/spf13/cobra"

	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/finetune/chat"
	"github.com/ollama-tune/ollama-tune/finetune/tokenizer"
)

// generate runs the model in this process on the CPU backend: it is a
// check of a checkpoint or an adapter, not a server, and needs no plugin.

type generateFlags struct {
	model, adapter string
	prompt         string
	promptIDs      string
	maxNewTokens   int
	temperature    float64
	topP           float64
	seed           uint64
	printIDs       bool
	ignoreEOS      bool
	chat           bool
	nf4            bool
}

func newGenerateCmd() *cobra.Command {
	f := &generateFlags{}
	cmd := &cobra.Command{
		Use:   "generate --model DIR [--adapter DIR] (--prompt TEXT | --prompt-ids \"1 2 3\")",
		Short: "Continue a prompt with a model (and an adapter) on the CPU",
		Long: `Continue a prompt with a Phi-3 checkpoint, optionally with a PEFT LoRA
adapter, on the CPU backend in this process. Greedy by default; --temperature
and --top-p sample (seeded by --seed).

The prompt is text (--prompt, encoded with the model directory's tokenizer;
--chat wraps it in the chat template as a user turn followed by the assistant
prompt) or token ids (--prompt-ids). Generation stops at an end-of-sequence
token (the config's eos_token_id, the tokenizer's EOS and <|end|>) unless
--ignore-eos. --print-ids prints the new token ids instead of text and then
needs no tokenizer.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runGenerate(cmd, f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.model, "model", "", "model directory (config.json + safetensors) or Hugging Face repo id")
	fl.StringVar(&f.adapter, "adapter", "", "PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors)")
	fl.StringVar(&f.prompt, "prompt", "", "prompt text")
	fl.StringVar(&f.promptIDs, "prompt-ids", "", `prompt as token ids, e.g. "1 2 3"`)
	fl.IntVar(&f.maxNewTokens, "max-new-tokens", 64, "most tokens to generate")
	fl.Float64Var(&f.temperature, "temperature", 0, "sampling temperature; 0 is greedy")
	fl.Float64Var(&f.topP, "top-p", 1, "nucleus sampling: keep the most likely tokens up to this probability")
	fl.Uint64Var(&f.seed, "seed", 0, "seed for sampling")
	fl.BoolVar(&f.printIDs, "print-ids", false, "print the new token ids on one line instead of text")
	fl.BoolVar(&f.ignoreEOS, "ignore-eos", false, "do not stop at end-of-sequence tokens")
	fl.BoolVar(&f.chat, "chat", false, "wrap the prompt in the chat template (user turn + assistant prompt)")
	fl.BoolVar(&f.nf4, "nf4", false, "quantize the base's decoder linears to NF4 (double quantization) as QLoRA training does")
	_ = cmd.MarkFlagRequired("model")
	cmd.MarkFlagsMutuallyExclusive("prompt", "prompt-ids")
	cmd.MarkFlagsOneRequired("prompt", "prompt-ids")
	return cmd
}

func init() { rootCmd.AddCommand(newGenerateCmd()) }

func runGenerate(cmd *cobra.Command, f *generateFlags) error {
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	if f.chat && f.promptIDs != "" {
		return errors.New("--chat wraps a text prompt in the chat template; use it with --prompt, not --prompt-ids")
	}
	if f.temperature < 0 {
		return fmt.Errorf("--temperature %g: must be >= 0 (0 is greedy)", f.temperature)
	}
	if f.topP <= 0 || f.topP > 1 {
		return fmt.Errorf("--top-p %g: must be in (0, 1]", f.topP)
	}
	if f.maxNewTokens < 0 {
		return fmt.Errorf("--max-new-tokens %d: must be >= 0", f.maxNewTokens)
	}
	needTok := !f.printIDs || f.promptIDs == ""
	dir, err := resolveDir(ctx, "model", f.model, append(slices.Clone(weightFiles), tokenizerFiles...), cmd.ErrOrStderr())
	if err != nil {
		return err
	}

	// The tokenizer: required for text in or out, else optional (it only
	// adds stop ids).
	var tok *tokenizer.Tokenizer
	if t, err := tokenizer.Load(dir); err == nil {
		tok = t
	} else if needTok {
		return fmt.Errorf("generate: %w (--print-ids with --prompt-ids needs no tokenizer)", err)
	}

	var prompt []int32
	switch {
	case f.promptIDs != "":
		if prompt, err = parseIDs(f.promptIDs); err != nil {
			return fmt.Errorf("--prompt-ids: %w", err)
		}
	case f.chat:
		tmpl, err := chat.FromTokenizerDir(dir)
		if err != nil {
			return fmt.Errorf("--chat: %w", err)
		}
		text, err := tmpl.Render([]chat.Message{{Role: "user", Content: f.prompt}}, true)
		if err != nil {
			return fmt.Errorf("--chat: render %s: %w", tmpl.Source(), err)
		}
		// apply_chat_template(tokenize=True) adds no special tokens: the
		// template wrote them.
		prompt = tok.Encode(text, false)
	default:
		prompt = tok.Encode(f.prompt, true)
	}
	if len(prompt) == 0 {
		return errors.New("generate: the prompt encodes to no tokens")
	}

	m, err := loadGenerateModel(dir, f.adapter, f.nf4)
	if err != nil {
		return err
	}
	defer m.Free()

	ids, err := m.Generate(prompt, finetune.GenerateOptions{
		MaxNewTokens: f.maxNewTokens,
		Temperature:  float32(f.temperature),
		TopP:         float32(f.topP),
		Seed:         f.seed,
		StopIDs:      stopIDs(m.Cfg, tok),
		IgnoreEOS:    f.ignoreEOS,
	})
	if err != nil {
		return err
	}
	if f.printIDs {
		_, err = fmt.Fprintln(out, formatIDs(ids))
		return err
	}
	_, err = fmt.Fprintln(out, tok.Decode(ids, true))
	return err
}

// stopIDs are the config's eos_token_id list, the tokenizer's EOS and
// <|end|> (Phi-3's end of turn, which the chat template writes after each
// message), without duplicates.
func stopIDs(cfg *finetune.Config, tok *tokenizer.Tokenizer) []int32 {
	var ids []int32
	add := func(id int32) {
		if id >= 0 && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	for _, id := range cfg.EOSTokenIDs {
		add(int32(id))
	}
	if tok != nil {
		add(tok.EOS())
		if id, ok := tok.TokenToID("<|end|>"); ok {
			add(id)
		}
	}
	if ids == nil {
		ids = []int32{} // not nil: nil would mean "the config's list" to Generate
	}
	return ids
}

// loadGenerateModel loads the checkpoint in dir on the CPU backend, with the
// PEFT adapter in adapterDir ("" for none) in its LoRA slots (the model is
// built with the adapter's rank, alpha and target modules).
func loadGenerateModel(dir, adapterDir string, nf4 bool) (*finetune.Model, error) {
	opts := finetune.ModelOptions{Quantize: nf4, DoubleQuant: nf4}
	return finetune.LoadCheckpointModel(finetune.NewCPUBackend(finetune.CPUOptions{}), dir, opts, adapterDir)
}
