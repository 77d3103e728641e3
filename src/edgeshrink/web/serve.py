"""`edgeshrink serve-web DIR`: a web folder (`edgeshrink pack --target web`) over HTTP, as a page needs it.

A page cannot fetch the runtime's ``.wasm`` from ``file://``, and onnxruntime-web's threads need a cross-origin
isolated page (SharedArrayBuffer), so every response carries ``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp`` (and ``Cross-Origin-Resource-Policy: same-origin``), with the
right types for ``.mjs`` and ``.wasm``. Only files under DIR are served (no listings, no links followed out of
it); it is a local test and demo server, not a CDN: production pages set the same headers on their own host.
"""

from __future__ import annotations

import http.server
import os
import threading
from functools import partial
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError

ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
         ".onnx": "application/octet-stream", ".jinja": "text/plain; charset=utf-8", ".html": "text/html; charset=utf-8"}


class _Handler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **TYPES}

    def end_headers(self):
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def list_directory(self, path):  # no listings
        self.send_error(404, "not found")
        return None

    def send_head(self):
        root = Path(self.directory).resolve()
        target = Path(self.translate_path(self.path)).resolve()
        if target != root and root not in target.parents:  # a link pointing out of the folder
            self.send_error(404, "not found")
            return None
        return super().send_head()

    def log_message(self, format, *args):  # one line per request on stderr, as uvicorn's access log
        if not getattr(self.server, "quiet", False):
            super().log_message(format, *args)


def check_web_dir(folder: str | Path) -> Path:
    folder = Path(folder)
    if not (folder / "edgeshrink.mjs").is_file() or not (folder / "pack.json").is_file():
        raise EdgeshrinkError(f"{folder} is not a web folder (no edgeshrink.mjs and pack.json); make one with "
                              f"`edgeshrink pack BUNDLE --target web --out {folder}`")
    return folder


def make_server(folder: str | Path, host: str = "127.0.0.1", port: int = 0, quiet: bool = False):
    """A ThreadingHTTPServer serving ``folder`` (not started); its address is ``server.server_address``."""
    folder = check_web_dir(folder)
    try:
        server = http.server.ThreadingHTTPServer((host, port), partial(_Handler, directory=os.fspath(folder)))
    except OSError as exc:
        raise EdgeshrinkError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    server.quiet = quiet
    server.daemon_threads = True
    return server


def serve_in_thread(folder: str | Path, host: str = "127.0.0.1", port: int = 0, quiet: bool = True):
    """Start serving ``folder`` in a daemon thread; returns (server, base URL). ``server.shutdown()`` stops it."""
    server = make_server(folder, host, port, quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/"
