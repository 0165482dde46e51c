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
    model.save_pretrained(out)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
