from collections import Counter

import numpy as np
import pytest

from edgeshrink.data import DataConfig, load_data, split_examples
from edgeshrink.data.images import IMAGE_DATASETS, ImageExamples, is_image_data, model_inputs
from edgeshrink.errors import EdgeshrinkError


def test_digits_are_image_arrays_with_label_names():
    digits = load_data("digits")
    assert isinstance(digits, ImageExamples) and len(digits) == 1797
    assert digits.inputs.shape == (1797, 1, 8, 8) and digits.inputs.dtype == np.float32
    assert digits.inputs.min() == 0.0 and digits.inputs.max() == 1.0
    assert digits.label_names == tuple(str(d) for d in range(10)) and set(digits.labels) == set(digits.label_names)
    assert model_inputs(digits) is digits.inputs


def test_digits_share_the_split_convention():
    digits = load_data("digits")
    split = split_examples(digits)
    parts = [split.train, split.calibration, split.test]
    assert [len(p) for p in parts] == [1258, 269, 270]
    assert not set(split.train.ids) & set(split.test.ids)
    for part in parts:  # stratified: every digit in every part, in proportion
        assert set(Counter(part.labels)) == set(digits.label_names)
    # each row's image travels with its id and label
    row = int(split.test.ids[0])
    np.testing.assert_array_equal(split.test.inputs[0], digits.inputs[row])
    assert split.test.labels[0] == digits.labels[row]
    # reproducible from (seed, ids) alone: the hash a bundle records
    assert split_examples(load_data("digits")).sha256 == split.sha256
    assert split.info()["dataset"] == "digits"


def test_sample_keeps_a_fixed_subset():
    a = load_data(DataConfig(source="digits", sample=300))
    b = load_data(DataConfig(source="digits", sample=300))
    assert len(a) == 300 and a.ids == b.ids and a.inputs.shape == (300, 1, 8, 8)


def test_kind_helpers_and_unknown_names():
    assert is_image_data("digits") and is_image_data(DataConfig(source="digits"))
    assert not is_image_data("sentiment-movies") and "digits" in IMAGE_DATASETS
    with pytest.raises(EdgeshrinkError, match="digits"):  # the error lists the image data sets too
        load_data("no-such-data")
