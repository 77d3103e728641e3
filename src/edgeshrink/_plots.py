"""Plot text in any script. Titles and legends carry user text (recipe names, label names); matplotlib's
default font, DejaVu Sans, has no CJK glyphs, and matplotlib then prints one warning per missing character.

    with any_script() as missing:
        fig, ax = plt.subplots(); ax.set_title("情感分析"); fig.savefig("a.png")
    # missing: the characters no installed font could draw (empty when a CJK font is installed)
"""

from __future__ import annotations

import contextlib
import re
import warnings

# Fonts with wide coverage, tried in this order for the characters the default font lacks.
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK TC", "Noto Sans CJK KR",
                  "Source Han Sans", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback",
                  "Microsoft YaHei", "PingFang SC", "Hiragino Sans", "Arial Unicode MS")
_MISSING_GLYPH = r"Glyph (\d+) .*missing from font"


def fallback_fonts() -> list[str]:
    """The FALLBACK_FONTS installed here. Only those: a family matplotlib cannot find gets a warning of its own."""
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    return [name for name in FALLBACK_FONTS if name in installed]


@contextlib.contextmanager
def any_script():
    """Draw and save figures inside this block. Characters the default font lacks come from an installed
    fallback font; those that no installed font has are drawn as boxes, without a warning per character,
    and are in the yielded set once the block ends. Other warnings pass through."""
    import matplotlib

    missing: set[str] = set()
    families = [*matplotlib.rcParams["font.family"], *fallback_fonts()]
    with matplotlib.rc_context({"font.family": families}), warnings.catch_warnings(record=True) as caught:
        # "always", not "ignore": recorded (even under -W error) so that the block can say what is missing
        warnings.filterwarnings("always", message=_MISSING_GLYPH, category=UserWarning)
        yield missing
    for w in caught:
        glyph = re.match(_MISSING_GLYPH, str(w.message))
        if glyph:
            missing.add(chr(int(glyph.group(1))))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def plain_number(value: float) -> str:
    """A tick value as a person writes it: 3, 0.5, 20, 1,000 (never 3×10⁰)."""
    if value >= 1e4:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def log_axis(ax, which: str = "x") -> None:
    """Put ``ax``'s ``which`` axis ("x", "y" or "xy") on a log scale labelled with plain numbers. matplotlib's
    log formatter writes 3×10⁰ and 2×10¹ where a reader expects 3 and 20; this one labels the same ticks
    (decades, and the minor ticks it would label on a narrow range) as plain numbers."""
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLogFormatter(LogFormatterSciNotation):
        def __call__(self, x, pos=None):
            return plain_number(x) if super().__call__(x, pos) else ""

    for name in which:
        axis = ax.xaxis if name == "x" else ax.yaxis
        getattr(ax, f"set_{name}scale")("log")
        axis.set_major_formatter(PlainLogFormatter())
        axis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))
