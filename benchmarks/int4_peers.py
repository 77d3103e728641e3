"""INT4 quantizers side by side on one fp32 language-model bundle (issue 28): edgeshrink's own bundles (made with
`edgeshrink quantize`, passed with --ours NAME=DIR) and ONNX Runtime's `matmul_nbits_quantizer` algorithms
applied here to the same fp32 graph, every one scored on the same BBC test windows against the fp32 bundle.

ORT's algorithms (onnxruntime.quantization.matmul_nbits_quantizer, the package's own copies of Intel Neural
Compressor's RTN / GPTQ / k-quant, and HQQ), each at block 32, asymmetric (uint4 with zero points), accuracy level
4, every MatMul with a constant weight (the LM head included) quantized; the embedding Gather stays fp32 (ORT's
algorithms other than DEFAULT do not quantize it), so their files are larger than ours for that reason alone.
GPTQ runs on the same calibration documents as `quantize --grid calibrated` (bbc-news calibration part, the
documents after the first 16, cut to --calibration-tokens each).

    PYTHONPATH=src .venv/bin/python benchmarks/int4_peers.py runs/smollm2-fp32 \
        --ours calibrated=runs/smollm2-int4-calibrated --ours rtn=runs/smollm2-int4-rtn \
        [--algorithms default,rtn,hqq,k_quant,gptq] [--windows 16] [--window-tokens 256] [--out runs/int4-peers]

Prints a table and writes OUT/peers.json; the ORT-quantized bundles are kept in OUT/ort-ALGO.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path


from edgeshrink.compress.lm_eval import score_windows, text_windows
from edgeshrink.data.lm_text import load_lm_text
from edgeshrink.doctor import cpu_info
from edgeshrink.export.bundle import write_manifest
from edgeshrink.runtime.generate import Generator, prefill_feeds
from edgeshrink.stats import paired_perplexity_bootstrap

SKIPPED_EVAL_DOCUMENTS = 16  # quantize scores the first 16 calibration documents; the search uses the next ones


class Feeds:
    """ORT CalibrationDataReader: one prefill pass (an empty KV cache) per calibration document."""

    def __init__(self, inputs: dict, docs: list[list[int]]):
        self.items = [prefill_feeds(inputs, ids) for ids in docs]
        self.index = 0

    def __iter__(self):  # ORT's GPTQ path iterates the reader
        return iter(self.items)

    def get_next(self):
        if self.index == len(self.items):
            return None
        self.index += 1
        return self.items[self.index - 1]

    def rewind(self):
        self.index = 0


def ort_quantize(source: Path, out: Path, algorithm: str, docs: list[list[int]], manifest: dict,
                 inputs: dict) -> dict:
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    configs = {
        "default": lambda: mnq.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False, accuracy_level=4),
        "rtn": lambda: mnq.RTNWeightOnlyQuantConfig(),
        "k_quant": lambda: mnq.KQuantWeightOnlyQuantConfig(),
        "hqq": lambda: mnq.HQQWeightOnlyQuantConfig(block_size=32, bits=4),
        "gptq": lambda: mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=Feeds(inputs, docs), block_size=32),
    }
    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    started = time.perf_counter()
    model = onnx.load(str(source / "model.onnx"))
    quantizer = mnq.MatMulNBitsQuantizer(model, block_size=32, is_symmetric=False, accuracy_level=4,
                                         algo_config=configs[algorithm]())
    quantizer.process()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("model.onnx", "model.onnx.data", "manifest.json"))
    quantizer.model.save_model_to_file(str(tmp / "model.onnx"), use_external_data_format=True)
    fields = {k: v for k, v in manifest.items() if k not in ("files", "size_bytes", "schema_version", "kind",
                                                              "edgeshrink_version", "created_at", "created_on")}
    fields["quantization"] = {"method": f"ort-{algorithm}", "peer": "onnxruntime.quantization.matmul_nbits_quantizer",
                              "block_size": 32, "symmetric": False, "accuracy_level": 4}
    written = write_manifest(tmp, fields)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {"seconds": time.perf_counter() - started, "size_bytes": written["size_bytes"]}


def calibration_docs(tokenizer, documents: int, tokens: int) -> list[list[int]]:
    text = load_lm_text("bbc-news", "calibration")
    docs = []
    for doc in text.texts[SKIPPED_EVAL_DOCUMENTS:]:
        ids = tokenizer.encode(doc).ids[:tokens]
        if ids:
            docs.append(ids)
        if len(docs) == documents:
            break
    return docs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("fp32", type=Path)
    parser.add_argument("--ours", action="append", default=[], help="NAME=BUNDLE made by edgeshrink quantize")
    parser.add_argument("--algorithms", default="default,rtn,hqq,k_quant,gptq")
    parser.add_argument("--calibration-documents", type=int, default=16)
    parser.add_argument("--calibration-tokens", type=int, default=512)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--window-tokens", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path("runs/int4-peers"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((args.fp32 / "manifest.json").read_text())
    source = Generator(args.fp32, verify=False)
    docs = calibration_docs(source.tokenizer, args.calibration_documents, args.calibration_tokens)

    bundles = {"fp32": (args.fp32, None)}
    for spec in args.ours:
        name, _, path = spec.partition("=")
        bundles[f"edgeshrink {name}"] = (Path(path), None)
    made = {}
    for algorithm in [a for a in args.algorithms.split(",") if a]:
        out = args.out / f"ort-{algorithm}"
        print(f"ORT {algorithm}: quantizing …", file=sys.stderr, flush=True)
        try:
            made[algorithm] = ort_quantize(args.fp32, out, algorithm, docs, manifest, source.inputs)
        except Exception as exc:  # noqa: BLE001 - a peer that fails here is reported, not fatal
            print(f"ORT {algorithm}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
            made[algorithm] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            continue
        print(f"ORT {algorithm}: {made[algorithm]['seconds']:.0f} s", file=sys.stderr, flush=True)
        bundles[f"ORT {algorithm}"] = (out, algorithm)

    windows = text_windows(source.tokenizer, load_lm_text("bbc-news", "test"), args.windows, args.window_tokens)
    models = {name: Generator(path, verify=False).logits for name, (path, _) in bundles.items()}
    scores = score_windows(models, windows, reference="fp32",
                           progress=lambda message: print(message, file=sys.stderr, flush=True))
    rows = []
    for name, (path, algorithm) in bundles.items():
        size = json.loads((path / "manifest.json").read_text())["size_bytes"]
        row = {"name": name, "bundle": str(path), "size_bytes": size,
               **scores[name]}  # window_nll_nats / window_tokens kept: any two rows can be paired later
        if name != "fp32":
            row["perplexity_change"] = scores[name]["perplexity"] / scores["fp32"]["perplexity"] - 1
            boot = paired_perplexity_bootstrap(scores[name]["window_nll_nats"], scores["fp32"]["window_nll_nats"],
                                               scores["fp32"]["window_tokens"])
            row["ratio_to_fp32"], row["ratio_ci95"] = boot["ratio"], boot["ratio_ci95"]
        if algorithm:
            row["quantize_seconds"] = made[algorithm]["seconds"]
        rows.append(row)
    failed = {a: m["error"] for a, m in made.items() if "error" in m}
    result = {"cpu": cpu_info(), "fp32": str(args.fp32), "windows": len(windows), "window_tokens": args.window_tokens,
              "tokens": scores["fp32"]["tokens"], "calibration_documents": len(docs),
              "calibration_tokens": sum(map(len, docs)), "rows": rows, "failed": failed}
    (args.out / "peers.json").write_text(json.dumps(result, indent=2))
    print(f"ISA {' '.join(result['cpu'].get('isa', []))}; {len(windows)} bbc-news test windows, {result['tokens']} tokens")
    print("| quantizer | perplexity | vs fp32 | top-1 agreement | KL (nats/token) | size MB | quantize s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        change = "" if row["name"] == "fp32" else (f"{100 * row['perplexity_change']:+.1f}% "
                                                   f"[{100 * (row['ratio_ci95'][0] - 1):+.1f}, {100 * (row['ratio_ci95'][1] - 1):+.1f}]")
        print(f"| {row['name']} | {row['perplexity']:.2f} | {change} | {100 * row.get('top1_agreement', 1):.1f}% | "
              f"{row.get('kl_to_reference', 0):.4f} | {row['size_bytes'] / 1e6:.1f} | "
              f"{row.get('quantize_seconds', float('nan')):.0f} |")
    for algorithm, error in failed.items():
        print(f"ORT {algorithm}: failed: {error}")


if __name__ == "__main__":
    main()
