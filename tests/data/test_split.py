import random
from collections import Counter

from edgeshrink.data import Examples, SplitConfig, split_examples


def _examples(n=1000, seed=0):
    rng = random.Random(seed)
    labels = [rng.choice("aab") for _ in range(n)]
    return Examples("toy", [f"id{i}" for i in range(n)], [f"text {i}" for i in range(n)], labels, ("a", "b"))


def test_sizes_stratified_and_disjoint():
    ex = _examples()
    split = split_examples(ex)
    parts = [split.train, split.calibration, split.test]
    assert sum(len(p) for p in parts) == len(ex)
    ids = [set(p.ids) for p in parts]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    share = Counter(ex.labels)["a"] / len(ex)
    for part in parts:
        assert abs(Counter(part.labels)["a"] / len(part) - share) < 0.01
    assert abs(len(split.test) / len(ex) - 0.15) < 0.01


def test_independent_of_row_order_and_reproducible():
    ex = _examples()
    rows = list(range(len(ex)))
    random.Random(1).shuffle(rows)
    a, b = split_examples(ex), split_examples(ex.subset(rows))
    assert set(a.test.ids) == set(b.test.ids)
    assert a.sha256 == b.sha256 == split_examples(_examples()).sha256


def test_seed_changes_split_and_hash():
    ex = _examples()
    a, b = split_examples(ex, SplitConfig(seed=0)), split_examples(ex, SplitConfig(seed=1))
    assert set(a.test.ids) != set(b.test.ids) and a.sha256 != b.sha256
    assert a.info()["sizes"] == {"train": len(a.train), "calibration": len(a.calibration), "test": len(a.test)}
