"""`bench` for LLM bundles: time to first token, decode speed against its physical limit, memory, size and
quality on held-out text, with llama.cpp on a GGUF file as the peer, all in one interleaved run.

    from edgeshrink.bench import bench, LLMBenchConfig
    report = bench(["runs/smollm2-fp32", "runs/smollm2-int4"], LLMBenchConfig(peer="smollm2"))

Each candidate runs in its own process (harness.py; llm_worker.py answers). Every cell (threads × prompt
length for time to first token; threads for decode) is timed in ``repeats`` round-robin passes and the
median reported. All candidates get the same token ids (the held-out text's first N tokens; a candidate
whose tokenizer gives other ids is flagged), decode greedily and ignore eos, so each run does the same work
everywhere.

The decode limit is the slower of two floors: FLOPs per token ÷ the measured peak fp32 GEMM rate and
weight bytes read per token ÷ the measured memory bandwidth, both at the run's thread count. Weight
bytes are the bytes of the weights as stored (for INT4: packed nibbles + scales, not the fp32 size):
every initializer counts in full except an embedding table read only by a Gather, of which one row per
token is read. For the GGUF peer: its tensor bytes, the token embedding in full when it is also the LM
head (tied, as in SmolLM2), else one row.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

from edgeshrink import tasks
from edgeshrink.bench.config import LLMBenchConfig
from edgeshrink.bench.harness import machine_info, measure_peaks, round_robin, spawned
from edgeshrink.bench.report import LLM_SCHEMA
from edgeshrink.errors import EdgeshrinkError

_GATHERS = ("Gather", "GatherBlockQuantized")
_WORKER = "edgeshrink.bench.llm_worker"


# -- cost per token --------------------------------------------------------------------------------------
_BITS = {"INT4": 4, "UINT4": 4, "FLOAT4E2M1": 4}


def onnx_weight_bytes_per_token(onnx_path: Path) -> dict:
    """Bytes of the initializers one decode step reads (see the module docstring), and their total."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    consumers: dict[str, list[tuple[str, int]]] = {}
    for node in model.graph.node:
        for slot, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, slot))
    per_token = total = 0
    for init in model.graph.initializer:
        name = TensorProto.DataType.Name(init.data_type)
        bits = _BITS.get(name) or 8 * helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        n_bytes = math.prod(init.dims) * bits // 8
        total += n_bytes
        uses = consumers.get(init.name, [])
        # data (slot 0) or scales/zero points (GatherBlockQuantized slots 2, 3) of a row lookup
        if uses and init.dims and all(op in _GATHERS and slot != 1 for op, slot in uses):
            per_token += n_bytes // init.dims[0]
        else:
            per_token += n_bytes
    return {"weight_bytes_per_token": per_token, "weight_bytes": total}


def gguf_cost(path: Path) -> dict:
    """Weight bytes and FLOPs per decoded token of a GGUF model (llama-style tensor names)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key: str):
        f = reader.fields.get(key)
        if f is None:
            return None
        value = f.parts[f.data[0]]
        return bytes(value).decode() if f.types and f.types[0].name == "STRING" else value.tolist()[0]

    arch = field("general.architecture")
    tensors = {t.name: t for t in reader.tensors}
    tied = "output.weight" not in tensors
    per_token = matmul = 0
    for t in reader.tensors:
        if t.name == "token_embd.weight" and not tied:
            per_token += int(t.n_bytes) // int(t.shape[-1])  # one row read per token
            continue
        per_token += int(t.n_bytes)
        if len(t.shape) == 2:
            matmul += int(t.n_elements)
    layers, heads, width = (field(f"{arch}.{k}") for k in ("block_count", "attention.head_count", "embedding_length"))
    head_dim = field(f"{arch}.attention.key_length") or (width // heads if width and heads else 0)
    types = sorted({t.tensor_type.name for t in reader.tensors if len(t.shape) == 2})
    return {"weight_bytes_per_token": per_token, "weight_bytes": sum(int(t.n_bytes) for t in reader.tensors),
            "flops_per_token": 2 * matmul, "attention_flops_per_context_token": 4 * (layers or 0) * (heads or 0) * head_dim,
            "precision": "+".join(types), "architecture": arch}


def decode_limit(flops_per_token: float, weight_bytes_per_token: float, gflops: float, gbytes_per_s: float) -> dict:
    compute_s = flops_per_token / (gflops * 1e9)
    memory_s = weight_bytes_per_token / (gbytes_per_s * 1e9)
    return {"limit_tokens_per_s": 1 / max(compute_s, memory_s), "bound": "memory" if memory_s >= compute_s else "compute",
            "compute_ms_per_token": compute_s * 1e3, "memory_ms_per_token": memory_s * 1e3}


# -- candidates ------------------------------------------------------------------------------------------
def _bundle_candidate(path: Path) -> dict:
    from edgeshrink.runtime.bundle import read_manifest

    manifest = read_manifest(path, verify=False)
    cost = manifest.get("cost") or {}
    quantization = manifest.get("quantization") or {}
    return {"name": path.name, "path": str(path), "kind": "onnx-bundle",
            "precision": quantization.get("method", "fp32"), "size_bytes": manifest["size_bytes"],
            "context_length": manifest["generation"]["context_length"],
            "parent": (quantization.get("parent") or {}).get("path"),
            "gguf": ((manifest.get("source") or {}).get("record") or {}).get("gguf"),
            "cost": {"flops_per_token": cost.get("flops_per_token"),
                     "attention_flops_per_context_token": cost.get("attention_flops_per_context_token", 0),
                     **onnx_weight_bytes_per_token(path / "model.onnx")}}


def _unique_names(results: list[dict]) -> None:
    """Candidates are keyed by name (timings, quality): two directories both called ``bundle`` (a recipe's
    cache) get their parent's name in front, then a number if that is not enough."""
    names = [r["name"] for r in results]
    for r in results:
        if names.count(r["name"]) > 1:
            r["name"] = f"{Path(r['path']).parent.name}/{r['name']}"
    seen: dict[str, int] = {}
    for r in results:
        seen[r["name"]] = seen.get(r["name"], 0) + 1
        if seen[r["name"]] > 1:
            r["name"] = f"{r['name']}#{seen[r['name']]}"


