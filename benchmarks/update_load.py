"""Updates under load (issue 30): a device service updating itself every few seconds while 16 clients send requests
on loopback; then an update whose router regresses the drift signals, which must be rolled back in its watch window.

    PYTHONPATH=src:. .venv/bin/python benchmarks/update_load.py --device runs/device --alternate runs/bundle \
        --cloud runs/bundle --work /tmp/update-load [--updates 8] [--every 4] [--json benchmarks/results/update-load.json]

Set-up (kept in --work, reused): two models that answer differently, the INT8 device bundle (A) and its fp32 source
(B), each with a router (budget 0.3, calibrated against --cloud on sentiment-movies), and a drifting one: A with a
router calibrated on sentiment-tweets. Releases 1..N alternate A and B, each with a 200-text canary, signed;
release N+1 is the drifting one. The cloud (`serve-cloud --publish`) serves the channel; the device (`serve
--update-from CLOUD/v1/channel --update-every 1`) starts on release 1.

While 16 client threads send one movie review per request (a pool of 400 test texts), a new release is published
every --every seconds (after --baseline-s seconds of load with none), then the drifting one. Every answer is checked afterwards against the version it names: its
label and probabilities must be what that version's model gives for that text (A and B differ, so a mix would show),
and its source must follow that version's router (escalated or not). Prints the figures as Markdown.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import threading
import time
from pathlib import Path

import httpx

from edgeshrink.doctor import cpu_info


def prepare(args, work: Path) -> dict:
    from edgeshrink.deploy.release import ReleaseConfig, release
    from edgeshrink.route.calibrate import RouteConfig, calibrate
    from edgeshrink.signing import new_keys

    done = work / "prepared.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    key, pub = new_keys(work / "keys")
    routed = {}
    for name, source, data in (("A", args.device, "sentiment-movies"), ("B", args.alternate, "sentiment-movies"),
                               ("drifting", args.device, args.shift_data)):
        out = work / "routed" / name
        shutil.copytree(source, out)
        (out / "signature.sigstore.json").unlink(missing_ok=True)
        print(f"calibrating {name} on {data}", flush=True)
        calibrate(out, args.cloud, data, RouteConfig(policy="budget", budget=0.3))
        routed[name] = out
    versions = {}
    for version in range(1, args.updates + 3):
        kind = "drifting" if version == args.updates + 2 else "AB"[(version - 1) % 2]
        out = work / "releases" / str(version)
        shutil.copytree(routed[kind], out)
        release(out, ReleaseConfig.from_dict({"release": version, "canary_size": 200,
                                              "canary_data": {"source": "sentiment-movies"}}), sign_key=key)
        versions[str(version)] = {"kind": kind, "path": str(out)}
        print(f"release {version}: {kind}", flush=True)
    state = {"key": str(key), "pub": str(pub), "versions": versions, "routed": {k: str(v) for k, v in routed.items()}}
    done.write_text(json.dumps(state, indent=2))
    return state


def expected(state: dict, texts: list[str]) -> dict:
    """Per model kind: labels, probabilities and escalation decisions for every text of the pool."""
    from edgeshrink.route.router import Router, read_router
    from edgeshrink.runtime import load

    out = {}
    for kind, path in state["routed"].items():
        predictor = load(path)
        pred = predictor.predict(texts, batch_size=1)
        _, reasons, escalate = Router(predictor, None, read_router(path)).decide(pred)
        out[kind] = {"labels": pred.labels, "probabilities": pred.probabilities.tolist(), "escalate": escalate}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=Path, required=True)
    parser.add_argument("--alternate", type=Path, required=True)
    parser.add_argument("--cloud", type=Path, required=True)
    parser.add_argument("--shift-data", default="sentiment-tweets")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--every", type=float, default=4.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--watch", type=int, default=300)
    parser.add_argument("--baseline-s", type=float, default=20.0,
                        help="Seconds of load before the first release is published: the latency without updates.")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from edgeshrink.data import load_data
    from edgeshrink.data.split import SplitConfig, split_examples
    from edgeshrink.deploy.channel import publish
    from edgeshrink.serve.process import ServerProcess

    state = prepare(args, args.work)
    test = split_examples(load_data("sentiment-movies"), SplitConfig()).test
    pool = random.Random(0).sample(test.texts, 400)
    want = expected(state, pool)
    differ = sum(max(abs(a - b) for a, b in zip(pa, pb)) > 1e-4
                 for pa, pb in zip(want["A"]["probabilities"], want["B"]["probabilities"]))
    channel = args.work / "channel"
    shutil.rmtree(channel, ignore_errors=True)
    store = args.work / "store"
    shutil.rmtree(store, ignore_errors=True)
    shipped = args.work / "shipped"
    shutil.rmtree(shipped, ignore_errors=True)
    shutil.copytree(state["versions"]["1"]["path"], shipped)
    publish(state["versions"]["1"]["path"], channel, state["key"])

    records, stop, lock = [], threading.Event(), threading.Lock()

    def client(seed: int, url: str) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                i = rng.randrange(len(pool))
                started = time.perf_counter()
                try:
                    response = http.post(f"{url}/v1/classify", json={"texts": [pool[i]]})
                    body = response.json() if response.status_code == 200 else {"error": response.text[:200]}
                    status = response.status_code
                except httpx.HTTPError as exc:
                    body, status = {"error": f"{type(exc).__name__}: {exc}"}, 0
                record = {"t": time.time(), "i": i, "status": status, "ms": (time.perf_counter() - started) * 1e3,
                          **({"version": body.get("version"), "result": body["results"][0]} if status == 200 else
                             {"error": body.get("error")})}
                with lock:
                    records.append(record)

    with ServerProcess(["serve-cloud", args.cloud, "--port", "0", "--publish", channel]) as cloud:
        with ServerProcess(_device_args(shipped, cloud.url, state, store, args.watch)) as device:
            threads = [threading.Thread(target=client, args=(k, device.url), daemon=True) for k in range(args.clients)]
            t0 = time.time()
            for thread in threads:
                thread.start()
            published = {1: t0}
            time.sleep(max(0.0, args.baseline_s - args.every))
            for version in range(2, args.updates + 3):
                time.sleep(args.every)
                publish(state["versions"][str(version)]["path"], channel, state["key"])
                published[version] = time.time()
                print(f"published {version} ({state['versions'][str(version)]['kind']}) at "
                      f"{published[version] - t0:.1f} s", flush=True)
            drifting = args.updates + 2
            deadline = time.time() + 120
            while time.time() < deadline:
                status = httpx.get(f"{device.url}/v1/version", timeout=10).json()
                if str(drifting) in status["store"]["rejected"]:
                    break
                time.sleep(0.5)
            time.sleep(2)
            stop.set()
            for thread in threads:
                thread.join(60)
            status = httpx.get(f"{device.url}/v1/version", timeout=10).json()
            metrics = httpx.get(f"{device.url}/metrics", timeout=10).text
            log = device.stderr()
            timeline = json.loads((store / "state.json").read_text())["events"]

    kinds = {int(v): info["kind"] for v, info in state["versions"].items()}
    errors = [r for r in records if r["status"] != 200]
    mixed = []
    for r in records:
        if r["status"] != 200:
            continue
        kind = kinds.get(r["version"])
        if kind is None:
            mixed.append((r, "unknown version"))
            continue
        exp, res = want[kind], r["result"]
        escalate = exp["escalate"][r["i"]]
        if res["source"] == "cloud" and not escalate:
            mixed.append((r, "escalated, its router would not"))
        elif res["source"] == "device" and escalate:
            mixed.append((r, "kept, its router would escalate"))
        elif res["source"] != "cloud":
            probs = [res["probabilities"][label] for label in sorted(res["probabilities"], key=list(
                res["probabilities"]).index)]
            if res["label"] != exp["labels"][r["i"]] or max(abs(a - b) for a, b in zip(
                    probs, exp["probabilities"][r["i"]])) > 1e-4:
                mixed.append((r, "not its model's answer"))
    installs = [e for e in timeline if e["event"] == "installed" and e.get("how") == "update"]
    rolled = [e for e in timeline if e["event"] == "rolled_back"]
    drifting_texts = [r for r in records if r["status"] == 200 and r["version"] == drifting]
    latencies = sorted(r["ms"] for r in records if r["status"] == 200)
    first_publish = min(v for k, v in published.items() if k > 1)

    def percentiles(values):
        values = sorted(values)
        return {"n": len(values), "p50": statistics.median(values), "p99": values[int(0.99 * (len(values) - 1))]} \
            if values else None

    phases = {"before_updates": percentiles(r["ms"] for r in records if r["status"] == 200 and r["t"] < first_publish),
              "while_updating": percentiles(r["ms"] for r in records if r["status"] == 200 and r["t"] >= first_publish)}
    swap_lag = []
    for e in installs:
        swap_lag.append(e["unix"] - published[e["version"]])
    result = {
        "cpu": cpu_info(), "clients": args.clients, "requests": len(records), "errors": len(errors),
        "error_examples": [e.get("error") for e in errors[:5]],
        "answers_not_of_their_version": len(mixed), "mixed_examples": [m[1] for m in mixed[:5]],
        "pool_texts_where_A_and_B_differ": differ, "pool": len(pool),
        "versions_answering": sorted({r["version"] for r in records if r["status"] == 200}),
        "updates_published": args.updates + 1, "installed": [e["version"] for e in installs],
        "rolled_back": rolled, "texts_on_drifting_version": len(drifting_texts),
        "watch_window_texts": args.watch,
        "latency_ms": {"p50": statistics.median(latencies), "p99": latencies[int(0.99 * (len(latencies) - 1))],
                       "max": latencies[-1]},
        "latency_by_phase_ms": phases,
        "duration_s": records[-1]["t"] - records[0]["t"] if records else 0,
        "swap_lag_s_max": max(swap_lag) if swap_lag else None,
        "rollbacks_metric": [line for line in metrics.splitlines() if line.startswith("edgeshrink_rollbacks_total")],
        "log": [line for line in log.splitlines() if "updated to" in line or "rolled back" in line or "refused" in line],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "cpu"}, indent=2))
    print(f"\nCPU {result['cpu']['model']}; ISA {' '.join(result['cpu']['isa'])}")
    print("| clients | requests | errors | answers not of the version they name | versions answering | "
          "installed | rolled back | p50 / p99 ms |")
    print("|---:|---:|---:|---:|---|---|---|---|")
    print(f"| {args.clients} | {len(records)} | {len(errors)} | {len(mixed)} | {result['versions_answering']} | "
          f"{result['installed']} | {[(e['version'], e['to']) for e in rolled]} after {len(drifting_texts)} texts | "
          f"{result['latency_ms']['p50']:.1f} / {result['latency_ms']['p99']:.1f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


def _device_args(shipped: Path, cloud_url: str | None, state: dict, store: Path, watch: int) -> list:
    return ["serve", shipped, "--port", "0", "--trust", state["pub"], *(["--cloud", cloud_url] if cloud_url else []),
            "--update-from", f"{cloud_url}/v1/channel" if cloud_url else "none", "--update-every", "1",
            "--update-watch", str(watch), "--update-store", store]


if __name__ == "__main__":
    main()
