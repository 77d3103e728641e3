"""`edgeshrink pack BUNDLE --target mobile --platform arm|x86`: the bundle for ONNX Runtime Mobile (the ORT format).

    OUT/
      model.ort                     the model in the ORT format, optimized ("Fixed" style) for the platform
      required_operators.config     the operators and types it uses: the input of a reduced-size ORT build
      tokenizer.json, router.json, chat_template.jinja, ...   the bundle's other files, as they were
      manifest.json                 the bundle's manifest, as it was (its model.onnx entry describes the source)
      pack.json                     the platform, the check below, every file's size and sha256

The ORT format has no 4-bit tensor type: a model with UINT4/INT4 initializers converts "successfully" and then
fails to load. So 4-bit initializers are first rewritten to the uint8-packed form the kernels also take
(GatherBlockQuantized: two values a byte, MatMulNBits' zero-point convention), or the pack is refused in one
line when one cannot be. ``--platform arm`` keeps x86-only layouts (NCHWc) out; ``x86`` allows them. Python's
ONNX Runtime then loads model.ort and runs it against the bundle's model.onnx on the same inputs (texts through
the bundle's tokenizer, a prompt's prefill for a language model): outputs must agree within the tolerance, or
nothing is written.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from edgeshrink.errors import EdgeshrinkError, first_line

PLATFORMS = {"arm": "arm", "x86": "amd64"}  # our name -> convert_onnx_models_to_ort's --target_platform
TOLERANCE = 1e-3  # max |difference| of any output, ORT format against the bundle's model.onnx


def _four_bit_types():
    import onnx

    return {onnx.TensorProto.UINT4: "uint4", onnx.TensorProto.INT4: "int4"}


def _unpack_nibbles(raw: bytes, count: int) -> np.ndarray:
    """ONNX's 4-bit storage (two values a byte, the first in the low nibble, over the flattened tensor) as uint8
    values 0..15."""
    data = np.frombuffer(raw, dtype=np.uint8)
    values = np.empty(data.size * 2, dtype=np.uint8)
    values[0::2], values[1::2] = data & 0x0F, data >> 4
    return values[:count]


def _pack_rows(values: np.ndarray) -> np.ndarray:
    """uint8 values 0..15 of shape [..., K] (K even) as the uint8-packed form [..., K/2], low nibble first."""
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def _four_bit_values(tensor) -> np.ndarray:
    """A UINT4/INT4 initializer's values as uint8 0..15 (INT4 two's complement kept as its nibble), in its shape."""
    count = int(np.prod(tensor.dims)) if tensor.dims else 1
    if not tensor.raw_data:
        data = np.array(tensor.int32_data, dtype=np.int64) & 0xFF
        raw = data.astype(np.uint8).tobytes()
    else:
        raw = tensor.raw_data
    return _unpack_nibbles(raw, count).reshape(tuple(tensor.dims))


def rewrite_four_bit(model) -> list[str]:
    """Rewrite ``model``'s 4-bit initializers in place to the uint8-packed form; the names rewritten. Refuses in one
    line a 4-bit initializer that no rewrite here keeps exact (any consumer but GatherBlockQuantized's data and
    zero points, a quantize axis that is not the last, an odd last dimension)."""
    import onnx
    from onnx import helper, numpy_helper

    kinds = _four_bit_types()
    inits = {t.name: t for t in model.graph.initializer}
    four = {name for name, t in inits.items() if t.data_type in kinds}
    if not four:
        return []
    consumers: dict[str, list] = {name: [] for name in four}
    for node in model.graph.node:
        for slot, name in enumerate(node.input):
            if name in consumers:
                consumers[name].append((node, slot))
    sub = next((n for n in model.graph.node for a in n.attribute
                if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)), None)
    if sub is not None:
        raise EdgeshrinkError(f"a 4-bit model with subgraphs ({sub.op_type} {sub.name!r}) cannot be rewritten for the "
                              f"ORT format: quantize it with `--head-bits 8` or to INT8 first")
    rewritten = []
    for node in model.graph.node:
        if node.op_type != "GatherBlockQuantized" or len(node.input) < 1 or node.input[0] not in four:
            continue
        data = inits[node.input[0]]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        rank = len(data.dims)
        axis = attrs.get("quantize_axis", 1)
        axis = axis + rank if axis < 0 else axis
        if axis != rank - 1 or data.dims[-1] % 2:
            raise EdgeshrinkError(f"4-bit initializer {data.name!r} of GatherBlockQuantized {node.name!r} cannot be "
                                  f"rewritten to the uint8-packed form (quantized along axis {axis}, not the last, or "
                                  f"an odd last dimension)")
        if any(len(consumers[n]) != 1 for n in node.input if n in four):
            raise EdgeshrinkError(f"4-bit initializer {data.name!r} is shared by several nodes: cannot be rewritten")
        signed = data.data_type == onnx.TensorProto.INT4
        values = _four_bit_values(data)
        # uint8-packed data takes MatMulNBits' convention: value = (q - zero point) * scale, default zero point 8
        q = (values.astype(np.int16) ^ 8) if signed else values  # int4 nibble n -> (n as signed) + 8
        packed = _pack_rows(q.astype(np.uint8))
        zero_name = node.input[3] if len(node.input) > 3 and node.input[3] else None
        if zero_name and zero_name in four:
            zero = inits[zero_name]
            if zero.dims[-1] % 2:
                raise EdgeshrinkError(f"4-bit zero points {zero_name!r} have an odd last dimension: cannot be rewritten")
            z = _four_bit_values(zero)
            z = (z.astype(np.int16) ^ 8).astype(np.uint8) if zero.data_type == onnx.TensorProto.INT4 else z
            inits[zero_name].CopyFrom(numpy_helper.from_array(_pack_rows(z), zero_name))
            rewritten.append(zero_name)
        elif zero_name:
            raise EdgeshrinkError(f"GatherBlockQuantized {node.name!r} has 4-bit data but zero points of another type: "
                                  f"cannot be rewritten")
        elif not signed:  # uint4 without zero points means zero point 0; the uint8 form's default is 8: make it explicit
            scales = inits.get(node.input[2])
            if scales is None:
                raise EdgeshrinkError(f"GatherBlockQuantized {node.name!r}: its scales are not an initializer")
            zeros = np.zeros(tuple(scales.dims[:-1]) + ((scales.dims[-1] + 1) // 2,), np.uint8)
            zname = f"{data.name}/edgeshrink_zero_points"
            model.graph.initializer.append(numpy_helper.from_array(zeros, zname))
            while len(node.input) < 4:
                node.input.append("")
            node.input[3] = zname
        inits[data.name].CopyFrom(numpy_helper.from_array(packed, data.name))
        for a in node.attribute:
            if a.name == "bits":
                a.i = 4
                break
        else:
            node.attribute.append(helper.make_attribute("bits", 4))
        rewritten.append(data.name)
    left = sorted(four - set(rewritten))
    if left:
        users = ", ".join(sorted({n.op_type for n, _ in consumers[left[0]]})) or "nothing"
        raise EdgeshrinkError(f"4-bit initializer {left[0]!r} (used by {users}) has no uint8-packed form the ORT format "
                              f"keeps; the mobile pack is refused (quantize with MatMulNBits, or to INT8, first)")
    return rewritten


def _convert(model_dir: Path, out_dir: Path, platform: str) -> Path:
    """convert_onnx_models_to_ort (Fixed style) on ``model_dir``/model.onnx; the .ort path."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    import logging

    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # its warning that an x86 (NCHWc) model is for this kind of machine: we know
    log = io.StringIO()
    quiet = logging.getLogger("ort_format_model.utils")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # it logs every config file it writes at INFO
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            convert_onnx_models_to_ort(model_dir / "model.onnx", out_dir, [OptimizationStyle.Fixed],
                                       target_platform=PLATFORMS[platform])
    except Exception as exc:  # the converter raises whatever ONNX Runtime raised
        raise EdgeshrinkError(f"the ORT-format conversion failed: {first_line(exc)}") from None
    finally:
        quiet.setLevel(level)
    found = sorted(out_dir.glob("*.ort"))
    if len(found) != 1:
        raise EdgeshrinkError(f"the ORT-format conversion wrote no model ({log.getvalue().strip().splitlines()[-1:]})")
    return found[0]


