"""Validate an ONNX file against its source model: max-abs-diff of outputs on several input shapes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeshrink.errors import EdgeshrinkError, first_line


def text_inputs(batch: int, seq: int, vocab_size: int, input_names: list[str], rng: np.random.Generator,
                cls_id: int = 101, sep_id: int = 102, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Random token ids with realistic structure: [CLS] ... [SEP], and padding on all rows but the first."""
    ids = rng.integers(min(1000, vocab_size // 2), vocab_size, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    for row in range(batch):
        length = seq if row == 0 else int(rng.integers(max(2, seq // 3), seq + 1))
        ids[row, 0] = cls_id
        ids[row, length - 1] = sep_id
        ids[row, length:] = pad_id
        mask[row, length:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {name: feeds[name] for name in input_names}


def validate_outputs(onnx_path: str, reference: Callable[[dict[str, np.ndarray]], np.ndarray],
                     feeds_list: list[dict[str, np.ndarray]], tolerance: float) -> dict:
    """Run ONNX Runtime and ``reference`` on each feed; raise if any output differs by more than ``tolerance``,
    else return the manifest's ``validation`` entry (tolerance, worst max-abs-diff, ok, each shape's)."""
    import onnxruntime as ort

    from edgeshrink.runtime.bundle import session_options

    session = _one_line("ONNX Runtime cannot load the exported model", ort.InferenceSession, onnx_path,
                        session_options(), providers=["CPUExecutionProvider"])
    output_name = session.get_outputs()[0].name
    per_shape = []
    worst = 0.0
    for feeds in feeds_list:
        shape = list(next(iter(feeds.values())).shape)
        got = _one_line(f"the exported model fails on a validation input of shape {shape}", session.run,
                        [output_name], feeds)[0]
        want = _one_line(f"the source model fails on a validation input of shape {shape}", reference, feeds)
        if got.shape != want.shape:
            raise EdgeshrinkError(f"exported model gives shape {got.shape}, source gives {want.shape}")
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
        worst = max(worst, diff)
        per_shape.append({"shape": shape, "max_abs_diff": diff})
    if not worst <= tolerance:
        shapes = ", ".join(f"{s['shape']}: {s['max_abs_diff']:.2e}" for s in per_shape)
        raise EdgeshrinkError(f"exported model does not match its source: max-abs-diff {worst:.2e} > "
                              f"tolerance {tolerance:.0e} ({shapes})")
    return {"tolerance": tolerance, "max_abs_diff": worst, "ok": True, "per_shape": per_shape}


def _one_line(what: str, run: Callable, *args, **kwargs):
    """``run(*args, **kwargs)``, or one line saying ``what`` failed and why: an input the model cannot take (a position
    past its table) is a fact about the user's model. onnxruntime and torch raise many types."""
    try:
        return run(*args, **kwargs)
    except EdgeshrinkError:
        raise
    except Exception as exc:
        raise EdgeshrinkError(f"{what}: {first_line(exc, 300)}") from None
