"""Run the packed web runtime in Node (tests/web/node_run.mjs) and a demo page in headless Chromium
(tests/web/browser.mjs) from the tests and the bench. `make test` installs both (npm ci, Debian's chromium):
these tests do not skip."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
CHROMIUM = "/usr/bin/chromium"
LONG_TEXT = "a dull and boring plot that never ends " * 40  # past every tiny bundle's max_length: truncated
TEXTS = ["a good film", "a bad film", "meh", "Ünïcödé café, naïve — “quotes” and émojis 😀", "1234 3.14 don't",
         LONG_TEXT]


def _node(args: list[str], request: dict, timeout: float) -> dict:
    """Run ``node ARGS REQUEST.json`` (the request written to a temporary file): its last stdout line as a dict."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(request, fh)
    try:
        done = subprocess.run(["node", *args, fh.name], capture_output=True, text=True, timeout=timeout)
    finally:
        Path(fh.name).unlink()
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def node_run(pack_dir: Path, request: dict, timeout: float = 300) -> dict:
    """One request to the web runtime of ``pack_dir`` under Node: the reply as a dict (``error`` on refusal)."""
    return _node([str(HERE / "node_run.mjs"), str(pack_dir)], request, timeout)


def browser_run(request: dict, timeout: float = 300) -> dict:
    """Drive a demo page in headless Chromium (tests/web/browser.mjs): the reply as a dict."""
    return _node([str(HERE / "browser.mjs")], {"chromium": CHROMIUM, **request}, timeout)


def assert_same_as_python(bundle: Path, pack_dir: Path, texts=TEXTS, atol: float = 1e-4) -> dict:
    """The web runtime's logits within ``atol`` of the Python runtime's on ``texts``, the same labels and
    truncation flags, and (with a router) the same confidence signal and decisions."""
    import numpy as np

    from edgeshrink.route.router import Router, has_router, read_router
    from edgeshrink.runtime import load

    reply = node_run(pack_dir, {"classify": list(texts)})
    assert "error" not in reply, reply["error"]
    predictor = load(bundle)
    want = predictor.predict(list(texts))
    np.testing.assert_allclose(np.array(reply["logits"]), want.logits, atol=atol, rtol=0)
    assert reply["labels"] == want.labels
    assert reply["truncated"] == want.truncated
    if has_router(bundle):
        scores, reasons, escalate = Router(predictor, None, read_router(bundle)).decide(want)
        assert reply["reasons"] == reasons and reply["escalate"] == escalate
        np.testing.assert_allclose(reply["scores"], scores, atol=1e-5)
    return reply
