#!/usr/bin/env bash
# make bench-gpu: build the GPU benchmark here (no GPU needed) and print the
# one command that runs it on a GPU machine (issue 8).
#
#   scripts/bench-gpu.sh
#
# Builds bin/gpu/cuda.test (the CUDA backend's correctness tests) and
# bin/gpu/ollama-tune-bench-gpu (cmd/ollama-tune-bench-gpu) with the CUDA
# 11.8 headers and stubs of scripts/cuda-headers.sh. The GPU machine needs
# an NVIDIA driver for CUDA >= 11.8, a GPU of compute capability >= 8.0,
# libcublas, and for the baseline Python 3 with PyTorch, transformers and
# peft; no Go and no network.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CGO_CFLAGS:-}" ]; then
  eval "$(DEST="$PWD/.cuda" bash scripts/cuda-headers.sh)"
  export CGO_CFLAGS CGO_LDFLAGS NVCC
fi
mkdir -p bin/gpu
bash scripts/cuda-sass.sh # the kernels' machine code: no JIT on the GPU machine's first run
go vet -tags cuda ./cuda/... ./cmd/ollama-tune-bench-gpu/
go test -c -tags cuda -ldflags '-s -w' -o bin/gpu/cuda.test ./cuda/
go build -tags cuda -ldflags '-s -w' -o bin/gpu/ollama-tune-bench-gpu ./cmd/ollama-tune-bench-gpu
cat <<MSG
built bin/gpu/. On the GPU machine, from a checkout with bin/gpu/ beside it, run:
  OUT=/tmp/bench-gpu bash scripts/bench/device.sh
(about 4 minutes: correctness tests, a 7.64 GB random checkpoint written
with save_pretrained, our trainer, the transformers + peft baseline; the
table is printed last and written to \$OUT/table.md). Record it in
BENCHMARKS.md, section "GPU (make bench-gpu)".
MSG
