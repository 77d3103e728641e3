#!/usr/bin/env bash
# Distillation benchmark (BENCHMARKS.md, "Student construction and distillation"): prune the cloud model to
# 2 layers, half the FFN and the train vocabulary; distill it; the labels-only ablation; export, quantize,
# and bench the device model against the cloud model's fp32 bundle. Needs `make demo` first. ~30 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUNS=${RUNS:-runs/demo}
OUT=${OUT:-benchmarks/results}
S=$RUNS/student-l2-f50-v
$BIN/edgeshrink prune "$RUNS/cloud" --data sentiment-movies --out "$S" --layers 2 --ffn 0.5 --vocab --force \
    --json "$OUT/prune-l2-f50-v.json"
$BIN/edgeshrink distill --teacher "$RUNS/cloud" --student "$S" --data sentiment-movies \
    --out "$RUNS/distilled-l2-f50-v" --force --json "$OUT/distill-l2-f50-v.json"
$BIN/edgeshrink distill --teacher "$RUNS/cloud" --student "$S" --data sentiment-movies --alpha 1 --beta 0 \
    --out "$RUNS/labels-only-l2-f50-v" --force --json "$OUT/labels-only-l2-f50-v.json"
$BIN/edgeshrink export "$RUNS/distilled-l2-f50-v" --out "$RUNS/device-fp32" --force
$BIN/edgeshrink quantize "$RUNS/device-fp32" --method dynamic-int8 --out "$RUNS/device-int8" --force \
    --json "$OUT/device-int8.json"
$BIN/edgeshrink bench "$RUNS/bundle" "$RUNS/device-fp32" "$RUNS/device-int8" --data sentiment-movies \
    --seq-lengths 64 --batch-sizes 8 --json "$OUT/device-bench.json" --md "$OUT/device-bench.md"
