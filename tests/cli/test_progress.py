"""Progress in a log: counted messages are thinned to a line every tenth (or 30 s) with the time left."""

from edgeshrink.cli._common import CountedLines


def test_a_long_count_makes_a_dozen_lines_with_the_time_left():
    lines, now = [], [0.0]
    show = CountedLines(lines.append, clock=lambda: now[0])
    show("step 1/4 export ...")
    for i in range(272):
        now[0] += 0.1
        show(f"reading the GGUF grid {i + 1}/272")
    show("validating prompt 1/16")
    assert lines[0] == "step 1/4 export ..."  # no count at its end: passed through
    grid = [line for line in lines if line.startswith("reading the GGUF grid")]
    assert 10 <= len(grid) <= 13, grid
    assert grid[0].startswith("reading the GGUF grid 1/272") and grid[-1] == "reading the GGUF grid 272/272"
    assert all("s left)" in line for line in grid[1:-1])
    assert lines[-1] == "validating prompt 1/16"


def test_a_slow_count_still_shows_a_line_every_30_seconds_and_other_messages_pass():
    lines, now = [], [0.0]
    show = CountedLines(lines.append, clock=lambda: now[0])
    for i in range(5):
        show(f"device: {i + 1}/1000")
        now[0] += 31
    show("no count here")
    assert [line.split(" (")[0] for line in lines[:5]] == [f"device: {i + 1}/1000" for i in range(5)]
    assert lines[-1] == "no count here"
