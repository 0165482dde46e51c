#!/usr/bin/env python3
"""The transformers + peft baseline of `make bench-gpu` (issue 8).

A Phi-3-mini-4k-shaped Phi3ForCausalLM with random weights in bfloat16 on
the GPU (no bitsandbytes: the base is bf16, not NF4), LoRA r=8, alpha 16,
dropout 0.05 on qkv_proj, o_proj, gate_up_proj and down_proj, batches of
16 x 64 tokens, torch.optim.AdamW (lr 3e-4, linear decay over 220 steps,
no weight decay), gradients clipped to norm 1.0, bf16 autocast (what the
Trainer does with bf16=True); with and without gradient checkpointing
(non-reentrant). s/step is the mean over --steps steps after --warmup
steps. With --load DIR it also times from_pretrained(DIR) onto the GPU in
bf16. Results are appended as JSON lines (the schema of
cmd/ollama-tune-bench-gpu) to --out.

Needs: Python 3.12, PyTorch, transformers, peft, a CUDA GPU.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch


def log(*a):
    print(*a, flush=True)


def phi3_config():
    from transformers import Phi3Config

    try:
        return Phi3Config(sliding_window=2047)
    except TypeError:
        return Phi3Config()


def build_model(cfg, dtype=torch.bfloat16):
    from transformers import Phi3ForCausalLM

    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda"):
            model = Phi3ForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    model.config.use_cache = False
    return model


def batch(seed, V, B=16, S=64):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(V, 32000), (B, S), generator=g)
    return ids.cuda(), ids.clone().cuda()


class PowerSampler:
    """The SM clock and board power every 20 ms through NVML (ctypes, as
    cmd/ollama-tune-bench-gpu does with cuda.StartPowerSampling), for the
    rows' clock column; nothing where NVML cannot be opened."""

    def __init__(self):
        import ctypes
        import threading

        self.samples, self.stop = [], threading.Event()
        try:
            nv = ctypes.CDLL("libnvidia-ml.so.1")
            if nv.nvmlInit_v2() != 0:
                raise OSError("nvmlInit_v2")
            p = torch.cuda.get_device_properties(torch.cuda.current_device())
            bus = f"{p.pci_domain_id:08x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0".encode()
            h = ctypes.c_void_p()
            if nv.nvmlDeviceGetHandleByPciBusId_v2(bus, ctypes.byref(h)) != 0:
                raise OSError(f"no NVML handle for {bus}")
        except (OSError, AttributeError) as e:
            log(f"no clock samples: {e}")
            self.thread = None
            return

        self.nv, self.h = nv, h
        self.mj0 = self.energy()

        def run():
            mhz, mw, why = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_ulonglong()
            while not self.stop.wait(0.02):
                if nv.nvmlDeviceGetClockInfo(h, 1, ctypes.byref(mhz)) == 0 and nv.nvmlDeviceGetPowerUsage(h, ctypes.byref(mw)) == 0:
                    # The reasons (0x4: software power cap) where the board reports them.
                    capped = why.value & 0x4 != 0 if nv.nvmlDeviceGetCurrentClocksThrottleReasons(h, ctypes.byref(why)) == 0 else None
                    self.samples.append((mhz.value, mw.value / 1000, capped))

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def energy(self):
        """The board's energy counter (mJ), or None."""
        import ctypes

        mj = ctypes.c_ulonglong()
        return mj.value if self.nv.nvmlDeviceGetTotalEnergyConsumption(self.h, ctypes.byref(mj)) == 0 else None

    def finish(self, steps):
        """Stops sampling; the result fields (empty without samples)."""
        if self.thread is None:
            return {}
        mj = self.energy()
        self.stop.set()
        self.thread.join()
        n = len(self.samples)
        if n == 0:
            return {}
        r = {"sm_clock_mhz": sum(s[0] for s in self.samples) / n, "power_w": sum(s[1] for s in self.samples) / n}
        known = [s[2] for s in self.samples if s[2] is not None]
        if known:
            r["power_cap_pct"] = 100 * sum(known) / len(known)
        if mj is not None and self.mj0 is not None:
            r["j_per_step"] = (mj - self.mj0) / 1000 / steps
        return r


