"""INT4 weights off any GGUF grid, chosen on calibration activations: an importance-weighted search per block.

    docs = calibration_tokens(bundle, manifest, "bbc-news", config)      # refuses text too short for the search
    importance = channel_importance(bundle / "model.onnx", work, docs, ["/model/layers.0/attn/q_proj/MatMul_input"])
    grid, report = search_grid("q_proj", weight.T, importance[name], bits=4, block_size=32)

The fp32 bundle runs on calibration documents (never the test split) with the input of every MatMul as an
extra output; each input channel k gets the importance ``imp_k = mean(x_k²)``, the diagonal of XᵀX/T as in
llama.cpp's importance matrix. Each block of ``block_size`` weights along K then gets an asymmetric grid
``ŵ = s·(q − z)`` with uint4 codes ``q``, an INTEGER zero point ``z`` (0..15) and a float scale ``s``: the
pair that minimises ``Σ_k imp_k (w_k − ŵ_k)²`` among candidates (min/max ranges widened and narrowed, each
with its weighted least-squares scale refit). Both round-to-nearest pairs (ORT's symmetric one and the
asymmetric min/max one) are among the candidates, so the search is never worse than either in that objective.
Integer zero points keep MatMulNBits on ONNX Runtime's fast pre-packed path (float zero points run ~57x slower)
and need no separate offset term.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeshrink.compress.quantize.gguf_grid import Grid
from edgeshrink.errors import EdgeshrinkError

MIN_CALIBRATION_TOKENS = 64  # fewer and a channel's mean x² is off by more than ~18% (one s.d., Gaussian x)
CANDIDATE_DIVISORS = np.linspace(-1.0, 4.0, 21)  # s = range / (2^bits − 1 + δ): wider (δ < 0) to clipped (δ > 0)
ROWS_PER_CHUNK = 2048  # rows searched at once: bounds the temporaries of a large table (the embedding)


def calibration_tokens(bundle: Path, manifest: dict, data, config) -> tuple[list[list[int]], dict]:
    """Token ids of the calibration documents the search uses, and their record; refuses text too short.

    Documents come from the calibration part of ``data``; those the manifest's evaluation scores (the first
    ``max_eval_examples``) come last, so the figures are measured on other text wherever the part is large
    enough, and the record says how many were shared."""
    from edgeshrink.data.lm_text import load_lm_text
    from edgeshrink.runtime.bundle import bundle_file
    from edgeshrink.runtime.predictor import load_tokenizer

    text = load_lm_text(data, "calibration")
    tokenizer = load_tokenizer(bundle_file(bundle, manifest, manifest["tokenizer"]["file"]))
    scored = min(config.max_eval_examples, len(text)) if config.evaluate else 0
    order = list(range(scored, len(text))) + list(range(scored))
    length = min(config.calibration_tokens, int(manifest["generation"]["context_length"]))  # the graph's own limit
    docs, used = [], []
    for number in order:
        if len(docs) == config.calibration_documents:
            break
        ids = tokenizer.encode(text.texts[number]).ids[:length]
        if ids:
            docs.append(ids)
            used.append(number)
    tokens = sum(map(len, docs))
    if tokens < MIN_CALIBRATION_TOKENS:
        raise EdgeshrinkError(f"--grid calibrated: the calibration part of {text.name!r} gives {tokens} tokens, the "
                              f"search needs at least {MIN_CALIBRATION_TOKENS}: give more text (--data) or --grid rtn")
    return docs, {"data": text.name, "part": "calibration", "split_sha256": text.split["sha256"],
                  "documents": len(docs), "tokens": tokens, "tokens_per_document": length,
                  "shared_with_evaluation": sum(number < scored for number in used)}


def channel_importance(model_path: Path, work: Path, docs: list[list[int]], names: list[str],
                       progress=None) -> dict[str, np.ndarray]:
    """``mean(x_k²)`` per input channel of each tensor in ``names`` (MatMul inputs), over every position of
    ``docs`` run through the fp32 graph (one prefill pass per document, an empty KV cache)."""
    import onnx

    from edgeshrink.runtime.bundle import open_session

    progress = progress or (lambda *_: None)
    model = onnx.load(str(model_path))
    graph_inputs = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    wanted = [n for n in dict.fromkeys(names) if n not in graph_inputs]
    for name in wanted:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    augmented = work / "calibrate.onnx"
    onnx.save(model, str(augmented), save_as_external_data=True, location=augmented.name + ".data")
    del model
    session = open_session(augmented)
    inputs = {i.name: i for i in session.get_inputs()}
    sums: dict[str, np.ndarray] = {}
    rows = 0
    for number, ids in enumerate(docs):
        progress(f"calibrating on document {number + 1}/{len(docs)}")
        feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
                 "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
        feeds = {k: v for k, v in feeds.items() if k in inputs}
        for name, meta in inputs.items():
            if name.startswith("past_key_values."):  # an empty cache: batch 1, every other dynamic axis 0
                shape = [1 if isinstance(d, str) and "batch" in d else (0 if isinstance(d, str) else d)
                         for d in meta.shape]
                feeds[name] = np.zeros(shape, np.float16 if meta.type == "tensor(float16)" else np.float32)
        for name, value in zip(wanted, session.run(wanted, feeds)):
            flat = value.reshape(-1, value.shape[-1]).astype(np.float64)
            sums[name] = sums.get(name, 0) + np.square(flat).sum(axis=0)
        rows += len(ids)
    del session
    for path in (augmented, work / (augmented.name + ".data")):
        path.unlink(missing_ok=True)
    return {name: (total / rows).astype(np.float32) for name, total in sums.items()}


def weighted_error(values: np.ndarray, approx: np.ndarray, importance: np.ndarray | None) -> float:
    """Σ imp_k (w − ŵ)² / Σ imp_k w² over a [N, K] matrix: the search's objective, relative."""
    imp = _floored(importance, values.shape[1]).astype(np.float64)
    values = values.astype(np.float64)
    total = float((np.square(values) * imp).sum()) or 1.0
    return float((np.square(values - approx) * imp).sum()) / total


