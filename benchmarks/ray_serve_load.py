"""Load test of the cloud model on Ray Serve, 1 vs 2 replicas (one per node), with the uvicorn engine beside it
(BENCHMARKS.md, "Beyond one machine"). Run it through `benchmarks/ray_serve_load`.

    .venv/bin/python benchmarks/ray_serve_load.py --cloud BUNDLE [--requests 800] [--clients 16] [--rounds 2]

A local Ray cluster as the tests start it (an empty head node, which holds Ray Serve's proxy and controller,
and two 1-CPU worker nodes); `serve-cloud --engine ray --replicas R` deployed fresh for each phase, each
replica on one CPU with ONNX Runtime at one thread; `serve-cloud` on uvicorn (one process, one thread) as the
reference. Each phase sends a bounded number of requests (one sentiment-movies test text each) from
``--clients`` concurrent loopback clients after a warm-up, and the phases are interleaved over ``--rounds``
rounds (uvicorn, 1 replica, 2 replicas, then reversed). Everything — the load generator, Ray's proxy, the
replicas — shares this machine's cores, which caps what a second replica can add: the report says how busy
the machine was.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _busy_cores(window_s: float, before: tuple) -> float:
    """Average busy cores of the whole machine since ``before`` (from /proc/stat)."""
    after = _cpu_ticks()
    busy = (after[0] - before[0]) / os.sysconf("SC_CLK_TCK")
    return busy / window_s


def _cpu_ticks() -> tuple:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle, idle)


def phase(url: str, texts: list[str], clients: int) -> dict:
    from load import _clients

    asyncio.run(_clients(url, texts[:clients * 4], clients))  # warm-up
    before, t0 = _cpu_ticks(), time.perf_counter()
    result = asyncio.run(_clients(url, texts, clients))
    result["busy_cores"] = _busy_cores(time.perf_counter() - t0, before)
    return result


def main(cloud: Path, requests: int, clients: int, rounds: int, out: Path) -> dict:
    from edgeshrink.data import load_data, split_examples
    from edgeshrink.doctor import cpu_info
    from edgeshrink.serve.process import ServerProcess
    from tests.ray_cluster import local_cluster

    texts = split_examples(load_data("sentiment-movies")).test.texts[:requests]
    common = ["--port", 0, "--rate", 0, "--max-texts", 64]
    runs: dict[str, list] = {"uvicorn, 1 process": [], "ray serve, 1 replica": [], "ray serve, 2 replicas": []}
    t0 = time.perf_counter()
    with local_cluster(nodes=2) as (cluster, _):
        startup = time.perf_counter() - t0
        for r in range(rounds):
            order = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in order:
                if name.startswith("uvicorn"):
                    args = ["serve-cloud", cloud, *common, "--threads", 1]
                else:
                    args = ["serve-cloud", cloud, *common, "--engine", "ray", "--address", cluster.address,
                            "--replicas", 2 if "2" in name else 1]
                started = time.perf_counter()
                with ServerProcess(args, timeout_s=300) as server:
                    ready_s = time.perf_counter() - started
                    result = phase(server.url, texts, clients)
                result["ready_s"] = ready_s
                runs[name].append(result)
                print(f"round {r + 1} {name}: {result['throughput_rps']:.1f} req/s, p50 {result['p50_ms']:.1f} ms, "
                      f"p99 {result['p99_ms']:.1f} ms, errors {result['errors']}, busy cores "
                      f"{result['busy_cores']:.2f}, up in {ready_s:.1f} s", flush=True)
    summary = {name: {k: statistics.median(r[k] for r in rows) for k in
                      ("throughput_rps", "p50_ms", "p99_ms", "busy_cores", "ready_s")} | {
                          "errors": sum(r["errors"] for r in rows), "requests": sum(r["requests"] for r in rows)}
               for name, rows in runs.items()}
    one, two = summary["ray serve, 1 replica"], summary["ray serve, 2 replicas"]
    result = {"schema": "edgeshrink-ray-serve-load/1", "cloud": str(cloud), "cpu": cpu_info(),
              "cores": os.cpu_count(), "clients": clients, "requests_per_phase": requests, "rounds": rounds,
              "cluster_startup_s": startup, "runs": runs, "summary": summary,
              "throughput_ratio_2_over_1": two["throughput_rps"] / one["throughput_rps"],
              "p99_ratio_2_over_1": two["p99_ms"] / one["p99_ms"]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray-serve-load.json").write_text(json.dumps(result, indent=2))
    (out / "ray-serve-load.md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(result: dict) -> str:
    cpu = result["cpu"]
    lines = [f"Machine: {cpu['model']}, {result['cores']} logical cores, ISA {' '.join(cpu['isa'])}; cloud bundle "
             f"`{result['cloud']}`; {result['clients']} concurrent loopback clients, {result['requests_per_phase']} "
             f"requests of one text per phase, {result['rounds']} interleaved rounds (medians); load generator, "
             f"Ray's proxy and the replicas on the same machine.", "",
             "| engine | throughput req/s | p50 ms | p99 ms | errors | busy cores | ready in s |",
             "|---|---|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | {s['throughput_rps']:.1f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
                     f"{s['errors']} of {s['requests']} | {s['busy_cores']:.2f} | {s['ready_s']:.1f} |")
    lines += ["", f"2 replicas / 1 replica: throughput **{result['throughput_ratio_2_over_1']:.2f}x**, p99 "
                  f"{result['p99_ratio_2_over_1']:.2f}x. Cluster start-up {result['cluster_startup_s']:.1f} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cloud", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    main(args.cloud, args.requests, args.clients, args.rounds, args.out)
