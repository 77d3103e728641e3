"""INT4 weights off any GGUF grid, chosen on calibration activations: an importance-weighted search per block,
optionally GPTQ's error feedback where it lowers the layer's output error.

    docs, record = calibration_tokens(bundle, manifest, "bbc-news", config)  # refuses text too short
    stats = channel_statistics(bundle / "model.onnx", work, docs, [matmul.input[0]])
    grid, report = calibrated_grid("q_proj", weight.T, stats[matmul.input[0]], bits=4, block_size=32)

The fp32 bundle runs on calibration documents (never the test split) with the input of every MatMul as an
extra output. Each input channel k gets the importance ``imp_k = mean(x_k²)``, the diagonal of XᵀX/T as in
llama.cpp's importance matrix. Each block of ``block_size`` weights along K then gets an
asymmetric grid ``ŵ = s·(q − z)`` with uint4 codes ``q``, an INTEGER zero point ``z`` (0..15) and a float scale
``s``: the pair that minimises ``Σ_k imp_k (w_k − ŵ_k)²`` among candidates (min/max ranges widened and
narrowed, each with its weighted least-squares scale refit). Both round-to-nearest pairs (ORT's symmetric one
and the asymmetric min/max one) are among the candidates, so the search is never worse than either in that
objective. With ``error_feedback``, GPTQ (the same grid, columns rounded in order with their error fed forward
through H⁻¹, H = XᵀX/T) is then kept for a weight where its output error ``tr(ΔHΔᵀ)`` is lower; it is off by
default because on SmolLM2-135M it measured worse (+17.1% vs +12.6% perplexity on BBC calibration documents). Integer zero points keep MatMulNBits on
ONNX Runtime's fast pre-packed path (float zero points run ~57x slower) with no separate offset term.
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


def channel_statistics(model_path: Path, work: Path, docs: list[list[int]], names: list[str],
                       progress=None, full: bool = False) -> dict[str, np.ndarray]:
    """Each input channel's importance ``mean(x_k²)`` [K] of each tensor in ``names`` (MatMul inputs), over
    every position of ``docs`` run through the fp32 graph (one prefill pass per document, an empty KV cache);
    ``full``: the whole ``H = XᵀX / T`` [K, K] (for GPTQ), whose diagonal that is."""
    import onnx

    from edgeshrink.runtime.bundle import open_session
    from edgeshrink.runtime.generate import prefill_feeds

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
        for name, value in zip(wanted, session.run(wanted, prefill_feeds(inputs, ids))):
            flat = value.reshape(-1, value.shape[-1]).astype(np.float32)
            sums[name] = sums.get(name, 0) + ((flat.T @ flat).astype(np.float64) if full
                                              else np.square(flat.astype(np.float64)).sum(axis=0))
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
    largest magnitude onto −2^(bits−1), zero point 2^(bits−1)) and the asymmetric min/max one
    (round_to_grid's)."""
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


def output_error(values: np.ndarray, approx: np.ndarray, hessian: np.ndarray) -> float:
    """tr(ΔHΔᵀ) / tr(WHWᵀ), Δ = W − Ŵ: the mean squared error of the layer's outputs on the calibration
    activations, relative to the outputs' own energy."""
    h = hessian.astype(np.float64)
    delta, values = (values - approx).astype(np.float64), values.astype(np.float64)
    total = float(((values @ h) * values).sum()) or 1.0  # BLAS: a 3-operand einsum would loop in C, ~100x slower
    return float(((delta @ h) * delta).sum()) / total


