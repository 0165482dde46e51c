// Command ollama-tune is the host CLI: it validates configs, runs a trainer
// plugin, converts adapters for Ollama and talks to the Ollama server.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

var rootCmd = &cobra.Command{
	Use:           "ollama-tune",
	Short:         "Fine-tune models for Ollama (QLoRA on Phi-3)",
	SilenceUsage:  true,
	SilenceErrors: true,
}

func main() {
	if err := rootCmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "ollama-tune:", err)
		os.Exit(1)
	}
}
