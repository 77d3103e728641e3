"""The importance-weighted INT4 grid search (compress/quantize/calibrated.py) on known matrices."""

import numpy as np
import pytest

from edgeshrink.compress.quantize.calibrated import rtn_pairs, search_grid, weighted_error
from edgeshrink.errors import EdgeshrinkError


def _rtn_objectives(w: np.ndarray, imp: np.ndarray | None, bits: int = 4, block: int = 32) -> list[float]:
    """The objective of each round-to-nearest grid, computed here from its definition."""
    n, k = w.shape
    blocks = w.reshape(n, k // block, block)
    out = []
    for scale, zero in rtn_pairs(blocks, bits):
        safe = np.where(scale == 0, 1, scale)[..., None]
        codes = np.clip(np.rint(blocks / safe) + zero[..., None], 0, (1 << bits) - 1)
        out.append(weighted_error(w, (scale[..., None] * (codes - zero[..., None])).reshape(n, k), imp))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_search_is_never_worse_than_round_to_nearest(seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((96, 128)) * 0.05).astype(np.float32)
    w[rng.random(w.shape) < 0.01] *= 12  # outliers, as in real projections
    imp = rng.gamma(0.5, 1.0, 128).astype(np.float32)  # a few channels carry most of the activation energy
    grid, report = search_grid("w", w, imp)
    searched = weighted_error(w, grid.reconstruct(), imp)
    assert report["weighted_error"] == pytest.approx(searched)
    assert report["rtn_weighted_error"] == pytest.approx(min(_rtn_objectives(w, imp)))
    # per block too, not only in total: the RTN pairs are candidates of every block
    n, nb = w.shape[0], w.shape[1] // 32
    per_block = lambda approx: (imp.reshape(nb, 32) * np.square(w - approx).reshape(n, nb, 32)).sum(-1)  # noqa: E731
    blocks = w.reshape(n, nb, 32)
    for scale, zero in rtn_pairs(blocks, 4):
        codes = np.clip(np.rint(blocks / np.where(scale == 0, 1, scale)[..., None]) + zero[..., None], 0, 15)
        rtn = (scale[..., None] * (codes - zero[..., None])).reshape(w.shape)
        assert np.all(per_block(grid.reconstruct()) <= per_block(rtn) * (1 + 1e-5) + 1e-12)
    assert searched < 0.9 * min(_rtn_objectives(w, imp))  # and it finds better grids, not only equal ones
    assert grid.zero_points.dtype == np.uint8 and grid.zero_points.max() <= 15 and grid.codes.max() <= 15
    _, plain = search_grid("w", w, None)
    assert plain["weighted_error"] <= min(_rtn_objectives(w, None)) * (1 + 1e-6)


def test_a_matrix_on_an_integer_zero_point_grid_is_recovered_exactly():
    rng = np.random.default_rng(3)
    n, k = 16, 64
    codes = rng.integers(0, 16, (n, k)).astype(np.uint8)
    codes[:, 0::32], codes[:, 1::32] = 0, 15  # every block spans its grid
    scale = rng.uniform(0.01, 0.1, (n, k // 32)).astype(np.float32)
    zero = rng.integers(0, 16, (n, k // 32)).astype(np.uint8)
    w = ((codes.reshape(n, -1, 32).astype(np.float32) - zero[..., None]) * scale[..., None]).reshape(n, k)
    grid, report = search_grid("w", w, rng.uniform(0.1, 1, k).astype(np.float32))
    assert np.abs(grid.reconstruct() - w).max() <= 1e-6 * np.abs(w).max()
    assert report["weighted_error"] < 1e-12


def test_the_search_refuses_what_it_cannot_weigh():
    w = np.zeros((4, 40), np.float32)
    with pytest.raises(EdgeshrinkError, match="not a multiple of block size 32"):
        search_grid("w", w, None)
    with pytest.raises(EdgeshrinkError, match="importances"):
        search_grid("w", np.zeros((4, 32), np.float32), np.full(32, np.nan, np.float32))


def test_error_feedback_lowers_the_output_error_on_correlated_activations():
    from edgeshrink.compress.quantize.calibrated import calibrated_grid, gptq_grid, output_error

    rng = np.random.default_rng(5)
    mix = rng.standard_normal((64, 64)) * rng.gamma(0.5, 1.0, 64)  # correlated channels of unequal energy
    x = (rng.standard_normal((512, 64)) @ mix).astype(np.float32)
    h = x.T @ x / len(x)
    w = (rng.standard_normal((48, 64)) * 0.05).astype(np.float32)
    gptq = gptq_grid("w", w, h)
    assert gptq.codes.max() <= 15 and gptq.zero_points.max() <= 15
    searched, _ = search_grid("w", w, np.diag(h).copy())
    assert output_error(w, gptq.reconstruct(), h) < output_error(w, searched.reconstruct(), h)
    grid, report = calibrated_grid("w", w, h)
    assert report["method"] == "gptq"
    assert report["output_error"] == pytest.approx(output_error(w, grid.reconstruct(), h))
    assert report["output_error"] < report["rtn_output_error"] and report["gptq_output_error"] == report["output_error"]
    # y = x @ wᵀ: the error of the outputs themselves, as H says
    direct = np.square(x @ (w - grid.reconstruct()).T).sum() / np.square(x @ w.T).sum()
    assert report["output_error"] == pytest.approx(direct, rel=1e-3)
    _, plain = calibrated_grid("w", w, h, error_feedback=False)
    assert plain["method"] == "search" and "gptq_output_error" not in plain and plain["output_error"] > 0
    _, diagonal = calibrated_grid("w", w, np.diag(h).copy())  # the importances alone: the search, no H objectives
    assert diagonal["method"] == "search" and "output_error" not in diagonal
