#!/usr/bin/env python3
"""Checks an adapter written by ollama-tune against PEFT itself.

Loads DIR/base (a tiny random Phi-3 written by the Go tests) with
transformers in float32 on the CPU, applies DIR/adapter with
peft.PeftModel.from_pretrained, runs DIR/batch.safetensors' input_ids and
position_ids through both, and compares with the logits the Go engine
computed (batch.safetensors: base_logits without, logits with the adapter).

Make DIR with the Go test, then run this (Python 3.12, torch 2.11,
transformers 5.17, peft 0.21, safetensors, numpy; CPU is enough, no network):

    OLLAMA_TUNE_EXPORT_PEFT_CHECK=/tmp/peftcheck \
        go test ./finetune -run TestPEFTCheckExport -count=1
    python3 finetune/testdata/check_peft_logits.py /tmp/peftcheck

It prints one JSON object (versions, errors, verdict) and exits 1 when a
check fails:

  - base:  our base logits vs transformers', relative L2 error <= 1e-5
  - peft:  our base+adapter logits vs PEFT's, relative L2 error <= 1e-5
  - delta: the adapter's effect (with - without) ours vs PEFT's, relative
           L2 error <= 1e-3; the effect itself must be visible (>= 1e-3 of
           the logits), so a wrongly loaded adapter (transposed, unscaled,
           missing modules) cannot pass
  - the adapter loads with no missing or unexpected LoRA keys.
"""

import json
import platform
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

import peft
import safetensors
import transformers
from peft import PeftModel
from safetensors.torch import load_file
from transformers import Phi3ForCausalLM

TOL_LOGITS = 1e-5
TOL_DELTA = 1e-3
MIN_EFFECT = 1e-3


def rel_l2(got, want):
    got = got.double().flatten()
    want = want.double().flatten()
    return float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want))


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    d = Path(sys.argv[1])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    batch = load_file(str(d / "batch.safetensors"))
    input_ids, position_ids = batch["input_ids"], batch["position_ids"]
    ours, ours_base = batch["logits"], batch["base_logits"]

    model = Phi3ForCausalLM.from_pretrained(str(d / "base"), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        hf_base = model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits.float()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = PeftModel.from_pretrained(model, str(d / "adapter"), is_trainable=False)
    load_warnings = [str(w.message) for w in caught if "key" in str(w.message).lower() or "missing" in str(w.message).lower()]
    pm.eval()
    with torch.no_grad():
        hf = pm(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits.float()

    # Every LoRA matrix in the file must have landed in the model.
    want = load_file(str(d / "adapter" / "adapter_model.safetensors"))
    state = {k.replace(".default", ""): v for k, v in pm.state_dict().items() if "lora_" in k}
    missing = sorted(k for k in want if k not in state)
    extra = sorted(k for k in state if k not in want)
    mismatched = sorted(k for k in want if k in state and not torch.equal(state[k].float(), want[k].float()))

    effect = rel_l2(hf, hf_base)
    res = {
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
        "shape": list(ours.shape),
        "base_rel_err": rel_l2(ours_base, hf_base),
        "peft_rel_err": rel_l2(ours, hf),
        "delta_rel_err": rel_l2(ours - ours_base, hf - hf_base),
        "adapter_effect": effect,
        "max_abs_err": float((ours - hf).abs().max()),
        "argmax_agree": float((ours.argmax(-1) == hf.argmax(-1)).float().mean()),
        "lora_tensors": len(want),
        "missing_in_model": missing,
        "not_in_file": extra,
        "values_differ": mismatched,
        "load_warnings": load_warnings,
    }
    failures = []
    if res["base_rel_err"] > TOL_LOGITS:
        failures.append(f"base logits differ: {res['base_rel_err']:.3g} > {TOL_LOGITS}")
    if res["peft_rel_err"] > TOL_LOGITS:
        failures.append(f"base+adapter logits differ from PEFT's: {res['peft_rel_err']:.3g} > {TOL_LOGITS}")
    if res["delta_rel_err"] > TOL_DELTA:
        failures.append(f"the adapter's effect differs from PEFT's: {res['delta_rel_err']:.3g} > {TOL_DELTA}")
    if effect < MIN_EFFECT:
        failures.append(f"the adapter hardly changes PEFT's logits ({effect:.3g}); it may not have been applied")
    if missing or extra or mismatched:
        failures.append("LoRA tensors did not load one to one")
    res["failures"] = failures
    res["ok"] = not failures
    print(json.dumps(res, indent=2))
    sys.exit(0 if not failures else 1)


if __name__ == "__main__":
    main()
