#!/usr/bin/env bash
# Foundation benchmark (BENCHMARKS.md, "Foundation"): the fine-tuned cloud model in PyTorch eager,
# as an ONNX fp32 bundle, and as an ONNX fp32 bundle with ORT transformer fusions, in one interleaved run.
# Needs `make foundation` first (it makes runs/demo/cloud). Takes ~6 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUNS=${RUNS:-runs/demo}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
$BIN/edgeshrink doctor --json "$OUT/foundation-doctor.json"
$BIN/edgeshrink export "$RUNS/cloud" --out "$RUNS/bundle" --force --json "$OUT/foundation-export.json"
$BIN/edgeshrink export "$RUNS/cloud" --out "$RUNS/bundle-fused" --optimize fusion --force \
    --json "$OUT/foundation-export-fused.json"
$BIN/edgeshrink bench "$RUNS/cloud" "$RUNS/bundle" "$RUNS/bundle-fused" --data sentiment-movies \
    --json "$OUT/foundation-bench.json" --md "$OUT/foundation-bench.md"
