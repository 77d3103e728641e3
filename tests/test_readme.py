"""The README and the reference page say what the tool does: every command line in them names a real command and
options it takes, every data count is the count `data list` gives, and figures name the machine they came from."""

import re
from pathlib import Path

import pytest
import typer.main

from edgeshrink.cli.app import app
from edgeshrink.data import builtin

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "reference.md"]


def _command_lines(text: str):
    """`edgeshrink ...` invocations in the pages' shell blocks (continuations joined, comments cut)."""
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in re.split(r"&&|;|\|", line):
                words = part.split()
                if words[:1] == ["edgeshrink"]:
                    yield part.strip(), words[1:]


def _resolve(words):
    command = typer.main.get_command(app)
    while words and hasattr(command, "commands") and words[0] in command.commands:
        command, words = command.commands[words[0]], words[1:]
    return command


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_line_names_a_command_and_its_options(page):
    lines = list(_command_lines(page.read_text()))
    assert len(lines) >= 10
    for line, words in lines:
        command = _resolve(words)
        assert not hasattr(command, "commands"), f"{page.name}: {line!r} names no command"
        known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", line):
            assert flag in known, f"{page.name}: {line!r}: {command.name} has no option {flag}"


@pytest.mark.slow  # reads the prepared data (make's set-up prepares it)
@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_data_counts_are_the_prepared_rows(page):
    counts = re.findall(r"`([a-z-]+)` \((\d[\d,]*) ", page.read_text())
    named = {name for name, _ in counts if name in builtin.BUILTINS}
    if page.name == "reference.md":
        assert named == set(builtin.BUILTINS)  # the data section counts every built-in set
    for name, count in counts:
        if name in builtin.BUILTINS:
            prepared = builtin.rows_prepared(name)
            if prepared is None:
                pytest.skip(f"{name} is not prepared (make's set-up prepares it)")
            assert int(count.replace(",", "")) == prepared, f"{page.name}: {name} has {prepared:,} rows, not {count}"


ISA_FLAGS = {"amx-bf16", "amx-int8", "amx-tile", "avx-vnni", "avx2", "avx512-bf16", "avx512-vnni", "avx512f", "fma",
             "neon", "sve", "dotprod", "i8mm"}


@pytest.mark.parametrize("page", PAGES + [ROOT / "BENCHMARKS.md"], ids=lambda p: p.name)
def test_figures_name_their_machine(page):
    text = " ".join(page.read_text().split())
    for vague in ("this 2-core", "this Xeon", "this AVX2 CPU", "the 2-core machine", "on this machine"):
        assert page.name == "BENCHMARKS.md" or vague not in text  # BENCHMARKS' sections name theirs first, f"{page.name} says {vague!r}: name the machine and its ISA"
    for after in re.findall(r"\bISA (?=[*`]*[a-z])([^\n]{0,160})", text):  # "ISA avx2 fma", not "doctor's ISA"
        words = [w.strip("*`:;,.()") for w in after.split()]
        named = next((i for i, w in enumerate(words) if w not in ISA_FLAGS), len(words))
        assert named >= 2, f"{page.name}: 'ISA {after[:60]}' is not a list of doctor's ISA flags"
