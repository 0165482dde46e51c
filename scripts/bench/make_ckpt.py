#!/usr/bin/env python3
"""Write a random-init Phi-3-mini-4k checkpoint (bf16 safetensors, 7.64 GB)
with save_pretrained, for `make bench-gpu`'s load measurement:

    python3 scripts/bench/make_ckpt.py /tmp/phi3-random

The model is initialised on the GPU (seconds, where the CPU takes minutes).
"""
import sys
import time

import torch
from transformers import Phi3Config, Phi3ForCausalLM


def main():
    out = sys.argv[1]
    t0 = time.perf_counter()
    try:
        cfg = Phi3Config(sliding_window=2047)
    except TypeError:
        cfg = Phi3Config()
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Phi3ForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    # transformers zeroes the pad token's embedding row (padding_idx). A
    # trained Phi-3 has no zero row; with one, a row that starts with
    # <|endoftext|> (wrapped packing) keeps an exactly-zero hidden state
    # through every layer, and each RMSNorm's backward multiplies its
    # gradient by 1/sqrt(eps) ~ 316: the gradient overflows by layer ~14
    # (found with OLLAMA_TUNE_CHECK_FINITE=1). Draw it like the others.
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[cfg.pad_token_id].normal_(0, cfg.initializer_range)
    model.save_pretrained(out)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
