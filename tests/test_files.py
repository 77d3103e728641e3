import os
import stat

from edgeshrink._files import atomic_write_text


def test_atomic_write_text_replaces_and_leaves_an_ordinary_file(tmp_path):
    path = tmp_path / "report.md"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["report.md"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
