#!/usr/bin/env python3
"""Golden data for the Phi-3 engine: a tiny random Phi-3 with a LoRA adapter,
run by PyTorch + transformers + peft as the independent reference.

Usage (on a machine with torch, transformers, peft, safetensors, numpy; CPU
is enough, no network, no bitsandbytes):

    python3 finetune/testdata/gen_golden.py --out finetune/testdata/golden

It writes two fixture folders under --out:

    tiny/       base linears NF4 + double quant (quantized and dequantized
                in Python by nf4_ref.py, beside this script)
    tiny_fp32/  no quantization

each holding config.json, model.safetensors (the ORIGINAL fp32 base weights:
the engine quantizes them itself), adapter/ (PEFT save_pretrained output) and
golden.safetensors (inputs, logits, loss, LoRA gradients, the LoRA weights
after 3 AdamW steps, and in tiny/ the dequantized base weights the reference
used). See README.md beside this script for the layout and tolerances.

Numerics. The reference runs on the CPU in float64 (model.double()) with the
float32 (de)quantized weights upcast exactly. transformers' Phi-3 code drops
to float32 in three places even in a float64 model: the eager attention
softmax (softmax(..., dtype=float32)), Phi3RMSNorm (hidden_states.to(float32))
and the loss (logits.float()). So that the reference really is float64, this
script (1) registers an attention function "eager_f64" that is transformers'
eager attention with the softmax kept in the input dtype, (2) patches
Phi3RMSNorm.forward to stay in the input dtype, and (3) computes the loss
itself (mean cross-entropy over the shifted, non-ignored labels, which is
what Phi3ForCausalLM's loss is). RoPE's cos/sin are left as transformers
computes them (float32 angles, then cast), which is what the Go engine
mirrors. The script checks that the patched model agrees with unpatched
transformers to float32 precision and that HF's own loss agrees with ours.

Packed rows: each row holds 2-3 examples whose position ids restart at 0. No
reliance on transformers detecting packing from position_ids: the script
passes an explicit 4D additive mask [B,1,S,S] (0 = may attend: j <= i and
same example; -inf otherwise) and verifies that the packed logits equal
running each example alone.
"""

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import transformers
from transformers import Phi3ForCausalLM
from transformers.models.phi3 import modeling_phi3

import peft
from peft import LoraConfig, get_peft_model

import safetensors
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent

SEED = 20240611
VOCAB = 256
HIDDEN = 64
INTER = 96
LAYERS = 2
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
MAX_POS = 128

LORA_R = 4
LORA_ALPHA = 8
TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]

# AdamW golden: torch.optim.AdamW with these settings, clip_grad_norm_(1.0)
# before each step, 3 steps on the same batch, constant lr.
ADAM = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
MAX_GRAD_NORM = 1.0
ADAM_STEPS = 3

# The packed batch: per row, (example length, prompt length). Prompt tokens
# (and so the first token of every example) get label -100.
ROWS = [
    [(6, 3), (5, 2), (5, 2)],
    [(7, 3), (9, 4)],
]
SEQ = 16

CONFIG = {
    "architectures": ["Phi3ForCausalLM"],
    "model_type": "phi3",
    "hidden_size": HIDDEN,
    "intermediate_size": INTER,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "vocab_size": VOCAB,
    "max_position_embeddings": MAX_POS,
    "original_max_position_embeddings": MAX_POS,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "attention_bias": False,
    "attention_dropout": 0.0,
    "embd_pdrop": 0.0,
    "resid_pdrop": 0.0,
    "initializer_range": 0.02,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "use_cache": True,
    "torch_dtype": "float32",
}


