#!/usr/bin/env python3
"""NF4 with double quantization in plain PyTorch: the reference for finetune/nf4.

bitsandbytes 0.45's algorithm (functional.quantize_4bit with
compress_statistics=True, dequantize_4bit, quantize_blockwise,
create_dynamic_map; CUDA kernels kQuantizeBlockwise, dQuantizeNF4, dQuantize,
kDequantizeBlockwise), written with float32 tensor ops that round exactly as
the Go package does, so the two are bit-identical:

  * 64-value blocks of the row-major flattened weight; absmax = max |x|;
    x * float32(1 / absmax) goes through dQuantizeNF4's tree of strict
    comparisons (a value exactly on a threshold takes the lower code; an
    all-zero block gives 0 * inf = NaN, which takes code 0, like the GPU);
    two codes a byte, the first element in the high nibble; an odd length
    pads the last low nibble with the code of 0 * reciprocal.
  * double quantization: offset = mean(absmax), the exact sum rounded to
    float64 (math.fsum) / n, rounded to float32 (bitsandbytes uses torch's
    float32 GPU mean, whose last bit depends on the reduction order); the
    float32 differences absmax - offset are quantized in blocks of 256 with
    the signed dynamic map (binary search, nearest, ties as dQuantize).
  * dequantize: absmax = float32(dmap[code] * scale) + offset (two float32
    roundings), value = NF4[code] * absmax (one float32 rounding).

Usable on CPU or CUDA tensors (only IEEE float32 mul, div, add, compare).
No bitsandbytes, no network.

    python nf4_ref.py --selftest [--device cuda]

quantizes a fixed pattern and prints sha256 digests that
finetune/nf4/selftest_test.go asserts (`go test ./finetune/nf4 -run
SelfTest -v` prints the Go side).
"""

import argparse
import hashlib
import math
import sys

import numpy as np
import torch

BLOCK_SIZE = 64
ABSMAX_BLOCK_SIZE = 256

# bitsandbytes get_4bit_type("nf4"), rounded to float32.
NF4_CODE = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
    0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]

# dQuantizeNF4's decision points (float32 literals in kernels.cu), ascending.
# Its tree of `x > t` tests returns the number of thresholds that x exceeds.
NF4_THRESHOLDS = [
    -0.8480964004993439, -0.6106329262256622, -0.4599952697753906,
    -0.33967943489551544, -0.23460740596055984, -0.13791173323988914,
    -0.045525018125772476, 0.03979014977812767, 0.1202552504837513,
    0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
    0.5016634166240692, 0.6427869200706482, 0.8614784181118011,
]


def _f32(x):
    return np.float32(x)


def linspace32(start, end, steps):
    """torch.linspace in float32 as PyTorch 2's CPU kernel computes it:
    step = (end - start) / (steps - 1) in float32, then start + step*i below
    the halfway index and end - step*(steps-1-i) from it on, each a fused
    multiply-add (rounded once). The float64 expression below is exact for
    these operands, so np.float32() is that single rounding."""
    s, e = _f32(start), _f32(end)
    step = _f32(e - s) / _f32(steps - 1)
    half = steps // 2
    out = []
    for i in range(steps):
        if i < half:
            out.append(_f32(float(step) * i + float(s)))
        else:
            out.append(_f32(-float(step) * (steps - 1 - i) + float(e)))
    return out


def dynamic_map(signed=True):
    """bitsandbytes create_dynamic_map(signed, 7, 8) with explicit float32
    scalar arithmetic (see finetune/nf4 DynamicMap): equal, bit for bit, to
    what bitsandbytes builds under PyTorch 2.11 (not 1.13, whose vectorized
    linspace rounds some points differently)."""
    max_exp, total_bits = 7, 8
    non_sign_bits = total_bits - 1
    data = []
    for i in range(max_exp):
        if signed:
            items = 2 ** (i + non_sign_bits - max_exp) + 1
        else:
            items = 2 ** (i + non_sign_bits - max_exp + 1) + 1
        b = linspace32(0.1, 1.0, items)
        scale = _f32(10.0 ** (-(max_exp - 1) + i))
        for k in range(items - 1):
            mean = _f32(_f32(b[k] + b[k + 1]) / _f32(2))
            data.append(_f32(scale * mean))
            if signed:
                data.append(_f32(-scale * mean))
    data += [_f32(0), _f32(1)]
    data.sort()
    assert len(data) == 256
    return torch.tensor(np.array(data, dtype=np.float32))


