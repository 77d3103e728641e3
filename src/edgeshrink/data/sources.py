"""Where examples come from: a built-in data set, a CSV or JSONL file, or a `datasets.load_from_disk` dir."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field, field_validator

from edgeshrink.config import Config
from edgeshrink.data import builtin
from edgeshrink.errors import EdgeshrinkError


@dataclass(frozen=True)
class Examples:
    """Text classification examples; labels are names (strings), ``label_names`` fixes their order.

    ``name`` is short, for messages and tables (``data.csv``); ``source`` is how they were read, with the
    path made absolute (``load_data`` sets it), so that a record of them can be read again from anywhere.
    """

    name: str
    ids: list[str]
    texts: list[str]
    labels: list[str]
    label_names: tuple[str, ...] = field(default=())
    source: "DataConfig | None" = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: list[int]) -> "Examples":
        return Examples(self.name, [self.ids[i] for i in rows], [self.texts[i] for i in rows],
                        [self.labels[i] for i in rows], self.label_names, self.source)

    def head(self, n: int) -> "Examples":
        return self.subset(list(range(min(n, len(self)))))


class DataConfig(Config):
    """A data source. ``source`` is a built-in name (``sentiment-movies``) or a path."""

    version: int = 1
    source: str
    text_column: str = "text"
    label_column: str | None = "label"  # None: unlabelled text (label-free router calibration)
    id_column: str = "id"
    sample: int | None = Field(None, ge=10)  # keep this many examples (a fixed, seeded subset: quick runs)
    # the data's label names -> the model's ({pos: positive, neg: negative}); every label of the data mapped
    label_map: dict[str, str] | None = None

    @field_validator("label_map")
    @classmethod
    def _one_to_one(cls, mapping):
        if mapping is None:
            return None
        if not mapping:
            raise ValueError("an empty label map maps nothing")
        targets: dict[str, str] = {}
        for source, target in mapping.items():
            if not source or not target:
                raise ValueError("label names in a label map cannot be empty")
            if target in targets:
                raise ValueError(f"labels {targets[target]!r} and {source!r} both map to {target!r}: a label map is "
                                 f"one to one")
            targets[target] = source
        return mapping

    def to_dict(self) -> dict:
        data = super().to_dict()
        if data.get("label_map") is None:  # absent, not null: configs (and cache keys) from before label maps hold
            data.pop("label_map", None)
        return data

    def resolved(self) -> "DataConfig":
        """The same data, named independently of the working directory: a built-in name as is, a path absolute."""
        if is_builtin(self.source):
            return self
        return self.model_copy(update={"source": str(Path(self.source).resolve())})


def is_builtin(source: str) -> bool:
    """Whether ``source`` names a built-in data set (text or image) rather than a path."""
    from edgeshrink.data.images import IMAGE_DATASETS

    return source in builtin.BUILTINS or source in IMAGE_DATASETS


def load_data(config: DataConfig | str) -> Examples:
    """The examples of a data source: ``Examples`` (texts), or ``ImageExamples`` for a built-in image set."""
    if isinstance(config, str):
        config = DataConfig(source=config)
    examples = dataclasses.replace(_load(config), source=config.resolved())
    if config.label_map is not None:
        examples = map_labels(examples, config.label_map)
    if config.sample is not None and config.sample < len(examples):
        order = sorted(range(len(examples)), key=lambda i: hashlib.sha256(f"sample:{examples.ids[i]}".encode()).hexdigest())
        examples = examples.subset(sorted(order[:config.sample]))
    return examples


def parse_label_map(text: str) -> dict[str, str]:
    """``pos=positive,neg=negative`` → {"pos": "positive", "neg": "negative"} (the CLI's --label-map)."""
    mapping: dict[str, str] = {}
    for part in text.split(","):
        source, sep, target = part.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise EdgeshrinkError(f"--label-map: {part.strip()!r} is not DATA_LABEL=MODEL_LABEL "
                                  f"(e.g. pos=positive,neg=negative)")
        if source.strip() in mapping:
            raise EdgeshrinkError(f"--label-map: label {source.strip()!r} is mapped twice")
        mapping[source.strip()] = target.strip()
    return mapping


def map_labels(examples, mapping: dict[str, str]):
    """The examples with their label names replaced by the model's. Every label of the data must be mapped (a
    partial map is an error: an unmapped label would silently count as a wrong answer); a map may name labels
    this data lacks (one map for several files). Targets the model lacks are refused where data meets model."""
    if not examples.label_names:
        raise EdgeshrinkError(f"data {examples.name!r} has no labels to map (label_map given)")
    unmapped = [name for name in examples.label_names if name not in mapping]
    if unmapped:
        raise EdgeshrinkError(f"label map: data {examples.name!r} has labels the map does not cover: {unmapped} "
                              f"(map every label: {', '.join(f'{n}=...' for n in examples.label_names)})")
    return dataclasses.replace(examples, labels=[mapping[y] for y in examples.labels],
                               label_names=tuple(mapping[n] for n in examples.label_names))


def _load(config: DataConfig) -> Examples:
    from edgeshrink.data.images import IMAGE_DATASETS

    if config.source in IMAGE_DATASETS:
        return IMAGE_DATASETS[config.source]()
    if config.source in builtin.BUILTINS:
        spec = builtin.BUILTINS[config.source]
        rows = builtin.load_builtin_rows(config.source)
        return _from_rows(config.source, rows, DataConfig(source=config.source), spec.label_names)
    path = Path(config.source)
    if not path.exists():
        known = ", ".join([*builtin.BUILTINS, *IMAGE_DATASETS])
        raise EdgeshrinkError(f"data {config.source!r} is neither an existing path nor a built-in data set ({known})")
    if path.is_dir():
        return _from_disk_dataset(path, config)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise EdgeshrinkError(f"data file {path} must be .csv or .jsonl (or a datasets.load_from_disk directory)")
    try:
        return _from_rows(path.name, _read_csv(path) if suffix == ".csv" else _read_jsonl(path), config)
    except UnicodeDecodeError:
        raise EdgeshrinkError(f"{path} is not UTF-8 text") from None


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except csv.Error as exc:
        raise EdgeshrinkError(f"{path}: malformed CSV ({exc})") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise EdgeshrinkError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise EdgeshrinkError(f"{path}:{lineno}: each line must be a JSON object")
                rows.append(row)
    return rows


def _from_disk_dataset(path: Path, config: DataConfig) -> Examples:
    if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
        raise EdgeshrinkError(f"{path} is a directory but not one saved by datasets' save_to_disk")
    try:
        import datasets
    except ImportError:
        raise EdgeshrinkError("reading a load_from_disk directory needs the package `datasets`") from None
    loaded = datasets.load_from_disk(str(path))
    # A DatasetDict is flattened: edgeshrink makes its own seeded split so every command shares it.
    parts = [loaded[k] for k in sorted(loaded.keys())] if isinstance(loaded, datasets.DatasetDict) else [loaded]
    rows: list[dict] = []
    label_names: tuple[str, ...] = ()
    for part in parts:
        feature = part.features.get(config.label_column)
        if isinstance(feature, datasets.ClassLabel):
            label_names = tuple(feature.names)
        rows += [dict(row) for row in part]
    if label_names:
        for row in rows:
            row[config.label_column] = label_names[int(row[config.label_column])]
    return _from_rows(path.name, rows, config, label_names or None)


def _from_rows(name: str, rows: list[dict], config: DataConfig, label_names=None) -> Examples:
    if not rows:
        raise EdgeshrinkError(f"data {name!r} has no rows")
    columns = set(rows[0])
    for role, column in (("text", config.text_column), ("label", config.label_column)):
        if column is not None and column not in columns:
            raise EdgeshrinkError(f"data {name!r} has no {role} column {column!r} (columns: {', '.join(sorted(columns))}); "
                                  f"choose it with --{role}-column")
    ids, texts, labels = [], [], []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        text = row.get(config.text_column)
        label = row.get(config.label_column) if config.label_column is not None else "unlabelled"
        if text is None or str(text).strip() == "" or label is None or str(label) == "":
            raise EdgeshrinkError(f"data {name!r} row {i + 1}: empty {config.text_column!r} or {config.label_column!r}")
        ident = str(row[config.id_column]) if config.id_column in row else str(i)
        if ident in seen:
            raise EdgeshrinkError(f"data {name!r}: duplicate id {ident!r} in column {config.id_column!r}")
        seen.add(ident)
        ids.append(ident)
        texts.append(str(text))
        labels.append(str(label))
    if config.label_column is None:
        return Examples(name, ids, texts, labels, ())
    names = tuple(label_names) if label_names else tuple(sorted(set(labels), key=_natural_key))
    unknown = set(labels) - set(names)
    if unknown:
        raise EdgeshrinkError(f"data {name!r} has labels outside {names}: {sorted(unknown)}")
    return Examples(name, ids, texts, labels, names)


def _natural_key(label: str):
    """Integer labels sort as numbers (2 < 10); other labels alphabetically."""
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)
