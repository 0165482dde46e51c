#!/usr/bin/env bash
# The real job end to end on a GPU machine, timed: `ollama-tune train
# -c examples/yoda.yaml` through the CUDA trainer plugin (host, plugin and
# worker processes) on a random Phi-3-mini checkpoint written there with
# save_pretrained, with the Phi-3 tokenizer and the 720-row Yoda CSV;
# bnb_4bit_compute_dtype bfloat16, everything else as the example. Measured,
# not extrapolated: the wall time of the whole command (load + NF4
# quantization, tokenization and packing, training, adapter writes).
#
#   scripts/bench/e2e.sh build   # here: bin/e2e/e2e.txz (the three binaries) and
#                                # bin/e2e/data.tgz (from ../shared/data)
#   scripts/bench/e2e.sh run     # there, from the repository root, with bin/e2e
#                                # carried; OUT=dir keeps the logs
#
# run: (1) the tutorial's layout, packing_strategy wrapped (220 steps of 16
# rows x 64); (2) TRL 0.23.1's default bfd packing (230 steps); (3) and (4)
# the tutorial's layout with quantization.keep_dequantized_gb 8, with and
# without gradient checkpointing; (5) the tutorial's layout with
# training.gradient_checkpointing_keep_gb 0.34 (v16); RUNS="name ..."
# picks some (tutorial-wrapped trl-default-bfd tutorial-keep8
# tutorial-keep8-nockpt tutorial-keepact, and tutorial-keepact-all:
# 1.7 GB, every output on the device, v23; seed-tf32: float32 compute with
# training.tf32, v24; seed: float32 compute as the seed has it, v25); each prints
# its wall time, a few step lines and the adapter folder; a name given twice
# runs twice (its second log is NAME-2.log). BENCHMARKS.md,
# "The real CLI end to end", records its results. Needs PyTorch and
# transformers there (for the checkpoint), no Go.
set -uo pipefail
cd "$(dirname "$0")/../.."
W=bin/e2e

build() {
  set -e
  if [ -z "${CGO_CFLAGS:-}" ]; then
    eval "$(DEST="$PWD/.cuda" bash scripts/cuda-headers.sh)"
    export CGO_CFLAGS CGO_LDFLAGS NVCC
  fi
  local tmp
  tmp=$(mktemp -d)
  mkdir -p "$tmp/e2e" "$W"
  bash scripts/cuda-sass.sh # the kernels' machine code (cuda/kernels/sass/README.md)
  go build -tags cuda -ldflags='-s -w' -o "$tmp/e2e/" ./cmd/ollama-tune-trainer-cuda
  go build -tags cuda -ldflags='-s -w' -o "$tmp/e2e/ollama-tune-cuda-worker" ./cmd/ollama-tune-trainer-cuda/worker
  go build -ldflags='-s -w' -o "$tmp/e2e/" ./cmd/ollama-tune
  tar -C "$tmp" -cf - e2e | xz -T0 -6 > "$W/e2e.txz"
  tar -C ../shared/data -czf "$W/data.tgz" phi3-tokenizer yoda_sentences.csv
  rm -rf "$tmp"
  ls -la "$W"
  echo "carry $W; on the GPU machine: bash scripts/bench/e2e.sh run"
}

