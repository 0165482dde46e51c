#!/usr/bin/env bash
# Build and run the fused NF4 GEMM experiment on the GPU machine (CUDA 12+
# nvcc, an sm_90 card). Writes the build log, SASS summary and the table
# under ${OUT:-/tmp/nf4gemm}.
set -uo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-/tmp/nf4gemm}
mkdir -p "$OUT"
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
"$NVCC" --version | tail -2
"$NVCC" -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -fmad=false -Xptxas -v \
  -o "$OUT/nf4gemm" nf4gemm.cu -lcublas -lcuda 2>&1 | grep -v "^ptxas info    : Function properties for\|bytes stack frame, 0 bytes spill" | grep -i "nf4_gemm\|error\|warn\|regist\|spill" | head -40
[ -x "$OUT/nf4gemm" ] || exit 1
cuobjdump --dump-sass "$OUT/nf4gemm" > "$OUT/nf4gemm.sass" 2>/dev/null && \
  echo "SASS: $(grep -c HGMMA "$OUT/nf4gemm.sass") HGMMA, $(grep -c 'LDL\|STL' "$OUT/nf4gemm.sass") local loads/stores"
"$OUT/nf4gemm" "$@" 2>&1 | tee "$OUT/table.txt"
