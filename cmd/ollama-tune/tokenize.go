package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ollama-tune/ollama-tune/finetune/chat"
)

func newTokenizeCmd() *cobra.Command {
	var (
		tokDir     string
		asChat     bool
		noSpecial  bool
		showTokens bool
	)
	cmd := &cobra.Command{
		Use:   "tokenize --tokenizer DIR [--chat] TEXT",
		Short: "Print the token ids of a text",
		Long: `Print the token ids of TEXT on one line, as transformers' tokenizer(TEXT)
gives them (special tokens added as the tokenizer's post-processor says; Phi-3
adds none). With --chat the text is rendered as one user turn through the
tokenizer's chat template with the assistant prompt after it, then encoded
without special tokens, as apply_chat_template(tokenize=True) does.

--tokenizer is a directory holding tokenizer.json (or tokenizer.model) and
tokenizer_config.json, or a Hugging Face repo id.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			tok, dir, err := loadTokenizer(cmd.Context(), tokDir, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			text := args[0]
			var ids []int32
			if asChat {
				tmpl, err := chat.FromTokenizerDir(dir)
				if err != nil {
					return fmt.Errorf("--chat: %w", err)
				}
				rendered, err := tmpl.Render([]chat.Message{{Role: "user", Content: text}}, true)
				if err != nil {
					return fmt.Errorf("--chat: render %s: %w", tmpl.Source(), err)
				}
				ids = tok.Encode(rendered, false)
			} else {
				ids = tok.Encode(text, !noSpecial)
			}
			out := cmd.OutOrStdout()
			if showTokens {
				for _, id := range ids {
					piece, _ := tok.IDToToken(id)
					fmt.Fprintf(out, "%d\t%q\n", id, piece)
				}
				return nil
			}
			_, err = fmt.Fprintln(out, formatIDs(ids))
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&tokDir, "tokenizer", "", "tokenizer directory or Hugging Face repo id")
	fl.BoolVar(&asChat, "chat", false, "render TEXT as a user turn through the chat template (with the assistant prompt)")
	fl.BoolVar(&noSpecial, "no-special", false, "do not add the tokenizer's special tokens (add_special_tokens=False)")
	fl.BoolVar(&showTokens, "tokens", false, "print one id and its token piece per line")
	_ = cmd.MarkFlagRequired("tokenizer")
	return cmd
}

func init() { rootCmd.AddCommand(newTokenizeCmd()) }
