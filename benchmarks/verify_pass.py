"""What one pass over M new tokens costs against one decode step (M = 1), after a prompt, on LLM bundles: the
price of a speculative verify pass (a draft model's or prompt lookup's k drafted tokens + 1) (issue 28).

For each bundle: prefill a 128-token prompt once, then time passes of M new tokens at the end of that prefix
(the shared KV cache is cut back to the prefix before each pass, so every pass sees the same 128 positions).
Rounds interleave the M values; medians.

    PYTHONPATH=src .venv/bin/python benchmarks/verify_pass.py runs/smollm2-fp32 runs/smollm2-int4 \
        [--threads 1] [--rounds 30] [--json runs/verify_pass.json]
"""
import argparse
import json
import statistics
import time
from pathlib import Path

from edgeshrink.doctor import cpu_info
from edgeshrink.runtime import load

SIZES = (1, 2, 3, 5, 9)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = {"isa": cpu_info()["isa"], "threads": args.threads, "prompt": args.prompt, "bundles": {}}
    for bundle in args.bundles:
        g = load(bundle, threads=args.threads)
        ids = [(7 * i + 11) % 20000 + 100 for i in range(args.prompt + max(SIZES))]
        past = g._empty_past()
        g._step(ids[:args.prompt], past, args.prompt) if g.shared_kv else None
        times = {m: [] for m in SIZES}
        for r in range(args.rounds):
            for m in (SIZES if r % 2 == 0 else SIZES[::-1]):
                if g.shared_kv:
                    past.truncate(args.prompt)
                    started = time.perf_counter()
                    g._step(ids[args.prompt:args.prompt + m], past, args.prompt + m)
                else:
                    prefix = g._step(ids[:args.prompt], g._empty_past(), args.prompt)[1]
                    started = time.perf_counter()
                    g._step(ids[args.prompt:args.prompt + m], prefix, args.prompt + m)
                times[m].append(time.perf_counter() - started)
        medians = {m: statistics.median(t) * 1000 for m, t in times.items()}
        out["bundles"][bundle.name] = {"ms": medians, "vs_one_step": {m: medians[m] / medians[1] for m in SIZES}}
        print(f"{bundle.name}: " + ", ".join(f"M={m} {medians[m]:.1f} ms ({medians[m] / medians[1]:.2f}x)"
                                             for m in SIZES), flush=True)
    print(f"isa {out['isa']}, {args.threads} thread(s), after a {args.prompt}-token prompt")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
