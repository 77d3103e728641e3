"""The language model part of ``quantize`` (text-generation bundles): block-wise INT4 weights (MatMulNBits),
the embedding and tied LM head included.

    from edgeshrink.compress import quantize, LLMQuantConfig
    manifest = quantize("runs/smollm2-fp32", "runs/smollm2-int4", LLMQuantConfig(method="int4-weight"))

A bundle imported from a GGUF keeps the GGUF's own integer grid (``grid="auto"``, see gguf_grid.py's
:func:`keep_gguf_grid`). The embedding table and a tied LM head share one quantized table
(GatherBlockQuantized reads MatMulNBits' codes), at the grid's own bits or ``head_bits``. Weights that are on
no GGUF grid get calibrated.py's grid with integer zero points (an importance-weighted search, GPTQ where it
does better), chosen on activations of calibration documents (``grid="auto"`` or ``"calibrated"``;
``"calibrated"`` searches even the weights a GGUF grid would keep); ``grid="rtn"`` sends them through ORT's
round-to-nearest quantizer. The manifest records, on the calibration documents of a text set (default
``bbc-news``; never the test split), the perplexity of the source and of the quantized model and their top-1
agreement (same positions, teacher-forced).

A bundle trained through its INT4 grid (``distill --quantization-aware``, the manifest's
``source.quantization_aware``) gets that grid's codes back exactly (aware.py's :class:`TrainedGrid`,
``grid: "trained"``): nothing is searched or re-rounded, and a grid, block size or head bits that would
re-round it is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeshrink._files import listed_file, sha256_file
from edgeshrink.compress.quantize.aware import TrainedGrid
from edgeshrink.compress.quantize.calibrated import Calibration, calibration_tokens
from edgeshrink.compress.quantize.config import LLMQuantConfig
from edgeshrink.compress.quantize.gguf_grid import keep_gguf_grid
from edgeshrink.compress.quantize.passes import int4_weight, reported
from edgeshrink.errors import EdgeshrinkError

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


def source_gguf(manifest: dict) -> Path | None:
    """The GGUF an LLM bundle was imported from, when its record names one that is still there unchanged."""
    source = manifest.get("source")
    record = source.get("record") if isinstance(source, dict) else None
    if not isinstance(record, dict) or not record.get("gguf"):
        return None
    # The path comes from the (untrusted) manifest: only a regular .gguf file is ever opened, and only used when
    # its hash matches, so a bundle cannot make quantize read anything else.
    path = Path(str(record["gguf"]))
    if path.suffix.lower() != ".gguf" or path.is_symlink() or not path.is_file():
        return None
    return path if sha256_file(path) == record.get("sha256") else None


class DecoderQuantization:
    """The text-generation part of ``quantize``: refusals first (a GGUF asked for and not found), then the
    grid or rounding of the weights, then the perplexity and agreement of both bundles."""

    drops = ("validation",)  # the fp32 export's check against PyTorch does not hold for INT4

    def __init__(self, bundle: Path, manifest: dict, config: LLMQuantConfig, data, progress):
        self.bundle, self.manifest, self.config, self.data, self.progress = bundle, manifest, config, data, progress
        self.trained = trained_grid(bundle, manifest)
        if self.trained:
            _check_trained(bundle, self.trained, config)
        # a model trained through its grid reads the GGUF only for the vocabulary tables it left on the GGUF's grid
        kept_tables = bool(self.trained) and self.trained.get("tables") == "gguf"
        self.gguf = None if config.grid in ("rtn", "calibrated") or (self.trained and not kept_tables) else \
            source_gguf(manifest)
        if kept_tables and self.gguf is None:
            raise EdgeshrinkError(f"{bundle} was trained through its INT4 grid with its vocabulary tables left on its "
                                  "GGUF's grid, and that GGUF is no longer on disk unchanged")
        if config.grid == "gguf" and self.gguf is None:
            raise EdgeshrinkError(f"--grid gguf: {bundle} was not imported from a GGUF that is still on disk unchanged")
        # calibration text is read (and refused when too short) before anything is written; a GGUF-imported
        # model reads it only if some weight turns out to be off its grid
        self.calibration_docs, self.calibration = None, None
        if config.grid != "rtn" and self.gguf is None and not self.trained:
            self.calibration_docs, self.calibration = calibration_tokens(bundle, manifest, data or "bbc-news", config)
        # The model is read where it is (ONNX Runtime is given only copies in the work directory): only listed
        # regular files inside the bundle.
        for name in manifest["files"]:
            if name.startswith("model.onnx"):
                listed_file(bundle, name)

    def run(self, work: Path, model_out: Path) -> dict:
        config, progress, untied = self.config, self.progress, 0
        with reported(f"int4-weight of {self.bundle}", limit=200):
            progress("keeping the GGUF grid" if self.gguf else "the embedding table and LM head")
            if self.trained:  # each weight's own codes, read back
                calibration = TrainedGrid(self.trained)
            elif config.grid == "rtn":
                calibration = None
            else:
                calibration = Calibration(self.bundle / "model.onnx", work, self._calibration_docs, progress,
                                          config.error_feedback)
            grid_report = keep_gguf_grid(self.bundle / "model.onnx", work / "grid.onnx", self.gguf, config, progress,
                                         calibration)
            if grid_report["matmuls_left"]:
                progress("untying the LM head")
                untied = untie_transposed_weights(work / "grid.onnx", work / "untied.onnx")
                progress("quantizing weights to INT4 (round to nearest)")
                int4_weight(work / "untied.onnx", model_out, config, embeddings=False)
            else:  # one file: an INT4 bundle is far below protobuf's 2 GB
                import onnx

                onnx.save(onnx.load(str(work / "grid.onnx")), str(model_out))
        if self.trained:  # every weight read back from the grid it was trained through
            grid_report["trained"] = grid_report.pop("calibrated")
        elif grid_report["calibrated"]:
            grid_report["calibration"] = self.calibration
        grid = "trained" if self.trained else "gguf" if self.gguf else config.grid if config.grid != "auto" else \
            "calibrated"
        return {"grid": grid,
                "untied_lm_heads": untied,
                "format": "MatMulNBits + GatherBlockQuantized",
                "parent": {"path": str(self.bundle.resolve()), "size_bytes": self.manifest["size_bytes"]},
                "gguf_grid": grid_report}

    def _calibration_docs(self) -> list[list[int]]:
        """The calibration documents' token ids, read now if __init__ did not need them (a GGUF model)."""
        if self.calibration_docs is None:
            self.calibration_docs, self.calibration = calibration_tokens(self.bundle, self.manifest,
                                                                         self.data or "bbc-news", self.config)
        return self.calibration_docs

    def evaluate(self, out_dir: Path) -> dict:
        evaluation = compare_on_text(self.bundle, out_dir, self.data or "bbc-news", self.config.max_eval_examples,
                                     self.progress)
        if self.config.answer_prompts:
            evaluation["answers"] = compare_chat_answers(self.bundle, out_dir, self.config, self.progress)
        return evaluation

    @staticmethod
    def describe(manifest: dict, out: Path) -> str:
        """The line the CLI prints."""
        q = manifest["quantization"]
        grid = f"{q.get('grid', 'rtn')} grid"
        calibration = q.get("gguf_grid", {}).get("calibration")
        if calibration:
            grid += f", searched on {calibration['tokens']} tokens of {calibration['data']}"
        line = (f"LLM bundle {out}: {q['method']} ({grid}), {manifest['size_bytes'] / 1e6:.1f} MB = "
                f"{100 * manifest['size_bytes'] / q['parent']['size_bytes']:.1f}% of the source, {q['seconds']:.0f} s")
        ev = q.get("evaluation")
        if ev:
            line += (f"; {ev['data']} calibration ({ev['tokens']} tokens): perplexity {ev['perplexity']:.2f} vs "
                     f"{ev['source_perplexity']:.2f} ({100 * ev['perplexity_change']:+.1f}%), top-1 agreement "
                     f"{100 * ev['top1_agreement']:.1f}%")
        answers = (ev or {}).get("answers")
        if answers and "skipped" in answers:
            line += f"; chat answers not compared: {answers['skipped']}"
        elif answers:
            from edgeshrink.compress.answers import summary

            said, warnings = summary(answers, "quantized")
            line += f"; {answers['prompts']} chat answers vs the source's ({said})"
            line += "".join(f"\nwarning: {w}" for w in warnings)
        return line


