#!/usr/bin/env bash
# Compile cuda/kernels/*.cu to the PTX that package cuda embeds (compute_80:
# Ampere, Ada and Hopper JIT it; -fmad=false: no contraction, like the CPU
# reference). With --check, compile into a temporary folder and fail
# unless the committed PTX is what nvcc gives (CI, where nvcc is available).
#   scripts/cuda-ptx.sh [--check]
# Needs nvcc: $NVCC, or the one scripts/cuda-headers.sh extracts into .cuda/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${NVCC:-}" ]; then
  eval "$(DEST="$PWD/.cuda" bash scripts/cuda-headers.sh)"
fi
# nvcc 11.8 is not deterministic on every file: now and then it emits
# another valid PTX for the same source (attention.cu: about 1 compile in
# 10 vectorises a shared-memory load differently, so the registers
# renumber). Generating therefore keeps an output that two compiles agree
# on (the common one), and the check passes when one of up to 8 compiles
# gives the committed file.
compile() { # source, output
  "$NVCC" -ccbin /usr/bin/g++ -allow-unsupported-compiler -ptx -arch=compute_80 -fmad=false -o "$2" "$1"
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for f in cuda/kernels/*.cu; do
  base=$(basename "${f%.cu}")
  want=cuda/kernels/$base.ptx
  if [ "${1:-}" = --check ]; then
    ok=0
    for try in 1 2 3 4 5 6 7 8; do
      compile "$f" "$tmp/$base.ptx"
      if cmp -s "$tmp/$base.ptx" "$want"; then ok=1; break; fi
    done
    if [ $ok = 0 ]; then
      echo "$want is stale: run scripts/cuda-ptx.sh (make ptx) and commit it" >&2
      status=1
    fi
    continue
  fi
  compile "$f" "$tmp/$base.0.ptx"
  agreed=
  for try in 1 2 3 4 5; do
    compile "$f" "$tmp/$base.$try.ptx"
    for k in $(seq 0 $((try - 1))); do
      if cmp -s "$tmp/$base.$try.ptx" "$tmp/$base.$k.ptx"; then agreed=$tmp/$base.$try.ptx; break; fi
    done
    [ -n "$agreed" ] && break
  done
  if [ -z "$agreed" ]; then
    echo "$f: six compiles gave six different PTX files" >&2
    exit 1
  fi
  # Keep the committed file when any compile gave it (nvcc's rare variant
  # can also be the one two compiles agree on: keep what is committed).
  keep=
  for k in "$tmp/$base".*.ptx; do
    if cmp -s "$k" "$want"; then keep=1; break; fi
  done
  [ -n "$keep" ] || cp "$agreed" "$want"
  rm -f "$tmp/$base".*.ptx
done
if [ "${1:-}" = --check ]; then
  for f in cuda/kernels/*.ptx; do
    [ -f "${f%.ptx}.cu" ] || { echo "$f has no .cu source" >&2; status=1; }
  done
fi
exit $status
