"""What signing costs (issue 30): sign and verify time per bundle, and the runtime's load time with the signature
checked (a trust list) against without, interleaved in one run.

    PYTHONPATH=src:. .venv/bin/python benchmarks/signing_cost.py runs/sentiment-edge/.../device runs/smollm2-int4 \
        [--rounds 5] [--json benchmarks/results/signing.json]

Each bundle is copied to a temporary folder first (signing adds signature.sigstore.json). Per round, in this order:
sign; verify the signature alone (model-signing's hashing of every file, then the ECDSA check); load without a
trust list (the manifest's hashes, ONNX Runtime session, tokenizer); load with one (the signature first, then the
same). A first round warms up (imports, the page cache) and is not counted; medians over the rest (a device reading
from flash, with a cold cache, pays more for the hashing).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from edgeshrink.doctor import cpu_info


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from edgeshrink.runtime import load
    from edgeshrink.runtime.bundle import read_manifest
    from edgeshrink.runtime.trust import verify_signature
    from edgeshrink.signing import new_keys, sign_bundle

    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeshrink-signing-") as tmp:
        key, pub = new_keys(Path(tmp) / "keys")
        for i, source in enumerate(args.bundles):
            bundle = Path(tmp) / f"{i}-{source.name}"
            shutil.copytree(source, bundle)
            manifest = read_manifest(bundle)
            times = {"sign_ms": [], "verify_ms": [], "load_ms": [], "load_trusted_ms": []}
            for round_ in range(args.rounds + 1):  # round 0 warms up (imports, page cache): not counted
                got = {"sign_ms": timed(lambda: sign_bundle(bundle, key)),
                       "verify_ms": timed(lambda: verify_signature(bundle, [pub])),
                       "load_ms": timed(lambda: load(bundle, threads=1, trust=[])),
                       "load_trusted_ms": timed(lambda: load(bundle, threads=1, trust=[pub]))}
                for name, value in got.items():
                    if round_:
                        times[name].append(value)
            row = {"bundle": str(source), "task": manifest["task"], "files": len(manifest["files"]),
                   "size_mb": manifest["size_bytes"] / 1e6, **{k: statistics.median(v) for k, v in times.items()},
                   "rounds": times}
            row["load_overhead_ms"] = row["load_trusted_ms"] - row["load_ms"]
            row["hash_mb_per_s"] = row["size_mb"] / (row["verify_ms"] / 1e3)
            rows.append(row)
            print(f"{source}: done", flush=True)
    cpu = cpu_info()
    print(f"\nCPU {cpu['model']}; ISA {' '.join(cpu['isa'])}; {args.rounds} rounds, medians\n")
    print("| bundle | files | size | sign | verify | load | load, signature checked | overhead |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['bundle']} ({r['task']}) | {r['files']} | {r['size_mb']:.1f} MB | {r['sign_ms']:.0f} ms | "
              f"{r['verify_ms']:.0f} ms | {r['load_ms']:.0f} ms | {r['load_trusted_ms']:.0f} ms | "
              f"+{r['load_overhead_ms']:.0f} ms ({100 * r['load_overhead_ms'] / r['load_ms']:.0f}%) |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"cpu": cpu, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
