"""Why a language model decodes slowly in the browser (issue 29): one decode step of the INT4 bundle's graph, and of
an INT8 graph of the same model, in onnxruntime-web's wasm backend (1 thread, Node) and in Python ONNX Runtime
(1 thread), with the share of the step each operator takes in wasm (ORT's profiler).

    PYTHONPATH=src:. .venv/bin/python benchmarks/web_llm_kernels.py --int4 runs/smollm2-int4 --fp32 runs/smollm2-fp32 \
        [--past 32] [--runs 10]

The INT8 graph is onnxruntime.quantization.quantize_dynamic of the fp32 bundle's model (MatMul weights int8 per
channel, activations quantized per step: DynamicQuantizeLinear + MatMulInteger), built here as an experiment, not
a kept bundle: it asks whether the wasm build has a fast path for it that it lacks for MatMulNBits, and what that
costs in perplexity (the first --documents BBC calibration documents, against the fp32 bundle).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeshrink.compress.quantize.decoder import compare_on_text
from edgeshrink.doctor import cpu_info
from edgeshrink.export.bundle import WRITTEN_KEYS, write_manifest

HERE = Path(__file__).parent


def native_step(model: Path, past: list, length: int, runs: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    feeds = {"input_ids": np.array([[504]], np.int64), "attention_mask": np.ones((1, length + 1), np.int64)}
    feeds.update({name: np.zeros((1, heads, length, dim), np.float32) for name, heads, dim in past})
    feeds = {k: v for k, v in feeds.items() if k in names}
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def wasm_step(model: Path, past: list, length: int, runs: int) -> dict:
    from edgeshrink.web.pack import node_modules

    spec = {"past": past, "past_length": length, "runs": runs,
            "ort": str(node_modules() / "onnxruntime-web" / "dist" / "ort.wasm.min.mjs")}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    done = subprocess.run(["node", str(HERE / "web_step.mjs"), str(model), fh.name], capture_output=True, text=True,
                          check=True)
    lines = done.stdout.strip().splitlines()
    ops: dict[str, float] = {}
    for line in lines[:-1]:  # the profiler's events of the last (4 warm-up + 1 timed) runs: shares only
        try:
            event = json.loads(line.strip().rstrip(","))
        except ValueError:
            continue
        if isinstance(event, dict) and str(event.get("name", "")).endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            ops[op] = ops.get(op, 0) + event.get("dur", 0)
    return {**json.loads(lines[-1]), "op_us": ops}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--int4", type=Path, required=True, help="the INT4 language-model bundle")
    parser.add_argument("--fp32", type=Path, required=True, help="its fp32 bundle (the INT8 graph is made from it)")
    parser.add_argument("--past", type=int, default=32, help="positions already in the KV cache")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--documents", type=int, default=16, help="BBC calibration documents scored for perplexity")
    args = parser.parse_args()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    cpu = cpu_info()
    print(f"{cpu['model']}, ISA {' '.join(cpu['isa'])}")
    manifest = json.loads((args.int4 / "manifest.json").read_text())
    past = [[i["name"], i["shape"][1], i["shape"][3]] for i in manifest["inputs"] if i["name"].startswith("past_key_values.")]
    work = Path(tempfile.mkdtemp(prefix="edgeshrink-web-kernels-"))
    int8_bundle = work / "int8"
    int8_bundle.mkdir()
    int8 = int8_bundle / "model.onnx"
    quantize_dynamic(args.fp32 / "model.onnx", int8, op_types_to_quantize=["MatMul"], per_channel=True,
                     weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    source = json.loads((args.fp32 / "manifest.json").read_text())
    for name in (source["tokenizer"]["file"], source["tokenizer"].get("chat_template")):
        if name:
            shutil.copyfile(args.fp32 / name, int8_bundle / name)
    write_manifest(int8_bundle, {k: v for k, v in source.items() if k not in WRITTEN_KEYS})
    quality = {}
    for name, bundle in (("int4", args.int4), ("int8", int8_bundle)):  # perplexity against the fp32 bundle
        scored = compare_on_text(args.fp32, bundle, "bbc-news", args.documents, lambda *a: None)
        quality[name] = (scored["perplexity"] / scored["source_perplexity"] - 1, scored["top1_agreement"])
    rows = []
    for name, model in (("INT4 bundle (MatMulNBits)", args.int4 / "model.onnx"), ("INT8 graph (MatMulInteger)", int8)):
        native = native_step(model, past, args.past, args.runs)
        wasm = wasm_step(model, past, args.past, args.runs)
        total = sum(wasm["op_us"].values()) or 1
        top = sorted(wasm["op_us"].items(), key=lambda kv: -kv[1])[:3]
        rows.append((name, model.stat().st_size + sum(p.stat().st_size for p in model.parent.glob(model.name + ".data")),
                     native, wasm["step_ms"], ", ".join(f"{op} {100 * us / total:.0f}%" for op, us in top),
                     quality["int4" if "INT4" in name else "int8"]))
    print(f"\none decode step after {args.past} cached positions, 1 thread, median of {args.runs}")
    print(f"| graph | size MB | native ms/step | wasm ms/step | wasm / native | wasm time by operator | perplexity vs fp32 "
          f"({args.documents} BBC documents) | top-1 agreement |")
    print("|---|---|---|---|---|---|---|---|")
    for name, size, native, wasm, ops, (change, agreement) in rows:
        print(f"| {name} | {size / 1e6:.0f} | {native:.1f} | {wasm:.1f} | {wasm / native:.1f}x | {ops} | {100 * change:+.1f}% "
              f"| {100 * agreement:.1f}% |")


if __name__ == "__main__":
    main()
