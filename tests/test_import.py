"""`import edgeshrink`, the CLI's --help and the device runtime stay free of heavy libraries."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "onnx", "optimum")


def _imported_after(code: str) -> list[str]:
    probe = f"import sys; {code}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_import_edgeshrink_is_light():
    assert _imported_after("import edgeshrink") == []


def test_runtime_and_cli_are_light():
    assert _imported_after("import edgeshrink.runtime, edgeshrink.cli, edgeshrink.bench, edgeshrink.data, edgeshrink.compress, "
                           "edgeshrink.route.calibrate, edgeshrink.route.evaluate, edgeshrink.route.router") == []


def test_help_runs_without_heavy_imports():
    code = ("from typer.testing import CliRunner; from edgeshrink.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output")
    assert _imported_after(code) == []
