"""Intervals and paired tests used in reports."""

import math

import numpy as np
import pytest

from edgeshrink.stats import paired_perplexity_bootstrap


def test_paired_bootstrap_sees_a_real_gap_and_not_a_fake_one():
    rng = np.random.default_rng(1)
    tokens = rng.integers(100, 400, size=60)
    base = tokens * rng.normal(3.0, 0.3, size=60)  # ~e^3 = 20 perplexity, documents vary
    worse = base + tokens * 0.2  # every document 0.2 nats/token worse: perplexity x e^0.2
    result = paired_perplexity_bootstrap(worse, base, tokens)
    assert math.isclose(result["ratio"], math.exp(0.2), rel_tol=1e-9)
    assert result["difference_ci95"][0] > 0 and result["ratio_ci95"][0] > 1
    noise = base + tokens * rng.normal(0, 0.3, size=60)  # no systematic gap
    same = paired_perplexity_bootstrap(noise, base, tokens)
    assert same["ratio_ci95"][0] < 1.0 < same["ratio_ci95"][1]
    assert paired_perplexity_bootstrap(worse, base, tokens) == result  # seeded
    with pytest.raises(ValueError):
        paired_perplexity_bootstrap([1.0], [1.0], [3])
