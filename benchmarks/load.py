"""Load benchmark of the device service over loopback (run it through `benchmarks/load`).

    .venv/bin/python benchmarks/load.py --device BUNDLE --cloud CLOUD_BUNDLE [--out benchmarks/results]

Phases, each a bounded number of requests (one text each, sentiment-movies test texts in a fixed order),
the service started fresh as a subprocess on 127.0.0.1 with ONNX Runtime at one thread and no rate limit:
1. raw: the same bundle in this process (edgeshrink.runtime, 1 thread), one text per call: the floor.
2. service, 1 client, sequential requests (keep-alive): what HTTP, validation, batching and routing add.
3. service, 16 concurrent clients, micro-batching off (max batch size 1) vs on (16): throughput.
4. service with the cloud model service behind it (16 clients): escalation %, fallbacks, errors.
The load generator runs on the same 2-core machine as the service (it takes CPU from it: reported as is).
For the concurrent phases the CPU time of the service, of its model worker thread (tokenize + ONNX Runtime
+ post-process, from /metrics) and of the load generator is booked per request: when the two cores are
busy, no batching can raise throughput by more than total CPU / (total CPU - model CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np


def _stats(latencies_s: list[float], wall_s: float, errors: int) -> dict:
    ms = np.array(latencies_s) * 1e3
    return {"requests": len(latencies_s) + errors, "ok": len(latencies_s), "errors": errors,
            "wall_s": round(wall_s, 2), "throughput_rps": len(latencies_s) / wall_s,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean())}


def _record(response, start: float, latencies: list, sources: list) -> int:
    """Book one request's outcome; return 1 if it was an error (no answer or not 200), else 0."""
    if response is None or response.status_code != 200:
        return 1
    latencies.append(time.perf_counter() - start)
    sources.append(response.json()["results"][0]["source"])
    return 0


def raw(bundle: Path, texts: list[str]) -> dict:
    from edgeshrink.runtime import load

    predictor = load(bundle, threads=1)
    for text in texts[:20]:
        predictor.predict([text])
    latencies = []
    t0 = time.perf_counter()
    for text in texts:
        start = time.perf_counter()
        predictor.predict([text])
        latencies.append(time.perf_counter() - start)
    return _stats(latencies, time.perf_counter() - t0, 0)


def one_client(url: str, texts: list[str]) -> dict:
    import httpx

    latencies, errors, sources = [], 0, []
    with httpx.Client(base_url=url, timeout=30) as client:
        for text in texts[:20]:
            client.post("/v1/classify", json={"texts": [text]})
        t0 = time.perf_counter()
        for text in texts:
            start = time.perf_counter()
            try:
                response = client.post("/v1/classify", json={"texts": [text]})
            except httpx.HTTPError:
                response = None
            errors += _record(response, start, latencies, sources)
        wall = time.perf_counter() - t0
    return {**_stats(latencies, wall, errors), "sources": {s: sources.count(s) for s in set(sources)}}


async def _clients(url: str, texts: list[str], clients: int) -> dict:
    import httpx

    queue: asyncio.Queue[str] = asyncio.Queue()
    for text in texts:
        queue.put_nowait(text)
    latencies, sources, errors = [], [], 0

    async def worker():
        nonlocal errors
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            while True:
                try:
                    text = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                start = time.perf_counter()
                try:
                    response = await client.post("/v1/classify", json={"texts": [text]})
                except httpx.HTTPError:
                    response = None
                errors += _record(response, start, latencies, sources)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return {**_stats(latencies, time.perf_counter() - t0, errors), "clients": clients,
            "sources": {s: sources.count(s) for s in sorted(set(sources))}}


def _cpu(pid: int, url: str) -> tuple[float, float, float]:
    """(service process CPU s, its model worker's CPU s, this process's CPU s) so far."""
    import os

    from edgeshrink.client import Client

    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    service = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime (Linux)
    model = Client(url).metrics().get("edgeshrink_model_cpu_seconds_total", 0.0)
    return service, model, time.process_time()


def concurrent(url: str, texts: list[str], clients: int, pid: int | None = None) -> dict:
    asyncio.run(_clients(url, texts[:clients * 2], clients))  # warm-up
    before = _cpu(pid, url) if pid else None
    run = asyncio.run(_clients(url, texts, clients))
    if before:
        service, model, generator = (b - a for a, b in zip(before, _cpu(pid, url)))
        n = max(1, run["ok"])
        run["cpu_ms_per_request"] = {"service": 1e3 * service / n, "model": 1e3 * model / n,
                                     "generator": 1e3 * generator / n,
                                     "busy_cores": (service + generator) / run["wall_s"]}
    return run