def load_nf4_ref():
    """Imports nf4_ref.py (beside this script) by path."""
    path = HERE / "nf4_ref.py"
    if not path.exists():
        sys.exit(f"error: {path} is missing; it provides quantize_nf4/dequantize_nf4 for the NF4 variant")
    spec = importlib.util.spec_from_file_location("nf4_ref", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for fn in ("quantize_nf4", "dequantize_nf4"):
        if not hasattr(mod, fn):
            sys.exit(f"error: {path} has no {fn}()")
    return mod


# ---------------------------------------------------------------------------
# float64-preserving replacements for the three float32 casts in HF's Phi-3

PRECISE = True  # False: run transformers' own code (for the cross-check)
CALLS = {"attention": 0, "rmsnorm": 0}

_hf_eager_attention = modeling_phi3.eager_attention_forward
_hf_rmsnorm_forward = modeling_phi3.Phi3RMSNorm.forward


def eager_attention_f64(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager_attention_forward with the softmax in the input
    dtype instead of float32. query [B,H,S,D], key/value [B,K,S,D]."""
    if not PRECISE:
        return _hf_eager_attention(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    CALLS["attention"] += 1
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    n_rep = module.num_key_value_groups
    key_states = modeling_phi3.repeat_kv(key, n_rep)
    value_states = modeling_phi3.repeat_kv(value, n_rep)
    attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask[:, :, :, : key_states.shape[-2]]
    attn_weights = torch.softmax(attn_weights, dim=-1)
    if dropout:
        raise RuntimeError("the golden reference runs without attention dropout")
    attn_output = torch.matmul(attn_weights, value_states)
    return attn_output.transpose(1, 2).contiguous(), attn_weights


def rmsnorm_f64(self, hidden_states):
    """Phi3RMSNorm without the cast to float32."""
    if not PRECISE:
        return _hf_rmsnorm_forward(self, hidden_states)
    CALLS["rmsnorm"] += 1
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def install_precise_ops():
    """Registers eager_f64 and patches RMSNorm. Returns the attn_implementation
    name to load the model with."""
    modeling_phi3.Phi3RMSNorm.forward = rmsnorm_f64
    try:
        from transformers import AttentionInterface
    except ImportError:
        AttentionInterface = None
    if AttentionInterface is not None:
        AttentionInterface.register("eager_f64", eager_attention_f64)
        try:  # only used when no 4D mask is passed; we always pass one
            from transformers.masking_utils import AttentionMaskInterface, eager_mask

            AttentionMaskInterface.register("eager_f64", eager_mask)
        except ImportError:
            pass
        return "eager_f64"
    # Older transformers: the eager path calls the module-level function.
    modeling_phi3.eager_attention_forward = eager_attention_f64
    return "eager"


# ---------------------------------------------------------------------------
# weights, batch, masks


def base_weight_names():
    names = ["model.embed_tokens.weight"]
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        names += [
            p + "input_layernorm.weight",
            p + "self_attn.qkv_proj.weight",
            p + "self_attn.o_proj.weight",
            p + "post_attention_layernorm.weight",
            p + "mlp.gate_up_proj.weight",
            p + "mlp.down_proj.weight",
        ]
    names += ["model.norm.weight", "lm_head.weight"]
    return names


def shapes():
    qkv = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    s = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = (HIDDEN,)
        s[p + "post_attention_layernorm.weight"] = (HIDDEN,)
        s[p + "self_attn.qkv_proj.weight"] = (qkv, HIDDEN)
        s[p + "self_attn.o_proj.weight"] = (HIDDEN, HEADS * HEAD_DIM)
        s[p + "mlp.gate_up_proj.weight"] = (2 * INTER, HIDDEN)
        s[p + "mlp.down_proj.weight"] = (HIDDEN, INTER)
    return s


def make_base_weights():
    """Random fp32 base weights: N(0, 0.02) for matrices, 1 + 0.1 N(0,1) for
    the RMSNorm weights (so that a wrong norm weight shows)."""
    g = torch.Generator().manual_seed(SEED)
    sh = shapes()
    w = {}
    for name in base_weight_names():
        if name.endswith("norm.weight"):
            w[name] = 1.0 + 0.1 * torch.randn(sh[name], generator=g, dtype=torch.float32)
        else:
            w[name] = 0.02 * torch.randn(sh[name], generator=g, dtype=torch.float32)
    return w


def is_quantized_linear(name):
    """The weights bitsandbytes' 4-bit load quantizes: every decoder nn.Linear
    (lm_head and the embeddings stay dense)."""
    return name.startswith("model.layers.") and any(f".{m}.weight" in name for m in TARGETS)


def make_batch():
    g = torch.Generator().manual_seed(SEED + 1)
    B = len(ROWS)
    input_ids = torch.zeros(B, SEQ, dtype=torch.int64)
    position_ids = torch.zeros(B, SEQ, dtype=torch.int64)
    labels = torch.full((B, SEQ), -100, dtype=torch.int64)
    segments = []  # (row, start, end)
    for b, row in enumerate(ROWS):
        assert sum(n for n, _ in row) == SEQ, row
        t = 0
        for n, prompt in row:
            ids = torch.randint(3, VOCAB, (n,), generator=g, dtype=torch.int64)
            ids[0] = CONFIG["bos_token_id"]
            input_ids[b, t : t + n] = ids
            position_ids[b, t : t + n] = torch.arange(n)
            labels[b, t + prompt : t + n] = ids[prompt:]
            segments.append((b, t, t + n))
            t += n
    return input_ids, position_ids, labels, segments


def packed_mask(position_ids, dtype):
    """[B,1,S,S] additive mask: 0 where key j may be seen by query i (j <= i
    and same example), -inf elsewhere. Example ids come from the restarts of
    position_ids."""
    B, S = position_ids.shape
    seg = torch.cumsum((position_ids == 0).to(torch.int64), dim=1)  # [B,S]
    i = torch.arange(S)[:, None]
    j = torch.arange(S)[None, :]
    allowed = (j <= i)[None] & (seg[:, :, None] == seg[:, None, :])
    mask = torch.zeros(B, 1, S, S, dtype=dtype)
    mask.masked_fill_(~allowed[:, None], float("-inf"))
    return mask


def causal_mask(n, dtype):
    return packed_mask(torch.arange(n)[None], dtype)


def causal_lm_loss(logits, labels):
    """Phi3ForCausalLM's loss: mean cross-entropy of logits[:, t] against
    labels[:, t+1] over the labels that are not -100, in logits' dtype."""
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1, :].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="mean")


