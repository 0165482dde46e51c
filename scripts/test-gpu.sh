#!/usr/bin/env bash
# Build the CUDA backend's test binary on this (GPU-less) machine and print
# the one command that runs it on a GPU machine.
#
#   scripts/test-gpu.sh            # builds bin/cuda.test
#
# Needs the CUDA 11.8 headers and link stubs (scripts/cuda-headers.sh puts
# them in .cuda/); the GPU machine needs an NVIDIA driver for CUDA >= 11.8,
# a GPU of compute capability >= 8.0 and libcublas (.so.13, .12 or .11; or
# OLLAMA_TUNE_CUBLAS=/path/to/libcublas.so). It needs no Go.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CGO_CFLAGS:-}" ]; then
  eval "$(DEST="$PWD/.cuda" bash scripts/cuda-headers.sh)"
  export CGO_CFLAGS CGO_LDFLAGS NVCC
fi
mkdir -p bin
bash scripts/cuda-sass.sh # the kernels' machine code (cuda/kernels/sass/README.md)
go vet -tags cuda ./cuda/... ./cmd/ollama-tune-trainer-cuda/...
go test -c -tags cuda -o bin/cuda.test ./cuda/
cat <<MSG
built bin/cuda.test. On the GPU machine, from a checkout with bin/ beside it, run:
  cd cuda && ../bin/cuda.test -test.v -test.timeout 20m
(per-op tests, the tiny golden model and CPU-vs-GPU model tests, about a minute).
Add OLLAMA_TUNE_CUDA_PHI3=all (or 1 for fp32, bf16) to also train a Phi-3-mini-
shaped model for 5 steps and print s/step and peak GPU memory (lines "RESULT").
MSG
