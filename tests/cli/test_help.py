"""Every command's --help at 80 columns in a non-terminal (a log, a pipe): every option name whole, no
bracketed text lost to markup ("pip install 'edgeshrink[ray]'"), and every option with a default says it."""

import re

import pytest
import typer
from typer.testing import CliRunner

from edgeshrink.cli import app


def _commands(command, path=()):
    """(path, click command) of every command under the root, groups included."""
    yield path, command
    if hasattr(command, "commands"):  # a group (typer vendors its own click: no isinstance)
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def _entries(text: str) -> dict[str, str]:
    """Each option's entry in click's help: from its line ("  --out <path>  Output ...") to the next option's,
    whitespace folded. Keyed by the option's first name."""
    entries, current = {}, None
    for line in text.splitlines():
        found = re.match(r"^  (-[-\w]+)", line)
        if found:
            current = found.group(1)
            entries[current] = line
        elif current and line.startswith("   "):
            entries[current] += " " + line
        else:
            current = None
    return {name: " ".join(entry.split()) for name, entry in entries.items()}


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) or "edgeshrink" for p, _ in COMMANDS])
def test_help_at_80_columns_shows_every_option_whole_with_its_default(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80, text
    entries = _entries(text)
    for param in command.params:
        if param.param_type_name != "option":
            continue
        names = param.opts + param.secondary_opts
        assert param.opts[0] in entries, (param.opts[0], text)
        entry = entries[param.opts[0]]
        for name in names:  # whole: a name followed by a space, "/" or the end, never cut
            assert re.search(re.escape(name) + r"(?=[\s/,]|$)", entry), (name, entry)
        help_text = " ".join((param.help or "").split())
        for bracketed in re.findall(r"\[[^\]]*\]", help_text):  # markup would have eaten these
            assert "".join(bracketed.split()) in "".join(entry.split()), (bracketed, entry)  # wrapped anywhere
        # A plain on-switch (--force) defaults to off by being a switch; every other default is said.
        if param.default is not None and not (param.is_flag and not param.secondary_opts and param.default is False):
            assert "[default: " in entry, (param.opts[0], entry)
