"""The `edgeshrink` command line: one typer app, sub-apps per stage, heavy imports inside commands."""

from edgeshrink.cli.app import app, main

__all__ = ["app", "main"]
