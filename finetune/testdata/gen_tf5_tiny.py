#!/usr/bin/env python3
"""A tiny Phi-3 saved by transformers itself, for the Go checkpoint loader.

Run from the repository root (Python 3.12, torch, transformers 5.x; no
network, no GPU needed):

    python3 finetune/testdata/gen_tf5_tiny.py [--check-go DIR]

Writes finetune/testdata/tf5_tiny/ with what Phi3ForCausalLM.save_pretrained
produces (config.json in transformers 5's dialect, model.safetensors in
bf16) and expected.json: per tensor its shape, the float64 sum of its
values and its first 8 values, as torch reads them. finetune's
TestCheckpointTransformersTiny loads the folder and compares.

With --check-go DIR it also loads DIR (a checkpoint written by Go's
finetune.WriteRandomCheckpoint) with Phi3ForCausalLM.from_pretrained and
checks every weight against the file: proof that transformers reads what
we write.
"""
import argparse
import json
import os
import sys

import torch
import transformers
from safetensors.torch import load_file
from transformers import Phi3Config, Phi3ForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))


def write_tiny():
    torch.manual_seed(1234)
    cfg = Phi3Config(
        vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        sliding_window=2047, tie_word_embeddings=False,
    )
    model = Phi3ForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.02 * torch.randn_like(p))
    model = model.to(torch.bfloat16)
    out = os.path.join(HERE, "tf5_tiny")
    model.save_pretrained(out)
    sd = load_file(os.path.join(out, "model.safetensors"))
    expected = {
        "generator": "finetune/testdata/gen_tf5_tiny.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype), "sum": float(v.double().sum()),
                "first": [float(x) for x in v.float().reshape(-1)[:8]]}
            for k, v in sorted(sd.items())
        },
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")
    for junk in ("generation_config.json",):
        p = os.path.join(out, junk)
        if os.path.exists(p):
            os.remove(p)
    print("wrote", out, "with", sorted(os.listdir(out)))
    print(open(os.path.join(out, "config.json")).read())


def check_go(d):
    model = Phi3ForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
    sd = load_file(os.path.join(d, "model.safetensors"))
    state = model.state_dict()
    for k, v in sd.items():
        assert k in state, f"transformers has no parameter {k}"
        assert torch.equal(state[k], v.float()), f"{k} differs after loading"
    missing = [k for k in state if k not in sd and not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
    assert not missing, f"not in the Go checkpoint: {missing}"
    logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()
    print(f"transformers {transformers.__version__} loaded {d}: {len(sd)} tensors equal, logits {tuple(logits.shape)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-go", action="append", default=[])
    args = ap.parse_args()
    write_tiny()
    for d in args.check_go:
        check_go(d)