def resolve_peer(peer: str, bundles: list[dict]) -> tuple[Path | None, str | None]:
    """(GGUF path or None, a note saying why there is no peer). An explicit peer that cannot run is an error."""
    if peer == "none":
        return None, None
    if peer == "auto":
        gguf = next((b["gguf"] for b in bundles if b.get("gguf")), None)
        if gguf is None or not Path(gguf).is_file():
            return None, "no llama.cpp peer: the bundles record no GGUF source (give --peer-gguf PATH)"
        if importlib.util.find_spec("llama_cpp") is None:
            return None, "no llama.cpp peer: llama-cpp-python is not installed (pip install 'edgeshrink[llamacpp]')"
        return Path(gguf), None
    from edgeshrink.models.llm import LLM_PACKAGES

    if peer in LLM_PACKAGES:
        path = Path(LLM_PACKAGES[peer]())
    else:
        path = Path(peer).expanduser()
    if not path.is_file() or path.suffix.lower() != ".gguf":
        raise EdgeshrinkError(f"peer {peer!r} is not a .gguf file (nor a packaged model: {', '.join(LLM_PACKAGES)})")
    if importlib.util.find_spec("llama_cpp") is None:
        raise EdgeshrinkError("the llama.cpp peer needs llama-cpp-python: pip install 'edgeshrink[llamacpp]'")
    return path, None


def _peer_candidate(path: Path) -> dict:
    cost = gguf_cost(path)
    return {"name": "llama.cpp", "path": str(path), "kind": "llama.cpp", "precision": cost.pop("precision"),
            "size_bytes": path.stat().st_size, "context_length": None, "parent": None, "gguf": str(path),
            "cost": cost}


def _prompt_text(config: LLMBenchConfig) -> str:
    """Held-out text long enough for the longest prompt: test documents of the first text set, joined."""
    from edgeshrink.data.lm_text import load_lm_text

    text = load_lm_text(config.texts[0] if config.texts else "bbc-news", "test")
    chars = 8 * max(config.prompt_tokens + [config.decode_prompt])  # a token is < 8 characters here
    pieces, size = [], 0
    for doc in text.texts:
        pieces.append(doc)
        size += len(doc)
        if size > chars:
            break
    return "\n\n".join(pieces)


