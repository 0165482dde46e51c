package main

import (
	"github.com/ollama-tune/ollama-tune/finetune"
	"github.com/ollama-tune/ollama-tune/internal/trainerplugin"
)

// The CPU plugin's training loop: finetune's SFT loop on the CPU backend
// (trainerplugin.SFTRunner, shared with the CUDA worker).

func init() {
	runner = trainerplugin.SFTRunner{NewBackend: finetune.CPUBackendFactory, Device: cpuModel()}
}

// loadForGenerate builds the base model of dir (dense fp32), with the PEFT
// adapter in adapterDir applied when it is not "".
func loadForGenerate(dir, adapterDir string) (*finetune.Model, error) {
	return finetune.LoadCheckpointModel(finetune.NewCPUBackend(finetune.CPUOptions{}), dir, finetune.ModelOptions{}, adapterDir)
}
