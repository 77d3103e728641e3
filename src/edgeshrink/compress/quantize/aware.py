"""Quantization-aware healing: train a language model through the INT4 grid ``quantize`` will write, then read
that grid back exactly.

    from edgeshrink.compress.quantize.aware import fake_quantized, bake
    fake_quantized(student, block_size=32)    # every Linear and vocabulary table trains through its INT4 grid
    ...                                        # train (straight-through estimator: gradients reach w unchanged)
    record = bake(student)                     # weights replaced by their grid values; the record says which grid

The grid is the one gguf_grid.py's :func:`round_to_grid` writes for weights on no GGUF grid: 4 bits, blocks of
``block_size`` along the input dimension (MatMulNBits' K; a table's hidden dimension), per block
``low = min(w, 0)``, ``high = max(w, 0)``, ``s = (high − low) / 15`` (1 where 0), integer zero point
``z = clamp(round(−low / s), 0, 15)``, codes ``q = clamp(round(w / s) + z, 0, 15)`` and ``ŵ = s·(q − z)``, in
float32, rounding half to even in both torch and numpy. Including 0 in the range keeps ``z`` within the codes
and makes the grid a fixed point: ŵ read back gives the same codes, so ``quantize`` (grid auto on a bundle whose
manifest has ``source.quantization_aware``) writes those codes through :class:`TrainedGrid`, checks that they
reproduce the weights, and re-rounds nothing.
"""

from __future__ import annotations

import numpy as np

from edgeshrink.compress.quantize.gguf_grid import RELATIVE_TOLERANCE, round_to_grid
from edgeshrink.errors import EdgeshrinkError

BITS = 4
GRID = "min-max integer zero point"  # the record's name for the grid above
REFUSED = "quantization-aware healing asked for a grid that the exporter will not produce"


def fake_quantize(weight, block_size: int, bits: int = BITS):
    """``weight`` [N, K] as the grid values ŵ in its forward pass and as itself in its backward pass (STE)."""
    import torch

    with torch.no_grad():
        n, k = weight.shape
        blocks = weight.detach().float().reshape(n, k // block_size, block_size)
        low = blocks.amin(dim=2).clamp_max(0)
        high = blocks.amax(dim=2).clamp_min(0)
        top = (1 << bits) - 1
        scale = (high - low) / top
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero = torch.clamp(torch.round(-low / safe), 0, top)
        codes = torch.clamp(torch.round(blocks / safe[..., None]) + zero[..., None], 0, top)
        # A block's maximum takes the top code. fp32 rounding can land it on top − 1 where it is a tie between the
        # two, and a grid read back from the values' min/max would then not be the one trained.
        codes = torch.where((blocks == high[..., None]) & (high[..., None] > 0), float(top), codes)
        grid = (scale[..., None] * (codes - zero[..., None])).reshape(n, k).to(weight.dtype)
    return weight + (grid - weight).detach()


def _through_grid(block_size: int):
    """A parametrization (torch.nn.utils.parametrize) that reads a weight through its INT4 grid."""
    import torch

    class ThroughGrid(torch.nn.Module):
        def forward(self, weight):
            return fake_quantize(weight, block_size)

    return ThroughGrid()


def quantized_weights(net) -> dict:
    """The modules whose weights the INT4 step writes as MatMulNBits / GatherBlockQuantized: every Linear and
    every vocabulary table (a tied LM head is the embedding's own table), by name."""
    import torch

    return {name: module for name, module in net.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding))}


