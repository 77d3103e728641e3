"""Plot text in any script: no warning per missing glyph, the plot still saved, and an installed CJK font
used when there is one."""

import subprocess
import sys
import warnings

import pytest

from edgeshrink import _plots

CJK = "情感分析"


def _draw(path, title: str) -> set[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with _plots.any_script() as missing:
        fig, ax = plt.subplots()
        ax.set_title(title)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
    return missing


def test_without_a_cjk_font_the_plot_is_saved_quietly_and_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(_plots, "fallback_fonts", lambda: [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as under -W error: any warning that gets through fails the test
        missing = _draw(tmp_path / "a.png", f"{CJK} model")
    assert missing == set(CJK)
    assert (tmp_path / "a.png").read_bytes().startswith(b"\x89PNG")


def test_an_installed_cjk_font_draws_the_glyphs(tmp_path):
    if not _plots.fallback_fonts():
        pytest.skip("no CJK font installed (e.g. Debian's fonts-noto-cjk)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _draw(tmp_path / "a.png", f"{CJK} model") == set()


def test_other_warnings_still_reach_the_user():
    with pytest.warns(UserWarning, match="something else"), _plots.any_script() as missing:
        warnings.warn("something else", UserWarning)
    assert missing == set()


def test_no_global_matplotlib_state_changes():
    import matplotlib

    before = list(matplotlib.rcParams["font.family"])
    with _plots.any_script():
        assert matplotlib.rcParams["font.family"][:len(before)] == before
    assert matplotlib.rcParams["font.family"] == before
    probe = "import sys, edgeshrink._plots; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", probe], check=True)
