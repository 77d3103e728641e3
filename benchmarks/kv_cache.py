"""Decode speed with the KV cache copied every token vs one shared past/present buffer (runtime/kv_cache.py), the
table of BENCHMARKS.md "A KV cache that is not copied every token": interleaved rounds in one process, the same
prompt ids, greedy, the same tokens checked; then an ONNX Runtime profile of 128 decode steps per path.

    .venv/bin/python benchmarks/kv_cache.py runs/smollm2-int4 [more bundles] [--threads 1 2] [--prompt 128] \
        [--tokens 128] [--rounds 5] [--no-profile]
"""
import argparse
import collections
import json
import os
import statistics
import tempfile
import time

import onnxruntime as ort

from edgeshrink.doctor import cpu_info
from edgeshrink.runtime.bundle import session_options
from edgeshrink.runtime.generate import Generator

TEXT = "The history of tea begins in China, where it was first drunk as a medicine. " * 400


def speeds(bundle: str, threads: int, prompt_len: int, tokens: int, rounds: int) -> dict:
    g = Generator(bundle, threads=threads)
    prompt = g.encode(TEXT)[:prompt_len]
    rates, ids = {False: [], True: []}, {}
    for _ in range(rounds):
        for shared in (False, True):
            g.shared_kv = shared
            info: dict = {}
            out = [t.id for t in g.stream(prompt, max_new_tokens=tokens, ignore_eos=True, info=info)]
            if ids.setdefault(shared, out) != out:
                raise SystemExit("greedy output changed between rounds")
            rates[shared].append(info["decode_tokens_per_s"])
    return {"identical": ids[False] == ids[True],
            **{("shared" if s else "copying"): {"median": statistics.median(r), "rounds": r} for s, r in rates.items()}}


def profile(bundle: str, threads: int, prompt_len: int, tokens: int) -> dict:
    """Kernel time per decode step by operator, and what the run spends outside kernels, per path."""
    shares = {}
    for shared in (False, True):
        g = Generator(bundle, threads=threads)
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "kv")
        g.session = ort.InferenceSession(str(g.path / "model.onnx"), options, providers=["CPUExecutionProvider"])
        g.shared_kv = shared
        prompt = g.encode(TEXT)[:prompt_len]
        logits, past = g._step(prompt, g._empty_past(), len(prompt))
        started = time.perf_counter()
        for total in range(len(prompt) + 1, len(prompt) + tokens + 1):
            logits, past = g._step([int(logits[-1].argmax())], past, total)
        wall_ms = (time.perf_counter() - started) * 1000 / tokens
        path = g.session.end_profiling()
        events = json.load(open(path))
        os.remove(path)
        runs = [e for e in events if e.get("name") == "model_run"]
        decode_from = runs[1]["ts"]  # the first run is the prefill
        kernels = collections.Counter()
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= decode_from:
                kernels[e["args"]["op_name"]] += e["dur"] / 1000 / tokens
        run_ms = sum(r["dur"] for r in runs[1:]) / 1000 / tokens
        shares["shared" if shared else "copying"] = {
            "wall_ms_per_token": wall_ms, "run_ms_per_token": run_ms, "kernel_ms_per_token": sum(kernels.values()),
            "kernels_ms_per_token": dict(kernels.most_common(5))}
    return shares


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bundles", nargs="+")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    print(f"# {cpu_info()}")
    for bundle in args.bundles:
        for threads in args.threads:
            result = speeds(bundle, threads, args.prompt, args.tokens, args.rounds)
            print(f"{bundle} threads={threads} prompt={args.prompt} tokens={args.tokens}: identical {result['identical']}, "
                  f"copying {result['copying']['median']:.1f} tok/s, shared {result['shared']['median']:.1f} tok/s "
                  f"(x{result['shared']['median'] / result['copying']['median']:.2f}); rounds "
                  f"{[round(r, 1) for r in result['copying']['rounds']]} vs {[round(r, 1) for r in result['shared']['rounds']]}")
        if not args.no_profile:
            for name, p in profile(bundle, args.threads[0], args.prompt, args.tokens).items():
                top = ", ".join(f"{op} {ms:.2f} ({100 * ms / p['kernel_ms_per_token']:.0f}%)"
                                for op, ms in p["kernels_ms_per_token"].items())
                print(f"  profile {name} threads={args.threads[0]}: {p['wall_ms_per_token']:.2f} ms/token wall, "
                      f"{p['run_ms_per_token']:.2f} in run, {p['kernel_ms_per_token']:.2f} in kernels: {top}")


if __name__ == "__main__":
    main()
