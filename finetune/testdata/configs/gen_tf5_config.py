#!/usr/bin/env python3
"""Write tf5_phi3_mini_cfgsave.json with the installed transformers (5.x).

hub_phi3_mini.json is config.json as microsoft/Phi-3-mini-4k-instruct ships
it on the Hub (older transformers' dialect). This script loads it with
transformers' own Phi3Config and saves it back with save_pretrained, which
is the dialect a model saved on the GPU machine carries (rope_parameters,
dtype, ...). It keeps sliding_window 2047 (so did a whole tiny model saved
by transformers 5.17, see gen_tf5_tiny.py); tf5_phi3_mini.json is the same
dialect hand-written with sliding_window null, as /work/shared/README.md
reports for the 7.64 GB save. Both must parse. Run from the repository
root:

    python3 finetune/testdata/configs/gen_tf5_config.py

No network and no weights are needed.
"""
import json
import os
import shutil
import tempfile

import transformers
from transformers import Phi3Config

HERE = os.path.dirname(os.path.abspath(__file__))

with open(os.path.join(HERE, "hub_phi3_mini.json")) as f:
    hub = json.load(f)
tmp = tempfile.mkdtemp()
try:
    shutil.copy(os.path.join(HERE, "hub_phi3_mini.json"), os.path.join(tmp, "config.json"))
    cfg = Phi3Config.from_pretrained(tmp)
    out = tempfile.mkdtemp()
    cfg.save_pretrained(out)
    shutil.copy(os.path.join(out, "config.json"), os.path.join(HERE, "tf5_phi3_mini_cfgsave.json"))
    shutil.rmtree(out)
finally:
    shutil.rmtree(tmp)
print("wrote tf5_phi3_mini_cfgsave.json with transformers", transformers.__version__)
