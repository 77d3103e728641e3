"""The machine's measured peak fp32 GEMM rate: the physical limit each latency is compared against."""

from __future__ import annotations

import time

import numpy as np


def _matmul_model(n: int) -> bytes:
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])
    c = helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", [a, b], [c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def peak_gemm(threads: int, repeats: int = 10) -> dict[str, float]:
    """The machine's fp32 GEMM peak at ``threads``: the best of ONNX Runtime (MLAS) at 512³ and 1024³ and
    numpy's BLAS at 1024³, so the limit is the fastest dense fp32 math this machine does, not one library's."""
    rates = {f"onnxruntime-{n}": ort_gemm_gflops(threads, n, repeats) for n in (512, 1024)}
    rates["numpy-1024"] = numpy_gemm_gflops(threads, 1024, repeats)
    return rates


def _best_seconds(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def numpy_gemm_gflops(threads: int, n: int = 1024, repeats: int = 10) -> float:
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    with threadpool_limits(threads):
        return 2.0 * n ** 3 / _best_seconds(lambda: a @ b, repeats) / 1e9


def ort_gemm_gflops(threads: int, n: int = 1024, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s of an n×n×n MatMul in ONNX Runtime (MLAS) at ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(_matmul_model(n), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((n, n), dtype=np.float32), "b": rng.standard_normal((n, n), dtype=np.float32)}
    return 2.0 * n ** 3 / _best_seconds(lambda: session.run(None, feeds), repeats) / 1e9


def memory_bandwidth(threads: int, megabytes: int = 512, repeats: int = 5) -> dict[str, float]:
    """The machine's read bandwidth in GB/s at ``threads``: the best of a BLAS matrix-vector product (what a
    decode step does with its weights) and a plain sum split over ``threads`` threads, over an array far
    larger than the caches, so the figure is DRAM's, not a cache's."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    n = megabytes * (1 << 20) // 4
    table = np.ones((n // 1024, 1024), dtype=np.float32)
    vector = np.ones(1024, dtype=np.float32)
    parts = np.array_split(table, threads)
    with threadpool_limits(threads):
        gemv = _best_seconds(lambda: table @ vector, repeats, warmup=1)
    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL inside a reduction
        summed = _best_seconds(lambda: list(pool.map(np.sum, parts)), repeats, warmup=1)
    return {"numpy-gemv": table.nbytes / gemv / 1e9, "numpy-sum": table.nbytes / summed / 1e9}
