// Command llama2c-to-phi3 converts a llama2.c checkpoint (legacy version 0
// format, e.g. stories260K.bin) into a Hugging Face Phi3ForCausalLM
// checkpoint folder (config.json + model.safetensors).
//
//	go run ./finetune/llama2c/cmd/llama2c-to-phi3 IN.bin OUTDIR
package main

import (
	"fmt"
	"os"

	"github.com/ollama-tune/ollama-tune/finetune/llama2c"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: llama2c-to-phi3 IN.bin OUTDIR")
		fmt.Fprintln(os.Stderr, "converts a llama2.c checkpoint (version 0 export) into a Phi3ForCausalLM folder")
		os.Exit(2)
	}
	m, err := llama2c.Read(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	if err := m.WritePhi3(os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	c := m.Config
	fmt.Printf("wrote %s: dim %d, hidden %d, %d layers, %d heads (%d KV), vocab %d, seq_len %d\n",
		os.Args[2], c.Dim, c.HiddenDim, c.NumLayers, c.NumHeads, c.NumKVHeads, c.VocabSize, c.SeqLen)
}
