"""Read and verify a device bundle (no torch, no onnx: this runs on the device)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
# A process's CPU allotment (the ray executor sets it to its task's CPUs): ONNX Runtime sessions not told a
# thread count use this many instead of one per core, so two tasks on a node do not oversubscribe it.
THREADS_ENV = "EDGESHRINK_THREADS"


def session_options(threads: int | None = None):
    """ONNX Runtime session options: quiet, and ``threads`` intra-op threads (None: $EDGESHRINK_THREADS, else
    ONNX Runtime's default of one per core)."""
    import os

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    allotted = os.environ.get(THREADS_ENV, "")
    threads = threads or (int(allotted) if allotted.isdigit() and int(allotted) > 0 else None)
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def open_session(onnx_path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session (``threads``: intra-op threads, None: its default), or a one-line error."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(onnx_path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise EdgeshrinkError(f"cannot load {onnx_path}: {str(exc).splitlines()[0][:200]}") from None


def read_manifest(bundle: str | Path, verify: bool = True) -> dict:
    """Return the manifest of ``bundle``; with ``verify``, check every file's size and sha256."""
    bundle = Path(bundle)
    if not bundle.exists():
        raise EdgeshrinkError(f"bundle {bundle} does not exist")
    if not bundle.is_dir() or not (bundle / MANIFEST_NAME).exists():
        raise EdgeshrinkError(f"{bundle} is not a device bundle (no {MANIFEST_NAME}); make one with `edgeshrink export`")
    try:
        manifest = json.loads((bundle / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EdgeshrinkError(f"{bundle / MANIFEST_NAME} is corrupt (not valid JSON)") from None
    if manifest.get("kind") != "edgeshrink-bundle":
        raise EdgeshrinkError(f"{bundle} is not a device bundle (manifest kind {manifest.get('kind')!r})")
    if manifest.get("schema_version", 0) > SCHEMA_VERSION:
        raise EdgeshrinkError(f"{bundle} has manifest schema {manifest['schema_version']}; this edgeshrink reads "
                              f"up to {SCHEMA_VERSION}: upgrade edgeshrink")
    if verify:
        for rel, meta in manifest.get("files", {}).items():
            path = bundle / rel
            if not path.exists():
                raise EdgeshrinkError(f"bundle file {rel} is missing from {bundle}")
            if path.stat().st_size != meta["size_bytes"] or _sha256(path) != meta["sha256"]:
                raise EdgeshrinkError(f"bundle file {rel} is corrupt or was modified (sha256 does not match the manifest)")
    return manifest
