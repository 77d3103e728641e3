"""Quantize an LLM bundle: block-wise INT4 weights (MatMulNBits), the embedding and tied LM head included.

    from edgeshrink.compress import quantize, QuantConfig
    manifest = quantize("runs/smollm2-fp32", "runs/smollm2-int4", QuantConfig(method="int4-weight"))

A bundle imported from a GGUF keeps the GGUF's own integer grid (``grid="auto"``, see gguf_grid.py and
:func:`keep_gguf_grid`): nothing is re-rounded, a float minimum is added back exactly by a block-sum term,
and sibling projections of one input share one MatMulNBits. The embedding table and a tied LM head share
one quantized table (GatherBlockQuantized reads MatMulNBits' codes), at the grid's own bits or
``head_bits``. Weights that are on no GGUF grid (``grid="rtn"``, or a model that did not come from a GGUF)
go through ORT's round-to-nearest quantizer. The manifest records, on the calibration documents of a text
set (default ``bbc-news``; never the test split), the perplexity of the source and of the quantized model
and their top-1 agreement (same positions, teacher-forced).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgeshrink._files import atomic_output_dir, check_output_dir, copy_listed_files, listed_file
from edgeshrink.errors import EdgeshrinkError, first_line

LLM_METHODS = ("int4-weight",)
LLM_BLOCK_SIZE = 32  # default INT4 block of LLM weights: a GGUF's block, onnxruntime-genai's default
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
    import hashlib

    source = manifest.get("source")
    record = source.get("record") if isinstance(source, dict) else None
    if not isinstance(record, dict) or not record.get("gguf"):
        return None
    # The path comes from the (untrusted) manifest: only a regular .gguf file is ever opened, and only used when
    # its hash matches, so a bundle cannot make quantize read anything else.
    path = Path(str(record["gguf"]))
    if path.suffix.lower() != ".gguf" or path.is_symlink() or not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return path if digest.hexdigest() == record.get("sha256") else None


def quantize_llm(bundle: Path, out: Path, config, data=None, force: bool = False, progress=None) -> dict:
    from edgeshrink.compress.evaluate import weight_precisions
    from edgeshrink.compress.methods import int4_weight
    from edgeshrink.export.bundle import write_manifest
    from edgeshrink.runtime.bundle import read_manifest

    progress = progress or (lambda *_: None)
    if config.method not in LLM_METHODS:
        raise EdgeshrinkError(f"an LLM bundle takes {', '.join(LLM_METHODS)}; {config.method!r} is for classifiers")
    config = config.model_copy(update={"block_size": config.block_size or LLM_BLOCK_SIZE})
    source_manifest = read_manifest(bundle, verify=True)
    gguf = None if config.grid == "rtn" else source_gguf(source_manifest)
    if config.grid == "gguf" and gguf is None:
        raise EdgeshrinkError(f"--grid gguf: {bundle} was not imported from a GGUF that is still on disk unchanged")
    check_output_dir(out, force)
    # Only the files the manifest lists, regular files inside the bundle: the model is read where it is (ONNX
    # Runtime is given only copies in the work directory), the rest is copied.
    model_files = [name for name in source_manifest["files"] if name.startswith("model.onnx")]
    for name in model_files:
        listed_file(bundle, name)
    with atomic_output_dir(out, force) as tmp:
        copy_listed_files(bundle, [name for name in source_manifest["files"] if name not in model_files], tmp)
        work = Path(tempfile.mkdtemp(prefix="_work-", dir=tmp))  # no name a manifest could list beforehand
        started = time.perf_counter()
        untied = 0
        try:
            progress("keeping the GGUF grid" if gguf else "the embedding table and LM head")
            grid_report = keep_gguf_grid(bundle / "model.onnx", work / "grid.onnx", gguf, config, progress)
            if grid_report["matmuls_left"]:
                progress("untying the LM head")
                untied = untie_transposed_weights(work / "grid.onnx", work / "untied.onnx")
                progress("quantizing weights to INT4 (round to nearest)")
                int4_weight(work / "untied.onnx", tmp / "model.onnx", SimpleNamespace(config=config), embeddings=False)
            else:
                _save(work / "grid.onnx", tmp / "model.onnx")
        except EdgeshrinkError:
            raise
        except Exception as exc:  # onnx and onnxruntime's quantizer raise many types
            raise EdgeshrinkError(f"int4-weight of {bundle} failed: {first_line(exc)}") from None
        shutil.rmtree(work)
        seconds = time.perf_counter() - started
        fields = {k: v for k, v in source_manifest.items()
                  if k not in ("files", "size_bytes", "schema_version", "kind", "edgeshrink_version", "created_at",
                               "created_on", "validation")}
        quantization = {"method": config.method, "config": config.to_dict(), "seconds": round(seconds, 1),
                        "grid": "gguf" if gguf else "rtn", "untied_lm_heads": untied,
                        "format": "MatMulNBits + GatherBlockQuantized",
                        "parent": {"path": str(Path(bundle).resolve()), "size_bytes": source_manifest["size_bytes"]},
                        "weights": weight_precisions(tmp / "model.onnx")}
        quantization["gguf_grid"] = grid_report
        fields["quantization"] = quantization
        manifest = write_manifest(tmp, fields)
        if config.evaluate:
            quantization["evaluation"] = compare_on_text(bundle, tmp, data or "bbc-news", config.max_eval_examples or 16,
                                                         progress)
            manifest = write_manifest(tmp, fields)
    return manifest


def _save(src: Path, dst: Path) -> None:
    import onnx

    onnx.save(onnx.load(str(src)), str(dst))  # one file: an INT4 bundle is far below protobuf's 2 GB


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


# --- Keeping a GGUF's grid ---------------------------------------------------------------------------------

MS_DOMAIN = "com.microsoft"


class _GridWriter:
    """Rewrites MatMul and Gather nodes whose weights match a GGUF tensor into MatMulNBits / GatherBlockQuantized
    on that tensor's own codes (see compress/gguf_grid.py). Tensors used twice (a tied embedding and LM head)
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


