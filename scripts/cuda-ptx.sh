#!/usr/bin/env bash
# Compile cuda/kernels/*.cu to the PTX that package cuda embeds (compute_80:
# Ampere, Ada and Hopper JIT it; -fmad=false: no contraction, like the CPU
# reference). With --check, compile into a temporary folder and fail if the
# committed PTX differs (CI, where nvcc is available).
#   scripts/cuda-ptx.sh [--check]
# Needs nvcc: $NVCC, or the one scripts/cuda-headers.sh extracts into .cuda/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NVCC:-}" ]; then
  eval "$(DEST="$PWD/.cuda" bash scripts/cuda-headers.sh)"
fi
out=cuda/kernels
if [ "${1:-}" = --check ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
fi
for f in cuda/kernels/*.cu; do
  base=$(basename "${f%.cu}")
  "$NVCC" -ccbin /usr/bin/g++ -allow-unsupported-compiler -ptx -arch=compute_80 -fmad=false -o "$out/$base.ptx" "$f"
done
if [ "${1:-}" = --check ]; then
  status=0
  for f in "$out"/*.ptx; do
    if ! cmp -s "$f" "cuda/kernels/$(basename "$f")"; then
      echo "cuda/kernels/$(basename "$f") is stale: run scripts/cuda-ptx.sh (make ptx) and commit it" >&2
      status=1
    fi
  done
  for f in cuda/kernels/*.ptx; do
    [ -f "$out/$(basename "$f")" ] || { echo "$f has no .cu source" >&2; status=1; }
  done
  exit $status
fi
