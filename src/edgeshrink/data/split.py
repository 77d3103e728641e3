"""The one seeded train / calibration / test split that every command shares.

Each example goes to a split by the rank of ``sha256(seed:id)`` within its label, so the split is
stratified, exact in size, independent of row order, and reproducible from (seed, ids) alone.
No figure is ever computed on data a step was tuned on: training uses ``train``, thresholds and
temperature use ``calibration``, reported figures use ``test``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydantic import field_validator

from edgeshrink.config import Config
from edgeshrink.data.sources import Examples
from edgeshrink.errors import EdgeshrinkError

PARTS = ("train", "calibration", "test")

class SplitConfig(Config):
    version: int = 1
    seed: int = 0
    train_fraction: float = 0.70
    calibration_fraction: float = 0.15  # the rest is test

    @field_validator("train_fraction", "calibration_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError("must be between 0 and 1")
        return value

    def model_post_init(self, _context) -> None:
        if self.train_fraction + self.calibration_fraction >= 1.0:
            raise ValueError("train_fraction + calibration_fraction must leave room for a test split")


@dataclass(frozen=True)
class Split:
    train: Examples
    calibration: Examples
    test: Examples
    config: SplitConfig

    @property
    def sha256(self) -> str:
        """Hash of the example ids in each part (and the seed): the split's identity in manifests."""
        digest = hashlib.sha256(f"seed={self.config.seed}".encode())
        for name in PARTS:
            digest.update(f"\n[{name}]\n".encode())
            digest.update("\n".join(getattr(self, name).ids).encode("utf-8"))
        return digest.hexdigest()

    def info(self) -> dict:
        """The split's identity in records and manifests; ``data`` is how to read its data again (see provenance)."""
        source = self.test.source
        return {
            "dataset": self.test.name,  # short, for tables and reports
            "data": source.to_dict() if source is not None else None,
            "seed": self.config.seed,
            "fractions": {"train": self.config.train_fraction, "calibration": self.config.calibration_fraction},
            "sizes": {name: len(getattr(self, name)) for name in PARTS},
            "sha256": self.sha256,
        }

    def data_record(self) -> dict:
        """A model record's ``data``: the resolved source (a built-in name or an absolute path), a short name, the split."""
        source = self.test.source
        return {"source": source.source if source is not None else self.test.name, "name": self.test.name,
                "split": self.info()}

    def part(self, name: str) -> Examples:
        if name not in PARTS:
            raise ValueError(f"unknown split part {name!r}")
        return getattr(self, name)


def split_examples(examples: Examples, config: SplitConfig | None = None) -> Split:
    config = config or SplitConfig()
    if not examples.label_names:
        raise EdgeshrinkError(f"data {examples.name!r} was read without labels; this step needs a label column")

    def rank(i: int) -> str:
        return hashlib.sha256(f"{config.seed}:{examples.ids[i]}".encode("utf-8")).hexdigest()

    parts: dict[str, list[int]] = {name: [] for name in PARTS}
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(examples.labels):
        by_label.setdefault(label, []).append(i)
    for label in sorted(by_label):
        rows = sorted(by_label[label], key=rank)
        n_train = round(len(rows) * config.train_fraction)
        n_cal = round(len(rows) * config.calibration_fraction)
        parts["train"] += rows[:n_train]
        parts["calibration"] += rows[n_train:n_train + n_cal]
        parts["test"] += rows[n_train + n_cal:]
    # Keep a stable order inside each part (sorted by rank key, labels interleaved).
    return Split(*(examples.subset(sorted(rows, key=rank)) for rows in parts.values()), config)


def split_for_training(examples: Examples, config: SplitConfig | None = None) -> Split:
    """``split_examples`` for a verb that trains a classifier on the labels: it needs at least two classes.

    A model trained on one class answers it always and reports 100% test accuracy. Only training refuses: a
    data set that only evaluates or calibrates a model may hold one class (say, a slice of hard negatives)."""
    present = sorted(set(examples.labels))
    if examples.label_names and len(present) < 2:
        raise EdgeshrinkError(f"data {examples.name!r} has one class ({present[0]!r}) in {len(examples)} examples: "
                              f"training a classifier needs at least 2 (check the label column)")
    return split_examples(examples, config)