class Runner:
    """Computes [B,S,V] logits for the packed batch either in one packed
    forward (4D mask) or by running each example alone and stitching."""

    def __init__(self, model, input_ids, position_ids, segments):
        self.model = model
        self.input_ids = input_ids
        self.position_ids = position_ids
        self.segments = segments
        self.mode = "packed"

    def packed(self):
        dtype = next(self.model.parameters()).dtype
        mask = packed_mask(self.position_ids, dtype)
        out = self.model(input_ids=self.input_ids, position_ids=self.position_ids, attention_mask=mask, use_cache=False)
        return out.logits

    def stitched(self):
        dtype = next(self.model.parameters()).dtype
        rows = [[] for _ in range(self.input_ids.shape[0])]
        for b, s0, s1 in self.segments:
            n = s1 - s0
            out = self.model(
                input_ids=self.input_ids[b : b + 1, s0:s1],
                position_ids=torch.arange(n)[None],
                attention_mask=causal_mask(n, dtype),
                use_cache=False,
            )
            rows[b].append(out.logits[0])
        return torch.stack([torch.cat(r, dim=0) for r in rows], dim=0)

    def logits(self):
        return self.packed() if self.mode == "packed" else self.stitched()


# ---------------------------------------------------------------------------


def rope_theta_of(config):
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict) and "rope_theta" in rp:
        return float(rp["rope_theta"])
    return float(getattr(config, "rope_theta"))


def write_json(path, obj):
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def versions():
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }


def load_model(model_dir, attn_impl):
    """Phi3ForCausalLM.from_pretrained in float32 with our attention function.
    Falls back to loading with "eager" and switching afterwards (or to the
    module-level patch) if this transformers refuses a registered name at
    load time; the CALLS check later proves which function ran."""
    kw = {"dtype": torch.float32}
    try:
        return Phi3ForCausalLM.from_pretrained(str(model_dir), attn_implementation=attn_impl, **kw)
    except (ValueError, KeyError) as e:
        if attn_impl == "eager":
            raise
        print(f"   from_pretrained(attn_implementation={attn_impl!r}) failed ({e}); loading with 'eager'")
    model = Phi3ForCausalLM.from_pretrained(str(model_dir), attn_implementation="eager", **kw)
    try:
        model.set_attn_implementation(attn_impl)
    except Exception as e:  # noqa: BLE001 - any failure: use the module-level patch
        print(f"   set_attn_implementation failed ({e}); patching modeling_phi3.eager_attention_forward")
        modeling_phi3.eager_attention_forward = eager_attention_f64
    return model


