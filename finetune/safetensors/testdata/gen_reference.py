#!/usr/bin/env python3
"""Reference fixtures for the Go package finetune/safetensors, made by the
libraries the Go code must agree with: safetensors (the Rust core behind
safetensors.torch.save_file) and PyTorch's float conversions.

Run from the repository root (Python 3.12, torch, safetensors; no network,
no GPU needed):

    python3 finetune/safetensors/testdata/gen_reference.py

It writes, next to this script:

  reference.safetensors  tensors of every common dtype (a scalar and a
                         zero-element tensor included), saved by
                         safetensors.torch.save_file with metadata
                         {"format": "pt"}.
  reference.json         per tensor: dtype, shape, and either the element
                         bit patterns (floating dtypes) with torch's float32
                         conversion of them, or the integer values; plus the
                         file's sha256 and versions.
  conversions.json       float32 bit patterns and torch's rounding of each to
                         bfloat16 and float16 (bit patterns), and samples of
                         bf16/f16 bit patterns widened to float32 by torch.

The Go tests (reference_test.go) skip while these files are missing.
"""
import hashlib
import json
import os
import sys

import safetensors
import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))

DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def bits(t):
    """Unsigned bit patterns of a floating tensor's elements (row-major)."""
    t = t.contiguous().reshape(-1)
    if t.dtype in (torch.float16, torch.bfloat16):
        return [x & 0xFFFF for x in t.view(torch.int16).tolist()]
    if t.dtype == torch.float32:
        return [x & 0xFFFFFFFF for x in t.view(torch.int32).tolist()]
    if t.dtype == torch.float64:
        return [x & 0xFFFFFFFFFFFFFFFF for x in t.view(torch.int64).tolist()]
    raise ValueError(f"not a floating dtype: {t.dtype}")


def f32_from_bits(patterns):
    signed = [p - (1 << 32) if p >= (1 << 31) else p for p in patterns]
    return torch.tensor(signed, dtype=torch.int32).view(torch.float32)


def half_from_bits(patterns, dtype):
    signed = [p - (1 << 16) if p >= (1 << 15) else p for p in patterns]
    return torch.tensor(signed, dtype=torch.int16).view(dtype)


def make_tensors():
    g = torch.Generator().manual_seed(20240501)
    special = torch.tensor(
        [0.0, -0.0, 1.0, -2.0, 0.333333, 65504.0, 65520.0, 1e-7, 6e-8, 3e-8,
         float("inf"), float("-inf"), float("nan")], dtype=torch.float32)
    return {
        "f32": torch.randn(2, 3, generator=g),
        "f32_special": special.clone(),
        "f16": special.to(torch.float16),
        "bf16": torch.cat([special, torch.randn(3, generator=g)]).to(torch.bfloat16).reshape(4, 4),
        "f64": torch.randn(3, generator=g, dtype=torch.float64),
        "i64": torch.tensor([[-100, 0], [32000, 2**40]], dtype=torch.int64),
        "i32": torch.tensor([-7, 0, 2**31 - 1], dtype=torch.int32),
        "i16": torch.tensor([-32768, 5], dtype=torch.int16),
        "i8": torch.tensor([-128, 127, 0], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 7], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "model.layers.0.mlp.down_proj.weight": torch.randn(4, 8, generator=g).to(torch.bfloat16),
    }


def write_reference():
    tensors = make_tensors()
    path = os.path.join(HERE, "reference.safetensors")
    save_file(tensors, path, metadata={"format": "pt"})
    back = load_file(path)
    entries = {}
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape, name
        e = {"dtype": DTYPES[t.dtype], "shape": list(t.shape)}
        if t.is_floating_point():
            e["bits"] = bits(t)
            assert e["bits"] == bits(back[name]), name
            e["f32_bits"] = bits(t.to(torch.float32))
        else:
            e["values"] = [int(x) for x in t.reshape(-1).tolist()]
        entries[name] = e
    with open(path, "rb") as f:
        raw = f.read()
    out = {
        "generator": "finetune/safetensors/testdata/gen_reference.py",
        "versions": {"torch": torch.__version__, "safetensors": safetensors.__version__,
                     "python": sys.version.split()[0]},
        "metadata": {"format": "pt"},
        "sha256": hashlib.sha256(raw).hexdigest(),
        "size": len(raw),
        "header_len": int.from_bytes(raw[:8], "little"),
        "tensors": entries,
    }
    with open(os.path.join(HERE, "reference.json"), "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")


