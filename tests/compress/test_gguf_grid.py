"""A GGUF's own integer grid, read back and carried into MatMulNBits / GatherBlockQuantized without re-rounding."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

from edgeshrink.compress.quantize.gguf_grid import GridIndex, keep_gguf_grid, read_gguf_grids  # noqa: E402

# format -> (kernel bits, has a float offset per block)
EXPECTED = {"Q4_0": (4, False), "Q4_1": (4, True), "Q5_0": (8, False), "Q5_1": (8, True), "Q8_0": (8, False),
            "Q4_K": (4, True), "Q5_K": (8, True), "Q6_K": (8, False)}
K_BLOCK_BYTES = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}


def _raw(qtype: str, rows: int, cols: int, seed: int) -> np.ndarray:
    """Blocks of ``qtype`` for a [rows, cols] tensor: gguf-py's quantizer where it has one, else random codes
    with sane fp16 scales (the k-quants, which gguf-py only dequantizes)."""
    rng = np.random.default_rng(seed)
    if qtype not in K_BLOCK_BYTES:
        return quantize(rng.standard_normal((rows, cols)).astype(np.float32), T[qtype])
    size = K_BLOCK_BYTES[qtype]
    blocks = rng.integers(0, 256, (rows * cols // 256, size), dtype=np.uint8)
    half = lambda lo, hi: np.frombuffer(rng.uniform(lo, hi, (len(blocks), 1)).astype(np.float16).tobytes(),  # noqa: E731
                                        np.uint8).reshape(-1, 2)
    if qtype == "Q6_K":
        blocks[:, 208:210] = half(0.001, 0.01)  # d last; the 16 int8 scales before it stay random
    else:
        blocks[:, 0:2], blocks[:, 2:4] = half(0.001, 0.01), half(0.001, 0.01)  # d, dmin
    return blocks.reshape(rows, -1)


def _write_gguf(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    for name, (qtype, raw) in tensors.items():
        writer.add_tensor(name, raw, raw_dtype=T[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("qtype", sorted(EXPECTED))
def test_every_format_is_read_back_exactly(tmp_path, qtype):
    raw = _raw(qtype, 16, 512, seed=1)
    path = _write_gguf(tmp_path / "m.gguf", {"w": (qtype, raw)})
    grids, types = read_gguf_grids(path)
    assert types == {qtype: 1} and len(grids) == 1
    grid = grids[0]
    bits, has_offset = EXPECTED[qtype]
    assert (grid.bits, grid.offset is not None) == (bits, has_offset)
    assert grid.codes.max() < (1 << bits)
    expected = np.asarray(dequantize(raw, T[qtype]), np.float32)
    np.testing.assert_allclose(grid.reconstruct(), expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    assert grid.max_abs_error <= 1e-6 * np.abs(expected).max()


def test_rows_are_found_in_any_order_and_across_fused_tensors(tmp_path):
    q, k = _raw("Q4_1", 8, 64, seed=2), _raw("Q4_1", 4, 64, seed=3)
    grids, _ = read_gguf_grids(_write_gguf(tmp_path / "m.gguf", {"q": ("Q4_1", q), "k": ("Q4_1", k)}))
    index = GridIndex(grids)
    values = {g.name: g.values for g in grids}
    permuted = values["q"][[1, 0, 3, 2, 5, 4, 7, 6]]  # llama.cpp's q/k row permutation is such a reordering
    matched = index.match(permuted)
    assert matched is not None and np.array_equal(matched.reconstruct(), permuted)
    fused = np.concatenate([values["q"], values["k"]])  # a packed q/k projection (onnxruntime-genai's builder)
    assert np.array_equal(index.match(fused).reconstruct(), fused)
    assert index.match(values["q"] + 1e-3) is None  # weights off the grid are not matched


def _tiny_graph(path: Path, embedding: np.ndarray, weight: np.ndarray) -> None:
    """ids -> Gather(E) -> MatMul(W) -> MatMul(Transpose(E)) = logits: a tied embedding and LM head around one
    linear layer, as optimum exports SmolLM2."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Gather", ["E", "ids"], ["h0"]),
             helper.make_node("MatMul", ["h0", "W"], ["h1"]),
             helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0]),
             helper.make_node("MatMul", ["h1", "Et"], ["logits"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, "n"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "n", embedding.shape[0]])],
                              [numpy_helper.from_array(embedding, "E"), numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _run(path: Path, ids: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]


@pytest.mark.parametrize("head_bits", [None, 4])
def test_keep_gguf_grid_rewrites_a_tied_head_once(tmp_path, head_bits):
    import onnx

    vocab, hidden = 96, 64
    emb_raw, w_raw = _raw("Q8_0", vocab, hidden, seed=4), _raw("Q4_1", hidden, hidden, seed=5)
    path = _write_gguf(tmp_path / "m.gguf", {"token_embd.weight": ("Q8_0", emb_raw), "blk.0.w": ("Q4_1", w_raw)})
    embedding = np.asarray(dequantize(emb_raw, T.Q8_0), np.float32)
    weight = np.asarray(dequantize(w_raw, T.Q4_1), np.float32)  # [out, in] as GGUF stores it
    _tiny_graph(tmp_path / "fp32.onnx", embedding, np.ascontiguousarray(weight.T))
    config = SimpleNamespace(head_bits=head_bits, block_size=32, accuracy_level=0)
    report = keep_gguf_grid(tmp_path / "fp32.onnx", tmp_path / "q.onnx", path, config)
    assert report["matmuls_left"] == []
    if head_bits is None:
        assert report["kept"] == {"Q8_0": 1, "Q4_1": 1} and report["rounded"] == {}
    else:
        assert report["kept"] == {"Q4_1": 1} and report["rounded"]["token_embd.weight"]["bits"] == 4
    nodes = onnx.load(str(tmp_path / "q.onnx")).graph.node
    ops = [n.op_type for n in nodes]
    assert ops.count("MatMulNBits") == 2 and ops.count("GatherBlockQuantized") == 1
    assert not any("E" in n.input for n in nodes)  # the fp32 table (and its Transpose) are gone
    codes = [i.name for i in onnx.load(str(tmp_path / "q.onnx")).graph.initializer if "/codes" in i.name]
    assert len(codes) == 2  # the embedding and the LM head share one table
    ids = np.arange(vocab, dtype=np.int64)[None]
    reference, got = _run(tmp_path / "fp32.onnx", ids), _run(tmp_path / "q.onnx", ids)
    spread = np.abs(reference).max()
    if head_bits is None:  # the same weights; the 8-bit head computes with int8 activations
        assert np.abs(got - reference).max() < 0.02 * spread
        assert (got.argmax(-1) == reference.argmax(-1)).mean() > 0.95
    else:  # a re-rounded head: visibly different, the report says how much
        assert report["rounded"]["token_embd.weight"]["max_abs_error"] > 0
        assert np.abs(got - reference).max() > 1e-4


def test_weights_off_the_grid_are_left_for_round_to_nearest_and_the_table_is_rounded(tmp_path):
    path = _write_gguf(tmp_path / "m.gguf", {"w": ("Q4_1", _raw("Q4_1", 32, 64, seed=6))})
    rng = np.random.default_rng(7)
    _tiny_graph(tmp_path / "fp32.onnx", rng.standard_normal((32, 64)).astype(np.float32),
                rng.standard_normal((64, 64)).astype(np.float32))
    config = SimpleNamespace(head_bits=None, block_size=32, accuracy_level=0)
    report = keep_gguf_grid(tmp_path / "fp32.onnx", tmp_path / "q.onnx", path, config)
    assert report["kept"] == {} and len(report["matmuls_left"]) == 1  # W; ORT's quantizer takes it
    assert report["rounded"]["E"]["bits"] == 4  # the tied table, rounded once for the Gather and the head
    json.dumps(report)  # goes into the manifest as is
