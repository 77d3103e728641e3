#!/usr/bin/env bash
# Unstructured pruning benchmark (BENCHMARKS.md, "Unstructured pruning"): 50% global magnitude sparsity on
# the cloud model, one-shot and gradual (1 epoch of fine-tuning), exported and benched against the dense
# bundle: same latency, smaller only when compressed. Needs `make foundation` first. ~15 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUNS=${RUNS:-runs/demo}
OUT=${OUT:-benchmarks/results}
$BIN/edgeshrink sparsify "$RUNS/cloud" --data sentiment-movies --out "$RUNS/sparse50-oneshot" --sparsity 0.5 \
    --one-shot --force --json "$OUT/sparse50-oneshot.json"
$BIN/edgeshrink sparsify "$RUNS/cloud" --data sentiment-movies --out "$RUNS/sparse50" --sparsity 0.5 \
    --force --json "$OUT/sparse50.json"
$BIN/edgeshrink export "$RUNS/sparse50" --out "$RUNS/sparse50-bundle" --force
$BIN/python - "$RUNS/bundle/model.onnx" "$RUNS/sparse50-bundle/model.onnx" > "$OUT/sparse50-compressed.json" <<'PY'
import json, sys
from pathlib import Path
from edgeshrink.compress.sparsify import compressed_bytes
print(json.dumps({p: {"bytes": Path(p).stat().st_size, "zlib_bytes": compressed_bytes(Path(p))} for p in sys.argv[1:]}, indent=2))
PY
cat "$OUT/sparse50-compressed.json"
$BIN/edgeshrink bench "$RUNS/bundle" "$RUNS/sparse50-bundle" --data sentiment-movies --seq-lengths 64 \
    --batch-sizes 8 --threads 1 --json "$OUT/sparse50-bench.json" --md "$OUT/sparse50-bench.md"
