"""What every command shares: one-line errors, JSON output, progress bars."""

from __future__ import annotations

import functools
import json
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeshrink.errors import EdgeshrinkError


HELP_STYLE = {"rich_markup_mode": None}  # every Typer of the CLI: plain --help (see app.py)


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def handled(fn):
    """Turn EdgeshrinkError into 'error: <one line>' on stderr and exit code 2 (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgeshrinkError as exc:
            raise fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
        except KeyboardInterrupt:
            raise fail("interrupted; nothing was written", 130) from None

    return wrapper


def write_json(path: Path | None, data: dict) -> None:
    """Write ``data`` to ``path`` ('-' for stdout) atomically."""
    if path is None:
        return
    text = json.dumps(data, indent=2, default=_jsonable)
    if str(path) == "-":
        sys.stdout.write(text + "\n")
        return
    from edgeshrink._files import atomic_write_text

    try:
        Path(path).absolute().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text + "\n")
    except OSError as exc:
        raise EdgeshrinkError(f"cannot write {path}: {exc.strerror}") from None


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def time_left(started: float, first: int, done: int, total: int, now: float) -> str:
    """`` (about N s left)`` at the rate since the count was first seen (at ``first``: a resumed run starts at
    its checkpoint's step, not at 0); empty while there is no rate yet or the count is complete."""
    if first < done < total and now > started:
        return f" (about {(now - started) / (done - first) * (total - done):.0f} s left)"
    return ""


class CountedLines:
    """Progress messages as lines a log can hold: a message that ends in a count (``... 12/272``) is shown at its
    first, every tenth of the way or 30 s, and at the last, with the time left; any other message as it comes.
    272 tensors read make about a dozen lines, not 272, and a long count still says it is alive."""

    COUNT = re.compile(r"^(?P<what>.*?)(?P<done>\d+)/(?P<total>\d+)$")

    def __init__(self, echo=None, clock=time.monotonic, every: bool = False):
        self.echo = echo or (lambda line: typer.echo(line, err=True))
        self.clock, self.counts, self.every = clock, {}, every  # every: each count (a status line it replaces)

    def __call__(self, message: str) -> None:
        count = self.COUNT.match(str(message))
        if count is None:
            self.echo(message)
            return
        what, done, total, now = count["what"], int(count["done"]), int(count["total"]), self.clock()
        started, first, shown, shown_at = self.counts.get(what, (now, done, None, now))
        if self.every or shown is None or done >= total or done - shown >= max(1, total // 10) or now - shown_at >= 30:
            self.echo(message + time_left(started, first, done, total, now))
            shown, shown_at = done, now
        self.counts[what] = (started, first, shown, shown_at)


class LiveLine:
    """Progress messages on a terminal: a counted message (``... N/M``) rewrites one live line, with the time
    left, and stays once its count is complete; any other message is printed as a line of its own."""

    def __init__(self, stream=None, clock=time.monotonic):
        import shutil

        self.stream = stream or sys.stderr
        self.width = max(20, shutil.get_terminal_size().columns - 1)  # one screen line: nothing wraps
        self.clock, self.counts, self.live = clock, {}, False

    def __call__(self, message: str) -> None:
        count = CountedLines.COUNT.match(str(message))
        if count is None:
            self._end()
            self.stream.write(f"{message}\n")
        else:
            what, done, total, now = count["what"], int(count["done"]), int(count["total"]), self.clock()
            started, first = self.counts.setdefault(what, (now, done))
            line = message + time_left(started, first, done, total, now)
            self.stream.write("\r" + line[:self.width] + "\x1b[K")
            self.live = True
            if done >= total:
                self._end()
        self.stream.flush()

    def _end(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.live = False


def progress_lines():
    """A command's progress(message) callback: a live line on a terminal (stderr), throttled lines with the
    time left in a log (CountedLines)."""
    return LiveLine() if sys.stderr.isatty() else CountedLines()


def status_progress(status, text):
    """A rich status's update for a terminal, at each count with the time left; in a log (not a terminal, where
    a status shows nothing), the same text as CountedLines."""
    if status.console.is_terminal:
        lines = CountedLines(status.update, every=True)
    else:
        lines = CountedLines(functools.partial(log_line, status.console))
    return lambda *args: lines(text(*args))


def log_line(console, line: str) -> None:
    """One line as written: rich would wrap it at 80 columns in a log and read "[...]" as markup."""
    console.print(line, soft_wrap=True, markup=False, highlight=False)


def progress_callback(progress):
    """Adapt a rich Progress to bench's step(description, advance, total) callback."""
    tasks = {}
    live = progress.console.is_terminal  # in a log (CI, a pipe) print one line per step instead of a bar
    lines = CountedLines(functools.partial(log_line, progress.console))

    def step(description: str, advance: int = 0, total: int | None = None) -> None:
        if total is not None:
            tasks[description] = progress.add_task(description, total=total)
        elif description in tasks:
            progress.update(tasks[description], advance=advance)
            if not live:
                task = progress.tasks[tasks[description]]
                lines(f"{description} {task.completed:.0f}/{task.total:.0f}")
        else:
            lines(description)

    return step


JsonOut = Annotated[Optional[Path], typer.Option("--json", help="Also write machine-readable JSON here ('-' = stdout).")]
Force = Annotated[bool, typer.Option("--force", help="Replace the output if it exists.")]
DataOpt = Annotated[str, typer.Option("--data", help="Built-in data set name, CSV/JSONL file, or load_from_disk dir.")]
TextCol = Annotated[str, typer.Option("--text-column", help="Column holding the text.")]
LabelCol = Annotated[str, typer.Option("--label-column", help="Column holding the label.")]
LabelMap = Annotated[Optional[str], typer.Option("--label-map", help="Your data's label names → the model's, every "
                                                 "label mapped: pos=positive,neg=negative.")]


def data_config(source: str, text_column: str, label_column: str, label_map: str | None = None):
    from edgeshrink.data import DataConfig
    from edgeshrink.data.sources import parse_label_map

    # from_dict, not build: build drops None values, and label_column None (unlabelled text) must stay
    return DataConfig.from_dict({"source": source, "text_column": text_column, "label_column": label_column or None,
                                 **({"label_map": parse_label_map(label_map)} if label_map else {})})




def config_help(ref: str, field: str, text: str) -> str:
    """Help for a flag that sets ``field`` of the config class ``ref`` ("module:Class", imported when the help
    is built): ``text`` and the class's default, so ``--help`` cannot disagree with what runs."""
    import importlib

    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name).field_help(field, text)


SignKey = Annotated[Optional[Path], typer.Option(
    "--sign-key", help="Sign the bundle written with this private key (`edgeshrink keys new`; an encrypted key's "
                       "password from $EDGESHRINK_KEY_PASSWORD).")]


def sign_written(bundle: Path, key: Path | None) -> dict | None:
    """``--sign-key``: sign the bundle a verb has just written, and say so."""
    if key is None:
        return None
    from edgeshrink.signing import sign_bundle

    signed = sign_bundle(bundle, key)
    typer.echo(f"signed {bundle} with key {signed['key_id']} ({signed['files']} files)")
    return signed
