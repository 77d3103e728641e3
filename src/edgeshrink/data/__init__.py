"""Data sources (built-in data sets, CSV/JSONL, `datasets.load_from_disk`) and the one shared split."""

from edgeshrink.data.sources import DataConfig, Examples, load_data
from edgeshrink.data.split import Split, SplitConfig, split_examples, split_for_training

__all__ = ["DataConfig", "Examples", "Split", "SplitConfig", "load_data", "split_examples", "split_for_training"]