# -- the run -------------------------------------------------------------------------------------------
def bench_llm(candidates: list[str | Path], config: LLMBenchConfig, *, data=None, progress) -> dict:
    """Benchmark language-model bundles (and the llama.cpp peer, see ``config.peer``) of one task (see
    ``edgeshrink.bench.bench``); return the report dict."""
    if data is not None:
        raise EdgeshrinkError("the language-model bench scores the held-out texts of its config (texts), not data")
    task = tasks.of_bundle(candidates[0])
    results = [_bundle_candidate(Path(c)) for c in candidates]
    _unique_names(results)
    peer_path, note = resolve_peer(config.peer, results)
    notes = [note] if note else []
    if peer_path is not None:
        results.append(_peer_candidate(peer_path))
    need = max(max(config.prompt_tokens) + 1, config.decode_prompt + config.new_tokens)
    for r in results:
        if r["context_length"] is not None and need > r["context_length"]:
            raise EdgeshrinkError(f"candidate {r['path']} has a context of {r['context_length']} tokens; this bench "
                                  f"needs {need} (prompt + new tokens)")
    progress("measuring peak GEMM and memory bandwidth")
    peaks = measure_peaks(config.threads, bandwidth=True)

    text = _prompt_text(config)
    lengths = sorted(set(config.prompt_tokens) | {config.decode_prompt})
    context = 1 << math.ceil(math.log2(need))
    specs = [(r["path"], f"{_WORKER}:LlamaCppLM", {"path": r["path"], "context": context}) if r["kind"] == "llama.cpp"
             else (r["path"], f"{_WORKER}:BundleLM", {"path": r["path"]}) for r in results]
    with spawned(specs, progress) as workers:
        prompts = [w.call("prompt", text, lengths) for w in workers]
        for r, p in zip(results, prompts):
            r["same_prompt_ids_as_first"] = all(p[n] == prompts[0][n] for n in lengths)
        cells = [(t, "ttft", n) for t in config.threads for n in config.prompt_tokens] + \
                [(t, "decode", config.decode_prompt) for t in config.threads]
        cells.sort(key=lambda c: c[0])  # each worker switches thread count once
        progress("timing", total=len(cells))
        timings: dict[tuple, list[list]] = {}
        for threads, what, n in cells:
            args = (threads, n) if what == "ttft" else (threads, n, config.new_tokens)
            timings[(threads, what, n)] = round_robin(workers, what, args, passes=config.repeats,
                                                      warmup=[args] * config.warmup_runs)
            progress("timing", advance=1)
        for w, r in zip(workers, results):
            final = w.close()
            r["peak_rss_bytes"] = int(final["peak_rss_bytes"])
            r["torch_imported"] = final["torch_imported"]

    _add_timings(results, timings, config, peaks)
    reference = None
    if config.quality and config.texts:
        reference = _add_quality(results, config, progress, notes, task)
    return {"schema": LLM_SCHEMA, "machine": machine_info(), **peaks, "config": config.to_dict(),
            "reference": reference, "notes": notes, "candidates": results}


def _add_timings(results, timings, config: LLMBenchConfig, peaks) -> None:
    peer = next((i for i, r in enumerate(results) if r["kind"] == "llama.cpp"), None)
    for i, r in enumerate(results):
        r["ttft"], r["decode"] = [], []
        cost = r["cost"]
        for (threads, what, n), samples in timings.items():
            mine, theirs = samples[i], samples[peer] if peer is not None else None
            gflops, gbytes_per_s = (peaks[k][str(threads)] for k in ("peak_gemm_gflops", "memory_bandwidth_gbps"))
            if what == "ttft":
                ms = float(np.median(mine)) * 1e3
                row = {"threads": threads, "prompt_tokens": n, "median_ms": ms, "min_ms": min(mine) * 1e3,
                       "max_ms": max(mine) * 1e3, "n": len(mine)}
                if cost.get("flops_per_token"):  # prefill is compute-bound: N tokens of FLOPs at the peak rate
                    flops = n * cost["flops_per_token"] + cost["attention_flops_per_context_token"] * n * n / 2
                    row["limit_ms"] = flops / (gflops * 1e9) * 1e3
                if theirs is not None:
                    # device ÷ llama.cpp, as every TTFT ratio is written (< 1: the device answers sooner)
                    row["time_vs_peer"] = ms / (float(np.median(theirs)) * 1e3)
                r["ttft"].append(row)
            else:
                rates = [s["tokens_per_s"] for s in mine]
                rate = float(np.median(rates))
                row = {"threads": threads, "prompt_tokens": n, "new_tokens": config.new_tokens, "tokens_per_s": rate,
                       "min_tokens_per_s": min(rates), "max_tokens_per_s": max(rates), "n": len(rates),
                       "same_tokens_as_first": _common_prefix(mine[0]["tokens"], samples[0][0]["tokens"])}
                if cost.get("flops_per_token"):
                    context = n + config.new_tokens / 2  # mean tokens already in the cache during the run
                    flops = cost["flops_per_token"] + cost["attention_flops_per_context_token"] * context
                    row.update(flops_per_token=flops, weight_bytes_per_token=cost["weight_bytes_per_token"],
                               **decode_limit(flops, cost["weight_bytes_per_token"], gflops, gbytes_per_s))
                    row["fraction_of_limit"] = rate / row["limit_tokens_per_s"]
                if theirs is not None:
                    row["vs_peer"] = rate / float(np.median([s["tokens_per_s"] for s in theirs]))
                r["decode"].append(row)


def _common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _of_task(path: str | Path, task) -> bool:
    """A bundle of the candidates' task (a reference is scored as they are)."""
    try:
        return tasks.of_bundle(path) is task
    except EdgeshrinkError:
        return False


