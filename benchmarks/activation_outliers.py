"""Where the calibration statistics of an LLM bundle come from (issue 28, "why GPTQ loses"): for every MatMul input
of the fp32 graph, the share of Σx² (the trace of GPTQ's H = XᵀX, and the calibrated grid's importance) that the
first position of each document carries, against its 1/T share of the positions.

    PYTHONPATH=src .venv/bin/python benchmarks/activation_outliers.py runs/smollm2-fp32 [--documents 8] [--tokens 512]

Prints the distribution over MatMul inputs and writes nothing.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from edgeshrink.data.lm_text import load_lm_text
from edgeshrink.doctor import cpu_info
from edgeshrink.runtime.generate import Generator, prefill_feeds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("fp32", type=Path)
    parser.add_argument("--documents", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=512)
    args = parser.parse_args()

    import onnx

    from edgeshrink.runtime.bundle import open_session

    tokenizer = Generator(args.fp32, verify=False).tokenizer
    text = load_lm_text("bbc-news", "calibration")
    docs = [tokenizer.encode(t).ids[:args.tokens] for t in text.texts[16:16 + args.documents]]
    model = onnx.load(str(args.fp32 / "model.onnx"))
    inits = {i.name for i in model.graph.initializer}
    names = list(dict.fromkeys(n.input[0] for n in model.graph.node
                               if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in inits))
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "m.onnx"
        onnx.save(model, str(path), save_as_external_data=True, location="m.onnx.data")
        del model
        session = open_session(path)
        inputs = {i.name: i for i in session.get_inputs()}
        first = {n: 0.0 for n in names}
        total = {n: 0.0 for n in names}
        peak_first = {n: 0 for n in names}
        positions = 0
        for ids in docs:
            for name, value in zip(names, session.run(names, prefill_feeds(inputs, ids))):
                x = value.reshape(-1, value.shape[-1]).astype(np.float64)
                sq = np.square(x).sum(axis=1)
                first[name] += float(sq[0])
                total[name] += float(sq.sum())
                peak_first[name] += int(np.abs(x).max(axis=1).argmax() == 0)
            positions += len(ids)
    share = np.array([first[n] / total[n] for n in names])
    fair = len(docs) / positions
    print(f"ISA {' '.join(cpu_info().get('isa', []))}; {len(docs)} bbc-news calibration documents, "
          f"{positions} positions; a position's fair share of Σx² is {100 * fair:.2f}%")
    print(f"{len(names)} MatMul inputs: first position's share of Σx² median {100 * np.median(share):.1f}%, "
          f"p90 {100 * np.percentile(share, 90):.1f}%, max {100 * share.max():.1f}%; "
          f"over 50% in {(share > 0.5).sum()}, over 10x fair in {(share > 10 * fair).sum()}")
    print(f"the largest |x| of the document sits at the first position in "
          f"{sum(peak_first.values())} of {len(names) * len(docs)} (input, document) pairs")
    for name, value in sorted(zip(names, share), key=lambda p: -p[1])[:8]:
        print(f"  {value:6.1%}  {name}")


if __name__ == "__main__":
    main()
