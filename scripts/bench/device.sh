#!/usr/bin/env bash
# The GPU half of `make bench-gpu` (scripts/bench-gpu.sh builds bin/gpu/
# here and prints how to run this there). On a machine with an NVIDIA GPU,
# PyTorch, transformers and peft, from the repository root:
#
#   OUT=/some/dir bash scripts/bench/device.sh
#
# 1. the CUDA backend's correctness tests (bin/gpu/cuda.test), while a
#    random Phi-3-mini checkpoint is written with save_pretrained (7.64 GB
#    bf16, into $CKPT, default /tmp/phi3-random);
# 2. our trainer: load+quantize of that checkpoint, then training with and
#    without gradient checkpointing, one profiled step each; then A/B runs
#    with the reference kernels (all, or one fused path at a time), with
#    float16 compute, and with float32 compute, IEEE and with TF32 (F32=0
#    skips those two);
# 3. the transformers + peft baseline (scripts/bench/baseline_hf.py) and
#    transformers' own load of the checkpoint;
# 4. the table (also in $OUT/table.md).
# Logs: $OUT/{gpu.txt,tests.log,ckpt.log,ours.log,hf.log,results.jsonl,table.md}.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out/bench-gpu}
CKPT=${CKPT:-/tmp/phi3-random}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
: > "$OUT/results.jsonl"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
t0=$(date +%s)

rm -rf "$CKPT"
timeout 150 python3 scripts/bench/make_ckpt.py "$CKPT" > "$OUT/ckpt.log" 2>&1 &
ckpt_pid=$!
(cd cuda && timeout 180 ../bin/gpu/cuda.test -test.v -test.timeout 170s) > "$OUT/tests.log" 2>&1
echo "cuda tests: exit $? after $(( $(date +%s) - t0 )) s; $(grep -c '^--- FAIL' "$OUT/tests.log") failed, $(grep -c '^--- PASS' "$OUT/tests.log") passed"
grep -E '^(--- FAIL|FAIL|ok|PASS)' "$OUT/tests.log" | head -20
wait $ckpt_pid
echo "checkpoint: $(tail -1 "$OUT/ckpt.log") ($(du -sh "$CKPT" 2>/dev/null | cut -f1))"
cat "$CKPT"/*.safetensors > /dev/null 2>&1   # from the page cache, as issue 8 measures

B=bin/gpu/ollama-tune-bench-gpu
{
  timeout 60 $B -steps "$STEPS" -warmup "$WARMUP" -load "$CKPT" -profile -out "$OUT/results.jsonl"
  echo "ours: exit $? after $(( $(date +%s) - t0 )) s"
  # A/B: the same with the reference (unfused) kernels, each fused path
  # alone, and float32 compute.
  timeout 20 $B -ckpt on -reference -steps 8 -warmup 2 -profile -out "$OUT/results.jsonl"
  echo "ours, reference kernels: exit $? after $(( $(date +%s) - t0 )) s"
  # The memory-for-speed option: every dequantized weight kept
  # (quantization.keep_dequantized_gb: 7.4 GB for Phi-3-mini).
  timeout 40 $B -keep-deq-gb 8 -steps "$STEPS" -warmup "$WARMUP" -out "$OUT/results.jsonl"
  echo "ours, keep_dequantized_gb 8: exit $? after $(( $(date +%s) - t0 )) s"
  # The activations checkpointing would recompute, kept within 3.5 GiB
  # (training.gradient_checkpointing_keep_gb: 0.34 GB of staging buffers
  # and kept outputs on the device, every other output in host memory).
  timeout 40 $B -ckpt on -ckpt-keep-gb 0.34 -steps "$STEPS" -warmup "$WARMUP" -out "$OUT/results.jsonl"
  echo "ours, gradient_checkpointing_keep_gb 0.34: exit $? after $(( $(date +%s) - t0 )) s"
  # lora-tc: the fused float32 LoRA kernels instead of the tensor-core
  # GEMMs under bf16 (v2's default).
  for k in lora-tc lora attention; do
    OLLAMA_TUNE_CUDA_REFERENCE=$k timeout 15 $B -ckpt on -steps 6 -warmup 2 -out "$OUT/results.jsonl"
    echo "ours, reference $k: exit $? after $(( $(date +%s) - t0 )) s"
  done
  # float16 compute (v24; no baseline row of its own: its ratio is "-").
  timeout 20 $B -ckpt on -compute f16 -steps 8 -warmup 2 -out "$OUT/results.jsonl"
  echo "ours, float16: exit $? after $(( $(date +%s) - t0 )) s"
  # The seed's float32 compute, IEEE and with training.tf32 (v22); F32=0
  # skips these and the baseline's float32 rows.
  if [ "${F32:-1}" != 0 ]; then
    timeout 25 $B -ckpt on -compute f32 -steps 4 -warmup 1 -out "$OUT/results.jsonl"
    echo "ours, float32: exit $? after $(( $(date +%s) - t0 )) s"
    timeout 25 $B -ckpt on -compute f32 -tf32 -steps 8 -warmup 2 -out "$OUT/results.jsonl"
    echo "ours, float32 with TF32: exit $? after $(( $(date +%s) - t0 )) s"
  fi
} > "$OUT/ours.log" 2>&1
grep -E '^(load|ckpt (true|false):|ours)|training benchmark|load benchmark|panic' "$OUT/ours.log"

timeout 90 python3 scripts/bench/baseline_hf.py --steps "$STEPS" --warmup "$WARMUP" --load "$CKPT" --out "$OUT/results.jsonl" > "$OUT/hf.log" 2>&1
echo "baseline: exit $? after $(( $(date +%s) - t0 )) s"
if [ "${F32:-1}" != 0 ]; then
  # An unquantized float32 base without autocast (the seed's compute), IEEE
  # and with allow_tf32: ~40 s together (v22: 0.578 and 0.247 s/step).
  for tf in "" --tf32; do
    timeout 100 python3 scripts/bench/baseline_hf.py --compute float32 $tf --ckpt on --steps 4 --warmup 2 --out "$OUT/results.jsonl" >> "$OUT/hf.log" 2>&1
    echo "baseline, float32 ${tf:-IEEE}: exit $? after $(( $(date +%s) - t0 )) s"
  done
fi
grep -E 's/step|from_pretrained|failed|Error' "$OUT/hf.log" | tail -6

bin/gpu/ollama-tune-bench-gpu -table "$OUT/results.jsonl" > "$OUT/table.md" 2>&1
cat "$OUT/table.md"
