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

:func:`keep_gguf_grid` then rewrites a bundle's graph onto those codes (MatMulNBits, GatherBlockQuantized):
nothing is re-rounded, a float minimum is added back exactly by a block-sum term, and sibling projections
of one input share one MatMulNBits.
"""

from __future__ import annotations

from collections import Counter
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


def stacked(grids: list[Grid]) -> Grid:
    """Grids of one format with their rows stacked in order (q, k and v of a fused projection)."""
    first = grids[0]
    stack = lambda field: None if getattr(first, field) is None else np.concatenate(  # noqa: E731
        [getattr(g, field) for g in grids])
    return Grid("+".join(g.name for g in grids), first.qtype, first.bits, first.block_size, stack("codes"),
                stack("scale"), stack("minimum"), stack("values"), max(g.max_abs_error for g in grids),
                stack("zero_points"))


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
    codes = np.clip(np.rint(blocks / safe[..., None]) + zero_points[..., None], 0, top)
    # a block's maximum takes the top code (fp32 can land it on a tie with top − 1): the grid values then give
    # this grid back when rounded again, which quantization-aware training relies on (aware.py)
    codes = np.where((blocks == high[..., None]) & (high[..., None] > 0), top, codes).astype(np.uint8)
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
        numbers = list(dict.fromkeys(f[0] for f in found))
        sources = [self.grids[number] for number in numbers]
        first = sources[0]
        if any((g.bits, g.block_size, g.minimum is None, g.values.shape[1]) !=
               (first.bits, first.block_size, first.minimum is None, rows.shape[1]) for g in sources):
            return None
        joined = first if len(sources) == 1 else stacked(sources)
        starts = dict(zip(numbers, np.cumsum([0] + [len(g.codes) for g in sources])))
        order = np.array([starts[number] + row for number, row in found])
        matched = joined if np.array_equal(order, np.arange(len(joined.codes))) else joined.take_rows(order)
        if not np.array_equal(matched.values, rows):  # a duplicated row may point elsewhere: values decide
            return None
        return matched


# --- Writing the grid into an ONNX graph ---------------------------------------------------------------------

MS_DOMAIN = "com.microsoft"


class _GridWriter:
    """Rewrites MatMul and Gather nodes whose weights match a GGUF tensor into MatMulNBits / GatherBlockQuantized
    on that tensor's own codes (read above). Tensors used twice (a tied embedding and LM head)
    share one set of initializers."""

    def __init__(self, graph, accuracy_level: int):
        self.graph = graph
        self.accuracy_level = accuracy_level
        self.written: dict[str, dict[str, str]] = {}
        self.block_sums: dict[tuple[str, int, int], str] = {}
        self.prelude: list = []  # constant nodes (casts, offsets) ONNX Runtime folds at load
        self.new_nodes: dict[str, list] = {}  # first output of the node replaced -> nodes in its place
        self.counter = 0

    def _init(self, array: np.ndarray, name: str) -> str:
        from onnx import numpy_helper

        self.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def _name(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}/edgeshrink_{self.counter}"

    def _float(self, array: np.ndarray, name: str) -> str:
        """A float32 constant, stored as fp16 when that is lossless (a GGUF's own scales and minimums are fp16)
        and cast back to fp32 by a node ONNX Runtime folds away at load: the file is smaller, the math the same."""
        from onnx import TensorProto, helper

        half = array.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), array):
            return self._init(array, name)
        self._init(half, name + "_fp16")
        self.prelude.append(helper.make_node("Cast", [name + "_fp16"], [name], name=name + "/cast", to=TensorProto.FLOAT))
        return name

    def tensors(self, grid) -> dict[str, str]:
        """Names of a grid's packed codes, scales, zero points and offsets (written once, shared by its users)."""
        from onnx import helper

        key = grid.name + ("" if grid.zero_points is None else f"/rtn{grid.bits}")
        if key in self.written:
            return self.written[key]
        stem = f"gguf/{key}"
        names = {"codes": self._init(grid.packed(), f"{stem}/codes{grid.bits}"),
                 "scales": self._float(grid.scale, f"{stem}/scales")}
        zero_points = grid.packed_zero_points()
        if zero_points is not None:
            names["zero_points"] = self._init(zero_points, f"{stem}/zero_points")
        if grid.minimum is not None:  # offset = scale·zero + minimum, [N, nb] and transposed [nb, N]
            minimum = self._float(grid.minimum, f"{stem}/minimum")
            zero = self._init(np.array(grid.zero, np.float32), f"{stem}/zero")
            scaled, rows, by_block = f"{stem}/scaled_zero", f"{stem}/offset_rows", f"{stem}/offsets"
            self.prelude += [helper.make_node("Mul", [names["scales"], zero], [scaled], name=scaled),
                             helper.make_node("Add", [scaled, minimum], [rows], name=rows),
                             helper.make_node("Transpose", [rows], [by_block], name=by_block, perm=[1, 0])]
            names["offset_rows"], names["offset_by_block"] = rows, by_block
        self.written[key] = names
        return names

    def _block_sum(self, x: str, k: int, block: int, nodes: list) -> str:
        """Σ of x over each block of ``block`` inputs, as MatMul(x, ones-by-block) (any leading shape)."""
        from onnx import helper

        key = (x, k, block)
        if key not in self.block_sums:
            matrix = f"gguf/block_sum_{k}_{block}"
            if matrix not in self.written:  # one 0/1 matrix per (K, block), shared by every input
                sums = np.zeros((k, k // block), np.float32)
                sums[np.arange(k), np.arange(k) // block] = 1
                self.written[matrix] = {"block_sum": self._init(sums, matrix)}
            out = self._name(x + "/block_sum")
            nodes.append(helper.make_node("MatMul", [x, matrix], [out], name=out))
            self.block_sums[key] = out
        return self.block_sums[key]

    def matmul(self, node, grid) -> None:
        from onnx import helper

        names = self.tensors(grid)
        stem = node.name or node.output[0]
        n, k = grid.codes.shape
        x, y = node.input[0], node.output[0]
        inputs = [x, names["codes"], names["scales"]] + ([names["zero_points"]] if "zero_points" in names else [])
        level = 4 if grid.bits == 8 else self.accuracy_level  # ORT 1.32's 8-bit kernel without int8 compute is ~90x slower
        nodes = []
        main = y if grid.offset is None else self._name(stem + "/nbits")
        nodes.append(helper.make_node("MatMulNBits", inputs, [main], name=stem + "/MatMulNBits", domain=MS_DOMAIN,
                                      K=k, N=n, bits=grid.bits, block_size=grid.block_size, accuracy_level=level))
        if grid.offset is not None:
            sums = self._block_sum(x, k, grid.block_size, nodes)
            correction = self._name(stem + "/offset")
            nodes.append(helper.make_node("MatMul", [sums, names["offset_by_block"]], [correction], name=correction))
            nodes.append(helper.make_node("Add", [main, correction], [y], name=self._name(stem + "/add")))
        self.new_nodes[node.output[0]] = nodes

    def fused_matmul(self, nodes: list, grid, widths: list[int]) -> None:
        """One MatMulNBits for sibling projections of one input, split back into their outputs."""
        from onnx import helper

        stem = nodes[0].name or nodes[0].output[0]
        joined = self._name(stem + "/fused")
        proxy = helper.make_node("MatMul", [nodes[0].input[0], ""], [joined], name=stem + "/fused")
        self.matmul(proxy, grid)
        sizes = self._init(np.array(widths, np.int64), self._name(stem + "/split_sizes"))
        self.new_nodes[nodes[0].output[0]] = self.new_nodes.pop(joined) + [
            helper.make_node("Split", [joined, sizes], [n.output[0] for n in nodes], name=self._name(stem + "/split"),
                             axis=-1)]
        for node in nodes[1:]:
            self.new_nodes[node.output[0]] = []

    def gather(self, node, grid) -> None:
        from onnx import helper

        names = self.tensors(grid)
        stem = node.name or node.output[0]
        n, k = grid.codes.shape
        shape = self._init(np.array([n, k * grid.bits // 8], np.int64), self._name(stem + "/shape"))
        table = self._name(stem + "/table")
        nodes = [helper.make_node("Reshape", [names["codes"], shape], [table], name=table)]
        inputs = [table, node.input[1], names["scales"]] + ([names["zero_points"]] if "zero_points" in names else [])
        y = node.output[0]
        main = y if grid.offset is None else self._name(stem + "/rows")
        nodes.append(helper.make_node("GatherBlockQuantized", inputs, [main], name=stem + "/GatherBlockQuantized",
                                      domain=MS_DOMAIN, bits=grid.bits, block_size=grid.block_size, gather_axis=0,
                                      quantize_axis=1))
        if grid.offset is not None:
            spread = np.zeros((k // grid.block_size, k), np.float32)
            spread[np.arange(k) // grid.block_size, np.arange(k)] = 1
            spread_name = self._init(spread, self._name(stem + "/spread"))
            rows, per_element = self._name(stem + "/offsets"), self._name(stem + "/offsets_spread")
            nodes += [helper.make_node("Gather", [names["offset_rows"], node.input[1]], [rows], name=rows),
                      helper.make_node("MatMul", [rows, spread_name], [per_element], name=per_element),
                      helper.make_node("Add", [main, per_element], [y], name=self._name(stem + "/add"))]
        self.new_nodes[node.output[0]] = nodes


def keep_gguf_grid(src: Path, dst: Path, gguf: Path, config, progress=None, calibration=None) -> dict:
    """Rewrite every MatMul/Gather whose weights are a GGUF tensor onto that tensor's codes (see _GridWriter).

    ``config.head_bits`` caps the bits of the embedding table and the LM head (a Q8_0 table brought to 4 bits
    to meet a size budget is re-rounded, and the report says by how much); a table not on the GGUF's grid
    (or with no GGUF) is rounded to ``head_bits`` (default 4), tied tables once for both uses.

    Weights off the grid: with a ``calibration`` (calibrated.py's Calibration: ``statistics(names)``, asked
    once and only if some weight is off the grid, gives each MatMul input's XᵀX, and ``search`` the grid
    they weigh) each gets its calibrated grid, a tied table its LM head's statistics; without one they are
    listed in ``matmuls_left`` for round-to-nearest INT4 (and tables are rounded to nearest). Returns what
    was kept, searched, re-rounded and left alone."""
    import onnx
    from onnx import numpy_helper

    progress = progress or (lambda *_: None)
    grids, types = read_gguf_grids(gguf, progress) if gguf else ([], {})
    index = GridIndex(grids)
    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    transposed = {n.output[0]: n for n in graph.node if n.op_type == "Transpose" and n.input[0] in inits}
    outputs = {o.name for o in graph.output}
    writer = _GridWriter(graph, config.accuracy_level or 0)
    kept, rounded, searched, left = {}, {}, {}, []
    pending = []  # (MatMul node, its grid, is the LM head): written after the scan, siblings fused
    to_search = []  # (node, weight rows, is the LM head, table name, bits): searched after the scan

    def grid_for(node, rows: np.ndarray, head: bool, table: str):
        grid = index.match(rows)
        head_bits = config.head_bits or 4
        too_wide = head and grid is not None and config.head_bits is not None and grid.bits > head_bits
        if calibration is not None and (grid is None or too_wide):
            to_search.append((node, rows, head, table, head_bits if head else 4))
            return None
        if grid is None and not head:
            left.append(node.name)  # left for round-to-nearest INT4 (ORT's quantizer)
            return None
        if head and (grid is None or too_wide):
            name, qtype = (table, "F32") if grid is None else (grid.name, grid.qtype)
            grid = round_to_grid(name, qtype, rows, head_bits, config.block_size)
            rounded[grid.name] = {"from": grid.qtype.split("->")[0], "bits": grid.bits, "block_size": grid.block_size,
                                  "max_abs_error": grid.max_abs_error}
        else:
            kept[grid.name] = grid.qtype
        return grid

    def table_of(name: str) -> np.ndarray | None:  # a weight, stored as itself or as a Transpose of one
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in transposed:
            return numpy_helper.to_array(inits[transposed[name].input[0]]).T
        return None

    for number, node in enumerate(list(graph.node)):
        if number % 200 == 0:
            progress(f"mapping weights onto the GGUF grid ({number}/{len(graph.node)} nodes)")
        if node.op_type == "MatMul" and (weight := table_of(node.input[1])) is not None:
            tied = node.input[1] in transposed  # the embedding table, read as the LM head
            head = tied or bool(set(node.output) & outputs)
            name = transposed[node.input[1]].input[0] if tied else node.input[1]
            if (grid := grid_for(node, weight.T, head, name)) is not None:
                pending.append((node, grid, head))
        elif node.op_type == "Gather" and (table := table_of(node.input[0])) is not None and table.ndim == 2:
            if (grid := grid_for(node, table, True, node.input[0])) is not None:
                writer.gather(node, grid)
    if to_search:
        import hashlib

        # one grid per distinct matrix: a tied table (a Transpose or an equal copy for the LM head) is searched
        # once, on the importances of the MatMul that reads it
        groups: dict[bytes, list] = {}
        for entry in to_search:
            rows = np.ascontiguousarray(entry[1], np.float32)
            key = hashlib.blake2b(rows.tobytes() + str((rows.shape, entry[4])).encode(), digest_size=16).digest()
            groups.setdefault(key, []).append(entry)
        reader = {key: next((e[0].input[0] for e in members if e[0].op_type == "MatMul"), None)
                  for key, members in groups.items()}
        found = calibration.statistics(sorted({x for x in reader.values() if x is not None}))
        for number, (key, members) in enumerate(groups.items()):
            node, rows, _, table, bits = next((e for e in members if e[0].op_type == "MatMul"), members[0])
            progress(f"searching the INT4 grid of {table} ({number + 1}/{len(groups)})")
            lookup = any(e[0].op_type == "Gather" for e in members)
            grid, searched[table] = calibration.search(table, rows, found.get(reader[key]), bits, config.block_size,
                                                       lookup)
            for node, _, head, _, _ in members:
                if node.op_type == "Gather":
                    writer.gather(node, grid)
                else:
                    pending.append((node, grid, head))
    fused = _write_matmuls(writer, pending)
    replaced = list(graph.node)
    del graph.node[:]
    graph.node.extend(writer.prelude)
    for node in replaced:
        graph.node.extend(writer.new_nodes.get(node.output[0], [node]))
    _drop_unused(graph)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
    onnx.save(model, str(dst), save_as_external_data=True, location=dst.name + ".data")
    return {"gguf": str(gguf) if gguf else None, "gguf_tensor_types": types, "kept": dict(Counter(kept.values())),
            "rounded": rounded, "calibrated": searched, "matmuls_left": left, "fused_projections": fused,
            "max_abs_error_kept": max((g.max_abs_error for g in grids if g.name in kept), default=0.0),
            "accuracy_level": config.accuracy_level or 0}


def _write_matmuls(writer: "_GridWriter", pending: list) -> int:
    """Write the MatMuls; projections of one input on the same kind of grid (a gate and an up projection)
    become one MatMulNBits, one offset term and a Split: the same numbers, fewer nodes per decode step.
    Return how many groups were fused."""
    groups: dict[str, list] = {}
    for node, grid, head in pending:
        groups.setdefault(node.input[0] if not head else f"head:{node.output[0]}", []).append((node, grid))
    fused = 0
    for members in groups.values():
        grids = [g for _, g in members]
        first = grids[0]
        same = all((g.bits, g.block_size, g.minimum is None, g.zero_points is None, g.codes.shape[1]) ==
                   (first.bits, first.block_size, first.minimum is None, first.zero_points is None,
                    first.codes.shape[1]) for g in grids)
        if len(members) < 2 or not same:
            for node, grid in members:
                writer.matmul(node, grid)
            continue
        writer.fused_matmul([node for node, _ in members], stacked(grids), [g.codes.shape[0] for g in grids])
        fused += 1
    return fused


def _drop_unused(graph) -> None:
    """Remove nodes (a Transpose of a now-unused table) and initializers nothing reads any more."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(out in used for out in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
