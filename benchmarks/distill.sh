#!/usr/bin/env bash
# Distillation benchmark (BENCHMARKS.md, "Student construction and distillation"): prune the cloud model to
# 3 layers, half the heads, a quarter of the FFN and the train vocabulary; distill it with two augmented
# copies of every train text; the labels-only ablation on the same student; export, quantize, and bench the
# device model against the cloud model's fp32 bundle. Needs `make foundation` first. ~35 minutes.
# (The first, 2-layer student of BENCHMARKS.md: --layers 2 --ffn 0.5 --vocab, distilled with the defaults.)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUNS=${RUNS:-runs/demo}
OUT=${OUT:-benchmarks/results}
S=$RUNS/student-l3-h50-f25-v
$BIN/edgeshrink prune "$RUNS/cloud" --data sentiment-movies --out "$S" --layers 3 --heads 0.5 --ffn 0.25 --vocab \
    --force --json "$OUT/prune-l3-h50-f25-v.json"
$BIN/edgeshrink distill --teacher "$RUNS/cloud" --student "$S" --data sentiment-movies --gamma 1 --augment 2 \
    --epochs 4 --out "$RUNS/distilled-l3-aug2" --force --json "$OUT/distill-l3-aug2.json"
$BIN/edgeshrink distill --teacher "$RUNS/cloud" --student "$S" --data sentiment-movies --alpha 1 --beta 0 \
    --out "$RUNS/labels-only-l3" --force --json "$OUT/labels-only-l3.json"
$BIN/edgeshrink export "$RUNS/distilled-l3-aug2" --out "$RUNS/device3-fp32" --force
$BIN/edgeshrink quantize "$RUNS/device3-fp32" --method dynamic-int8 --out "$RUNS/device3-int8" --force \
    --json "$OUT/device3-int8.json"
$BIN/edgeshrink bench "$RUNS/bundle" "$RUNS/device3-fp32" "$RUNS/device3-int8" --data sentiment-movies \
    --seq-lengths 64 --batch-sizes 8 --json "$OUT/device3-bench.json" --md "$OUT/device3-bench.md"
