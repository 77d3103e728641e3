"""FLOPs per request, counted from the model (torch's FlopCounterMode over one forward pass).

Counted once at export time and stored in the manifest, so the device and `bench` need no torch to
know how much work a request is. Matrix products and convolutions dominate; element-wise ops and
softmax are not counted (a few percent of a transformer's work), so the compute limit derived from
these counts is a slight underestimate of the true work, never an overestimate.
"""

from __future__ import annotations

import numpy as np


def _count(fn) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # On the CPU, scaled-dot-product attention dispatches to an op the counter does not know.
    names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")
    ops = (getattr(torch.ops.aten, name, None) for name in names)
    extra = {op: _sdpa_flop for op in ops if op is not None}
    with FlopCounterMode(display=False, custom_mapping=extra) as counter:
        fn()
    return int(counter.get_total_flops())


def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def text_flops_table(model, max_length: int) -> dict[str, int]:
    """FLOPs of one example (batch 1) at sequence lengths 8, 16, 32, ... up to ``max_length``."""
    import torch

    lengths = sorted({s for s in (8, 16, 32, 64, 128, 256, 512, 1024, 2048) if s <= max_length} | {max_length})
    table = {}
    # no_grad, not inference_mode: the counter's module tracker needs autograd-visible tensors (DeBERTa).
    with torch.no_grad():
        for seq in lengths:
            ids = torch.full((1, seq), 1000 % model.config.vocab_size, dtype=torch.long)
            mask = torch.ones_like(ids)
            table[str(seq)] = _count(lambda: model(input_ids=ids, attention_mask=mask))
    return table


def module_flops(module, example_inputs: tuple) -> int:
    import torch

    with torch.inference_mode():
        return _count(lambda: module(*example_inputs))


def flops_at(table: dict[str, int], seq_len: int | None = None) -> float | None:
    """FLOPs at ``seq_len`` from a manifest's table: exact if counted, else a quadratic fit (a transformer's
    cost is a + b·s + c·s² in the sequence length s)."""
    if not table:
        return None
    if "fixed" in table:
        return float(table["fixed"])
    if seq_len is None:
        return None
    if str(seq_len) in table:
        return float(table[str(seq_len)])
    xs = np.array([int(k) for k in table], dtype=np.float64)
    ys = np.array(list(table.values()), dtype=np.float64)
    coef = np.polyfit(xs, ys, deg=min(2, len(xs) - 1))
    return float(np.polyval(coef, seq_len))
