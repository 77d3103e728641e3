"""Text for evaluating language models (perplexity, bits per byte), offline and split like everything else.

    from edgeshrink.data.lm_text import load_lm_text
    docs = load_lm_text("bbc-news")                 # BBC article bodies, the test split's articles
    docs = load_lm_text("shakespeare", "calibration")
    docs = load_lm_text("notes.txt")                # a user file: paragraphs (blank-line separated)
    docs = load_lm_text("corpus.jsonl")             # a user file: one document per line ("text", optional "id")
    docs = load_lm_text("texts/")                   # a directory of .txt files: one document per file

Documents go to train / calibration / test by the project's shared seeded split (by document id; for a
built-in set with its labels, so BBC's test articles are the classification task's), so a perplexity is
never measured on text a step was tuned on, and the split hash is recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgeshrink.data import Examples, SplitConfig, load_data, split_examples
from edgeshrink.data.builtin import BUILTINS
from edgeshrink.data.split import PARTS
from edgeshrink.errors import EdgeshrinkError


@dataclass(frozen=True)
class LMText:
    name: str
    part: str
    ids: list[str]
    texts: list[str]
    split: dict  # Split.info(): seed, fractions, sizes, sha256

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def n_bytes(self) -> int:
        return sum(len(t.encode("utf-8")) for t in self.texts)


def load_lm_text(source: str | Path, part: str = "test", split: SplitConfig | None = None) -> LMText:
    """The documents of ``part`` of a built-in text set or a user's .txt/.jsonl file or directory."""
    if part not in PARTS:
        raise EdgeshrinkError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    examples = _documents(str(source))
    if len(examples) < 3:
        raise EdgeshrinkError(f"{source}: {len(examples)} document(s); the train/calibration/test split needs at "
                              "least 3 (paragraphs are separated by blank lines)")
    chosen = split_examples(examples, split or SplitConfig())
    docs = chosen.part(part)
    return LMText(examples.name, part, list(docs.ids), list(docs.texts), chosen.info())


def _documents(source: str) -> Examples:
    if source in BUILTINS:  # with its labels: the same articles are in test as for the classification task
        return load_data(source)
    path = Path(source).expanduser()
    if not path.exists():
        known = ", ".join(BUILTINS)
        raise EdgeshrinkError(f"text {source!r} is neither an existing file or directory nor a built-in set ({known})")
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise EdgeshrinkError(f"{path} has no .txt files")
        pairs = [(f.stem, _read(f)) for f in files]
    elif path.suffix.lower() == ".txt":
        paragraphs = [p.strip() for p in _read(path).split("\n\n")]
        pairs = [(f"{path.stem}:{i}", p) for i, p in enumerate(paragraphs) if p]
    elif path.suffix.lower() == ".jsonl":
        pairs = _jsonl(path)
    else:
        raise EdgeshrinkError(f"{path}: text for language models must be .txt, .jsonl or a directory of .txt files")
    pairs = [(i, t) for i, t in pairs if t.strip()]
    ids = [i for i, _ in pairs]
    if len(set(ids)) != len(ids):
        raise EdgeshrinkError(f"{path}: document ids are not unique")
    return Examples(path.name, ids, [t for _, t in pairs], ["text"] * len(pairs), ("text",))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        raise EdgeshrinkError(f"{path} is not UTF-8 text") from None


def _jsonl(path: Path) -> list[tuple[str, str]]:
    pairs = []
    for number, line in enumerate(_read(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise EdgeshrinkError(f"{path}:{number}: not valid JSON") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise EdgeshrinkError(f"{path}:{number}: each line needs a string field \"text\"")
        pairs.append((str(row.get("id", number)), row["text"]))
    return pairs
