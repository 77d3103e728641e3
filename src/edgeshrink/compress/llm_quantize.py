"""Quantize an LLM bundle: block-wise INT4 weights (MatMulNBits), the embedding and tied LM head included.

    from edgeshrink.compress import quantize, QuantConfig
    manifest = quantize("runs/smollm2-fp32", "runs/smollm2-int4", QuantConfig(method="int4-weight", block_size=32))

A tied LM head is exported as ``MatMul(x, Transpose(embedding))``; ORT's weight-only quantizer needs a
constant weight, so the transposed table is materialized first (untied), then every MatMul becomes
MatMulNBits and the embedding Gather becomes GatherBlockQuantized. The manifest records, on the
calibration documents of a text set (default ``bbc-news``; never the test split), the perplexity of the
source and of the quantized model and their top-1 agreement (same positions, teacher-forced).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgeshrink._files import atomic_output_dir, check_output_dir
from edgeshrink.errors import EdgeshrinkError, first_line
from edgeshrink.runtime.bundle import MANIFEST_NAME

LLM_METHODS = ("int4-weight",)
EVAL_TOKENS = 256  # tokens per calibration document scored (from its start)


def untie_transposed_weights(src: Path, dst: Path) -> int:
    """Replace ``Transpose(initializer) -> MatMul`` by a transposed initializer; return how many were untied."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    untied = 0
    for node in list(graph.node):
        if node.op_type != "Transpose" or node.input[0] not in inits:
            continue
        users = consumers.get(node.output[0], [])
        if not users or any(u.op_type != "MatMul" or list(u.input).index(node.output[0]) != 1 for u in users):
            continue
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
        table = numpy_helper.to_array(inits[node.input[0]])
        transposed = np.ascontiguousarray(table.transpose(perm) if perm else table.T)
        name = node.output[0] + "_untied"
        graph.initializer.append(numpy_helper.from_array(transposed, name))
        for user in users:
            user.input[1] = name
        graph.node.remove(node)
        untied += 1
    onnx.save(model, str(dst), save_as_external_data=True, location=dst.name + ".data")
    return untied


def quantize_llm(bundle: Path, out: Path, config, data=None, force: bool = False, progress=None) -> dict:
    from edgeshrink.compress.evaluate import weight_precisions
    from edgeshrink.compress.methods import int4_weight
    from edgeshrink.export.bundle import write_manifest
    from edgeshrink.runtime.bundle import read_manifest

    progress = progress or (lambda *_: None)
    if config.method not in LLM_METHODS:
        raise EdgeshrinkError(f"an LLM bundle takes {', '.join(LLM_METHODS)}; {config.method!r} is for classifiers")
    source_manifest = read_manifest(bundle, verify=True)
    check_output_dir(out, force)
    with atomic_output_dir(out, force) as tmp:
        for path in bundle.iterdir():
            if path.is_file() and path.name != MANIFEST_NAME and not path.name.startswith("model.onnx"):
                shutil.copy2(path, tmp / path.name)
        work = tmp / "_work"
        work.mkdir()
        started = time.perf_counter()
        progress("untying the LM head")
        untied = untie_transposed_weights(bundle / "model.onnx", work / "untied.onnx")
        progress("quantizing weights to INT4")
        try:
            int4_weight(work / "untied.onnx", tmp / "model.onnx", SimpleNamespace(config=config), embeddings=True)
        except Exception as exc:  # onnxruntime's quantizer raises many types
            raise EdgeshrinkError(f"int4-weight of {bundle} failed: {first_line(exc)}") from None
        shutil.rmtree(work)
        seconds = time.perf_counter() - started
        fields = {k: v for k, v in source_manifest.items()
                  if k not in ("files", "size_bytes", "schema_version", "kind", "edgeshrink_version", "created_at",
                               "created_on", "validation")}
        quantization = {"method": config.method, "config": config.to_dict(), "seconds": round(seconds, 1),
                        "untied_lm_heads": untied, "format": "MatMulNBits + GatherBlockQuantized",
                        "parent": {"path": str(Path(bundle).resolve()), "size_bytes": source_manifest["size_bytes"]},
                        "weights": weight_precisions(tmp / "model.onnx")}
        fields["quantization"] = quantization
        manifest = write_manifest(tmp, fields)
        if config.evaluate:
            quantization["evaluation"] = compare_on_text(bundle, tmp, data or "bbc-news", config.max_eval_examples or 16,
                                                         progress)
            manifest = write_manifest(tmp, fields)
    return manifest


def compare_on_text(source: Path, quantized: Path, data, documents: int, progress) -> dict:
    """Perplexity of both bundles and their top-1 agreement on calibration documents (teacher-forced)."""
    from edgeshrink.data.lm_text import load_lm_text
    from edgeshrink.runtime.generate import Generator, log_softmax

    text = load_lm_text(data, "calibration")
    models = {"source": Generator(source, verify=False), "quantized": Generator(quantized, verify=False)}
    nll = {name: [] for name in models}
    agree = []
    for number, doc in enumerate(text.texts[:documents]):
        progress(f"scoring calibration document {number + 1}/{min(documents, len(text))}")
        ids = models["source"].tokenizer.encode(doc).ids[:EVAL_TOKENS]
        if len(ids) < 2:
            continue
        argmax = {}
        for name, model in models.items():
            logits = model.logits(ids)[:-1]
            nll[name] += [-float(log_softmax(row)[nxt]) for row, nxt in zip(logits, ids[1:])]
            argmax[name] = logits.argmax(axis=1)
        agree += list(argmax["source"] == argmax["quantized"])
    if not agree:
        raise EdgeshrinkError(f"no calibration document of {text.name!r} has 2 tokens to score")
    out = {name: {"perplexity": float(np.exp(np.mean(values))), "tokens": len(values)} for name, values in nll.items()}
    return {"data": text.name, "part": "calibration", "split_sha256": text.split["sha256"],
            "documents": min(documents, len(text)), "tokens_per_document": EVAL_TOKENS,
            "source_perplexity": out["source"]["perplexity"], "perplexity": out["quantized"]["perplexity"],
            "perplexity_change": out["quantized"]["perplexity"] / out["source"]["perplexity"] - 1,
            "top1_agreement": float(np.mean(agree)), "tokens": out["source"]["tokens"]}
