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


def test_a_resumed_count_tells_the_time_left_from_its_own_rate():
    lines, now = [], [0.0]
    show = CountedLines(lines.append, clock=lambda: now[0])
    for done in range(500, 1001, 50):  # resumed at 500 of 1000, 50 steps a second
        show(f"distill 500+ {done}/1000")
        now[0] += 1
    assert lines[1] == "distill 500+ 600/1000 (about 8 s left)", lines  # not 1 s: the 500 were done before


def test_on_a_terminal_a_count_is_one_live_line_and_other_messages_lines_of_their_own():
    import io

    from edgeshrink.cli._common import LiveLine

    stream, now = io.StringIO(), [0.0]
    show = LiveLine(stream, clock=lambda: now[0])
    show("step 1/2 finetune ...")
    for i in range(1, 5):
        now[0] += 1
        show(f"step 1/2 finetune: train {i}/4")
    show("step 2/2 export ...")
    text = stream.getvalue()
    assert text.startswith("step 1/2 finetune ...\n\rstep 1/2 finetune: train 1/4\x1b[K\r")
    assert "train 2/4 (about 2 s left)\x1b[K" in text
    assert text.endswith("\rstep 1/2 finetune: train 4/4\x1b[K\nstep 2/2 export ...\n")


def test_every_count_for_a_status_line_with_the_time_left():
    lines, now = [], [0.0]
    show = CountedLines(lines.append, clock=lambda: now[0], every=True)
    for i in range(20):
        now[0] += 1.0
        show(f"prompts answered and checked {i + 1}/20")
    assert len(lines) == 20 and lines[9] == "prompts answered and checked 10/20 (about 10 s left)"


def test_a_log_line_is_neither_wrapped_nor_read_as_markup():
    import io

    from rich.console import Console

    from edgeshrink.cli._common import log_line

    out = io.StringIO()
    line = "calibration split: prompts answered and checked 12/314 [device] (about 1234 s left)" + " x" * 40
    log_line(Console(file=out, width=80), line)
    assert out.getvalue() == line + "\n"
