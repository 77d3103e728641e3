"""Drift detection, the shadow audit and recalibration through the device service (BENCHMARKS.md, issue 18).
Run it through `benchmarks/drift` (after `make demo`).

    .venv/bin/python benchmarks/drift.py --device ROUTER_BUNDLE --cloud CLOUD_BUNDLE [--replays 20]

The device service (`edgeshrink serve`, the sentiment-edge device model and its router) runs with the cloud
model's service behind it, on loopback; traffic is replayed in order, 8 texts per request:
1. false alarms: ``--replays`` fresh services, each fed ``--in-dist`` movie-review test texts in a random order
   (the router was calibrated on the calibration split of the same data): how often any signal fires;
2. detection: movie reviews, then a shifted data set (``--shifts``: tweets, the built-in domain shift, and
   Amazon product-review snippets), without recalibration: the requests after the shift until each signal
   first fires, and the hybrid accuracy on the shifted texts against the cloud model's on the same texts
   (McNemar);
3. recovery: the same stream with ``--recalibrate`` (label-free, the risk policy at ``--alpha``): the hybrid
   accuracy on the shifted texts after the recalibration against the cloud's on those texts, and the share
   kept on the device.
Accuracy is scored here from the data's labels; the service never sees them.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 8


def serve(device: Path, cloud_url: str, extra: list):
    from edgeshrink.serve.process import ServerProcess

    return ServerProcess(["serve", device, "--cloud", cloud_url, "--port", 0, "--threads", 1, "--rate", 0, *extra])


def stream(url: str, texts: list[str]) -> list[dict]:
    from edgeshrink.client import Client

    answers = []
    with Client(url, timeout_s=60) as client:
        for start in range(0, len(texts), BATCH):
            answers += client.classify(texts[start:start + BATCH])
    return answers


def monitor_report(url: str) -> dict:
    import httpx

    response = httpx.get(url + "/v1/monitor", timeout=30)
    if response.status_code != 200:
        raise RuntimeError(f"/v1/monitor answered {response.status_code}: {response.text[:300]}")
    return response.json()


def wait_for_recalibration(url: str, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    report = monitor_report(url)
    while time.monotonic() < deadline and not report["recalibrations"]:
        time.sleep(0.2)
        report = monitor_report(url)
    return report


def accuracy(answers: list[str], truth: list[str]) -> dict:
    from edgeshrink.stats import accuracy_interval

    right = sum(a == y for a, y in zip(answers, truth))
    low, high = accuracy_interval(right, len(truth))
    return {"accuracy": right / len(truth), "ci95": [low, high], "n": len(truth)}


def mcnemar(a: list[str], b: list[str], truth: list[str]) -> float:
    from edgeshrink.stats import mcnemar_p

    right_a = [x == y for x, y in zip(a, truth)]
    right_b = [x == y for x, y in zip(b, truth)]
    return mcnemar_p(sum(p and not q for p, q in zip(right_a, right_b)),
                     sum(q and not p for p, q in zip(right_a, right_b)))


def main(device: Path, cloud: Path, replays: int, in_dist: int, shifted: int, audit: float, alpha: float,
         sample: int, out: Path, seed: int, shifts: list[str], suffix: str = "") -> dict:
    from edgeshrink.data import load_data, split_examples
    from edgeshrink.doctor import cpu_info
    from edgeshrink.runtime import load
    from edgeshrink.serve.process import ServerProcess

    rng = random.Random(seed)
    movies = split_examples(load_data("sentiment-movies")).test
    cloud_model = load(cloud, threads=1)
    scratch = Path(tempfile.mkdtemp(prefix="edgeshrink-drift-"))
    result = {"schema": "edgeshrink-drift/1", "device": str(device), "cloud": str(cloud), "cpu": cpu_info(),
              "batch_texts": BATCH, "audit_fraction": audit, "alpha": alpha, "sample": sample}
    monitor_flags = ["--audit-fraction", audit]
    try:
        with ServerProcess(["serve-cloud", cloud, "--port", 0, "--threads", 1, "--rate", 0]) as cloud_server:
            # 1. false alarms on in-distribution traffic
            alarms, report = [], {"signals": {}}
            for r in range(replays):
                texts = rng.sample(movies.texts, in_dist)
                with serve(device, cloud_server.url, monitor_flags) as service:
                    stream(service.url, texts)
                    report = monitor_report(service.url)
                fired = {k: v["first_fired_at"] for k, v in report["signals"].items() if v["first_fired_at"]}
                alarms.append(fired)
                print(f"in-distribution replay {r + 1}/{replays}: {fired or 'quiet'}", flush=True)
            result["false_alarms"] = {
                "replays": replays, "requests_each": in_dist,
                "any_signal": sum(bool(a) for a in alarms) / replays if replays else None,
                "per_signal": {s: sum(s in a for a in alarms) / replays for s in report["signals"]},
                "replay_alarms": alarms}
            # 2. + 3. movie reviews, then another domain: without and with recalibration
            result["shifts"] = {}
            for shift in shifts:
                result["shifts"][shift] = shift_runs(device, cloud_server.url, cloud_model, movies, load_data(shift),
                                                     rng, in_dist, shifted, monitor_flags, alpha, sample, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"drift{suffix}.json").write_text(json.dumps(result, indent=2))
    (out / f"drift{suffix}.md").write_text(markdown(result))
    print(markdown(result))
    return result


def shift_runs(device, cloud_url, cloud_model, movies, data, rng, in_dist, shifted, monitor_flags, alpha, sample,
               scratch) -> dict:
    order = list(range(len(data)))
    rng.shuffle(order)
    texts = [data.texts[i] for i in order[:shifted]]
    truth = [data.labels[i] for i in order[:shifted]]
    cloud_answers = cloud_model.predict(texts).labels
    head = rng.sample(movies.texts, in_dist)
    runs = {}
    for name, extra in (("without_recalibration", []),
                        ("with_recalibration", ["--recalibrate", "--recalibrate-alpha", alpha])):
        bundle = scratch / f"{data.name}-{name}"
        shutil.copytree(device, bundle)  # a recalibration writes into the bundle
        settings = scratch / f"{name}.yaml"
        settings.write_text(json.dumps({"monitor": {"min_recalibration_sample": sample}}))
        t0 = time.perf_counter()
        with serve(bundle, cloud_url, monitor_flags + extra + ["--config", settings]) as service:
            answers = stream(service.url, head + texts)
            report = wait_for_recalibration(service.url) if extra else monitor_report(service.url)
            log = service.stderr()
        on_shifted = answers[len(head):]
        labels = [a["label"] for a in on_shifted]
        # first firings: of the router as shipped (before a recalibration reset the monitor)
        fired = report["recalibrations"][0]["first_fired_at"] if report.get("recalibrations") else {
            k: v["first_fired_at"] for k, v in report["signals"].items() if v["first_fired_at"]}
        run = {"wall_s": time.perf_counter() - t0, "shift_at": len(head),
               "first_fired_after_shift": {k: v - len(head) for k, v in fired.items() if v > len(head)},
               "fired_before_shift": [k for k, v in fired.items() if v <= len(head)],
               "shifted": {"hybrid": accuracy(labels, truth), "cloud": accuracy(cloud_answers, truth),
                           "on_device": sum(a["source"] != "cloud" for a in on_shifted) / len(on_shifted),
                           "mcnemar_p": mcnemar(labels, cloud_answers, truth)},
               "recalibrations": report.get("recalibrations", []),
               "log": [line for line in log.splitlines() if "drift" in line or "recalibrat" in line][:20]}
        if report.get("recalibrations"):
            at = report["recalibrations"][0]["at_request"] - len(head)
            after = slice(at + 1, None)
            run["after_recalibration"] = {
                "from_text": at + 1, "hybrid": accuracy(labels[after], truth[after]),
                "cloud": accuracy(cloud_answers[after], truth[after]),
                "on_device": sum(a["source"] != "cloud" for a in on_shifted[after]) / len(on_shifted[after]),
                "mcnemar_p": mcnemar(labels[after], cloud_answers[after], truth[after])}
        runs[name] = run
        print(data.name, name, json.dumps({k: v for k, v in run.items() if k != "log"}, indent=1), flush=True)
    return runs


def _acc(a: dict) -> str:
    return f"{100 * a['accuracy']:.2f} [{100 * a['ci95'][0]:.1f}, {100 * a['ci95'][1]:.1f}]"


def markdown(result: dict) -> str:
    fa = result["false_alarms"]
    cpu = result["cpu"]
    lines = [f"Machine: {cpu['model']}, ISA {' '.join(cpu['isa'])}; device `{result['device']}`, cloud "
             f"`{result['cloud']}`; {result['batch_texts']} texts per request, audit fraction "
             f"{result['audit_fraction']}, recalibration: risk policy at α = {result['alpha']}, label-free, on "
             f"{result['sample']} sampled requests.", ""]
    if fa["replays"]:
        lines += [f"False alarms: {fa['replays']} replays of {fa['requests_each']} in-distribution requests each: any "
                  f"signal fired in **{100 * fa['any_signal']:.0f}%** (" + ", ".join(
                      f"{k} {100 * v:.0f}%" for k, v in fa["per_signal"].items()) + ").", ""]
    lines += ["| shifted to | run | fired after the shift (requests) | on device | hybrid acc % | cloud acc % | "
              "McNemar p |", "|---|---|---|---|---|---|---|"]
    for shift, runs in result["shifts"].items():
        for name, run in runs.items():
            t = run["shifted"]
            fired = ", ".join(f"{k} {v}" for k, v in sorted(run["first_fired_after_shift"].items(),
                                                            key=lambda kv: kv[1]))
            lines.append(f"| {shift} | {name.replace('_', ' ')} (all {t['hybrid']['n']}) | {fired or '—'} | "
                         f"{100 * t['on_device']:.1f}% | {_acc(t['hybrid'])} | {_acc(t['cloud'])} | "
                         f"{t['mcnemar_p']:.2g} |")
            if "after_recalibration" in run:
                a = run["after_recalibration"]
                lines.append(f"| {shift} | after the recalibration (texts {a['from_text']}–) | | "
                             f"{100 * a['on_device']:.1f}% | {_acc(a['hybrid'])} | {_acc(a['cloud'])} | "
                             f"{a['mcnemar_p']:.2g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=Path, required=True)
    parser.add_argument("--cloud", type=Path, required=True)
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--in-dist", type=int, default=600)
    parser.add_argument("--shifted", type=int, default=3000)
    parser.add_argument("--audit", type=float, default=0.25)
    parser.add_argument("--alpha", type=float, default=0.03)
    parser.add_argument("--sample", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shifts", default="sentiment-tweets,sentiment-products")
    parser.add_argument("--suffix", default="", help="results go to drift{SUFFIX}.{json,md}")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = parser.parse_args()
    main(a.device, a.cloud, a.replays, a.in_dist, a.shifted, a.audit, a.alpha, a.sample, a.out, a.seed,
         a.shifts.split(","), a.suffix)
