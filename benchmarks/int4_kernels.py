"""Which MatMulNBits forms are fast on this CPU? (why INT4 keeps a GGUF's float minimum as a separate term)

    .venv/bin/python benchmarks/int4_kernels.py

One MatMulNBits node, 1 thread, interleaved rounds, median µs per call: a 576x1536 projection of SmolLM2
(4-bit, block 32) with no zero points / uint8 zero points / float zero points at accuracy levels 0 and 4,
against fp32 MatMul, at M = 1 (a decode step) and M = 128 (a prefill); then the 576x49152 LM head at 4 and
8 bits. Random weights: only the speed is measured.
"""
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)


def model(k, n, bits, acc, zero_points=None, block=32):
    blob = block * bits // 8
    nb = k // block
    inits = [numpy_helper.from_array(rng.integers(0, 256, (n, nb, blob)).astype(np.uint8), "B"),
             numpy_helper.from_array((rng.random(n * nb) * 0.01).astype(np.float32), "S")]
    inputs = ["x", "B", "S"]
    if zero_points == "float":
        inits.append(numpy_helper.from_array(rng.random(n * nb).astype(np.float32), "Z"))
        inputs.append("Z")
    elif zero_points == "uint8":
        inits.append(numpy_helper.from_array(rng.integers(0, 256, n * ((nb + 1) // 2)).astype(np.uint8), "Z"))
        inputs.append("Z")
    node = helper.make_node("MatMulNBits", inputs, ["y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=acc)
    return _graph([node], k, n, inits)


def fp32(k, n):
    w = numpy_helper.from_array(rng.random((k, n)).astype(np.float32), "W")
    return _graph([helper.make_node("MatMul", ["x", "W"], ["y"])], k, n, [w])


def _graph(nodes, k, n, inits):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])


def timed(sessions, m, k, calls, rounds=5):
    x = rng.random((m, k), dtype=np.float32)
    out = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            t = time.perf_counter()
            for _ in range(calls):
                s.run(None, {"x": x})
            out[name].append((time.perf_counter() - t) / calls * 1e6)
    return {name: round(float(np.median(v)), 1) for name, v in out.items()}


if __name__ == "__main__":
    k, n = 576, 1536
    sessions = {"fp32 MatMul": fp32(k, n)}
    for zp in (None, "uint8", "float"):
        for acc in (0, 4):
            sessions[f"4-bit, zero points {zp or 'default'}, accuracy {acc}"] = model(k, n, 4, acc, zp)
    for m, calls in ((1, 200), (128, 20)):
        print(f"{k}x{n}, M={m} (µs):", timed(sessions, m, k, calls))
    head = {f"{bits}-bit, accuracy {acc}": model(576, 49152, bits, acc) for bits in (4, 8) for acc in (0, 4)}
    print("576x49152 LM head, M=1 (µs):", timed(head, 1, 576, 20))
