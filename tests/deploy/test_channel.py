"""Update channels read by a device: signed documents, bounded downloads; every refusal one line."""

from __future__ import annotations

import json
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgeshrink.errors import EdgeshrinkError
from tests.deploy.conftest import publish_to


@pytest.fixture(scope="module")
def channel(releases, keys, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("channel") / "c"
    publish_to(root, releases["v1"], keys)
    publish_to(root, releases["v2"], keys)
    return root


def fetch(where, keys, key="pub", stall_s=2.0, deadline_s=30.0, into: Path | None = None):
    from edgeshrink.deploy.channel import Source, download, read_offer

    source = Source(str(where), time.monotonic() + deadline_s, stall_s)
    try:
        offer = read_offer(source, [keys[key]])
        bundle = download(source, offer, into) if into is not None else None
        return offer, bundle
    finally:
        source.close()


def test_publish_and_fetch(channel, keys, tmp_path):
    from edgeshrink.runtime.bundle import check_bundle_trust, read_manifest

    offer, bundle = fetch(channel, keys, into=tmp_path / "in")
    assert offer.version == 2 and (channel / "latest").read_text().strip() == "2"
    assert check_bundle_trust(bundle, [keys["pub"]])["key_id"]
    assert read_manifest(bundle, trust=[])["release"]["version"] == 2
    assert sorted(p.name for p in (channel / "releases").iterdir()) == ["1", "2"]


def test_publish_refusals(channel, releases, keys, trained_bundle):
    with pytest.raises(EdgeshrinkError, match="publish a higher release than 1"):
        publish_to(channel, releases["v1"], keys)
    with pytest.raises(EdgeshrinkError, match="no release version"):
        publish_to(channel, trained_bundle[2], keys)


def copy_channel(channel: Path, dst: Path) -> Path:
    shutil.copytree(channel, dst)
    return dst


def test_tampered_or_foreign_documents_are_refused(channel, keys, tmp_path):
    doc = lambda c: c / "releases" / "2" / "channel.json"  # noqa: E731
    edited = copy_channel(channel, tmp_path / "edited")
    data = json.loads(doc(edited).read_text())
    data["min_runtime"] = "0.0.1"
    doc(edited).write_text(json.dumps(data))
    with pytest.raises(EdgeshrinkError, match="changed after it was signed"):
        fetch(edited, keys)
    with pytest.raises(EdgeshrinkError, match="not signed by a trusted key"):
        fetch(channel, keys, key="other_pub")
    garbage = copy_channel(channel, tmp_path / "garbage")
    (garbage / "latest").write_text("../../etc/passwd\n")
    with pytest.raises(EdgeshrinkError, match="does not hold a version number"):
        fetch(garbage, keys)
    pointer = copy_channel(channel, tmp_path / "pointer")
    (pointer / "latest").write_text("7\n")
    with pytest.raises(EdgeshrinkError, match="releases/7/channel.json is missing"):
        fetch(pointer, keys)


def test_bad_bundle_files_in_a_channel_are_refused(channel, keys, tmp_path):
    for name, change, message in (
            ("tampered", lambda p: p.write_bytes(p.read_bytes()[:-1] + b"X"), "does not match the signed channel"),
            ("truncated", lambda p: p.write_bytes(p.read_bytes()[:100]), "truncated download"),
            ("grown", lambda p: p.write_bytes(p.read_bytes() + b"more"), "larger than")):
        copy = copy_channel(channel, tmp_path / name)
        change(copy / "releases" / "2" / "bundle" / "model.onnx")
        with pytest.raises(EdgeshrinkError, match=message):
            fetch(copy, keys, into=tmp_path / f"{name}-in")


class Channel(BaseHTTPRequestHandler):
    """Serves a channel folder, or misbehaves as ``mode`` says: stall, garbage, trickle (slow bytes)."""

    root: Path
    mode = "ok"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_response(404)
            self.end_headers()
            return
        data = path.read_bytes()
        if self.mode == "garbage" and self.path.endswith(".json"):
            data = b"\x00garbage" * 10
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.mode == "stall" and "bundle/" in self.path:
            self.wfile.write(data[:10])
            self.wfile.flush()
            time.sleep(5)
        self.wfile.write(data)


@pytest.fixture
def http_channel(channel):
    handler = type("Handler", (Channel,), {"root": channel})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_over_http_a_stall_and_garbage_are_refused(http_channel, keys, tmp_path):
    handler, url = http_channel
    offer, bundle = fetch(url, keys, into=tmp_path / "ok")
    assert offer.version == 2 and (bundle / "model.onnx").exists()
    handler.mode = "stall"
    started = time.monotonic()
    with pytest.raises(EdgeshrinkError, match="stalled"):
        fetch(url, keys, stall_s=0.5, into=tmp_path / "stall")
    assert time.monotonic() - started < 4  # the stall limit, not the server's 5 s
    handler.mode = "garbage"
    with pytest.raises(EdgeshrinkError, match="not signed by a trusted key"):
        fetch(url, keys)
    handler.mode = "ok"
    with pytest.raises(EdgeshrinkError, match="HTTP 404"):
        fetch(url + "/nothing-here", keys)


def test_check_for_update_from_python(channel, releases, keys, tmp_path):
    """The Python API: one check with the service's store, checks and canary; then up to date; an older channel
    is refused and the version in use stays."""
    from edgeshrink.deploy.updater import check_for_update
    from edgeshrink.runtime.bundle import read_manifest

    shipped = Path(shutil.copytree(releases["v1"], tmp_path / "device"))
    first = check_for_update(shipped, str(channel), trust=[keys["pub"]])
    assert first["outcome"] == "installed" and first["version"] == 2 and first["canary"]["ok"]
    assert read_manifest(first["bundle"], trust=[keys["pub"]])["release"]["version"] == 2
    again = check_for_update(shipped, str(channel), trust=[keys["pub"]])
    assert again["outcome"] == "up_to_date" and again["bundle"] == first["bundle"]
    older = tmp_path / "older"
    publish_to(older, releases["v1"], keys)
    refused = check_for_update(shipped, str(older), trust=[keys["pub"]])
    assert refused["outcome"] == "refused" and "rollback protection" in refused["reason"]
    assert refused["bundle"] == first["bundle"]
    with pytest.raises(EdgeshrinkError, match="need a trust list"):
        check_for_update(shipped, str(channel), trust=[])


def test_the_store_recovers_and_outlives_a_damaged_shipped_bundle(releases, keys, tmp_path):
    """A version moved in but never committed (a crash before state.json) is removed at the next start; a shipped
    bundle damaged later does not stop a store that has a good current version."""
    from edgeshrink.deploy.store import VersionStore
    from edgeshrink.runtime.bundle import read_manifest

    def usable(path):
        return read_manifest(path, trust=[keys["pub"]])["release"]["version"]

    shipped = Path(shutil.copytree(releases["v1"], tmp_path / "device"))
    store = VersionStore(tmp_path / "store")
    assert usable(store.open(shipped, usable)) == 1
    work = store.incoming()
    shutil.copytree(releases["v2"], work / "bundle")
    name, _ = store.stage(work / "bundle", 2)  # the crash: staged, never committed
    again = VersionStore(tmp_path / "store")
    assert usable(again.open(shipped, usable)) == 1
    assert not (again.versions / name).exists() and not list((tmp_path / "store").glob(".incoming-*"))
    work = again.incoming()
    shutil.copytree(releases["v2"], work / "bundle")
    again.commit(work / "bundle", 2, "update")
    (shipped / "tokenizer.json").write_text("{}")
    third = VersionStore(tmp_path / "store")
    assert usable(third.open(shipped, usable)) == 2
    assert third.state["events"][-1]["event"] == "skipped" and "tokenizer.json" in third.state["events"][-1]["reason"]