def trained_grid(bundle: Path, manifest: dict) -> dict | None:
    """The INT4 grid the bundle's model was trained through (export's ``source.quantization_aware``), or None."""
    source = manifest.get("source")
    trained = source.get("quantization_aware") if isinstance(source, dict) else None
    if trained is None:
        return None
    if not (isinstance(trained, dict) and trained.get("bits") == 4 and trained.get("block_size") in (16, 32, 64, 128)
            and trained.get("tables") in (None, "gguf")):
        raise EdgeshrinkError(f"{bundle}: source.quantization_aware is not a 4-bit grid of blocks of 16/32/64/128")
    return trained


def _check_trained(bundle: Path, trained: dict, config: LLMQuantConfig) -> None:
    """Refuse, before anything is written, what would re-round a model trained through its INT4 grid."""
    said = f"{bundle} was trained through its INT4 grid (quantization-aware healing, blocks of {trained['block_size']})"
    if config.grid != "auto":
        raise EdgeshrinkError(f"{said}; --grid {config.grid} would re-round it: leave --grid auto, which reads its "
                              "codes back")
    if config.block_size != trained["block_size"]:
        raise EdgeshrinkError(f"{said}; --block-size {config.block_size} would re-round it")
    if config.head_bits not in (None, trained["bits"]):
        raise EdgeshrinkError(f"{said}; --head-bits {config.head_bits} would re-round its vocabulary table")


def compare_chat_answers(source: Path, quantized: Path, config: LLMQuantConfig, progress) -> dict:
    """Greedy chat answers of both bundles, with and without the runtime's default penalties (compress/answers.py),
    on the calibration part of ``config.answer_data``."""
    from edgeshrink.compress.answers import answer_prompts, compare_answers
    from edgeshrink.runtime.generate import Generator

    models = {"source": Generator(source, verify=False), "quantized": Generator(quantized, verify=False)}
    if models["source"].chat_template is None:
        return None
    try:
        prompts = answer_prompts(config.answer_data, "calibration", config.answer_prompts)
    except EdgeshrinkError as exc:  # the prompt set cannot be read here: the bundle is made, the record says why
        return {"data": config.answer_data, "skipped": str(exc)}
    report = compare_answers(models, "source", prompts, config.answer_tokens, progress=progress)
    return {"data": config.answer_data, "part": "calibration", **report}


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