def keep_gguf_grid(src: Path, dst: Path, gguf: Path, config, progress=None) -> dict:
    """Rewrite every MatMul/Gather whose weights are a GGUF tensor onto that tensor's codes (see _GridWriter).

    ``config.head_bits`` caps the bits of the embedding table and the LM head (a Q8_0 table brought to 4 bits
    to meet a size budget is re-rounded, and the report says by how much); a table not on the GGUF's grid
    (or with no GGUF) is rounded to ``head_bits`` (default 4), tied tables once for both uses. Other
    weights off the grid are listed in ``matmuls_left`` for round-to-nearest INT4. Returns what was kept,
    re-rounded and left alone."""
    import onnx
    from onnx import numpy_helper

    from edgeshrink.compress.gguf_grid import GridIndex, read_gguf_grids, round_to_grid

    progress = progress or (lambda *_: None)
    grids, types = read_gguf_grids(gguf, progress) if gguf else ([], {})
    index = GridIndex(grids)
    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    transposed = {n.output[0]: n for n in graph.node if n.op_type == "Transpose" and n.input[0] in inits}
    outputs = {o.name for o in graph.output}
    writer = _GridWriter(graph, config.accuracy_level or 0)
    kept, rounded, left = {}, {}, []
    pending = []  # (MatMul node, its grid, is the LM head): written after the scan, siblings fused

    def grid_for(node, rows: np.ndarray, head: bool, table: str):
        grid = index.match(rows)
        if grid is None and not head:
            left.append(node.name)  # left for round-to-nearest INT4 (ORT's quantizer)
            return None
        head_bits = config.head_bits or 4
        if head and (grid is None or (config.head_bits is not None and grid.bits > head_bits)):
            grid = (round_to_grid(table, "F32", rows, head_bits, config.block_size) if grid is None
                    else grid.rounded(head_bits, config.block_size))
            rounded[grid.name] = {"from": grid.qtype.split("->")[0], "bits": grid.bits, "block_size": grid.block_size,
                                  "max_abs_error": grid.max_abs_error}
        else:
            kept[grid.name] = grid.qtype
        return grid

    def table_of(name: str) -> np.ndarray | None:  # an embedding table, stored as itself or transposed
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in transposed:
            return numpy_helper.to_array(inits[transposed[name].input[0]]).T
        return None

    for number, node in enumerate(list(graph.node)):
        if number % 200 == 0:
            progress(f"mapping weights onto the GGUF grid ({number}/{len(graph.node)} nodes)")
        if node.op_type == "MatMul" and node.input[1] in inits:
            rows = numpy_helper.to_array(inits[node.input[1]]).T
            head = bool(set(node.output) & outputs)
            grid = grid_for(node, rows, head, node.input[1])
            if grid is not None:
                pending.append((node, grid, head))
        elif node.op_type == "MatMul" and node.input[1] in transposed:
            table = transposed[node.input[1]].input[0]
            grid = grid_for(node, numpy_helper.to_array(inits[table]), True, table)
            if grid is not None:
                pending.append((node, grid, True))
        elif node.op_type == "Gather" and (table := table_of(node.input[0])) is not None and table.ndim == 2:
            grid = grid_for(node, table, True, node.input[0])
            if grid is not None:
                writer.gather(node, grid)
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
    bits = {}
    for name in kept:
        bits[kept[name]] = bits.get(kept[name], 0) + 1
    return {"gguf": str(gguf) if gguf else None, "gguf_tensor_types": types, "kept": bits, "rounded": rounded,
            "matmuls_left": left, "fused_projections": fused,
            "max_abs_error_kept": max((g.max_abs_error for g in grids if g.name in kept), default=0.0),
            "accuracy_level": config.accuracy_level or 0}


def _write_matmuls(writer: "_GridWriter", pending: list) -> int:
    """Write the MatMuls; projections of one input on the same kind of grid (a gate and an up projection)
    become one MatMulNBits, one offset term and a Split: the same numbers, fewer nodes per decode step.
    Return how many groups were fused."""
    from edgeshrink.compress.gguf_grid import Grid

    groups: dict[str, list] = {}
    for node, grid, head in pending:
        groups.setdefault(node.input[0] if not head else f"head:{node.output[0]}", []).append((node, grid))
    fused = 0
    for members in groups.values():
        grids = [g for _, g in members]
        first = grids[0]
        same = all((g.bits, g.block_size, g.minimum is None, g.zero_points is None, g.codes.shape[1]) ==
                   (first.bits, first.block_size, first.minimum is None, True, first.codes.shape[1]) for g in grids)
        if len(members) < 2 or not same:
            for node, grid in members:
                writer.matmul(node, grid)
            continue
        stack = lambda field: None if getattr(first, field) is None else np.concatenate(  # noqa: E731
            [getattr(g, field) for g in grids])
        grid = Grid("+".join(g.name for g in grids), first.qtype, first.bits, first.block_size, stack("codes"),
                    stack("scale"), stack("minimum"), stack("values"), max(g.max_abs_error for g in grids))
        writer.fused_matmul([node for node, _ in members], grid, [g.codes.shape[0] for g in grids])
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
