"""File helpers: hashing, sizes and atomic output directories (nothing half-written is left behind)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

from edgeshrink.errors import EdgeshrinkError


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def dir_size_bytes(path: str | os.PathLike) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def listed_file(bundle: str | os.PathLike, rel: str) -> Path:
    """``bundle / rel``, refused in one line unless it is a regular file inside ``bundle``, reached without a
    symbolic link (the bundle gate's rule: runtime/bundle.py)."""
    from edgeshrink.runtime.bundle import check_relative, regular_file

    return regular_file(Path(bundle), check_relative(rel, "file"))


def copy_listed_files(bundle: str | os.PathLike, names: Iterable[str], dst: str | os.PathLike) -> None:
    """Copy the files ``names`` (paths relative to ``bundle``, as a manifest lists them) into ``dst``:
    regular files only, never a symlink (see :func:`listed_file`), never anything not named."""
    for rel in names:
        src = listed_file(bundle, rel)
        target = Path(dst, *PurePosixPath(rel).parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:  # O_NOFOLLOW: a link swapped in after the check is refused, not followed
            with open(os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as fin, \
                    open(target, "xb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        except OSError as exc:
            raise EdgeshrinkError(f"cannot copy bundle file {rel} from {bundle}: {exc.strerror}") from None


def check_output_dir(out: str | os.PathLike, force: bool) -> Path:
    """Refuse an existing output unless ``force``; make sure its parent can be written."""
    out = Path(out)
    if out.exists() and not force:
        raise EdgeshrinkError(f"output {out} already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise EdgeshrinkError(f"output {out} exists and is not a directory")
    parent = out.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeshrinkError(f"cannot create {parent}: {exc.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgeshrinkError(f"cannot write to {parent}: permission denied")
    return out


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it replaces ``out`` in one rename.

    ``out`` is locked for the whole run: a second writer to it refuses at once, and temporary directories
    left beside it by a killed run are removed first. On any error (or Ctrl-C) the temporary directory is
    removed and ``out`` is left as it was.
    """
    out = check_output_dir(out, force)  # makes the parent, which holds the lock file
    parent = out.absolute().parent
    with _output_lock(out):
        _remove_stale(out)
        check_output_dir(out, force)  # another writer may have finished while this one prepared
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        try:
            yield tmp
            if out.exists() or out.is_symlink():
                if not force:  # made by something that does not take the lock
                    raise EdgeshrinkError(f"output {out} appeared while this command ran (pass --force to replace it)")
                trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
                os.replace(out, trash / out.name)
                os.replace(tmp, out)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextlib.contextmanager
def _output_lock(out: Path) -> Iterator[None]:
    """Hold ``out`` for this process, or refuse at once if another process holds it.

    The lock is a flock on ``.<name>.lock`` beside ``out``; the kernel drops it when its process dies. The
    file is removed on the way out while still locked; a process that opened it before the removal and
    locks it after sees that the path no longer names the file it locked, and locks the new one instead.
    """
    try:
        import fcntl
    except ImportError:  # Windows has no flock: outputs there are not guarded
        yield
        return
    path = out.absolute().parent / f".{out.name}.lock"
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise EdgeshrinkError(f"cannot lock {out}: {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError):
                raise EdgeshrinkError(f"another edgeshrink process is writing {out}") from None
            raise EdgeshrinkError(f"cannot lock {out}: {path}: {exc.strerror}") from None
        if _names(path, fd):
            break
        os.close(fd)
    else:
        raise EdgeshrinkError(f"cannot lock {out}: {path} is replaced faster than it can be locked")
    try:
        yield
    finally:
        if _names(path, fd):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        os.close(fd)


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the open file ``fd``."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (opened.st_dev, opened.st_ino)


def _remove_stale(out: Path) -> None:
    """Remove the temporary directories of earlier writers to ``out`` (only a killed one leaves any: the
    caller holds the lock). A previous output moved aside and not yet replaced goes back in place."""
    parent = out.absolute().parent
    stale = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)-[a-z0-9_]{{8}}")  # tempfile.mkdtemp's names
    for entry in parent.iterdir():
        match = stale.fullmatch(entry.name)
        if not match or entry.is_symlink() or not entry.is_dir():
            continue
        previous = entry / out.name
        if match.group(1) == "old" and not (out.exists() or out.is_symlink()) and previous.is_dir():
            os.replace(previous, out)
        shutil.rmtree(entry, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.absolute().parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private (0600); a report is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None, durable: bool = False) -> None:
    """Write ``data`` to ``path`` in one rename (``mode``: its permissions, default: an ordinary file's);
    ``durable``: flushed to disk before the rename, and the directory after it (a commit point that must
    survive a crash)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.absolute().parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        if durable:
            sync_dir(path.absolute().parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sync_dir(path: str | os.PathLike) -> None:
    """fsync a directory: the renames in it are on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