def train(model, ckpt, steps, warmup, total, ids, labels, device_name, compute="bfloat16"):
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, (total - s) / total))
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    free0, _ = torch.cuda.mem_get_info()
    min_free = free0
    times, losses, norms = [], [], []
    power = None
    for g in range(warmup + steps):
        if g == warmup:
            power = PowerSampler()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=compute.startswith("bfloat16")):
            out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        min_free = min(min_free, torch.cuda.mem_get_info()[0])
        losses.append(float(out.loss))
        norms.append(float(norm))
        if g >= warmup:
            times.append(dt)
        log(f"hf ckpt {ckpt} step {g + 1}: {dt:.4f} s, loss {losses[-1]:.4f}, grad norm {norms[-1]:.4f}")
    clocks = power.finish(steps) if power else {}
    peak = torch.cuda.max_memory_allocated() / 2**30
    del opt, sched
    s = sum(times) / len(times)
    cl = ""
    if clocks:
        cl = f"; SM clock {clocks['sm_clock_mhz']:.0f} MHz, {clocks['power_w']:.0f} W"
        if "power_cap_pct" in clocks:
            cl += f", power-capped in {clocks['power_cap_pct']:.0f}% of samples"
        if "j_per_step" in clocks:
            cl += f", {clocks['j_per_step']:.2f} J a step"
    log(f"hf ckpt {ckpt}: {s:.4f} s/step (median {statistics.median(times):.4f}), {1024 / s:.0f} tokens/s, peak allocated {peak:.2f} GiB{cl}")
    return clocks | {
        "impl": "transformers+peft", "kind": "train", "device": device_name, "compute": compute, "ckpt": ckpt,
        "steps": steps, "warmup": warmup, "total_steps": total, "tokens_per_step": ids.numel(),
        "s_per_step": s, "s_per_step_median": statistics.median(times), "step_times": times,
        "peak_gib": peak, "device_gib": (free0 - min_free) / 2**30 + torch.cuda.memory_allocated() / 2**30,
        "losses": losses, "grad_norms": norms,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--total", type=int, default=220)
    ap.add_argument("--ckpt", default="on,off")
    ap.add_argument("--load", default="")
    ap.add_argument("--out", required=True)
    ap.add_argument("--compute", default="bfloat16", choices=["bfloat16", "float32"],
                    help="bfloat16: a bf16 base under bf16 autocast (the table's rows); float32: an fp32 base, no autocast "
                         "(the seed's bnb_4bit_compute_dtype, weights unquantized)")
    ap.add_argument("--tf32", action="store_true", help="torch.backends.cuda.matmul.allow_tf32 = True (TrainingArguments' tf32)")
    args = ap.parse_args()
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True

    import peft
    import transformers
    from peft import LoraConfig, get_peft_model

    device_name = torch.cuda.get_device_name(0)
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
    log("baseline:", device_name, versions)

    def emit(r):
        r.setdefault("note", versions)
        with open(args.out, "a") as f:
            f.write(json.dumps(r) + "\n")

    t0 = time.perf_counter()
    model = build_model(phi3_config(), torch.float32 if args.compute == "float32" else torch.bfloat16)
    log(f"model built on the GPU in {time.perf_counter() - t0:.1f} s, attention {getattr(model.config, '_attn_implementation', '?')}")
    lc = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                    target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])
    model = get_peft_model(model, lc)
    model.print_trainable_parameters()
    ids, labels = batch(42, model.config.vocab_size)
    # Every run starts from the same untrained adapter (the runs share the
    # model; without this the second trained on the first one's adapter).
    init = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
    for c in args.ckpt.split(","):
        ckpt = c.strip() == "on"
        model.load_state_dict(init, strict=False)
        try:
            emit(train(model, ckpt, args.steps, args.warmup, args.total, ids, labels, device_name,
                       args.compute + (" (TF32)" if args.tf32 else "")))
        except Exception as e:  # keep going: the other runs still count
            log(f"hf ckpt {ckpt} failed: {e!r}")
    del model
    torch.cuda.empty_cache()

    if args.load:
        from transformers import Phi3ForCausalLM

        size = sum(os.path.getsize(os.path.join(args.load, f)) for f in os.listdir(args.load) if f.endswith(".safetensors"))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        # transformers 5 names the argument dtype; 4.x called it torch_dtype
        # (and would pass an unknown dtype= on to the config silently).
        kw = {"dtype": torch.bfloat16} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": torch.bfloat16}
        m = Phi3ForCausalLM.from_pretrained(args.load, device_map="cuda", **kw)
        torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        log(f"hf from_pretrained: {size / 1e9:.2f} GB in {secs:.2f} s")
        emit({"impl": "transformers+peft", "kind": "load", "device": device_name, "load_s": secs, "load_gb": size / 1e9,
              "note": f"Phi3ForCausalLM.from_pretrained(dtype=bfloat16, device_map='cuda'), unquantized, page cache; {versions}"})
        del m


if __name__ == "__main__":
    sys.exit(main())