def build_variant(out_dir, quant, attn_impl, nf4_ref):
    global PRECISE
    out_dir = Path(out_dir)
    (out_dir / "adapter").mkdir(parents=True, exist_ok=True)
    print(f"== {out_dir} (quant: {quant})")

    # 1. config.json (the Hub's older dialect) + the original fp32 weights.
    write_json(out_dir / "config.json", CONFIG)
    base = make_base_weights()
    save_file({k: v.contiguous() for k, v in base.items()}, str(out_dir / "model.safetensors"), metadata={"format": "pt"})

    # 2. Load them the way a user would; this also proves transformers reads
    #    our config.json.
    model = load_model(out_dir, attn_impl)
    model.eval()
    cfg = model.config
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (HIDDEN, INTER, LAYERS), cfg
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (HEADS, KV_HEADS, VOCAB), cfg
    assert rope_theta_of(cfg) == 10000.0, cfg
    assert getattr(cfg, "sliding_window", None) is None, cfg.sliding_window
    sd = model.state_dict()
    for name, w in base.items():
        assert name in sd, f"transformers' Phi3ForCausalLM has no parameter {name}"
        assert torch.equal(sd[name], w), f"{name}: loaded weight differs from the file"

    # 3. NF4: replace the decoder linears by their dequantized values.
    nf4_weights = {}
    if quant == "nf4":
        with torch.no_grad():
            for name in base_weight_names():
                if not is_quantized_linear(name):
                    continue
                w = base[name]
                state = nf4_ref.quantize_nf4(w.clone(), double_quant=True)
                deq = nf4_ref.dequantize_nf4(state)
                deq = torch.as_tensor(deq).to(torch.float32).reshape(w.shape).contiguous()
                err = (deq - w).abs().mean().item() / w.abs().mean().item()
                assert 0 < err < 0.35, f"{name}: NF4 relative error {err} is implausible"
                nf4_weights[name] = deq
                sd[name].copy_(deq)
        assert len(nf4_weights) == 4 * LAYERS

    # 4. LoRA with PEFT, on the float32 model so the adapter file is fp32.
    lcfg = LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(TARGETS),
        task_type="CAUSAL_LM",
    )
    pmodel = get_peft_model(model, lcfg)
    g = torch.Generator().manual_seed(SEED + 2)
    lora = {}  # file name -> parameter
    with torch.no_grad():
        for name, p in pmodel.named_parameters():
            if not p.requires_grad:
                continue
            fname = name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
            assert fname != name, f"unexpected trainable parameter {name}"
            lora[fname] = p
        # A ~ kaiming_uniform(a=sqrt(5)) as PEFT draws it, B non-zero so
        # every gradient is non-zero; drawn in sorted-name order.
        for fname in sorted(lora):
            p = lora[fname]
            assert p.dtype == torch.float32, (fname, p.dtype)
            if ".lora_A." in fname:
                torch.nn.init.kaiming_uniform_(p, a=math.sqrt(5), generator=g)
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g, dtype=torch.float32))
    assert len(lora) == 2 * 4 * LAYERS, sorted(lora)
    pmodel.peft_config["default"].base_model_name_or_path = ".."  # the model dir, relative to adapter/
    pmodel.save_pretrained(str(out_dir / "adapter"))
    (out_dir / "adapter" / "README.md").unlink(missing_ok=True)  # PEFT's model-card template
    saved = load_file(str(out_dir / "adapter" / "adapter_model.safetensors"))
    assert set(saved) == set(lora), (sorted(saved), sorted(lora))
    for fname, p in lora.items():
        assert saved[fname].dtype == torch.float32 and torch.equal(saved[fname], p.detach()), fname

    # 5. The float64 reference.
    pmodel.double()
    hf = pmodel.get_base_model()
    got = dict(hf.named_parameters())
    for name in base_weight_names():
        want = nf4_weights.get(name, base[name]).double()
        key = name if name in got else name.replace(".weight", ".base_layer.weight")
        assert torch.equal(got[key], want), f"{name}: float64 weight is not the float32 value"
    for p in lora.values():
        assert p.dtype == torch.float64

    input_ids, position_ids, labels, segments = make_batch()
    run = Runner(hf, input_ids, position_ids, segments)

    with torch.no_grad():
        stitched = run.stitched()
        try:
            packed = run.packed()
        except Exception as e:  # a transformers that rejects 4D masks
            print(f"   packed forward with a 4D mask failed ({type(e).__name__}: {e}); using per-example runs")
            run.mode = "stitched"
            packed = None
        if packed is not None:
            d = (packed - stitched).abs().max().item()
            print(f"   packed vs per-example logits: max |diff| = {d:.3e}")
            assert d < 1e-10, f"packed logits differ from per-example logits by {d}"
        assert CALLS["attention"] > 0 and CALLS["rmsnorm"] > 0, f"the float64 ops were not used: {CALLS}"
        logits = run.logits()
        assert logits.dtype == torch.float64, logits.dtype

        # Cross-check against transformers' own float32-cast code paths.
        PRECISE = False
        try:
            hf_logits = run.logits()
            hf_out = hf(
                input_ids=input_ids, position_ids=position_ids, attention_mask=packed_mask(position_ids, torch.float64), labels=labels, use_cache=False
            ) if run.mode == "packed" else None
        finally:
            PRECISE = True
        d = (hf_logits - logits).abs().max().item()
        print(f"   float64 reference vs transformers' float32-cast ops: max |logit diff| = {d:.3e}")
        assert d < 1e-5, f"the float64 patches changed the function: max |diff| {d}"

    # 6. Loss and gradients of the mean loss (unclipped).
    hf.zero_grad(set_to_none=True)
    logits = run.logits()
    loss = causal_lm_loss(logits, labels)
    loss.backward()
    if hf_out is not None:
        dl = abs(hf_out.loss.item() - loss.item())
        print(f"   loss {loss.item():.12f}; transformers' loss_function: {hf_out.loss.item():.12f} (|diff| {dl:.2e})")
        assert dl < 1e-5, "our loss differs from transformers' loss_function"
    grads = {}
    for fname, p in lora.items():
        assert p.grad is not None and p.grad.abs().max().item() > 0, f"{fname}: zero gradient"
        grads[fname] = p.grad.detach().clone()

    golden = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "labels": labels,
        "logits": logits.detach().to(torch.float32),
        "loss": loss.detach().reshape(1).to(torch.float32),
    }
    for fname, gr in grads.items():
        golden["grad." + fname] = gr.to(torch.float32)
    for name, w in nf4_weights.items():
        golden["nf4." + name] = w

    # 7. Three AdamW steps on the same batch, clipping before each step.
    opt = torch.optim.AdamW([lora[k] for k in sorted(lora)], foreach=False, **ADAM)
    losses, norms = [], []
    for _ in range(ADAM_STEPS):
        opt.zero_grad(set_to_none=True)
        l = causal_lm_loss(run.logits(), labels)
        l.backward()
        n = torch.nn.utils.clip_grad_norm_([lora[k] for k in sorted(lora)], max_norm=MAX_GRAD_NORM)
        opt.step()
        losses.append(l.item())
        norms.append(float(n))
    assert abs(losses[0] - loss.item()) < 1e-12
    for fname, p in lora.items():
        golden["adamw." + fname] = p.detach().to(torch.float32)
    golden["adamw.loss"] = torch.tensor(losses, dtype=torch.float32)
    golden["adamw.grad_norm"] = torch.tensor(norms, dtype=torch.float32)

    meta = {
        "generator": "finetune/testdata/gen_golden.py",
        "versions": json.dumps(versions(), sort_keys=True),
        "quant": quant,
        "reference": "CPU float64 (softmax and RMSNorm kept in float64; RoPE cos/sin as transformers computes them)",
        "attention": run.mode,
        "labels": "Hugging Face convention: logits[:, t] predicts labels[:, t+1]; -100 ignored; loss = mean over targets",
        "adamw": json.dumps({**ADAM, "max_grad_norm": MAX_GRAD_NORM, "steps": ADAM_STEPS, "lr_schedule": "constant"}),
        "grad": "gradient of the mean loss before clipping, at the initial adapter weights",
    }
    save_file({k: v.contiguous() for k, v in golden.items()}, str(out_dir / "golden.safetensors"), metadata=meta)

    print(f"   max |logit| {logits.detach().abs().max().item():.6f}  loss {loss.item():.9f}  grads {len(grads)}  nf4 weights {len(nf4_weights)}")
    print(f"   AdamW losses {['%.9f' % x for x in losses]}  pre-clip grad norms {['%.6f' % x for x in norms]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder to write tiny/ and tiny_fp32/ into (e.g. finetune/testdata/golden)")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # one reduction order, run to run
    nf4_ref = load_nf4_ref()
    attn_impl = install_precise_ops()
    print("versions:", json.dumps(versions()), "attention:", attn_impl)

    build_variant(Path(args.out) / "tiny", "nf4", attn_impl, nf4_ref)
    build_variant(Path(args.out) / "tiny_fp32", "none", attn_impl, nf4_ref)
    print("done")


if __name__ == "__main__":
    main()
