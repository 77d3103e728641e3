"""Edit a bundle as an attacker or a careless user would, keeping (or not) its manifest's hashes consistent."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path


def copy_bundle(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst, symlinks=True)
    return dst


def read(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def write(bundle: Path, manifest) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def edit(bundle: Path, change) -> None:
    """``change(manifest)`` edits the manifest dict in place (or returns a list to write instead: not an object)."""
    manifest = read(bundle)
    result = change(manifest)
    write(bundle, result if isinstance(result, list) else manifest)


def entry(path: Path) -> dict:
    data = path.read_bytes()
    return {"size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def put_file(bundle: Path, rel: str, data: bytes | str) -> None:
    """Write ``rel`` and list it in the manifest with its true hash: what a rewritten manifest would say."""
    path = bundle / rel
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    edit(bundle, lambda m: m["files"].__setitem__(rel, entry(path)))