def main(device: Path, cloud: Path, out: Path, n_single: int, n_concurrent: int, clients: int) -> dict:
    from edgeshrink.client import Client
    from edgeshrink.data import load_data, split_examples
    from edgeshrink.doctor import cpu_info
    from edgeshrink.serve.process import ServerProcess

    texts = split_examples(load_data("sentiment-movies")).test.texts
    common = ["--port", 0, "--threads", 1, "--rate", 0]
    result = {"schema": "edgeshrink-load/1", "device": str(device), "cloud": str(cloud), "cpu": cpu_info(),
              "texts": "sentiment-movies test split, one text per request"}
    result["raw"] = raw(device, texts[:n_single])
    print("raw", json.dumps(result["raw"]))
    with ServerProcess(["serve", device, *common]) as server:
        result["service_1_client"] = one_client(server.url, texts[:n_single])
    print("1 client", json.dumps(result["service_1_client"]))
    for batch in (1, 16):
        with ServerProcess(["serve", device, *common, "--max-batch-size", batch]) as server:
            result[f"service_{clients}_clients_batch_{batch}"] = run = concurrent(
                server.url, texts[:n_concurrent], clients, server.process.pid)
            run["batch_sizes"] = _batch_sizes(Client(server.url).metrics())
        print(f"{clients} clients, max batch {batch}", json.dumps(run))
    with ServerProcess(["serve-cloud", cloud, "--port", 0, "--rate", 0]) as cloud_server, \
            ServerProcess(["serve", device, *common, "--cloud", cloud_server.url]) as server:
        run = concurrent(server.url, texts[:n_concurrent], clients)
        metrics = Client(server.url).metrics()
        run["escalated_fraction"] = metrics.get("edgeshrink_escalations_total", 0) / max(
            1, sum(v for k, v in metrics.items() if k.startswith("edgeshrink_texts_total")))
        run["fallbacks"] = {k: v for k, v in metrics.items() if k.startswith("edgeshrink_fallbacks_total")}
        result[f"routed_{clients}_clients"] = run
    print("routed", json.dumps(run))
    single, r = result["service_1_client"], result["raw"]
    off, on = result[f"service_{clients}_clients_batch_1"], result[f"service_{clients}_clients_batch_16"]
    result["summary"] = {
        "overhead_p50_ms": single["p50_ms"] - r["p50_ms"], "overhead_p99_ms": single["p99_ms"] - r["p99_ms"],
        "batching_throughput_gain": on["throughput_rps"] / off["throughput_rps"],
        "batching_gain_bound": _batching_bound(off["cpu_ms_per_request"]),
        "errors": sum(v.get("errors", 0) for v in result.values() if isinstance(v, dict)),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(result, indent=2))
    (out / "load.md").write_text(markdown(result, clients))
    return result


def _batching_bound(cpu: dict) -> float:
    """Throughput gain if batching made the model free, with the CPU per request otherwise unchanged."""
    total = cpu["service"] + cpu["generator"]
    return total / max(1e-9, total - cpu["model"])


def _batch_sizes(metrics: dict) -> dict:
    count, total = metrics.get("edgeshrink_batch_size_count", 0), metrics.get("edgeshrink_batch_size_sum", 0)
    return {"model_calls": count, "mean": total / count if count else None}


def markdown(result: dict, clients: int) -> str:
    rows = [("raw runtime, in process", result["raw"]), ("service, 1 client", result["service_1_client"]),
            (f"service, {clients} clients, batching off", result[f"service_{clients}_clients_batch_1"]),
            (f"service, {clients} clients, batching on (≤16)", result[f"service_{clients}_clients_batch_16"]),
            (f"service + cloud, {clients} clients", result[f"routed_{clients}_clients"])]
    cpu = result["cpu"]
    lines = [f"Machine: {cpu['model']}, ISA {' '.join(cpu['isa'])}; ONNX Runtime 1 thread; loopback HTTP; "
             f"client and service on the same machine.", "",
             "| | requests | errors | throughput req/s | p50 ms | p99 ms | mean batch | escalated |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        batch = (r.get("batch_sizes") or {}).get("mean")
        esc = r.get("escalated_fraction")
        lines.append(f"| {name} | {r['requests']} | {r['errors']} | {r['throughput_rps']:.1f} | {r['p50_ms']:.2f} | "
                     f"{r['p99_ms']:.2f} | {f'{batch:.1f}' if batch else '—'} | {f'{100 * esc:.1f}%' if esc is not None else '—'} |")
    lines += ["", "CPU per request (ms), batch-size-1 and batched phases:", "",
              "| | service process | of which model worker | load generator | busy cores (of 2) |", "|---|---|---|---|---|"]
    for name, r in rows[2:4]:
        c = r["cpu_ms_per_request"]
        lines.append(f"| {name} | {c['service']:.2f} | {c['model']:.2f} | {c['generator']:.2f} | {c['busy_cores']:.2f} |")
    s = result["summary"]
    lines += ["", f"If batching made the model free, throughput could rise at most {s['batching_gain_bound']:.2f}x "
              f"(total CPU per request / CPU without the model's share, batch-size-1 phase)."]
    lines += ["", f"Service overhead at one client: p50 +{s['overhead_p50_ms']:.2f} ms, p99 +{s['overhead_p99_ms']:.2f} ms "
              f"over raw inference. Micro-batching at {clients} clients: {s['batching_throughput_gain']:.2f}x the "
              f"throughput of batch size 1. Errors: {s['errors']}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=Path, required=True, help="device bundle with router.json")
    parser.add_argument("--cloud", type=Path, required=True, help="cloud model (bundle) for the routed phase")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--single", type=int, default=400, help="requests at one client (and raw)")
    parser.add_argument("--concurrent", type=int, default=1200, help="requests per concurrent phase")
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    print(markdown(main(args.device, args.cloud, args.out, args.single, args.concurrent, args.clients), args.clients))
