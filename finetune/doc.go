// Package finetune is the core of ollama-tune: the Phi-3 model, written once
// over a Backend of coarse ops, LoRA, the SFT loop and the CPU reference
// backend that every faster backend is tested against.
//
// Conventions (see ../shared/DESIGN.md):
//   - weights are row-major [out, in] like PyTorch nn.Linear;
//   - activations are [T, features] with T = batch x sequence flattened;
//   - LoRA A is [r, in], B is [out, r] (PEFT's shapes);
//   - tensor names are Hugging Face's (model.layers.N.self_attn.qkv_proj).
package finetune