def _floored(importance: np.ndarray | None, k: int) -> np.ndarray:
    """The importances the objective weighs by: all 1 when None; a silent channel still counts a little."""
    imp = np.ones(k, np.float32) if importance is None else np.asarray(importance, np.float32)
    return imp + np.float32(1e-6 * (float(imp.mean()) or 1.0))


def rtn_pairs(blocks: np.ndarray, bits: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (scale, zero point) pairs of round-to-nearest per block: ORT's symmetric one (the signed value of
    largest magnitude onto −2^(bits−1), zero point 2^(bits−1)) and the asymmetric min/max one (round_to_grid's)."""
    top, half = (1 << bits) - 1, 1 << (bits - 1)
    picked = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    symmetric = ((picked / -half).astype(np.float32), np.full(picked.shape, half, np.float32))
    low, high = np.minimum(blocks.min(axis=-1), 0), np.maximum(blocks.max(axis=-1), 0)
    scale = ((high - low) / top).astype(np.float32)
    zero = np.clip(np.rint(-low / np.where(scale == 0, 1, scale)), 0, top).astype(np.float32)
    return [symmetric, (scale, zero)]


def _search_rows(blocks: np.ndarray, imp: np.ndarray, bits: int):
    """Best (scale, zero point, codes, error) per block of ``blocks`` [R, nb, bs] under importances [nb, bs]."""
    top = (1 << bits) - 1
    best_err = np.full(blocks.shape[:2], np.inf, np.float32)
    best_scale = np.zeros(blocks.shape[:2], np.float32)
    best_zero = np.zeros(blocks.shape[:2], np.float32)

    def consider(scale, zero):
        safe = np.where(scale == 0, 1, scale)[..., None]
        codes = np.clip(np.rint(blocks / safe) + zero[..., None], 0, top)
        err = (imp * np.square(blocks - scale[..., None] * (codes - zero[..., None]))).sum(axis=-1)
        better = err < best_err
        best_err[better], best_scale[better], best_zero[better] = err[better], scale[better], zero[better]
        return codes

    for scale, zero in rtn_pairs(blocks, bits):
        consider(scale, zero)
    low, high = blocks.min(axis=-1), blocks.max(axis=-1)
    for delta in CANDIDATE_DIVISORS:
        scale = ((high - low) / (top + delta)).astype(np.float32)
        zero = np.clip(np.rint(-low / np.where(scale == 0, 1, scale)), 0, top).astype(np.float32)
        codes = consider(scale, zero)
        # the weighted least-squares scale for these codes and this zero point, then its own nearest codes
        steps = codes - zero[..., None]
        den = (imp * np.square(steps)).sum(axis=-1)
        refit = np.where(den > 0, (imp * blocks * steps).sum(axis=-1) / np.where(den > 0, den, 1), scale)
        consider(refit.astype(np.float32), zero)
    safe = np.where(best_scale == 0, 1, best_scale)[..., None]
    codes = np.clip(np.rint(blocks / safe) + best_zero[..., None], 0, top)
    return best_scale, best_zero, codes


def search_grid(name: str, values: np.ndarray, importance: np.ndarray | None, bits: int = 4,
                block_size: int = 32, qtype: str = "F32") -> tuple[Grid, dict]:
    """``values`` [N, K] on the importance-weighted grid per block of ``block_size`` along K (importance
    [K]; None: all channels alike), and a report: the objective relative to Σ imp·w², and round-to-nearest's."""
    n, k = values.shape
    if k % block_size:
        raise EdgeshrinkError(f"{name}: {k} columns are not a multiple of block size {block_size}")
    nb = k // block_size
    values = np.asarray(values, np.float32)
    if importance is not None and (np.shape(importance) != (k,) or not np.all(np.isfinite(importance))
                                   or np.any(np.asarray(importance) < 0)):
        raise EdgeshrinkError(f"{name}: importances of shape {np.shape(importance)} for {k} input channels, "
                              "or not all finite and >= 0")
    imp = _floored(importance, k).reshape(nb, block_size)
    scales = np.zeros((n, nb), np.float32)
    zeros = np.zeros((n, nb), np.uint8)
    codes = np.zeros((n, k), np.uint8)
    for start in range(0, n, ROWS_PER_CHUNK):
        stop = min(n, start + ROWS_PER_CHUNK)
        s, z, q = _search_rows(values[start:stop].reshape(stop - start, nb, block_size), imp, bits)
        scales[start:stop], zeros[start:stop], codes[start:stop] = s, z.astype(np.uint8), q.reshape(stop - start, k)
    grid = Grid(name, f"{qtype}->calibrated{bits}", bits, block_size, codes, scales, None, values, 0.0, zeros)
    approx = grid.reconstruct()
    grid.max_abs_error = float(np.max(np.abs(approx - values))) if values.size else 0.0
    blocks = values.reshape(n, nb, block_size)
    rtn = min(weighted_error(values, _on_pair(blocks, s, z, bits).reshape(n, k), importance)
              for s, z in rtn_pairs(blocks, bits))
    return grid, {"bits": bits, "block_size": block_size, "weighted_error": weighted_error(values, approx, importance),
                  "rtn_weighted_error": rtn, "max_abs_error": grid.max_abs_error}


def _on_pair(blocks: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """Blocks rounded to nearest on the grid of one (scale, zero point) pair per block."""
    safe = np.where(scale == 0, 1, scale)[..., None]
    codes = np.clip(np.rint(blocks / safe) + zero[..., None], 0, (1 << bits) - 1)
    return scale[..., None] * (codes - zero[..., None])


class Calibration:
    """What keep_gguf_grid asks when weights are off the grid: importances (the fp32 graph run on the
    documents ``docs()`` gives, read only when asked) and the search."""

    def __init__(self, model_path: Path, work: Path, docs, progress=None):
        self.model_path, self.work, self.docs, self.progress = model_path, work, docs, progress

    def importance(self, names: list[str]) -> dict[str, np.ndarray]:
        return channel_importance(self.model_path, self.work, self.docs(), names, self.progress)

    @staticmethod
    def search(name: str, rows: np.ndarray, importance: np.ndarray | None, bits: int, block_size: int):
        return search_grid(name, rows, importance, bits, block_size)
