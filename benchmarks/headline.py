"""The headline benchmark: the cloud model, the peer pipeline, edgeshrink's device model and the hybrid router,
measured in one run on this machine (run it through `benchmarks/headline`, which first runs the recipe).

    .venv/bin/python benchmarks/headline.py runs/sentiment-edge [--out benchmarks/results]

Rows:
- cloud, PyTorch eager: the fine-tuned model as trained (transformers, torch).
- cloud, ONNX fp32: the same model exported by edgeshrink (optimum-onnx, validated).
- peer: what a user would build instead: optimum-onnx export + optimum's ORTQuantizer, ONNX Runtime dynamic
  INT8 (AutoQuantizationConfig.avx2, per-channel).
- device: edgeshrink's device model (pruned, distilled, INT8 bundle).
- hybrid: the device model plus the router; escalated requests are answered by the cloud ONNX model.

Latency: batch 1, one thread, 64 tokens, the four models timed round-robin in one `bench` run (so machine
noise hits them alike). The hybrid row's latency is modelled from those measurements: every request runs
the device model; an escalated one then also runs the cloud model (network time not counted: it would only
add to the hybrid's latency). Accuracy: the same test examples for every row; each row is compared with
the peer by an exact McNemar test on the discordant pairs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(recipe_out: Path, out: Path) -> dict:
    from edgeshrink.bench import BenchConfig, bench
    from edgeshrink.data import load_data, split_examples
    from edgeshrink.route.router import Router
    from edgeshrink.runtime import load, read_manifest
    from edgeshrink.stats import accuracy_interval, mcnemar_p

    started = time.perf_counter()
    recipe = json.loads((recipe_out / "report.json").read_text())
    cloud_bundle, device, router_bundle = (Path(recipe[k]) for k in ("cloud_bundle", "device_bundle", "router_bundle"))
    peer = Path(recipe["peer_bundle"])
    eager = Path(read_manifest(cloud_bundle)["source"]["path"])
    data = recipe["split"]["dataset"]
    config = BenchConfig(threads=[1], seq_lengths=[64], throughput_batch_sizes=[8], latency_runs=100, rounds=10)
    report = bench([eager, cloud_bundle, peer, device], config, data=data)
    names = ["cloud, PyTorch eager", "cloud, ONNX fp32", "peer: optimum + ORT dynamic INT8", "edgeshrink device"]

    test = split_examples(load_data(data)).test
    gold = np.array(test.labels)
    predicted = {"cloud, ONNX fp32": load(cloud_bundle, threads=2).predict(test.texts).labels,
                 "peer: optimum + ORT dynamic INT8": load(peer, threads=2).predict(test.texts).labels,
                 "edgeshrink device": load(device, threads=2).predict(test.texts).labels}
    routed = Router.from_bundle(router_bundle, load(cloud_bundle, threads=2)).predict(test.texts)
    predicted["hybrid (device + router)"] = [r.label for r in routed]
    escalated = float(np.mean([r.source == "cloud" for r in routed]))
    correct = {name: np.array(labels) == gold for name, labels in predicted.items()}

    rows = []
    for name, cand in zip(names, report["candidates"]):
        cell = cand["latency"][0]
        rows.append({"name": name, "path": cand["path"], "size_mb": cand["size_bytes"] / 1e6,
                     "p50_ms": cell["p50_ms"], "p99_ms": cell["p99_ms"], "mean_ms": cell["mean_ms"],
                     "accuracy": cand["accuracy"]["value"], "ci95": cand["accuracy"]["ci95"],
                     "torch_on_device": bool(cand.get("torch_imported"))})
    by_name = {r["name"]: r for r in rows}
    dev, cloud = by_name["edgeshrink device"], by_name["cloud, ONNX fp32"]
    hybrid_correct = correct["hybrid (device + router)"]
    rows.append({"name": "hybrid (device + router)", "path": str(router_bundle),
                 "size_mb": dev["size_mb"], "p50_ms": dev["p50_ms"] if escalated < 0.5 else None, "p99_ms": None,
                 "mean_ms": dev["mean_ms"] + escalated * cloud["mean_ms"],
                 "accuracy": float(hybrid_correct.mean()),
                 "ci95": list(accuracy_interval(int(hybrid_correct.sum()), len(gold))),
                 "escalated_fraction": escalated, "torch_on_device": False})
    peer_row = by_name["peer: optimum + ORT dynamic INT8"]
    peer_correct = correct["peer: optimum + ORT dynamic INT8"]
    for row in rows:
        row["speedup_vs_peer_p50"] = peer_row["p50_ms"] / row["p50_ms"] if row["p50_ms"] else None
        row["speedup_vs_peer_mean"] = peer_row["mean_ms"] / row["mean_ms"]
        row["smaller_than_peer"] = peer_row["size_mb"] / row["size_mb"]
        row["accuracy_vs_peer_points"] = 100 * (row["accuracy"] - peer_row["accuracy"])
        if row["name"] in correct:
            mine = correct[row["name"]]
            only_peer, only_this = int((peer_correct & ~mine).sum()), int((mine & ~peer_correct).sum())
            row["vs_peer"] = {"only_peer_right": only_peer, "only_this_right": only_this,
                              "mcnemar_p": mcnemar_p(only_peer, only_this)}
    result = {"schema": "edgeshrink-headline/1", "recipe": recipe["recipe"], "recipe_sha256": recipe["recipe_sha256"],
              "machine": report["machine"], "data": report["data"], "bench_config": config.to_dict(),
              "peer": read_manifest(peer)["peer"], "rows": rows,
              "wall_seconds": round(time.perf_counter() - started, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "headline.json").write_text(json.dumps(result, indent=2))
    (out / "headline.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, ISA {' '.join(m['isa'])}; "
             f"{result['data']['dataset']} test split, n={result['data']['sizes']['test']} "
             f"(sha256 {result['data']['sha256'][:12]}); latency at batch 1, 1 thread, 64 tokens.", "",
             "| | size MB | p50 ms | mean ms | test accuracy % [95% CI] | vs peer: faster (p50) | smaller | "
             "accuracy, points (McNemar p) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        p50 = f"{r['p50_ms']:.1f}" if r["p50_ms"] else "—"
        faster = f"{r['speedup_vs_peer_p50']:.2f}x" if r["speedup_vs_peer_p50"] else "—"
        vs = r.get("vs_peer")
        acc_vs = f"{r['accuracy_vs_peer_points']:+.2f}" + (f" (p={vs['mcnemar_p']:.2f})" if vs and vs["only_peer_right"]
                                                           + vs["only_this_right"] else "")
        name = r["name"] + (f" ({100 * (1 - r['escalated_fraction']):.1f}% on device)" if "escalated_fraction" in r else "")
        lines.append(f"| {name} | {r['size_mb']:.1f} | {p50} | {r['mean_ms']:.1f} | {100 * r['accuracy']:.2f} "
                     f"[{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}] | {faster} | {r['smaller_than_peer']:.2f}x | "
                     f"{acc_vs} |")
    lines += ["", "The hybrid row's latency is modelled from the measured rows: every request runs the device model, "
              "escalated ones also the cloud ONNX model (network time not included); its size is what ships to the "
              "device."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe_out", type=Path, help="output directory of `edgeshrink run` (holds report.json)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    print(markdown(main(args.recipe_out, args.out)))
