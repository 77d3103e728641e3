"""Reading a record's data again: the recorded source (or one given instead), split the recorded way, checked.

    from edgeshrink.data import load_data
    from edgeshrink.data.provenance import data_to_read, split_as_recorded
    recorded = manifest["split"]          # or a model record's ["data"]["split"], a router's ["data"]["split"]
    examples = load_data(data_to_read(recorded, data=None, what="this bundle"))
    split = split_as_recorded(examples, recorded, "this bundle")

Every split info (``Split.info()``) keeps ``data``: the data config it was read with, its path made
absolute, so reading it again does not depend on the working directory. ``data`` points elsewhere (a
moved or copied file); given as a path, it is read with the recorded columns and sample. Data that does
not give the recorded split is refused, naming both hashes. Split infos written before ``data`` was
kept name their data only by its short name (``dataset``): that still works for a built-in data set;
otherwise ``data`` must be given.
"""

from __future__ import annotations

from pathlib import Path

from edgeshrink.data.sources import DataConfig, is_builtin
from edgeshrink.data.split import Split, SplitConfig, split_examples
from edgeshrink.errors import EdgeshrinkError


def data_to_read(recorded: dict | None, data: DataConfig | str | Path | None = None,
                 what: str = "this bundle") -> DataConfig:
    """``data`` if given (a bare path is read with the recorded columns and sample), else the recorded data."""
    if isinstance(data, DataConfig):
        return data
    reading = (recorded or {}).get("data")
    if data is not None:
        return DataConfig.from_dict({**(reading or {}), "source": str(data)})
    if not recorded:
        raise EdgeshrinkError(f"{what} records no data split: pass --data")
    if reading is None:  # recorded before the resolved source was kept: a short name only
        name = recorded["dataset"]
        if is_builtin(name):
            return DataConfig(source=name)
        raise EdgeshrinkError(f"{what} records its data only as {name!r}, not a built-in data set (it was made "
                              f"before full paths were recorded): pass --data with the path of that file")
    config = DataConfig.from_dict(reading)
    if not is_builtin(config.source) and not Path(config.source).exists():
        raise EdgeshrinkError(f"{what} was made on {config.source}, which is not there any more: pass --data with "
                              f"where that data is now")
    return config


def split_as_recorded(examples, recorded: dict | None, what: str = "this bundle",
                      default: SplitConfig | None = None) -> Split:
    """``examples`` split with the recorded seed and fractions (``default`` when nothing is recorded);
    refused when the split's hash is not the recorded one (other rows, ids or labels)."""
    if not recorded:
        return split_examples(examples, default or SplitConfig())
    config = SplitConfig(seed=recorded["seed"], train_fraction=recorded["fractions"]["train"],
                         calibration_fraction=recorded["fractions"]["calibration"])
    split = split_examples(examples, config)
    if split.sha256 != recorded["sha256"]:
        raise EdgeshrinkError(f"data {examples.name!r} does not give the split {what} was made with: split sha256 "
                              f"{split.sha256[:12]} != recorded {recorded['sha256'][:12]} (other rows, ids or labels)")
    return split
