"""Decode speed against perplexity, with intervals, from ONE interleaved LLM bench (issue 28): every candidate's
decode tokens/s at a thread count, and its perplexity on the first scored text against the fp32 bundle's with a
95% interval from resampling the windows in pairs; the Pareto front marked. Candidates are named by role with
--label NAME=LABEL (the bench's names are directory names).

    edgeshrink bench FP32 INT4 ... --threads 1,2 --texts bbc-news --windows 16 --answers 0 --json runs/curve.json
    PYTHONPATH=src .venv/bin/python benchmarks/llm_curve.py runs/curve.json --threads 1 \
        [--label smollm2-int4-al4="source INT4 (GGUF grid)"] [--out docs/figures/smollm2-curve.png]

Prints a Markdown table (both thread counts) and writes the plot.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeshrink.recipes.generate import decode_quality_points, plot_decode_quality
from edgeshrink.recipes.report import pareto_front, plotting, save_plot


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("--threads", type=int, default=1, help="thread count plotted")
    parser.add_argument("--label", action="append", default=[], help="NAME=LABEL for a candidate")
    parser.add_argument("--title", default="SmolLM2 on the device: perplexity against decode speed")
    parser.add_argument("--out", type=Path, default=None, help="PNG (default: next to the bench JSON)")
    args = parser.parse_args()
    report = json.loads(args.bench.read_text())
    labels = dict(spec.split("=", 1) for spec in args.label)
    candidates = [(labels.get(c["name"], c["name"]), c) for c in report["candidates"]]
    isa = " ".join(report["machine"].get("isa", []))
    print(f"{report['machine']['cpu']}, {report['machine']['logical_cores']} logical cores, ISA {isa}")
    threads = sorted({d["threads"] for _, c in candidates for d in c["decode"]})
    print("| candidate | size MB | " + " | ".join(f"decode tok/s ({t} thr) | of limit | ÷ llama.cpp" for t in threads)
          + " | perplexity | vs fp32 [95% CI] |")
    print("|---|---|" + "---|---|---|" * len(threads) + "---|---|")
    quality = {p["name"]: p for p in decode_quality_points(candidates, threads[0])}  # the same at every count
    for label, c in candidates:
        cells = []
        for t in threads:
            d = next(d for d in c["decode"] if d["threads"] == t)
            limit = f"{100 * d['fraction_of_limit']:.0f}%" if d.get("fraction_of_limit") else "-"
            cells += [f"{d['tokens_per_s']:.1f}", limit, f"{d['vs_peer']:.2f}x" if d.get("vs_peer") else "-"]
        point = quality.get(c["name"])
        if point is None:
            scored = ["-", "-"]
        else:
            lo, hi = point["interval"] or (point["increase"],) * 2
            scored = [f"{point['perplexity']:.2f}",
                      f"{100 * point['increase']:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]"]
        print(f"| {label} | {c['size_bytes'] / 1e6:.1f} | " + " | ".join(cells + scored) + " |")
    points = decode_quality_points(candidates, args.threads)
    for p in points:
        p["name"] = ""  # the legend shows the label alone
    front = pareto_front([(-p["tokens_per_s"], -p["increase"]) for p in points])
    print(f"Pareto front at {args.threads} thread(s): " + ", ".join(points[i]["role"] for i in front))
    out = args.out or args.bench.with_suffix(".png")
    with plotting({"name": args.title}, out.parent) as plt:
        fig, ax = plot_decode_quality(plt, points, args.title)
        save_plot(fig, ax, out.parent, out.name)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
