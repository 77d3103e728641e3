"""Image classification data as arrays: the plain-PyTorch (non-text) path.

    from edgeshrink.data import load_data, split_examples
    digits = load_data("digits")                 # ImageExamples: inputs (1797, 1, 8, 8) float32 in [0, 1]
    split = split_examples(digits)               # the same seeded, stratified split as text data

``ImageExamples`` has the ids, labels and ``subset`` that ``split_examples`` and ``DataConfig.sample``
use, so image data shares the one split convention (rank of ``sha256(seed:id)`` within each label) and
its recorded hash. Built-in image data sets ship with an installed package and never touch the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError


@dataclass(frozen=True)
class ImageExamples:
    """Images as one float32 array (n, channels, height, width); labels are names, as for text."""

    name: str
    ids: list[str]
    inputs: np.ndarray
    labels: list[str]
    label_names: tuple[str, ...] = field(default=())
    source: Config | None = None  # the DataConfig they were read with (``load_data`` sets it), as for text

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: list[int]) -> "ImageExamples":
        return ImageExamples(self.name, [self.ids[i] for i in rows], self.inputs[list(rows)],
                             [self.labels[i] for i in rows], self.label_names, self.source)

    def head(self, n: int) -> "ImageExamples":
        return self.subset(list(range(min(n, len(self)))))


def digits() -> ImageExamples:
    """scikit-learn's bundled handwritten digits: 1,797 grey 8x8 images, 10 classes, pixels 0-16 scaled to [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise EdgeshrinkError("data 'digits' needs the package scikit-learn: pip install 'edgeshrink[demo]'") from None
    bunch = load_digits()  # read from files inside the sklearn package: no download
    inputs = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = [str(int(t)) for t in bunch.target]
    return ImageExamples("digits", [str(i) for i in range(len(labels))], inputs, labels,
                         tuple(str(i) for i in range(10)))


IMAGE_DATASETS: dict[str, Callable[[], ImageExamples]] = {"digits": digits}


def model_inputs(examples):
    """What a predictor takes for these examples: the image array, or the list of texts."""
    return examples.inputs if isinstance(examples, ImageExamples) else examples.texts


def is_image_data(source) -> bool:
    """Whether a data source (a name or a DataConfig) is a built-in image data set."""
    return str(getattr(source, "source", source)) in IMAGE_DATASETS