def gptq_grid(name: str, values: np.ndarray, hessian: np.ndarray, bits: int = 4, block_size: int = 32,
              qtype: str = "F32", damping: float = 0.01, batch: int = 128) -> Grid:
    """GPTQ (Frantar et al. 2022) onto the same grid: columns rounded in order, each one's error spread onto the
    columns not yet rounded through the Cholesky factor of H⁻¹; each block's (scale, integer zero point) is
    the importance-weighted search's, on the block's weights as updated so far (diag H the importances)."""
    n, k = values.shape
    top = (1 << bits) - 1
    h = hessian.astype(np.float64).copy()
    w = values.astype(np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h[np.diag_indices(k)] += damping * float(np.mean(np.diag(h)))
    from threadpoolctl import threadpool_limits

    try:
        with threadpool_limits(1, user_api="blas"):  # OpenBLAS's threads made these ~20x slower on 2 busy cores
            upper = np.linalg.cholesky(np.linalg.inv(h)).T  # H⁻¹ = UᵀU
    except np.linalg.LinAlgError:
        raise EdgeshrinkError(f"{name}: the calibration activations' XᵀX is not positive definite even damped")
    imp = _floored(np.diag(hessian), k)
    codes = np.zeros((n, k), np.uint8)
    scales = np.zeros((n, k // block_size), np.float32)
    zeros = np.zeros((n, k // block_size), np.float32)
    for start in range(0, k, batch):
        stop = min(k, start + batch)
        part, errors = w[:, start:stop], np.zeros((n, stop - start))
        for i in range(stop - start):
            col = start + i
            j = col // block_size
            if col % block_size == 0:
                group = part[:, i:i + block_size].astype(np.float32)[:, None, :]
                s, z, _ = _search_rows(group, imp[col:col + block_size][None, :], bits)
                scales[:, j], zeros[:, j] = s[:, 0], z[:, 0]
            s, z = scales[:, j].astype(np.float64), zeros[:, j].astype(np.float64)
            q = np.clip(np.rint(part[:, i] / np.where(s == 0, 1, s)) + z, 0, top)
            codes[:, col] = q
            error = (part[:, i] - s * (q - z)) / upper[col, col]
            part[:, i:] -= np.outer(error, upper[col, col:stop])
            errors[:, i] = error
        w[:, stop:] -= errors @ upper[start:stop, stop:]
    grid = Grid(name, f"{qtype}->gptq{bits}", bits, block_size, codes, scales, None, values, 0.0,
                zeros.astype(np.uint8))
    grid.max_abs_error = float(np.max(np.abs(grid.reconstruct() - values))) if values.size else 0.0
    return grid


def calibrated_grid(name: str, values: np.ndarray, statistics: np.ndarray | None, bits: int = 4,
                    block_size: int = 32, error_feedback: bool = True) -> tuple[Grid, dict]:
    """The grid of one weight: the importance-weighted search, or GPTQ's where ``error_feedback`` and the full
    H are given (``statistics`` [K, K]; [K]: the importances alone) and its output error on the calibration
    activations is lower; the report says which and the errors (and round-to-nearest's) in each objective."""
    hessian = statistics if statistics is not None and statistics.ndim == 2 else None
    importance = np.diag(hessian).copy() if hessian is not None else statistics
    grid, report = search_grid(name, values, importance, bits, block_size)
    report["method"] = "search"
    if hessian is None:
        return grid, report
    blocks = values.reshape(values.shape[0], -1, block_size)
    report["output_error"] = output_error(values, grid.reconstruct(), hessian)
    report["rtn_output_error"] = min(output_error(values, _on_pair(blocks, s, z, bits).reshape(values.shape), hessian)
                                     for s, z in rtn_pairs(blocks, bits))
    if error_feedback:
        gptq = gptq_grid(name, values, hessian, bits, block_size)
        gptq_error = output_error(values, gptq.reconstruct(), hessian)
        report["gptq_output_error"] = gptq_error
        if gptq_error < report["output_error"]:
            grid = gptq
            report.update(method="gptq", output_error=gptq_error, max_abs_error=gptq.max_abs_error,
                          weighted_error=weighted_error(values, gptq.reconstruct(), importance))
    return grid, report


def _on_pair(blocks: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """Blocks rounded to nearest on the grid of one (scale, zero point) pair per block."""
    safe = np.where(scale == 0, 1, scale)[..., None]
    codes = np.clip(np.rint(blocks / safe) + zero[..., None], 0, (1 << bits) - 1)
    return scale[..., None] * (codes - zero[..., None])


class Calibration:
    """What keep_gguf_grid asks when weights are off the grid: activation statistics (the fp32 graph run on
    the documents ``docs()`` gives, read only when asked) and the grid of one weight."""

    def __init__(self, model_path: Path, work: Path, docs, progress=None, error_feedback: bool = False):
        self.model_path, self.work, self.docs, self.progress = model_path, work, docs, progress
        self.error_feedback = error_feedback

    def statistics(self, names: list[str]) -> dict[str, np.ndarray]:
        return channel_statistics(self.model_path, self.work, self.docs(), names, self.progress,
                                  full=self.error_feedback)

    def search(self, name: str, rows: np.ndarray, hessian: np.ndarray | None, bits: int, block_size: int,
               lookup: bool = False):
        """``lookup``: the table is also read row by row (a tied embedding): no error feedback, which would
        move each row's error onto its other elements."""
        return calibrated_grid(name, rows, hessian, bits, block_size, self.error_feedback and not lookup)
