"""The integer grid a GGUF stores, read back block by block, so an INT4 bundle can keep it instead of re-rounding.

A model imported from a GGUF carries fp32 weights that lie exactly on the file's quantization grid:
per sub-block ``w = a·q + b`` with integer codes ``q`` (Q4_1: ``a = d``, ``b = m``; Q4_K: ``a = d·sc``,
``b = −dmin·m``; Q8_0: ``a = d``, ``b = 0``; Q6_K: ``a = d·sc``, ``b = −32·a``). Re-quantizing those fp32
weights with round-to-nearest puts them on a different grid and costs quality for nothing; reading the
codes back keeps the model the user imported.

One table describes each block format: its size, the byte ranges that hold codes and how to fill them
to read ``b`` (codes 0) and ``a + b`` (codes 1) through gguf-py's own dequantizer. The codes of every
element then follow from ``q = round((w − b) / a)``, and :func:`read_grid` checks that ``a·q + b``
reproduces gguf-py's dequantized tensor before anything uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeshrink.errors import EdgeshrinkError

RELATIVE_TOLERANCE = 1e-5  # |a·q + b − w| ≤ this × max|w| of the tensor (fp32 rounding of a and b)


@dataclass(frozen=True)
class BlockFormat:
    elements: int  # elements per stored block
    sub_block: int  # elements sharing one (a, b)
    code_bits: int  # bits of a code as stored
    codes: tuple[tuple[int, int, int], ...]  # (start, stop, byte that makes every code 1) per code byte range


# ggml block layouts (ggml-common.h): which bytes of a block are codes.
FORMATS = {
    "Q4_0": BlockFormat(32, 32, 4, ((2, 18, 0x11),)),
    "Q4_1": BlockFormat(32, 32, 4, ((4, 20, 0x11),)),
    "Q5_0": BlockFormat(32, 32, 5, ((2, 6, 0x00), (6, 22, 0x11))),
    "Q5_1": BlockFormat(32, 32, 5, ((4, 8, 0x00), (8, 24, 0x11))),
    "Q8_0": BlockFormat(32, 32, 8, ((2, 34, 0x01),)),
    "Q4_K": BlockFormat(256, 32, 4, ((16, 144, 0x11),)),
    "Q5_K": BlockFormat(256, 32, 5, ((16, 48, 0x00), (48, 176, 0x11))),
    "Q6_K": BlockFormat(256, 16, 6, ((0, 128, 0x11), (128, 192, 0x00))),
}


@dataclass
class Grid:
    """One GGUF tensor as ``w[n, k] = scale[n, j] · (codes[n, k] − zero) + offset[n, j]`` for sub-block j of row n.

    ``codes`` are unsigned and fit ``bits`` (4 or 8); ``zero`` is MatMulNBits' default zero point
    2^(bits−1). ``offset`` is None when the format is symmetric on that grid (Q4_0, Q8_0, Q5_0, Q6_K): then
    ONNX Runtime's integer kernels reproduce the tensor alone; otherwise (Q4_1, Q4_K, Q5_1, Q5_K: a float
    minimum per sub-block) the offset is added back as ``Σ_j offset[n, j] · Σ_{k∈j} x_k``.
    """

    name: str
    qtype: str
    bits: int
    block_size: int
    codes: np.ndarray  # uint8 [N, K]
    scale: np.ndarray  # float32 [N, K / block_size]
    minimum: np.ndarray | None  # float32 [N, K / block_size]: b of w = a·q + b, kept as the file stores it
    values: np.ndarray  # float32 [N, K]: gguf-py's dequantized tensor (what the fp32 import holds)
    max_abs_error: float
    zero_points: np.ndarray | None = None  # uint8 [N, K / block_size]: per-block zero points (re-rounded grids)

    @property
    def zero(self) -> int:
        return 1 << (self.bits - 1)

    @property
    def offset(self) -> np.ndarray | None:
        """What MatMulNBits with default zero points leaves out: scale·zero + minimum per sub-block."""
        return None if self.minimum is None else (self.scale * np.float32(self.zero) + self.minimum).astype(np.float32)

    def packed_zero_points(self) -> np.ndarray | None:
        """Zero points in MatMulNBits' layout: uint8 [N, ceil(blocks·bits/8)], low nibble first for 4 bits."""
        if self.zero_points is None or self.bits == 8:
            return self.zero_points
        z = self.zero_points
        if z.shape[1] % 2:
            z = np.concatenate([z, np.zeros((z.shape[0], 1), np.uint8)], axis=1)
        return np.ascontiguousarray(z[:, 0::2] | (z[:, 1::2] << 4))

    def packed(self) -> np.ndarray:
        """Codes in MatMulNBits' layout: uint8 [N, blocks, block_size·bits/8], low nibble first."""
        n, k = self.codes.shape
        codes = self.codes.reshape(n, k // self.block_size, self.block_size)
        if self.bits == 8:
            return np.ascontiguousarray(codes)
        return np.ascontiguousarray(codes[..., 0::2] | (codes[..., 1::2] << 4))

    def reconstruct(self) -> np.ndarray:
        n, k = self.codes.shape
        zero = self.zero if self.zero_points is None else self.zero_points[..., None].astype(np.float32)
        blocks = self.codes.reshape(n, -1, self.block_size).astype(np.float32) - zero
        out = blocks * self.scale[..., None]
        if self.offset is not None:
            out = out + self.offset[..., None]
        return out.reshape(n, k)

    def take_rows(self, order: np.ndarray) -> "Grid":
        pick = (lambda a: None if a is None else np.ascontiguousarray(a[order]))
        return Grid(self.name, self.qtype, self.bits, self.block_size, pick(self.codes), pick(self.scale),
                    pick(self.minimum), pick(self.values), self.max_abs_error, pick(self.zero_points))

    def rounded(self, bits: int, block_size: int) -> "Grid":
        """This tensor re-rounded onto a coarser grid (see :func:`round_to_grid`)."""
        return round_to_grid(self.name, self.qtype, self.values, bits, block_size)


def round_to_grid(name: str, qtype: str, values: np.ndarray, bits: int, block_size: int) -> Grid:
    """``values`` [N, K] rounded to nearest on an asymmetric grid with integer zero points, e.g. a Q8_0 embedding
    brought to 4 bits to meet a size budget. The error is reported, not hidden."""
    n, k = values.shape
    if k % block_size:
        raise EdgeshrinkError(f"{name}: {k} columns are not a multiple of block size {block_size}")
    blocks = values.reshape(n, k // block_size, block_size)
    low = np.minimum(blocks.min(axis=2), 0)
    high = np.maximum(blocks.max(axis=2), 0)
    top = (1 << bits) - 1
    scale = ((high - low) / top).astype(np.float32)
    safe = np.where(scale == 0, 1, scale)
    zero_points = np.clip(np.rint(-low / safe), 0, top).astype(np.uint8)
    codes = np.clip(np.rint(blocks / safe[..., None]) + zero_points[..., None], 0, top).astype(np.uint8)
    grid = Grid(name, f"{qtype}->rtn{bits}", bits, block_size, codes.reshape(n, k), scale, None, values, 0.0,
                zero_points)
    grid.max_abs_error = float(np.max(np.abs(grid.reconstruct() - values)))
    return grid


def _dequantize(raw: np.ndarray, qtype) -> np.ndarray:
    from gguf.quants import dequantize

    return np.asarray(dequantize(raw, qtype), dtype=np.float32)


def _filled(raw: np.ndarray, fmt: BlockFormat, block_bytes: int, ones: bool) -> np.ndarray:
    blocks = raw.reshape(-1, block_bytes).copy()
    for start, stop, one in fmt.codes:
        blocks[:, start:stop] = one if ones else 0
    return blocks.reshape(raw.shape)


def read_grid(tensor) -> Grid | None:
    """The grid of one ``gguf.GGUFReader`` tensor, or None for a format with no integer grid (F32, F16…)."""
    from gguf import GGML_QUANT_SIZES

    qtype = tensor.tensor_type
    fmt = FORMATS.get(qtype.name)
    if fmt is None or len(tensor.shape) != 2:
        return None
    raw = np.asarray(tensor.data)
    block_bytes = GGML_QUANT_SIZES[qtype][1]
    values = _dequantize(raw, qtype)
    n, k = values.shape
    sub = lambda w: w.reshape(n, k // fmt.sub_block, fmt.sub_block)[..., 0]  # noqa: E731 (one value per sub-block)
    b = sub(_dequantize(_filled(raw, fmt, block_bytes, ones=False), qtype))
    a = sub(_dequantize(_filled(raw, fmt, block_bytes, ones=True), qtype)) - b
    safe = np.where(a == 0, 1, a)
    raw_codes = np.rint((values.reshape(n, -1, fmt.sub_block) - b[..., None]) / safe[..., None])
    raw_codes = np.where(a[..., None] == 0, 0, raw_codes)
    bits = 4 if fmt.code_bits <= 4 else 8
    zero = 1 << (bits - 1)
    # Symmetric on the grid when b = -k·a with one integer k for the whole tensor (k = 0 for Q8_0): shift the
    # codes so that MatMulNBits' default zero point plays k's part and no offset remains.
    ratio = np.where(a == 0, np.nan, -b / safe)
    k_sym = np.nanmedian(ratio) if np.isfinite(ratio).any() else 0.0
    symmetric = bool(np.isfinite(k_sym) and k_sym == np.rint(k_sym)
                     and np.all((a == 0) & (b == 0) | (np.abs(ratio - k_sym) <= 1e-3)))
    shift = zero - int(k_sym) if symmetric else 0
    codes = raw_codes + shift
    if codes.min() < 0 or codes.max() >= (1 << bits):
        return None  # the format's codes do not fit the kernel's bits: no faithful mapping
    grid = Grid(tensor.name, qtype.name, bits, fmt.sub_block, codes.reshape(n, k).astype(np.uint8),
                a.astype(np.float32), None if symmetric else b.astype(np.float32), values, 0.0)
    error = float(np.max(np.abs(grid.reconstruct() - values))) if values.size else 0.0
    scale = float(np.max(np.abs(values))) or 1.0
    if error > RELATIVE_TOLERANCE * scale:
        raise EdgeshrinkError(f"GGUF tensor {tensor.name} ({qtype.name}): its grid reproduces the weights only to "
                              f"{error:.2e} (max |w| {scale:.2e}); not a faithful mapping")
    grid.max_abs_error = error
    return grid


def read_gguf_grids(path: Path, progress=None) -> tuple[list[Grid], dict[str, int]]:
    """Every 2-D tensor of a GGUF that has an integer grid, and a count of the tensor types the file holds."""
    from gguf import GGUFReader

    progress = progress or (lambda *_: None)
    reader = GGUFReader(str(path))
    grids, types = [], {}
    for number, tensor in enumerate(reader.tensors):
        types[tensor.tensor_type.name] = types.get(tensor.tensor_type.name, 0) + 1
        progress(f"reading the GGUF grid {number + 1}/{len(reader.tensors)}")
        grid = read_grid(tensor)
        if grid is not None:
            grids.append(grid)
    return grids, types


def row_keys(matrix: np.ndarray) -> list[bytes]:
    """One hashable key per row of a float32 matrix (its bytes' digest): rows are matched by exact value."""
    import hashlib

    rows = np.ascontiguousarray(matrix, dtype=np.float32)
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]


class GridIndex:
    """Finds the GGUF tensor (and its row order) whose dequantized values equal a weight matrix's rows."""

    def __init__(self, grids: list[Grid]):
        self.grids = grids
        self.rows: dict[bytes, tuple[int, int]] = {}
        for number, grid in enumerate(grids):
            for row, key in enumerate(row_keys(grid.values)):
                self.rows.setdefault(key, (number, row))

    def match(self, rows: np.ndarray) -> Grid | None:
        """The grid whose rows, reordered, are exactly ``rows`` [N, K]; None when any row has no match.

        The rows may come from several GGUF tensors of one format (a fused q/k/v projection): the grid is
        then their rows stacked in the order the weight uses them."""
        found = [self.rows.get(key) for key in row_keys(rows)]
        if not found or any(f is None for f in found):
            return None
        sources = [self.grids[number] for number in dict.fromkeys(f[0] for f in found)]
        first = sources[0]
        if any((g.bits, g.block_size, g.minimum is None, g.values.shape[1]) !=
               (first.bits, first.block_size, first.minimum is None, rows.shape[1]) for g in sources):
            return None
        if len(sources) == 1:
            order = np.array([f[1] for f in found])
            matched = first if np.array_equal(order, np.arange(len(order))) else first.take_rows(order)
        else:
            pick = lambda field: None if getattr(first, field) is None else np.stack(  # noqa: E731
                [getattr(self.grids[g], field)[r] for g, r in found])
            matched = Grid("+".join(g.name for g in sources), first.qtype, first.bits, first.block_size,
                           pick("codes"), pick("scale"), pick("minimum"), pick("values"),
                           max(g.max_abs_error for g in sources))
        if not np.array_equal(matched.values, rows):  # a duplicated row may point elsewhere: values decide
            return None
        return matched