def _reference(results: list[dict], config: LLMBenchConfig, task) -> tuple[str | None, Path | None]:
    """(name of the reference among the candidates or None, path of a reference to load for quality only)."""
    if config.reference is not None:
        path = Path(config.reference)
        for r in results:
            if r["kind"] == "onnx-bundle" and Path(r["path"]).resolve() == path.resolve():
                return r["name"], None
        if not _of_task(path, task):
            raise EdgeshrinkError(f"reference {path} is not a {task.name} bundle like the candidates")
        return "reference", path
    for r in results:
        if r["kind"] == "onnx-bundle" and r["precision"] == "fp32":
            return r["name"], None
    parent = next((r["parent"] for r in results if r.get("parent")), None)
    if parent and _of_task(parent, task):
        return "reference", Path(parent)
    return None, None


def _add_quality(results, config: LLMBenchConfig, progress, notes, task) -> dict | None:
    from edgeshrink.compress.lm_eval import score_windows, text_windows
    from edgeshrink.data.lm_text import load_lm_text
    from edgeshrink.runtime.generate import Generator

    ref_name, ref_path = _reference(results, config, task)
    bundles = {r["name"]: r["path"] for r in results if r["kind"] == "onnx-bundle"}
    if ref_path is not None:
        bundles["reference"] = ref_path
    generators = {name: Generator(path, threads=config.quality_threads, verify=False) for name, path in bundles.items()}
    models = {name: g.logits for name, g in generators.items()}
    tokenizer = next(iter(generators.values())).tokenizer
    peer = next((r for r in results if r["kind"] == "llama.cpp"), None)
    llama = None
    if peer is not None:
        llama = _LlamaLogits(peer["path"], config, tokenizer)
        if llama.vocab_matches:
            models[peer["name"]] = llama
        else:
            notes.append(f"{peer['name']}: not scored on text, its vocabulary differs from the bundles'")
    scores_by_text = {}
    for source in config.texts:
        text = load_lm_text(source, "test")
        windows = text_windows(tokenizer, text, config.windows, config.window_tokens)
        progress(f"scoring {len(windows)} windows of {text.name} (test)")
        scores_by_text[text.name] = (text, score_windows(models, windows, ref_name, progress=None))
    for r in results:
        if r["name"] in models:
            r["quality"] = {name: {**scores[r["name"]], "part": "test", "split_sha256": text.split["sha256"]}
                            for name, (text, scores) in scores_by_text.items()}
    if ref_name is None:
        notes.append("no fp32 reference among the candidates (nor a recorded quantization parent): top-1 agreement, "
                     "KL and answer agreement are not measured")
        return None
    answers = _add_answers(results, config, generators, ref_name, progress, notes)
    return {"name": ref_name, "path": str(ref_path) if ref_path else next(r["path"] for r in results
                                                                         if r["name"] == ref_name),
            "answers": answers}


def _add_answers(results, config: LLMBenchConfig, generators: dict, ref_name: str, progress, notes) -> dict | None:
    """Each bundle's greedy chat answers against the reference's (compress/answers.py), with and without the
    runtime's default penalties: ``answers`` of each candidate."""
    from edgeshrink.compress.answers import FACTS, answer_prompts, compare_answers

    if not config.answers:
        return None
    if any(g.chat_template is None for g in generators.values()):
        notes.append("answers: not compared, a bundle has no chat template")
        return None
    try:
        prompts = answer_prompts(config.answer_data, "test", config.answers)
    except EdgeshrinkError as exc:  # the prompt set cannot be read here (its package is not installed): say so
        notes.append(f"answers: not compared: {exc}")
        return None
    progress(f"answering {len(prompts)} prompts of {config.answer_data} (test) with {len(generators)} bundles")
    report = compare_answers(generators, ref_name, prompts, config.answer_tokens, progress=progress)
    for r in results:
        if r["name"] in report["models"]:
            r["answers"] = report["models"][r["name"]]
    return {"data": config.answer_data, "part": "test", "prompts": len(prompts), "facts": min(len(prompts), len(FACTS)),
            "answer_tokens": config.answer_tokens, "settings": report["settings"]}


class _LlamaLogits:
    """llama.cpp logits at every position of a window (logits_all), for the quality scores."""

    def __init__(self, path: str, config: LLMBenchConfig, tokenizer):
        from llama_cpp import Llama

        n_ctx = config.window_tokens + 8
        self.llm = Llama(model_path=path, n_threads=config.quality_threads, n_threads_batch=config.quality_threads,
                         n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False)
        self.vocab_matches = self.llm.n_vocab() == tokenizer.get_vocab_size()

    def __call__(self, ids: list[int]) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(ids)
        return np.array(self.llm.scores[:len(ids)])
