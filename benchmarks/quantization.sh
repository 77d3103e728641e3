#!/usr/bin/env bash
# Quantization benchmark (BENCHMARKS.md, "Quantization"): every method on the fine-tuned MiniLM bundle,
# then one interleaved bench run of fp32 / fp16 / dynamic-int8 / static-int8 / int4-weight / auto, then
# a latency-only run of INT8 forms to find the fastest on this CPU.
# Needs `make foundation` first (runs/demo/bundle). Takes ~25 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUNS=${RUNS:-runs/demo}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
q() {  # name, then quantize options
  local name=$1; shift
  $BIN/edgeshrink quantize "$RUNS/bundle" --out "$RUNS/$name" --force --json "$OUT/quant-$name.json" "$@"
}
q fp16 --method fp16
q dynamic-int8 --method dynamic-int8
q static-int8 --method static-int8
q int4-weight --method int4-weight
q auto --method auto
$BIN/edgeshrink bench "$RUNS/bundle" "$RUNS/fp16" "$RUNS/dynamic-int8" "$RUNS/static-int8" "$RUNS/int4-weight" \
    "$RUNS/auto" --data sentiment-movies --seq-lengths 64 --batch-sizes 8 \
    --json "$OUT/quant-bench.json" --md "$OUT/quant-bench.md"

# INT8 forms on this CPU (latency only): per-tensor, fused graph, static without reduce_range (VNNI types),
# int4 with int8 compute (accuracy_level 4 is not a CLI flag; see the Python call below).
q dynamic-int8-pt --method dynamic-int8 --per-tensor
$BIN/edgeshrink export "$RUNS/cloud" --out "$RUNS/bundle-fused" --optimize fusion --force
$BIN/edgeshrink quantize "$RUNS/bundle-fused" --out "$RUNS/dynamic-int8-fused" --method dynamic-int8 --force \
    --json "$OUT/quant-dynamic-int8-fused.json"
q static-int8-vnni-types --method static-int8 --target avx512-vnni
$BIN/python -c "
from edgeshrink.compress import quantize, QuantConfig
quantize('$RUNS/bundle', '$RUNS/int4-acc4', QuantConfig(method='int4-weight', accuracy_level=4), force=True)"
$BIN/edgeshrink bench "$RUNS/bundle" "$RUNS/dynamic-int8" "$RUNS/dynamic-int8-pt" "$RUNS/dynamic-int8-fused" \
    "$RUNS/static-int8" "$RUNS/static-int8-vnni-types" "$RUNS/int4-weight" "$RUNS/int4-acc4" \
    --seq-lengths 64 --threads 1 --batch-sizes 8 --latency-runs 60 \
    --json "$OUT/quant-forms-bench.json" --md "$OUT/quant-forms-bench.md"