def write_conversions():
    g = torch.Generator().manual_seed(7)
    hand = [
        0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0xBF818000,
        0x7F7FFFFF, 0x7F7F7FFF, 0x00018000, 0x00000001, 0x80000000, 0x00000000,
        0x7F800000, 0xFF800000, 0x7F800001, 0x7FC00000, 0xFFC00000,
        0x477FE000,  # 65504, the largest half
        0x477FEFFF,  # just below the half overflow threshold
        0x477FF000,  # 65520: tie between 65504 and 2^16, rounds to inf
        0x33800000,  # 2^-24, the smallest half subnormal
        0x33000000,  # 2^-25: tie between 0 and 2^-24, rounds to 0
        0x33000001,  # just above: rounds to 2^-24
        0x33C00000,  # 3 * 2^-25: tie between 1 and 2 units, rounds to 2
        0x387FE000,  # 2^-14 - 2^-25: tie between the largest subnormal and the smallest normal
        0x3F801000,  # 1 + 2^-11: half tie, to 1.0
        0x3F803000,  # 1 + 3 * 2^-11: half tie, to 1 + 2^-9
        0x2EDBE6FF,  # 1e-10
    ]
    uniform = (torch.randint(0, 1 << 32, (1024,), generator=g, dtype=torch.int64) & 0xFFFFFFFF).tolist()
    # Values spread over the half range (2^-27 .. 2^17), where f16 rounding is interesting.
    scaled = torch.randn(1024, generator=g) * torch.exp2(torch.randint(-27, 18, (1024,), generator=g).float())
    # Exact bf16 and f16 ties: a kept pattern plus half an ulp.
    ties_bf16 = [(p & 0xFFFF0000) | 0x8000 for p in uniform[:256]]
    ties_f16 = [(p & 0xFFFFE000) | 0x1000 for p in bits(scaled[:256])]
    f32 = hand + uniform + bits(scaled) + ties_bf16 + ties_f16
    x = f32_from_bits(f32)
    # torch's vectorised and scalar paths agree on numbers but may spell
    # NaN differently (0xFFFF vs 0x7FC0); the Go test compares NaN-ness only.
    to_bf16 = bits(x.to(torch.bfloat16))
    to_f16 = bits(x.to(torch.float16))
    half_samples = sorted(set(
        list(range(0, 0x10000, 97)) + [0x0000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0x7BFF, 0x7C00,
                                       0x7C01, 0x7E00, 0x7F80, 0x7FC0, 0x8000, 0x8001, 0xFBFF,
                                       0xFC00, 0xFF80, 0xFFFF]))
    out = {
        "generator": "finetune/safetensors/testdata/gen_reference.py",
        "versions": {"torch": torch.__version__, "python": sys.version.split()[0]},
        "note": "NaN inputs: compare NaN-ness only; torch's vectorised kernels and its scalar "
                "c10::BFloat16/c10::Half spell NaN differently",
        "f32_bits": f32,
        "to_bf16_bits": to_bf16,
        "to_f16_bits": to_f16,
        "half_bits": half_samples,
        "bf16_to_f32_bits": bits(half_from_bits(half_samples, torch.bfloat16).to(torch.float32)),
        "f16_to_f32_bits": bits(half_from_bits(half_samples, torch.float16).to(torch.float32)),
    }
    with open(os.path.join(HERE, "conversions.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"), sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    write_reference()
    write_conversions()
    print("wrote reference.safetensors, reference.json, conversions.json in", HERE)
