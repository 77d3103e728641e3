#!/usr/bin/env bash
# Router benchmark (BENCHMARKS.md, "Device/cloud router"): the distilled dynamic-int8 device model
# (benchmarks/distill.sh) against the cloud model's fp32 bundle on sentiment-movies; the guarantee check;
# domain shift to sentiment-tweets and label-free recalibration there. Needs `make foundation` and distill.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUNS=${RUNS:-runs/demo}
OUT=${OUT:-benchmarks/results}
CLOUD=$RUNS/bundle
fresh() { rm -rf "$1"; cp -r "$RUNS/device3-int8" "$1"; }

D=$RUNS/route-risk
fresh "$D"
$BIN/edgeshrink route calibrate --device "$D" --cloud "$CLOUD" --data sentiment-movies --policy risk --alpha 0.02 \
    --delta 0.1 --json "$OUT/route-risk-calibrate.json"
$BIN/edgeshrink route eval --device "$D" --cloud "$CLOUD" --data sentiment-movies --plots "$OUT/route-plots" \
    --json "$OUT/route-risk-eval.json"

for B in 0.2 0.3; do
  D=$RUNS/route-budget-$B
  fresh "$D"
  $BIN/edgeshrink route calibrate --device "$D" --cloud "$CLOUD" --data sentiment-movies --policy budget --budget $B \
      --json "$OUT/route-budget-$B-calibrate.json"
  $BIN/edgeshrink route eval --device "$D" --cloud "$CLOUD" --data sentiment-movies --resplits 0 \
      --json "$OUT/route-budget-$B-eval.json"
done

# Domain shift: the movies-calibrated risk router on tweets, then label-free recalibration on tweets.
$BIN/edgeshrink route eval --device "$RUNS/route-risk" --cloud "$CLOUD" --data sentiment-tweets --resplits 0 \
    --json "$OUT/route-shift-movies-on-tweets.json"
D=$RUNS/route-tweets-label-free
fresh "$D"
$BIN/edgeshrink route calibrate --device "$D" --cloud "$CLOUD" --data sentiment-tweets --policy risk --alpha 0.02 \
    --delta 0.1 --label-free --json "$OUT/route-tweets-label-free-calibrate.json"
$BIN/edgeshrink route eval --device "$D" --cloud "$CLOUD" --data sentiment-tweets \
    --json "$OUT/route-tweets-label-free-eval.json"
