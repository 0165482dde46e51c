#!/usr/bin/env bash
# Check cuda/compat13 (the CUDA 13 header shim) without a CUDA 13 toolkit:
# gorgonia.org/cu must fail to compile against cuda/compat13/standin13 (CUDA
# 11.8's cuda.h with CUDA 13's five changed signatures) and compile with the
# shim in front of it. Needs the CUDA 11.8 headers of scripts/cuda-headers.sh.
# (Against a real CUDA 13 toolkit, scripts/gpu-smoke.sh run compiles and runs
# cuda/compat13/check13.c.)
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(DEST="$PWD/.cuda" bash scripts/cuda-headers.sh)"
export CGO_LDFLAGS
inc=${CGO_CFLAGS#-I}
if CGO_CFLAGS="-I$PWD/cuda/compat13/standin13 -I$inc" go build -o /dev/null gorgonia.org/cu 2>/dev/null; then
  echo "compat13 check: gorgonia.org/cu compiled against the stand-in without the shim; the stand-in no longer reproduces CUDA 13" >&2
  exit 1
fi
CGO_CFLAGS="-I$PWD/cuda/compat13 -I$PWD/cuda/compat13/standin13 -I$inc" go build -o /dev/null gorgonia.org/cu
gcc -fsyntax-only -Wall -I cuda/compat13 -I cuda/compat13/standin13 -I "$inc" cuda/compat13/check13.c
echo "compat13 check: gorgonia.org/cu fails against CUDA 13's signatures without the shim and compiles with it"
