#!/usr/bin/env bash
# Compile the committed cuda/kernels/*.ptx to machine code (cubins) for the
# architectures in $SASS_ARCHS (default "80 90") into cuda/kernels/sass/,
# named <module>.sm_<arch>.<first 16 hex digits of the PTX's sha256>.cubin
# (cuda/kernels/sass/README.md says how package cuda uses them). A cubin
# already there for the same PTX is kept; those of other PTX are removed.
# Needs ptxas: the one scripts/cuda-headers.sh extracts into .cuda/, or a
# CUDA toolkit's. Without it, it says so and exits 0 (the PTX alone works).
#   scripts/cuda-sass.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NVCC:-}" ]; then
  eval "$(DEST="$PWD/.cuda" bash scripts/cuda-headers.sh)"
fi
# ptxas: next to nvcc (a CUDA toolkit), in the usr/bin of the Debian
# packages' tree that nvcc lives in (scripts/cuda-headers.sh), or on PATH.
PTXAS=
for p in "$(dirname "$NVCC")/ptxas" "$(dirname "$NVCC")/../../../bin/ptxas" "$(command -v ptxas || true)"; do
  if [ -n "$p" ] && [ -x "$p" ]; then PTXAS=$p; break; fi
done
if [ -z "$PTXAS" ]; then
  echo "cuda-sass: no ptxas (next to $NVCC or on PATH); the plugin will JIT-compile the PTX on a machine's first run" >&2
  exit 0
fi
out=cuda/kernels/sass
mkdir -p "$out"
for f in cuda/kernels/*.ptx; do
  base=$(basename "${f%.ptx}")
  hash=$(sha256sum "$f" | cut -c1-16)
  for arch in ${SASS_ARCHS:-80 90}; do
    want=$out/$base.sm_$arch.$hash.cubin
    for old in "$out/$base.sm_$arch".*.cubin; do
      [ -e "$old" ] && [ "$old" != "$want" ] && rm -f "$old"
    done
    [ -s "$want" ] && continue
    "$PTXAS" -arch=sm_$arch -o "$want.tmp" "$f"
    mv "$want.tmp" "$want"
  done
done