def bnb_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    """bitsandbytes' create_dynamic_map as written (torch.linspace), only to
    report whether dynamic_map() matches it under this PyTorch."""
    data = []
    non_sign_bits = total_bits - 1
    for i in range(max_exponent_bits):
        fraction_items = int(
            2 ** (i + non_sign_bits - max_exponent_bits) + 1
            if signed
            else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1
        )
        boundaries = torch.linspace(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def quantize_dynamic(x, code):
    """dQuantize<0>: binary search for the bracket, then the nearer end by
    the float32 midpoint; a value exactly on a midpoint keeps the pivot."""
    code = code.to(x.device)
    pivot = torch.full(x.shape, 127, dtype=torch.long, device=x.device)
    lower_p = torch.zeros_like(pivot)
    upper_p = torch.full_like(pivot, 255)
    val = code[pivot]
    for i in (64, 32, 16, 8, 4, 2, 1):
        gt = x > val
        lower_p = torch.where(gt, pivot, lower_p)
        upper_p = torch.where(gt, upper_p, pivot)
        pivot = torch.where(gt, pivot + i, pivot - i)
        val = code[pivot]
    lower = code[lower_p]
    upper = code[upper_p]
    gt = x > val
    up = torch.where(x > (upper + val) * 0.5, upper_p, pivot)
    down = torch.where(x < (lower + val) * 0.5, lower_p, pivot)
    return torch.where(gt, up, down).to(torch.uint8)


def _blocks(x, blocksize):
    n = x.numel()
    nb = (n + blocksize - 1) // blocksize
    padded = torch.zeros(nb * blocksize, dtype=torch.float32, device=x.device)
    padded[:n] = x.reshape(-1)
    return padded.view(nb, blocksize)


def quantize_blockwise(x, code, blocksize):
    """quantize_blockwise: per-block absmax, codes of x * float32(1/absmax)."""
    x = x.reshape(-1).float()
    blk = _blocks(x, blocksize)
    absmax = blk.abs().amax(dim=1)
    recip = 1.0 / absmax
    codes = quantize_dynamic(blk * recip.unsqueeze(1), code).reshape(-1)[: x.numel()]
    return codes, absmax


def dequantize_blockwise(codes, absmax, code, blocksize):
    scale = absmax.repeat_interleave(blocksize)[: codes.numel()]
    return code.to(codes.device)[codes.long()] * scale


def exact_mean(x):
    """float32(fsum(x) / n): independent of summation order."""
    vals = x.detach().double().cpu().tolist()
    return float(np.float32(math.fsum(vals) / len(vals)))


def quantize_nf4(w, double_quant=True):
    """Quantize a 2-D weight [out, in] (any float dtype, CPU or CUDA) to NF4.

    Returns a dict: shape (out, in), codes (uint8, ceil(n/2)), double_quant,
    and absmax (float32, one per 64-block) or absmax_codes (uint8, one per
    64-block), absmax_scales (float32, one per 256 absmax values) and
    absmax_offset (a Python float holding a float32 value).
    """
    if w.dim() != 2:
        raise ValueError(f"quantize_nf4: want a 2-D weight [out, in], got shape {tuple(w.shape)}")
    out_f, in_f = w.shape
    x = w.detach().float().reshape(-1)
    n = x.numel()
    blk = _blocks(x, BLOCK_SIZE)
    absmax = blk.abs().amax(dim=1)
    recip = 1.0 / absmax
    scaled = blk * recip.unsqueeze(1)
    thr = torch.tensor(NF4_THRESHOLDS, dtype=torch.float32, device=x.device)
    q = torch.zeros(scaled.shape, dtype=torch.uint8, device=x.device)
    for t in thr:
        q += (scaled > t).to(torch.uint8)
    q = q.reshape(-1)
    packed = ((q[0::2] << 4) | q[1::2])[: (n + 1) // 2].contiguous()
    state = {"shape": (out_f, in_f), "codes": packed, "double_quant": bool(double_quant)}
    if not double_quant:
        state["absmax"] = absmax
        return state
    offset = exact_mean(absmax)
    centred = absmax - torch.tensor(offset, dtype=torch.float32, device=x.device)
    acodes, ascales = quantize_blockwise(centred, dynamic_map(True), ABSMAX_BLOCK_SIZE)
    state["absmax_codes"] = acodes
    state["absmax_scales"] = ascales
    state["absmax_offset"] = offset
    return state


def block_absmax(state):
    """The float32 absmax of every 64-block, as dequantize_4bit uses it."""
    if not state["double_quant"]:
        return state["absmax"]
    a = dequantize_blockwise(state["absmax_codes"], state["absmax_scales"], dynamic_map(True), ABSMAX_BLOCK_SIZE)
    return a + torch.tensor(state["absmax_offset"], dtype=torch.float32, device=a.device)


def dequantize_nf4(state):
    """The float32 weight [out, in]: NF4[code] * absmax of its block."""
    out_f, in_f = state["shape"]
    n = out_f * in_f
    codes = state["codes"]
    q = torch.stack([codes >> 4, codes & 0x0F], dim=1).reshape(-1)[:n].long()
    nf4 = torch.tensor(NF4_CODE, dtype=torch.float32, device=codes.device)
    absmax = block_absmax(state).repeat_interleave(BLOCK_SIZE)[:n]
    return (nf4[q] * absmax).reshape(out_f, in_f)


# --- self-test: a fixed pattern that Go builds the same way -------------------

PATTERN_OUT, PATTERN_IN = 301, 129  # odd element count, 607 blocks, 3 absmax blocks


def selftest_pattern(device="cpu"):
    """Deterministic [301, 129] float32 weight; see pattern() in
    finetune/nf4/selftest_test.go for the same construction."""
    n = PATTERN_OUT * PATTERN_IN
    i = torch.arange(n, dtype=torch.int64)
    u = (i * 2654435761 + 12345) % (2 ** 32)
    base = ((u >> 8) - 2 ** 23).to(torch.float32) * (2.0 ** -23)
    rows = i // PATTERN_IN
    scale = ((rows % 11) + 1).to(torch.float32) / 8
    w = (base * scale).numpy().copy()
    # Row 5 is zero: block 11 (values 704..767) is all zeros.
    w[5 * PATTERN_IN : 6 * PATTERN_IN] = 0
    # Block 20 hits every code exactly: absmax 0.5, x / absmax = code.
    code = np.array(NF4_CODE, dtype=np.float32)
    for j in range(64):
        w[20 * 64 + j] = code[j % 16] * np.float32(0.5)
    # Block 30 has absmax 1 and values on, just above and just below the
    # tree's thresholds (ties go to the lower code).
    thr = np.array(NF4_THRESHOLDS, dtype=np.float32)
    b = 30 * 64
    w[b] = np.float32(1)
    for j in range(1, 64):
        t = thr[(j - 1) % 15]
        k = (j - 1) // 15
        if k == 0:
            w[b + j] = t
        elif k == 1:
            w[b + j] = np.nextafter(t, np.float32(np.inf))
        elif k == 2:
            w[b + j] = np.nextafter(t, np.float32(-np.inf))
        else:
            w[b + j] = np.float32(-1)
    return torch.from_numpy(w).reshape(PATTERN_OUT, PATTERN_IN).to(device)


def _sha(t):
    a = t.detach().cpu().contiguous().numpy()
    if a.dtype == np.float32:
        a = a.astype("<f4")
    return hashlib.sha256(a.tobytes()).hexdigest()


def selftest(device):
    w = selftest_pattern(device)
    lines = []
    lines.append(("dynamic_map_signed", _sha(dynamic_map(True))))
    lines.append(("dynamic_map_unsigned", _sha(dynamic_map(False))))
    s = quantize_nf4(w, double_quant=False)
    lines.append(("plain_codes", _sha(s["codes"])))
    lines.append(("plain_absmax", _sha(s["absmax"])))
    lines.append(("plain_dequant", _sha(dequantize_nf4(s))))
    s = quantize_nf4(w, double_quant=True)
    lines.append(("dq_codes", _sha(s["codes"])))
    lines.append(("dq_absmax_codes", _sha(s["absmax_codes"])))
    lines.append(("dq_absmax_scales", _sha(s["absmax_scales"])))
    lines.append(("dq_absmax_offset", _sha(torch.tensor([s["absmax_offset"]], dtype=torch.float32))))
    lines.append(("dq_dequant", _sha(dequantize_nf4(s))))
    for name, h in lines:
        print(f"{name} {h}")
    same = [torch.equal(dynamic_map(sg), bnb_dynamic_map(sg)) for sg in (True, False)]
    print(f"# torch {torch.__version__} on {device}; bitsandbytes' torch.linspace map equals dynamic_map(): "
          f"signed={same[0]} unsigned={same[1]}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--selftest", action="store_true", help="print sha256 digests of a fixed pattern")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = p.parse_args(argv)
    if not args.selftest:
        p.print_help()
        return 2
    selftest(args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
