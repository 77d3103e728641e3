"""Does a recipe rerun with other code reuse every step of a cache made before? (issue 26: cache keys stay)

    # the cache, made with the code before the change (c246c74):
    cd /tmp/old && PYTHONPATH=src python -m edgeshrink run recipes/smollm2-edge.yaml --out /tmp/cache/smollm2-edge
    # the rerun, with this checkout's code, over that cache:
    .venv/bin/python benchmarks/cache_reuse.py recipes/smollm2-edge.yaml --out /tmp/cache/smollm2-edge

Runs `python -m edgeshrink run RECIPE --out OUT` with PYTHONPATH=--src (default: this checkout's src), then
reads OUT/report.json: each step's `cached` (recipes/executors.py cached_step: true when the step's folder
already held its step.json) and `key`, for the chosen path and every candidate. Prints, per step, the key
before and after and whether it was cached, and whether the run made any new step folder under OUT/cache.
Exit status 0 only when every step was cached, every key is the one the earlier report recorded, and no
step folder is new.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def steps_of(report: dict) -> list[dict]:
    """Every step of the report: the chosen path's, then each candidate's (a search recipe has several)."""
    rows = [{"path": "chosen", **s} for s in report.get("steps") or []]
    for candidate in report.get("candidates") or []:
        rows += [{"path": f"candidate {candidate['index']}", **s} for s in candidate.get("steps") or []]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="the recipe's --out of the earlier run (its cache)")
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src",
                        help="the src/ to rerun with (default: this checkout's)")
    parser.add_argument("--json", type=Path, help="also write the per-step result as JSON here")
    args = parser.parse_args()
    report_path = args.out / "report.json"
    if not report_path.exists():
        parser.error(f"{report_path} does not exist: run the recipe with the old code first")
    before = json.loads(report_path.read_text())
    keys_before = {(s["path"], s["step"]): s["key"] for s in steps_of(before)}
    dirs_before = {p.name for p in (args.out / "cache").iterdir() if p.is_dir()}

    env = {**os.environ, "PYTHONPATH": str(args.src.resolve()), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgeshrink", "run", str(args.recipe.resolve()), "--out", str(args.out)],
                          cwd=args.src.resolve().parent, env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"the rerun failed (exit {done.returncode})")
    after = json.loads(report_path.read_text())
    new_dirs = sorted({p.name for p in (args.out / "cache").iterdir() if p.is_dir()} - dirs_before)

    rows = []
    for s in steps_of(after):
        old_key = keys_before.get((s["path"], s["step"]))
        rows.append({"path": s["path"], "step": s["step"], "cached": bool(s["cached"]), "key": s["key"],
                     "key_before": old_key, "same_key": old_key == s["key"]})
    width = max(len(r["step"]) for r in rows)
    print(f"{'path':<12} {'step':<{width}}  cached  same key  key")
    for r in rows:
        print(f"{r['path']:<12} {r['step']:<{width}}  {'yes' if r['cached'] else 'NO ':<6}  "
              f"{'yes' if r['same_key'] else 'NO':<8}  {r['key']}" + ("" if r["same_key"] else f" (was {r['key_before']})"))
    print(f"new step folders under {args.out / 'cache'}: {', '.join(new_dirs) or 'none'}")
    ok = all(r["cached"] and r["same_key"] for r in rows) and not new_dirs and bool(rows)
    print(f"every step reused: {'yes' if ok else 'NO'} ({len(rows)} steps, rerun {seconds} s with {args.src})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"recipe": str(args.recipe), "out": str(args.out), "src": str(args.src),
                                         "seconds": seconds, "every_step_reused": ok, "new_step_folders": new_dirs,
                                         "steps": rows}, indent=2) + "\n")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
