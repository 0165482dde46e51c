#!/usr/bin/env bash
# The CUDA trainer end to end on a GPU machine, in one call there.
#
#   scripts/gpu-smoke.sh build   # here (no GPU needed): bin/cuda.test, the CUDA
#                                # and CPU plugins, ollama-tune, and convert/demo's
#                                # tiny model and data, packed into out/gpu-smoke.tar.xz
#   scripts/gpu-smoke.sh run     # there, from the repository root, with
#                                # out/gpu-smoke.tar.xz beside it (needs no Go)
#
# run: (1) the CUDA backend's tests (per op against the CPU, models,
# finetune.Train on the GPU against the CPU, a resume); (2) `ollama-tune
# plugins`; (3) `ollama-tune train` through the CUDA plugin on the tiny
# model with examples/yoda.yaml's settings (NF4 double quant,
# paged_adamw_8bit, packing, checkpointing), 6 steps with a checkpoint at
# step 3; (4) a resume from that checkpoint in another folder, whose adapter
# must equal the uninterrupted run's byte for byte; (5) the same job on the
# CPU plugin, losses side by side; (6) bf16 and fp16 compute, 3 steps each;
# (7) cuda/compat13 (the CUDA 13 header shim) against a CUDA 13 cuda.h, when
# one is installed, built with gcc and run.
# The GPU machine needs an NVIDIA driver for CUDA >= 11.8, a GPU of compute
# capability >= 8.0 and libcublas (.so.13, .12 or .11; or OLLAMA_TUNE_CUBLAS).
set -uo pipefail
cd "$(dirname "$0")/.."
W=out/gpu-smoke

build() {
  set -e
  if [ -z "${CGO_CFLAGS:-}" ]; then
    eval "$(DEST="$PWD/.cuda" bash scripts/cuda-headers.sh)"
    export CGO_CFLAGS CGO_LDFLAGS NVCC
  fi
  rm -rf "$W" && mkdir -p "$W/bin"
  go test -c -tags cuda -ldflags='-s -w' -o "$W/bin/cuda.test" ./cuda/
  go build -tags cuda -ldflags='-s -w' -o "$W/bin/ollama-tune-trainer-cuda" ./cmd/ollama-tune-trainer-cuda
  go build -tags cuda -ldflags='-s -w' -o "$W/bin/ollama-tune-cuda-worker" ./cmd/ollama-tune-trainer-cuda/worker
  go build -ldflags='-s -w' -o "$W/bin/" ./cmd/ollama-tune ./cmd/ollama-tune-trainer-cpu
  # The demo's base model and data (convert/demo), written by a throwaway
  # program in a folder go's ./... skips.
  mkdir -p out/_gpusmoke
  cat > out/_gpusmoke/main.go <<'GO'
package main

import (
	"log"
	"os"

	"github.com/ollama-tune/ollama-tune/convert/demo"
)

func main() {
	if err := demo.WriteBaseModel(os.Args[1] + "/base"); err != nil {
		log.Fatal(err)
	}
	if err := demo.WriteDataset(os.Args[1] + "/data.csv"); err != nil {
		log.Fatal(err)
	}
}
GO
  go run ./out/_gpusmoke "$W"
  rm -rf out/_gpusmoke
  tar -C out -cJf out/gpu-smoke.tar.xz gpu-smoke
  ls -la out/gpu-smoke.tar.xz
  echo "carry out/gpu-smoke.tar.xz; on the GPU machine: bash scripts/gpu-smoke.sh run"
}

# train NAME ARGS...: ollama-tune train on the demo model with yoda.yaml's
# settings, into $W/NAME; prints the step lines and the result.
train() {
  local name=$1
  shift
  timeout 60 "$W/bin/ollama-tune" train -c examples/yoda.yaml --model "$W/base" \
    --set dataset.path="$W/data.csv" --set training.per_device_train_batch_size=8 \
    --set training.logging_steps=1 --set training.save_steps=3 --set training.seed=7 \
    --output-dir "$W/$name" "$@" > "$W/$name.log" 2>&1
  local rc=$?
  echo "== train $name ($*): exit $rc"
  grep -iE 'step|loss|device|error|fail|resum|adapter|warn' "$W/$name.log" | grep -v '^\s*$' | tail -14
}

run() {
  rm -rf "$W" && tar -C out -xJf out/gpu-smoke.tar.xz || exit 1
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  local t0
  t0=$(date +%s)
  (cd cuda && timeout 170 "../$W/bin/cuda.test" -test.v -test.timeout 165s) > "$W/tests.log" 2>&1
  echo "== cuda tests: exit $? after $(( $(date +%s) - t0 )) s; $(grep -c '^\s*--- PASS' "$W/tests.log") passed, $(grep -c '^\s*--- FAIL' "$W/tests.log") failed, $(grep -c '^\s*--- SKIP' "$W/tests.log") skipped"
  grep -E '^cuda tests on|--- FAIL|^FAIL|^ok|^PASS|panic|train_test.go|f16|bnb adam32' "$W/tests.log" | head -60
  echo "== plugins"
  timeout 30 "$W/bin/ollama-tune" plugins 2>&1 | head -20
  train cuda --device cuda --max-steps 6
  train resume --device cuda --max-steps 6 --resume "$W/cuda/checkpoint-3"
  echo "== resume vs uninterrupted (adapter_model.safetensors):"
  sha256sum "$W/cuda/adapter_model.safetensors" "$W/resume/adapter_model.safetensors"
  train cpu --device cpu --max-steps 6
  echo "== losses, cuda vs cpu (metrics.jsonl):"
  paste -d'|' <(grep -o '"loss":[^,]*' "$W/cuda/metrics.jsonl") <(grep -o '"loss":[^,]*' "$W/cpu/metrics.jsonl")
  train bf16 --device cuda --max-steps 3 --set quantization.bnb_4bit_compute_dtype=bfloat16
  train fp16 --device cuda --max-steps 3 --set quantization.bnb_4bit_compute_dtype=float16
  compat13
  echo "== done after $(( $(date +%s) - t0 )) s"
}

# compat13: cuda/compat13/check13.c against the newest cuda.h found here
# (a CUDA 13 toolkit, or the headers pip's nvidia packages ship), run.
compat13() {
  local h inc
  h=$(timeout 20 find /usr/local /usr/include /opt "$(python3 -c 'import site; print(site.getsitepackages()[0])' 2>/dev/null || echo /nonexistent)" \
    -name cuda.h -path '*include*' 2>/dev/null | xargs -r grep -l 'define CUDA_VERSION 13' 2>/dev/null | head -1)
  echo "== compat13: CUDA 13 cuda.h: ${h:-none found}"
  [ -n "$h" ] || return 0
  inc=$(dirname "$h")
  gcc -Wall -I cuda/compat13 -I "$inc" cuda/compat13/check13.c -o "$W/check13" -l:libcuda.so.1 && "$W/check13"
  echo "compat13: exit $?"
}

case "${1:-}" in
build) build ;;
run) run ;;
*)
  echo "usage: $0 build|run" >&2
  exit 2
  ;;
esac