run() {
  local O=${OUT:-/tmp/e2e-out} T=/tmp/e2e-bench
  mkdir -p "$O" "$T"
  tar -C "$T" -xJf "$W/e2e.txz" && tar -C "$T" -xzf "$W/data.tgz" || return 1
  local ck=$T/phi3-random
  # A checkpoint made earlier in the same machine's life (ends in .made) is reused.
  if [ ! -e "$ck/.made" ]; then
    timeout 150 python3 scripts/bench/make_ckpt.py "$ck" > "$O/ckpt.log" 2>&1 || { echo "checkpoint failed"; tail -3 "$O/ckpt.log"; return 1; }
    touch "$ck/.made"
  fi
  # The checkpoint's 7.64 GB reach the disk now, not during a timed run:
  # the kernel writes dirty pages back ~30 s after they were written, and
  # a run's fsync of its own small files then waits behind them (1.8 s in
  # one run of 2026-11-28, v17: v16's unexplained seconds).
  sync
  cp "$T"/phi3-tokenizer/* "$ck/"
  local H=$T/e2e
  "$H/ollama-tune" plugins 2>&1 | tail -2
  one() { # name, extra flags
    local base=$1 name=$1 n=2
    shift
    while [ -e "$O/$name.log" ]; do name=$base-$n n=$((n + 1)); done
    local t0
    sync # the earlier runs' writes too
    t0=$(date +%s.%N)
    OLLAMA_TUNE_PLUGINS=$H timeout 200 "$H/ollama-tune" train -c examples/yoda.yaml --model "$ck" \
      --set dataset.path="$T/yoda_sentences.csv" --set quantization.bnb_4bit_compute_dtype=bfloat16 \
      --set training.logging_steps=20 --output-dir "$T/out-$name" "$@" > "$O/$name.log" 2>&1
    local rc=$?
    # The command's start and end in UTC, beside the log's own timestamps
    # (OLLAMA_TUNE_LOG=debug): where a run's wall time goes outside the
    # plugin's life (v16's open question).
    echo "command started $(date -u -d "@$t0" +%H:%M:%S.%3N), ended $(date -u +%H:%M:%S.%3N)" >> "$O/$name.log"
    echo "== $name: exit $rc after $(python3 -c "import time; print(round(time.time() - $t0, 2))") s wall"
    grep -E '^step (1|20|100|200|220|230)/|finished|steps of|training on|not finite|_gb|note:' "$O/$name.log" | cut -c1-400
  }
  # RUNS gives the runs and their order (default: all, in this order).
  local name
  for name in ${RUNS:-tutorial-wrapped trl-default-bfd tutorial-keep8 tutorial-keep8-nockpt tutorial-keepact}; do
    case $name in
    tutorial-wrapped) one "$name" --set training.packing_strategy=wrapped ;;
    trl-default-bfd) one "$name" ;;
    # The memory-for-speed option (v12), with and without checkpointing.
    tutorial-keep8) one "$name" --set training.packing_strategy=wrapped --set quantization.keep_dequantized_gb=8 ;;
    tutorial-keep8-nockpt)
      one "$name" --set training.packing_strategy=wrapped --set quantization.keep_dequantized_gb=8 \
        --set training.gradient_checkpointing=false
      ;;
    # Activations kept instead of recomputed within 3.5 GiB (v16).
    tutorial-keepact)
      one "$name" --set training.packing_strategy=wrapped --set training.gradient_checkpointing_keep_gb=0.34
      ;;
    # Every output checkpointing would recompute kept on the device (v23:
    # what the trainer's note offers a GPU of ~7-11 GiB free).
    tutorial-keepact-all)
      one "$name" --set training.packing_strategy=wrapped --set training.gradient_checkpointing_keep_gb=1.7
      ;;
    # The seed's float32 compute with TF32 matrix products (v22's
    # training.tf32; what `ollama-tune yoda --set training.tf32=true`
    # trains with), the tutorial's layout.
    seed-tf32)
      one "$name" --set training.packing_strategy=wrapped --set quantization.bnb_4bit_compute_dtype=float32 \
        --set training.tf32=true
      ;;
    # The seed's settings as they are: float32 compute, IEEE (v25: the
    # README's own command; ~105 s of training on an H200).
    seed)
      one "$name" --set training.packing_strategy=wrapped --set quantization.bnb_4bit_compute_dtype=float32
      ;;
    *) echo "unknown run $name" >&2 ;;
    esac
  done
}

case "${1:-}" in
build) build ;;
run) run ;;
*)
  echo "usage: $0 build|run" >&2
  exit 2
  ;;
esac
