import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgeshrink._files import atomic_output_dir, atomic_write_text, copy_listed_files
from edgeshrink.errors import EdgeshrinkError


def test_atomic_write_text_replaces_and_leaves_an_ordinary_file(tmp_path):
    path = tmp_path / "report.md"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["report.md"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600


# --- atomic_output_dir: one writer per output, nothing left behind by a killed one --------------------------

# Writes its name into OUT, says "inside", then waits inside atomic_output_dir until a line arrives on stdin.
WRITER = """
import sys
from edgeshrink._files import atomic_output_dir
from edgeshrink.errors import EdgeshrinkError
try:
    with atomic_output_dir(sys.argv[1]) as tmp:
        (tmp / "who").write_text(sys.argv[2])
        print("inside", flush=True)
        sys.stdin.readline()
except EdgeshrinkError as exc:
    print(exc, file=sys.stderr)
    sys.exit(2)
"""


def _writer(out, name):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(out), name], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _hidden(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_two_writers_to_one_output_cannot_both_succeed(tmp_path):
    out = tmp_path / "X"
    first = _writer(out, "first")
    assert first.stdout.readline().strip() == "inside"
    second = _writer(out, "second")  # while the first is still writing
    _, err = second.communicate(timeout=60)
    assert second.returncode == 2 and err.strip() == f"another edgeshrink process is writing {out}"
    first.communicate("\n", timeout=60)
    assert first.returncode == 0 and (out / "who").read_text() == "first"
    third = _writer(out, "third")  # after the first finished: exists, no --force
    _, err = third.communicate(timeout=60)
    assert third.returncode == 2 and "already exists" in err and (out / "who").read_text() == "first"
    assert _hidden(tmp_path) == []  # no lock file, no temporary directory left


def test_an_output_that_appears_meanwhile_is_not_replaced_without_force(tmp_path):
    out = tmp_path / "X"
    with pytest.raises(EdgeshrinkError, match="appeared while this command ran"):
        with atomic_output_dir(out) as tmp:
            (tmp / "mine").write_text("new")
            out.mkdir()  # a process that does not take the lock (an empty directory: rename would replace it)
    assert list(out.iterdir()) == [] and _hidden(tmp_path) == []
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "mine").write_text("new")
    assert (out / "mine").read_text() == "new" and _hidden(tmp_path) == []


def test_a_killed_writer_leaves_nothing_that_blocks_or_stays(tmp_path):
    out = tmp_path / "X"
    killed = _writer(out, "killed")
    assert killed.stdout.readline().strip() == "inside"
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    left = _hidden(tmp_path)
    assert any(name.startswith(".X.tmp-") for name in left) and not out.exists()
    # an unrelated output whose name starts like X's temporary directories is left alone
    (tmp_path / ".X.tmp-notours").mkdir()
    with atomic_output_dir(out) as tmp:
        (tmp / "who").write_text("rerun")
    assert (out / "who").read_text() == "rerun"
    assert _hidden(tmp_path) == [".X.tmp-notours"]


def test_a_writer_killed_between_its_two_renames_gets_the_old_output_back(tmp_path):
    out = tmp_path / "X"
    with atomic_output_dir(out) as tmp:
        (tmp / "who").write_text("old")
    trash = tmp_path / ".X.old-abcd1234"  # as `--force` leaves it when killed after moving the old one aside
    trash.mkdir()
    out.rename(trash / "X")
    with pytest.raises(EdgeshrinkError, match="already exists"):
        with atomic_output_dir(out):
            pass
    assert (out / "who").read_text() == "old" and _hidden(tmp_path) == []


def test_a_lock_file_left_by_a_killed_writer_does_not_block(tmp_path):
    (tmp_path / ".X.lock").write_text("")
    with atomic_output_dir(tmp_path / "X") as tmp:
        (tmp / "f").write_text("x")
    assert _hidden(tmp_path) == []


def test_copy_listed_files_copies_regular_listed_files_only(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    (src / "a.json").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    (src / "stray.txt").write_text("not listed")
    secret = tmp_path / "secret"
    secret.write_text("secret")
    (src / "link.txt").symlink_to(secret)
    (src / "linked").symlink_to(src / "sub")
    copy_listed_files(src, ["a.json", "sub/b.txt"], dst)
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*")) == ["a.json", "sub", "sub/b.txt"]
    for name, rule in [("link.txt", "symbolic link"), ("linked/b.txt", "symbolic link"), ("../secret", "points outside"),
                       (str(secret), "points outside"), ("sub/./b.txt", "not a plain"), ("sub", "not a regular file"),
                       ("a.json/x", "not a directory"), ("gone.txt", "missing")]:
        with pytest.raises(EdgeshrinkError, match=rule):
            copy_listed_files(src, [name], tmp_path / "other")
    assert secret.read_text() == "secret"


def test_a_writer_that_locked_a_removed_lock_file_locks_the_new_one(tmp_path, monkeypatch):
    """The race of removing a lock file: B opens it, A (the holder) removes it and exits, B locks the removed
    file. B must not count that as holding the lock, or B and a later C would both hold one."""
    import fcntl

    out, lock = tmp_path / "X", tmp_path / ".X.lock"
    real_open, opened = os.open, []

    def open_then_lose_it(path, flags, mode=0o777):
        fd = real_open(path, flags, mode)
        if Path(path) == lock and not opened:
            os.unlink(path)  # what the previous holder does on its way out
        opened.append(path)
        return fd

    monkeypatch.setattr(os, "open", open_then_lose_it)
    with atomic_output_dir(out) as tmp:
        monkeypatch.undo()
        assert len(opened) == 2  # locked the removed file, saw it, and locked the one that is there now
        other = os.open(lock, os.O_RDONLY)
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(other)
        (tmp / "f").write_text("x")
    assert (out / "f").read_text() == "x" and _hidden(tmp_path) == []
