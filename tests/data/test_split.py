import random
from collections import Counter

import pytest

from edgeshrink.data import Examples, SplitConfig, split_examples, split_for_training
from edgeshrink.errors import EdgeshrinkError


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


def test_training_refuses_one_class_and_evaluation_keeps_it():
    one_class = Examples("pos.csv", [f"id{i}" for i in range(40)], [f"text {i}" for i in range(40)], ["pos"] * 40,
                         ("pos",))
    with pytest.raises(EdgeshrinkError) as err:
        split_for_training(one_class)
    assert str(err.value) == ("data 'pos.csv' has one class ('pos') in 40 examples: training a classifier needs at "
                              "least 2 (check the label column)")
    # a label set that names two classes is no better when the rows hold one
    with pytest.raises(EdgeshrinkError, match="has one class"):
        split_for_training(Examples("x", one_class.ids, one_class.texts, one_class.labels, ("neg", "pos")))
    # evaluating or calibrating on one class is still a split
    assert len(split_examples(one_class).test) == 6
    assert split_for_training(_examples()).sha256 == split_examples(_examples()).sha256
