"""Does issue 26's refactor (the task layer) change what edgeshrink makes? Old code vs new, through the CLI.

    git worktree add /tmp/old c246c74        # the last commit before the task layer
    .venv/bin/python benchmarks/refactor_equivalence.py --old-src /tmp/old/src \
        --out benchmarks/results/refactor-equivalence.json

Each step runs in a subprocess (`python -m edgeshrink ...`) with PYTHONPATH pointing at one version's source:
the CLI's verbs and flags are the interface both versions share (the Python signatures change). Each version
works in a folder of its own with the same layout (WORK/old/..., WORK/new/...), so that its paths can be
normalised away before records and manifests are compared. The data are small seeded subsets of
sentiment-movies (the real data, real ids), written once as CSV files that both versions read.

- minilm: finetune minilm (1 epoch, 256 train examples, 64 tokens) -> prune (4 layers, heads 0.5, FFN 0.125,
  vocabulary) -> distill (1 epoch, gamma 1, one augmented copy) -> export -> quantize dynamic-int8 and
  int4-weight. Compared: every file of every model and bundle (sha256; safetensors weights also tensor by
  tensor), the records and manifests with volatile keys (times, versions, machine) removed, the ONNX logits on
  seeded token ids, and `predict` on held-out texts.
- smollm2: export smollm2 (the packaged GGUF) -> quantize int4-weight, accuracy level 4 (as
  recipes/smollm2-edge.yaml; --no-eval). Compared: every bundle file (model.onnx bytes), the manifests, and the
  greedy tokens of several prompts (`generate` text, and the token ids from the runtime's Generator).
- router: `route calibrate` of the INT4 bundle (device) against the fp32 bundle (cloud) on a prompted
  sentiment task (budget 0.3, mean-logprob signal). Compared: router.json (threshold, temperature, bias, ...)
  and the router's decision on each held-out text (runtime Router.decide).

A record or manifest may GAIN a key (issue 26: records gain `task`): reported under `added_keys`, not a
difference. `identical` is true when nothing else differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
ROUTER_SIGNAL = "mean-logprob"
# keys whose values depend on when, where or how fast a step ran, not on what it made (and any key ending in
# _seconds, _ms or _per_s: timings)
VOLATILE = {"created_at", "created_on", "seconds", "edgeshrink_version", "machine", "started_at", "finished_at",
            "first_token_ms", "decode_tokens_per_s", "elapsed", "elapsed_s", "wall_seconds", "host", "versions",
            "library_versions", "python", "platform", "cpu"}
ALLOWED_NEW_KEYS = {"task"}
PROMPTS = ["The capital of France is", "Write a haiku about the sea.", "def fibonacci(n):",
           "Once upon a time, in a small village,"]
SENTIMENT_PROMPT = ("user: \"Is the sentiment of this movie review positive or negative? Answer with one word."
                    "\\n\\nReview: {text}\"\n")

PREPARE = r'''
import csv, hashlib, json, sys
from pathlib import Path
from edgeshrink.data.sources import load_data
root, sizes = Path(sys.argv[1]), [int(n) for n in sys.argv[2:]]
ex = load_data("sentiment-movies")
order = sorted(range(len(ex)), key=lambda i: hashlib.sha256(f"refactor-equivalence:{ex.ids[i]}".encode()).hexdigest())
start = 0
for name, n in zip(("minilm", "router"), sizes[:2]):
    with open(root / f"{name}.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "label"])
        for i in sorted(order[start:start + n]):
            w.writerow([ex.ids[i], ex.texts[i], ex.labels[i]])
    start += n
held = order[start:start + sizes[2]]
(root / "heldout.json").write_text(json.dumps({"ids": [ex.ids[i] for i in held], "texts": [ex.texts[i] for i in held],
                                                "labels": [ex.labels[i] for i in held]}))
'''

TOKENS = r'''
import json, sys
from edgeshrink.runtime.generate import Generator
llm = Generator(sys.argv[1])
out = []
for prompt in json.loads(sys.argv[3]):
    g = llm.generate(prompt, int(sys.argv[4]))
    out.append({"prompt": prompt, "text": g.text, "token_ids": [int(t) for t in g.token_ids],
                "logprobs": [float(x) for x in g.logprobs], "stop_reason": g.stop_reason})
open(sys.argv[2], "w").write(json.dumps(out))
'''

DECISIONS = r'''
import json, sys
from edgeshrink.route.router import Router
router = Router.from_bundle(sys.argv[1], cloud=None)
texts = json.loads(open(sys.argv[3]).read())["texts"]
device = router.device.predict(texts)
scores, reasons, escalate = router.decide(device)
open(sys.argv[2], "w").write(json.dumps({"labels": list(device.labels), "scores": [float(s) for s in scores],
                                         "reasons": list(reasons), "escalate": [bool(e) for e in escalate],
                                         "threshold": router.threshold}))
'''


class Step:
    """Runs one version's commands in its own folder and times them."""

    def __init__(self, name: str, src: str, root: Path, log: Path):
        self.name, self.src, self.root, self.log = name, src, root, log
        self.seconds: dict[str, float] = {}
        self.env = {**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}

    def __call__(self, label: str, args: list, code: str | None = None) -> None:
        command = [PY, "-c", code, *map(str, args)] if code else [PY, "-m", "edgeshrink", *map(str, args)]
        started = time.perf_counter()
        with open(self.log, "a", encoding="utf-8") as log:
            shown = [PY, "-c", f"<{label}>", *args] if code else command
            log.write(f"\n$ [{self.name}] {' '.join(map(str, shown))}\n")
            log.flush()
            done = subprocess.run(command, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.seconds[label] = round(time.perf_counter() - started, 1)
        if done.returncode != 0:
            raise SystemExit(f"[{self.name}] {label} failed (exit {done.returncode}); see {self.log}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def volatile(key) -> bool:
    return key in VOLATILE or (isinstance(key, str) and key.endswith(("_seconds", "_ms", "_per_s")))


def normalised(value, roots: list[str]):
    """``value`` with the version's folder written as <ROOT> and volatile keys gone."""
    if isinstance(value, dict):
        return {k: normalised(v, roots) for k, v in value.items() if not volatile(k)}
    if isinstance(value, list):
        return [normalised(v, roots) for v in value]
    if isinstance(value, str):
        for root in roots:
            value = value.replace(root, "<ROOT>")
        return value
    return value


def json_diff(a, b, path: str = "") -> tuple[list[str], list[str]]:
    """(differences, keys only ``b`` has) between two normalised JSON values."""
    if isinstance(a, dict) and isinstance(b, dict):
        diffs, added = [], []
        for key in sorted(set(a) | set(b), key=str):
            where = f"{path}.{key}" if path else str(key)
            if key not in b:
                diffs.append(f"{where}: only in old")
            elif key not in a:
                (added if key in ALLOWED_NEW_KEYS else diffs).append(f"{where}: only in new")
            else:
                d, n = json_diff(a[key], b[key], where)
                diffs += d
                added += n
        return diffs, added
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        diffs, added = [], []
        for i, (x, y) in enumerate(zip(a, b)):
            d, n = json_diff(x, y, f"{path}[{i}]")
            diffs += d
            added += n
        return diffs, added
    if a != b:
        return [f"{path}: {json.dumps(a)[:120]} != {json.dumps(b)[:120]}"], []
    return [], []


# Issue 26 split QuantConfig per task: a quantized bundle's manifest (and quantize's JSON) now records only its
# own task's fields (the other task's are "only in old"), and each task's config states the defaults the
# catch-all held as null and the code filled in (an LLM's 16 evaluation documents; a classifier's int4 block of
# 128). Listed apart, not hidden: `identical` stays strict.
SPLIT_CONFIG = re.compile(r"quantization\.config\.(\w+: only in old|max_eval_examples: null != 16|block_size: null != 128)$")


def with_split(result: dict) -> dict:
    result["split_config"] = [d for d in result["differences"] if SPLIT_CONFIG.search(d)]
    result["identical_apart_from_split_config"] = len(result["split_config"]) == len(result["differences"])
    return result


def compare_dirs(old: Path, new: Path, roots: list[str]) -> dict:
    """Every file of two model or bundle folders by sha256; JSON files that differ, normalised and diffed."""
    names = sorted({p.relative_to(old).as_posix() for p in old.rglob("*") if p.is_file()}
                   | {p.relative_to(new).as_posix() for p in new.rglob("*") if p.is_file()})
    files, diffs, added = {}, [], []
    for name in names:
        a, b = old / name, new / name
        if not a.exists() or not b.exists():
            files[name] = "only in " + ("new" if not a.exists() else "old")
            diffs.append(f"{name}: {files[name]}")
            continue
        if name.endswith(".json") and a.read_bytes() != b.read_bytes():
            try:
                d, n = json_diff(normalised(json.loads(a.read_text()), roots),
                                 normalised(json.loads(b.read_text()), roots))
            except json.JSONDecodeError:
                d, n = [f"{name}: bytes differ"], []
            files[name] = "same (normalised)" if not d else "differs"
            diffs += [f"{name}: {x}" for x in d]
            added += [f"{name}: {x}" for x in n]
        else:
            same = a.stat().st_size == b.stat().st_size and sha256(a) == sha256(b)
            files[name] = "identical bytes" if same else "differs"
            if not same:
                diffs.append(f"{name}: bytes differ")
    return with_split({"identical": not diffs, "files": files, "differences": diffs, "added_keys": added})


def weights_diff(old: Path, new: Path) -> dict:
    from safetensors.numpy import load_file

    x, y = load_file(old / "model.safetensors"), load_file(new / "model.safetensors")
    if sorted(x) != sorted(y) or any(x[k].shape != y[k].shape for k in x):
        return {"same_tensors": False}
    return {"same_tensors": True, "tensors": len(x),
            "max_abs_diff": max(float(abs(x[k].astype("float64") - y[k].astype("float64")).max()) for k in x),
            "all_equal": all((x[k] == y[k]).all() for k in x)}


def onnx_logits(old: Path, new: Path) -> dict:
    import numpy as np
    import onnxruntime as ort

    vocab = min(len(json.loads((p / "tokenizer.json").read_text())["model"]["vocab"]) for p in (old, new))
    ids = np.random.default_rng(1).integers(min(100, vocab - 1), vocab, (4, 64))  # a pruned vocabulary is smaller
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    out = {}
    for name, path in (("old", old), ("new", new)):
        session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
        out[name] = session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]
    return {"max_abs_logit_diff": float(np.abs(out["old"] - out["new"]).max()),
            "identical": bool((out["old"] == out["new"]).all())}


def same_json(old: Path, new: Path, roots: list[str]) -> dict:
    d, n = json_diff(normalised(json.loads(old.read_text()), roots), normalised(json.loads(new.read_text()), roots))
    return with_split({"identical": not d, "differences": d, "added_keys": n})


def minilm(step: Step, data: Path) -> None:
    csv, held = data / "minilm.csv", data / "heldout.json"
    step("finetune", ["finetune", "minilm", "--data", csv, "--out", "teacher", "--epochs", 1,
                      "--max-train-examples", 256, "--max-length", 64, "--json", "finetune.json"])
    step("prune", ["prune", "teacher", "--data", csv, "--out", "student", "--layers", 4, "--heads", 0.5,
                   "--ffn", 0.125, "--vocab", "--importance-examples", 128, "--json", "prune.json"])
    step("distill", ["distill", "--teacher", "teacher", "--student", "student", "--data", csv, "--out", "distilled",
                     "--epochs", 1, "--gamma", 1.0, "--augment", 1, "--json", "distill.json"])
    step("export", ["export", "distilled", "--out", "bundle", "--json", "export.json"])
    step("quantize dynamic-int8", ["quantize", "bundle", "--method", "dynamic-int8", "--out", "int8",
                                   "--json", "quantize-int8.json"])
    step("quantize int4-weight", ["quantize", "bundle", "--method", "int4-weight", "--out", "int4",
                                  "--json", "quantize-int4.json"])
    texts = json.loads(held.read_text())["texts"][:16]
    for bundle in ("bundle", "int8", "int4"):
        step(f"predict {bundle}", ["predict", bundle, *texts, "--json", f"predict-{bundle}.json"])


def smollm2(step: Step, data: Path, new_tokens: int) -> None:
    step("export smollm2", ["export", "smollm2", "--out", "llm", "--json", "export-llm.json"])
    step("quantize int4-weight (llm)", ["quantize", "llm", "--method", "int4-weight", "--accuracy-level", 4,
                                        "--out", "llm-int4", "--no-eval", "--json", "quantize-llm.json"])
    for i, prompt in enumerate(PROMPTS):
        step(f"generate {i}", ["generate", "llm-int4", prompt, "--max-new-tokens", new_tokens,
                               "--json", f"generate-{i}.json"])
    step("greedy token ids", ["llm-int4", "tokens.json", json.dumps(PROMPTS), new_tokens], code=TOKENS)


def router(step: Step, data: Path) -> None:
    shutil.copytree(step.root / "llm-int4", step.root / "device")  # calibrate writes router.json into the bundle
    step("route calibrate", ["route", "calibrate", "--device", "device", "--cloud", "llm", "--data",
                             data / "router.csv", "--policy", "budget", "--budget", 0.3, "--signal", ROUTER_SIGNAL,
                             "--prompt", data / "prompt.yaml", "--json", "calibrate.json"])
    step("router decisions", ["device", "decisions.json", data / "heldout.json"], code=DECISIONS)


def compare(work: Path, parts: set[str]) -> dict:
    old, new = work / "old", work / "new"
    roots = [str(old), str(new)]
    result: dict = {}
    if "minilm" in parts:
        m = {}
        for name in ("teacher", "student", "distilled"):
            m[name] = {"files": compare_dirs(old / name, new / name, roots),
                       "weights": weights_diff(old / name, new / name)}
        for name in ("bundle", "int8", "int4"):
            m[name] = {"files": compare_dirs(old / name, new / name, roots)}
        m["bundle"]["logits"] = onnx_logits(old / "bundle", new / "bundle")
        m["int8"]["logits"] = onnx_logits(old / "int8", new / "int8")
        m["int4"]["logits"] = onnx_logits(old / "int4", new / "int4")
        for name in ("finetune", "prune", "distill", "export", "quantize-int8", "quantize-int4",
                     "predict-bundle", "predict-int8", "predict-int4"):
            m[f"{name}.json"] = same_json(old / f"{name}.json", new / f"{name}.json", roots)
        result["minilm"] = m
    if "smollm2" in parts:
        s = {"llm": {"files": compare_dirs(old / "llm", new / "llm", roots)},
             "llm-int4": {"files": compare_dirs(old / "llm-int4", new / "llm-int4", roots)}}
        s["int4_model_onnx_identical"] = sha256(old / "llm-int4" / "model.onnx") == sha256(new / "llm-int4" / "model.onnx")
        s["int4_model_onnx_sha256"] = sha256(old / "llm-int4" / "model.onnx")
        tokens = {n: json.loads((work / n / "tokens.json").read_text()) for n in ("old", "new")}
        s["greedy"] = {"prompts": len(PROMPTS),
                       "token_ids_identical": [a["token_ids"] == b["token_ids"] for a, b in zip(tokens["old"], tokens["new"])],
                       "logprobs_identical": [a["logprobs"] == b["logprobs"] for a, b in zip(tokens["old"], tokens["new"])],
                       "texts": [a["text"] for a in tokens["old"]]}
        for i in range(len(PROMPTS)):
            s[f"generate-{i}.json"] = same_json(old / f"generate-{i}.json", new / f"generate-{i}.json", roots)
        result["smollm2"] = s
    if "router" in parts:
        routers = {n: json.loads((work / n / "device" / "router.json").read_text()) for n in ("old", "new")}
        decisions = {n: json.loads((work / n / "decisions.json").read_text()) for n in ("old", "new")}
        d_old, d_new = decisions["old"], decisions["new"]
        result["router"] = {
            "router.json": same_json(old / "device" / "router.json", new / "device" / "router.json", roots),
            "threshold": {n: r["threshold"] for n, r in routers.items()},
            "temperature": {n: r["temperature"] for n, r in routers.items()},
            "bias": {n: r["bias"] for n, r in routers.items()},
            "device_bundle": compare_dirs(old / "device", new / "device", roots),
            "heldout": len(d_old["escalate"]),
            "escalated": {n: sum(d["escalate"]) for n, d in decisions.items()},
            "decisions_identical": d_old["escalate"] == d_new["escalate"] and d_old["reasons"] == d_new["reasons"],
            "labels_identical": d_old["labels"] == d_new["labels"],
            "scores_identical": d_old["scores"] == d_new["scores"],
        }
    return result


def claims(result: dict) -> dict:
    """One line per claim of the issue."""
    out = {}
    if "minilm" in result:
        m = result["minilm"]
        out["minilm_weights_bundles_logits_identical"] = all(
            v["identical"] for k, v in m.items() if k.endswith(".json")) and all(
            m[k]["files"]["identical"] for k in ("teacher", "student", "distilled", "bundle", "int8", "int4")) and all(
            m[k]["logits"]["identical"] for k in ("bundle", "int8", "int4"))
    if "smollm2" in result:
        s = result["smollm2"]
        out["smollm2_int4_bytes_identical"] = s["int4_model_onnx_identical"] and s["llm-int4"]["files"]["identical"]
        out["smollm2_fp32_bundle_identical"] = s["llm"]["files"]["identical"]
        out["smollm2_greedy_tokens_identical"] = all(s["greedy"]["token_ids_identical"]) and all(
            s[f"generate-{i}.json"]["identical"] for i in range(len(PROMPTS)))
    if "router" in result:
        r = result["router"]
        out["router_decisions_identical"] = r["decisions_identical"] and r["router.json"]["identical"]
    return out


def relaxed(x):
    """``x`` with every comparison's ``identical`` read as ``identical_apart_from_split_config``."""
    if isinstance(x, dict):
        x = {**x, "identical": x["identical_apart_from_split_config"]} if "identical_apart_from_split_config" in x else x
        return {k: relaxed(v) for k, v in x.items()}
    return x


def verdict(result: dict) -> dict:
    out = claims(result)
    out["identical"] = all(out.values())
    out["apart_from_split_config"] = claims(relaxed(result))
    out["identical_apart_from_split_config"] = all(out["apart_from_split_config"].values())
    return out


def run_steps(work: Path, args, parts: set[str]) -> dict:
    """Both versions' steps, one version after the other (the two never share the cores); their times."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    log = work / "steps.log"
    started = time.perf_counter()
    steps = {}
    for name, src in (("old", args.old_src), ("new", args.new_src)):
        root = work / name
        if root.exists():
            shutil.rmtree(root)
        root.mkdir()
        steps[name] = Step(name, str(Path(src).resolve()), root, log)
    steps["old"]("prepare data", [data, args.minilm_examples, args.router_examples, args.heldout], code=PREPARE)
    (data / "prompt.yaml").write_text(SENTIMENT_PROMPT)
    for step in steps.values():
        if "minilm" in parts:
            minilm(step, data)
        if "smollm2" in parts:
            smollm2(step, data, args.new_tokens)
        if "router" in parts:
            router(step, data)
    return {"old_src": steps["old"].src, "new_src": steps["new"].src, "work": str(work), "parts": sorted(parts),
            "data": {"minilm_examples": args.minilm_examples, "router_examples": args.router_examples,
                     "heldout": args.heldout, "new_tokens": args.new_tokens},
            "seconds": {"total": round(time.perf_counter() - started, 1),
                        **{n: {"total": round(sum(s.seconds.values()), 1), "steps": s.seconds}
                           for n, s in steps.items()}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old-src", required=True, help="src/ of a checkout before the change (c246c74)")
    parser.add_argument("--new-src", default=str(Path(__file__).resolve().parents[1] / "src"),
                        help="src/ of the code after the change (default: this checkout's)")
    parser.add_argument("--parts", default="minilm,smollm2,router", help="comma list of minilm, smollm2, router")
    parser.add_argument("--work", type=Path, help="working folder (default: a new temporary one); kept")
    parser.add_argument("--minilm-examples", type=int, default=800, help="sentiment-movies examples for MiniLM")
    parser.add_argument("--router-examples", type=int, default=300, help="sentiment-movies examples for the router "
                        "(its calibration split is 15%%)")
    parser.add_argument("--heldout", type=int, default=40, help="held-out texts the router decides")
    parser.add_argument("--new-tokens", type=int, default=24, help="greedy tokens per prompt")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--compare-only", action="store_true", help="compare what an earlier run left in --work")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if parts - {"minilm", "smollm2", "router"}:
        parser.error(f"unknown parts: {sorted(parts - {'minilm', 'smollm2', 'router'})}")
    if "router" in parts:
        parts.add("smollm2")  # the router's device and cloud are the SmolLM2 bundles
    if args.compare_only and not args.work:
        parser.error("--compare-only needs --work")
    work = (args.work or Path(tempfile.mkdtemp(prefix="refactor-equivalence-"))).resolve()
    if args.compare_only:
        result = json.loads((work / "run.json").read_text())
    else:
        result = run_steps(work, args, parts)
        (work / "run.json").write_text(json.dumps(result, indent=2))
    result.update(compare(work, parts))
    result["verdict"] = verdict(result)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(json.dumps({"verdict": result["verdict"], "seconds": result["seconds"]}, indent=2))
    problems = [d for part in ("minilm", "smollm2", "router") for d in _differences(result.get(part, {}))]
    for line in problems[:40]:
        print("differs:", line)


def _differences(value, where: str = ""):
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "differences":
                yield from (f"{where}: {d}" for d in inner)
            else:
                yield from _differences(inner, f"{where}/{key}" if where else key)


if __name__ == "__main__":
    main()
