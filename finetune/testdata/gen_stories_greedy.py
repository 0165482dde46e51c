#!/usr/bin/env python3
"""Greedy continuation of stories260K (llama2.c's tiny TinyStories model,
converted to a Phi3ForCausalLM checkpoint by finetune/llama2c), computed by
transformers as the reference for the engine's Generate.

Usage (CPU, no network):

    go run ./finetune/llama2c/cmd/llama2c-to-phi3 ../shared/data/stories260K/stories260K.bin devdata/stories260k_phi3
    python3 finetune/testdata/gen_stories_greedy.py --ckpt devdata/stories260k_phi3 \\
        --out finetune/testdata/golden/stories260k

Writes into --out:
    greedy.json                {"prompt": [1], "ids": [120 new ids], "margins": [...],
                                "generator": ..., "versions": {...}, ...}
    logits_first8.safetensors  "logits" F32 [8, vocab]: the logits of the first 8
                               positions of prompt+ids, "input_ids" I64 [8]

The greedy loop is written out here (argmax of a full forward over the
sequence so far, 120 times, float32, eager attention) rather than taken from
model.generate, so that EOS cannot stop it and no logits processor (e.g.
min_new_tokens masking EOS) changes a choice. model.generate with a KV cache
is run as a cross-check and reported. "margins" is, per step, the gap
between the best and second-best logit: where it is tiny, a float32 engine
may legitimately pick the other token, and the Go test reports that.
"""

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

import transformers
from transformers import Phi3ForCausalLM

import safetensors
from safetensors.torch import load_file, save_file

NEW_TOKENS = 120
PROMPT = [1]  # BOS, as llama2.c's run.c starts


def versions():
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True, help="converted checkpoint folder (config.json + model.safetensors)")
    ap.add_argument("--out", required=True, help="folder for greedy.json and logits_first8.safetensors")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    model = Phi3ForCausalLM.from_pretrained(args.ckpt, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    # The loaded weights must be the file's, bit for bit (no re-initialised
    # padding row, no tying).
    file_w = load_file(os.path.join(args.ckpt, "model.safetensors"))
    sd = model.state_dict()
    for name, w in file_w.items():
        assert name in sd, f"{name} is in the checkpoint but not in Phi3ForCausalLM"
        assert torch.equal(sd[name], w), f"{name}: loaded weight differs from the file"
    V = model.config.vocab_size

    ids = list(PROMPT)
    margins = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            x = torch.tensor([ids], dtype=torch.int64)
            logits = model(input_ids=x, use_cache=False).logits[0, -1].double()
            top2 = torch.topk(logits, 2)
            ids.append(int(top2.indices[0]))
            margins.append(float(top2.values[0] - top2.values[1]))

        full = model(input_ids=torch.tensor([ids], dtype=torch.int64), use_cache=False).logits[0]
        assert full.shape == (len(ids), V), full.shape
        # Consistency: the whole-sequence forward picks the same tokens.
        again = full[:-1].argmax(-1).tolist()
        mism = [t for t in range(len(again)) if again[t] != ids[t + 1]]
        if mism:
            print(f"warning: whole-sequence argmax differs from the step-by-step loop at positions {mism}")

        # Cross-check: transformers' own generate with a KV cache, EOS off.
        # Reported, not asserted: the loop above is the reference.
        try:
            gc = model.generation_config
            gc.eos_token_id = None
            gc.do_sample = False
            gc.pad_token_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
            gen = model.generate(
                torch.tensor([PROMPT], dtype=torch.int64),
                attention_mask=torch.ones(1, len(PROMPT), dtype=torch.int64),
                max_new_tokens=NEW_TOKENS,
                generation_config=gc,
            )[0].tolist()
        except Exception as e:  # noqa: BLE001
            print(f"warning: model.generate failed: {type(e).__name__}: {e}")
            gen = list(PROMPT)
    new = ids[len(PROMPT):]
    gen_new = gen[len(PROMPT):]
    same = sum(1 for a, b in zip(new, gen_new) if a == b)
    first_diff = next((i for i, (a, b) in enumerate(zip(new, gen_new)) if a != b), None)
    print(f"model.generate (KV cache) agrees with the loop on {same}/{len(new)} tokens; first difference: {first_diff}; generate made {len(gen_new)} tokens")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "prompt": PROMPT,
        "ids": new,
        "margins": [round(m, 7) for m in margins],
        "generator": "finetune/testdata/gen_stories_greedy.py",
        "method": "greedy argmax of a full float32 forward per step (eager attention, CPU), no EOS stop",
        "checkpoint": "stories260K.bin converted by finetune/llama2c (Phi3ForCausalLM)",
        "generate_agrees": same,
        "versions": versions(),
    }
    tmp = out / "greedy.json.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    os.replace(tmp, out / "greedy.json")
    save_file(
        {"logits": full[:8].contiguous().to(torch.float32), "input_ids": torch.tensor(ids[:8], dtype=torch.int64)},
        str(out / "logits_first8.safetensors"),
        metadata={"generator": "finetune/testdata/gen_stories_greedy.py", "versions": json.dumps(versions(), sort_keys=True)},
    )
    print(f"ids: {new}")
    print(f"smallest top-1/top-2 margin: {min(margins):.3e} at step {margins.index(min(margins))}")
    print(f"max |logit| of the first 8 positions: {full[:8].abs().max().item():.6f}")


if __name__ == "__main__":
    main()
