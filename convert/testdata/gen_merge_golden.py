#!/usr/bin/env python3
"""Golden data for convert's merged export: PEFT's own merge of a LoRA
adapter into a Phi-3, the reference for W + alpha/r * B A computed in
float32.

Usage (torch, transformers, peft, safetensors; CPU is enough, no network):

    python3 convert/testdata/gen_merge_golden.py \
        --model finetune/testdata/golden/tiny_fp32 \
        --adapter finetune/testdata/golden/tiny_fp32/adapter \
        --out convert/testdata/merge_golden.safetensors

It loads the float32 base with transformers' Phi3ForCausalLM, applies the
PEFT adapter with PeftModel.from_pretrained, calls merge_and_unload() and
saves every decoder linear's merged weight under its Hugging Face name
(model.layers.N.self_attn.qkv_proj.weight, ...), float32, with metadata
recording the versions. convert/merge_golden_test.go compares the Go merge
against it: tolerance 2e-7 absolute (float32 rounding of one product sum;
the summation order of torch's matmul over r may differ from ours).
"""

import argparse
import platform

import torch
import transformers
import peft
import safetensors
from safetensors.torch import save_file
from transformers import Phi3ForCausalLM
from peft import PeftModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    torch.manual_seed(0)
    base = Phi3ForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, a.adapter)
    # B must not be zero, or the merge proves nothing.
    nonzero = any(
        p.abs().max().item() > 0 for n, p in model.named_parameters() if "lora_B" in n
    )
    assert nonzero, "the adapter's lora_B matrices are all zero"
    merged = model.merge_and_unload()
    out = {}
    for name, p in merged.state_dict().items():
        if any(m in name for m in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")):
            out[name] = p.detach().to(torch.float32).contiguous()
    assert len(out) == 4 * merged.config.num_hidden_layers, sorted(out)
    meta = {
        "generator": "convert/testdata/gen_merge_golden.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
        "model": a.model,
        "adapter": a.adapter,
        "tolerance": "2e-7 absolute",
    }
    save_file(out, a.out, metadata=meta)
    print(f"wrote {len(out)} merged weights to {a.out}")


if __name__ == "__main__":
    main()