def _compare(source: Path, converted: Path, feeds: dict) -> float:
    """The largest |difference| between every output of the two models on ``feeds``."""
    from edgeshrink.runtime.bundle import open_session

    a = open_session(source, threads=1)
    try:
        b = open_session(converted, threads=1)
    except EdgeshrinkError as exc:
        raise EdgeshrinkError(f"the ORT-format model does not load: {exc}") from None
    names = [o.name for o in a.get_outputs()]
    try:
        want, got = a.run(names, feeds), b.run(names, feeds)
    except Exception as exc:  # onnxruntime's own errors
        raise EdgeshrinkError(f"the ORT-format model failed to run: {first_line(exc)}") from None
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) if np.size(x) else 0.0
               for x, y in zip(want, got))


def pack_mobile(bundle: str | Path, out: str | Path, platform: str = "arm", force: bool = False,
                progress=None) -> dict:
    """Write the mobile folder of ``bundle`` to ``out`` (see the module docstring); returns pack.json's content."""
    import onnx

    from edgeshrink._files import atomic_output_dir, check_output_dir, copy_listed_files
    from edgeshrink.runtime import load
    from edgeshrink.runtime.bundle import MANIFEST_NAME, bundle_file, read_manifest
    from edgeshrink.web.pack import file_table

    say = progress or (lambda message: None)
    if platform not in PLATFORMS:
        raise EdgeshrinkError(f"unknown platform {platform!r}; expected {' or '.join(PLATFORMS)}")
    bundle = Path(bundle)
    say(f"checking {bundle}")
    manifest = read_manifest(bundle, verify=True)
    check_output_dir(out, force)
    source = bundle_file(bundle, manifest, "model.onnx")  # listed, inside, no links (just hash-checked)
    work = Path(tempfile.mkdtemp(prefix="edgeshrink-mobile-"))
    try:
        model = onnx.load(str(source))
        rewritten = rewrite_four_bit(model)
        (work / "src").mkdir()
        if rewritten:
            say(f"rewrote {len(rewritten)} 4-bit initializers to the uint8-packed form")
        onnx.save(model, str(work / "src" / "model.onnx"), save_as_external_data=model.ByteSize() > (1 << 31) - 1)
        del model
        say(f"converting to the ORT format for {platform}")
        converted = _convert(work / "src", work / "ort", platform)
        say("checking the ORT-format model against the bundle")
        feeds = load(bundle, threads=1, verify=False).check_feeds()
        difference = _compare(source, converted, feeds)
        if not difference <= TOLERANCE:
            raise EdgeshrinkError(f"the ORT-format model differs from the bundle's by {difference:.3g} (tolerance "
                                  f"{TOLERANCE:g}): not written")
        configs = sorted((work / "ort").glob("*.config"))  # model.required_operators.config
        with atomic_output_dir(out, force) as tmp:
            shutil.copyfile(converted, tmp / "model.ort")
            if configs:
                shutil.copyfile(configs[0], tmp / "required_operators.config")
            copy_listed_files(bundle, [MANIFEST_NAME, *(n for n in manifest["files"] if not n.startswith("model.onnx"))],
                              tmp)
            files = file_table(tmp)
            record = {"kind": "edgeshrink-mobile-pack", "version": 1, "target": "mobile", "platform": platform,
                      "bundle": {"path": str(bundle.absolute()), "task": manifest["task"],
                                 "model_sha256": manifest["files"]["model.onnx"]["sha256"]},
                      "rewritten_four_bit": rewritten,
                      "check": {"max_abs_difference": difference, "tolerance": TOLERANCE,
                                "inputs": {k: list(np.shape(v)) for k, v in feeds.items()
                                           if not k.startswith("past_key_values.")}},
                      "sizes": {"model_bytes": files["model.ort"]["size_bytes"],
                                "total_bytes": sum(v["size_bytes"] for v in files.values())},
                      "files": files}
            (tmp / "pack.json").write_text(json.dumps(record, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"wrote {out}")
    return record