def check_student(net, block_size: int) -> None:
    """Refuse, in one line, a student whose INT4 grid the exporter would not write: a weight matrix held by a
    module that does not export as a MatMul or a Gather (a GPT-2 Conv1D), or one whose inputs are not whole
    blocks."""
    import torch

    weights = quantized_weights(net)
    for name, module in net.named_modules():
        if name not in weights and any(p.ndim == 2 for p in module.parameters(recurse=False)):
            raise EdgeshrinkError(f"{REFUSED}: {name} ({type(module).__name__}) is not a Linear or an Embedding")
    for name, module in weights.items():
        k = module.weight.shape[1]
        if k % block_size:
            kind = "an embedding of width" if isinstance(module, torch.nn.Embedding) else "a Linear with"
            raise EdgeshrinkError(f"{REFUSED}: {name} is {kind} {k} inputs, not a multiple of the INT4 block "
                                  f"({block_size}); choose a block size that divides it")


def fake_quantized(net, block_size: int, frozen: bool = True, keep_tables: bool = False) -> int:
    """Make ``net`` train through its INT4 grid; return how many weights do. The vocabulary tables, when
    ``frozen`` (not trained), are put on the grid once instead, or, with ``keep_tables``, left as they are: a
    frozen table that came from a GGUF stays on that GGUF's grid (SmolLM2's is Q8_0), which quantize keeps."""
    import torch
    from torch.nn.utils import parametrize

    check_student(net, block_size)
    tables = {id(m.weight) for m in quantized_weights(net).values() if isinstance(m, torch.nn.Embedding)}
    count = 0
    for name, module in quantized_weights(net).items():
        if frozen and id(module.weight) in tables:  # a tied head shares the parameter: both are put on the grid
            if keep_tables:
                continue
            with torch.no_grad():
                module.weight.copy_(fake_quantize(module.weight, block_size))
        else:
            parametrize.register_parametrization(module, "weight", _through_grid(block_size))
        count += 1
    return count


def bake(net, block_size: int, kept_tables: bool = False) -> dict:
    """Replace every fake-quantized weight by its grid values (the saved checkpoint then lies on the grid the
    INT4 step reads back); return the record ``quantize`` and the bundle manifest carry (``tables: "gguf"``
    when the vocabulary tables were left on their GGUF's grid, see :func:`fake_quantized`)."""
    from torch.nn.utils import parametrize

    for module in quantized_weights(net).values():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return {"bits": BITS, "block_size": block_size, "grid": GRID, **({"tables": "gguf"} if kept_tables else {})}


# --- quantize: reading the trained grid back ------------------------------------------------------------------

class TrainedGrid:
    """What keep_gguf_grid asks of a calibration (``statistics``, ``search``), answered for a model trained
    through its grid: no statistics, and each weight's own codes read back, checked, never searched."""

    def __init__(self, record: dict):
        self.record = record

    def statistics(self, names: list[str]) -> dict:
        return {}

    def search(self, name: str, rows: np.ndarray, hessian, bits: int, block_size: int, lookup: bool = False):
        if (bits, block_size) != (self.record["bits"], self.record["block_size"]):
            trained = f"a {self.record['bits']}-bit grid of blocks of {self.record['block_size']}"
            raise EdgeshrinkError(f"{name} was trained through {trained}; {bits} bits in blocks of {block_size} "
                                  "would re-round it")
        return read_trained_grid(name, rows, bits, block_size)


def read_trained_grid(name: str, rows: np.ndarray, bits: int = BITS, block_size: int = 32):
    """The codes, scales and integer zero points of a weight [N, K] that lies on the grid above, and a record
    line; refuses a weight the grid does not reproduce (a model changed since it was trained)."""
    grid = round_to_grid(name, "F32", np.asarray(rows, np.float32), bits, block_size)
    scale = float(np.max(np.abs(rows))) if rows.size else 0.0
    if grid.max_abs_error > RELATIVE_TOLERANCE * (scale or 1.0):
        raise EdgeshrinkError(f"{name} is not on the INT4 grid it was trained through (max error "
                              f"{grid.max_abs_error:.2e}, max |w| {scale:.2e}): the model changed after "
                              "quantization-aware healing")
    grid.qtype = "trained"
    return grid, {"grid": "trained", "bits": bits, "block_size": block_size, "max_abs_error": grid.max_abs_error}
