"""The bundle gate: read, check and verify a device bundle before any other file of it is opened.

A bundle may arrive over the air, so it is untrusted input (no torch, no onnx: this runs on the device):

1. ``manifest.json`` is a regular file of bounded size whose JSON matches the schema (``runtime/manifest.py``:
   unknown keys refused, numbers and sizes bounded, the fields each task needs present and typed).
2. Every path it names is relative and inside the bundle; nothing in the bundle is a symbolic link.
3. The files the task needs (``model.onnx``, the tokenizer, the chat template, the router) are decided here from
   the task, not by the manifest, and each must be listed in ``files``; a file in the bundle that is not listed
   is refused too (ONNX Runtime opens external-data files that the graph names), except hidden ``.*`` names
   (an atomic write in progress), which nothing opens.
4. With ``verify`` every listed file's size and sha256 are checked.

Before all of that, when a trust list is configured (``trust``, else $EDGESHRINK_TRUST; runtime/trust.py), the
bundle's signature must verify against a trusted key: then the manifest itself is known to come from the
signer. The signature file is the one file a bundle may hold beside the manifest without listing it.

Each refusal is one line naming the file and the rule. Readers open bundle files through ``bundle_file``.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime.tasks import runtime_task
from edgeshrink.runtime.trust import SIGNATURE_NAME, trusted_keys, verify_signature

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20
# A process's CPU allotment (the ray executor sets it to its task's CPUs): ONNX Runtime sessions not told a
# thread count use this many instead of one per core, so two tasks on a node do not oversubscribe it.
THREADS_ENV = "EDGESHRINK_THREADS"


def session_options(threads: int | None = None):
    """ONNX Runtime session options: quiet, and ``threads`` intra-op threads (None: $EDGESHRINK_THREADS, else
    ONNX Runtime's default of one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    allotted = os.environ.get(THREADS_ENV, "")
    threads = threads or (int(allotted) if allotted.isdigit() and int(allotted) > 0 else None)
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def sha256_of(path: Path) -> str:
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


# -- paths ---------------------------------------------------------------------------------------------
def check_relative(rel: object, what: str = "path") -> str:
    """``rel`` if it is a plain relative path inside a bundle (no '..', not absolute), else a one-line error."""
    if not isinstance(rel, str) or not rel or len(rel) > 255 or "\x00" in rel or "\\" in rel:
        raise EdgeshrinkError(f"bundle {what} {str(rel)[:80]!r} is not a plain relative path")
    parts = rel.split("/")
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute() or ":" in parts[0] or ".." in parts:
        raise EdgeshrinkError(f"bundle {what} {rel!r} points outside the bundle (absolute or '..' paths are refused)")
    if any(p in ("", ".") for p in parts):
        raise EdgeshrinkError(f"bundle {what} {rel!r} is not a plain relative path")
    return rel


def _lstat(path: Path):
    try:
        return path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EdgeshrinkError(f"cannot read {path}: {exc.strerror}") from None


def regular_file(root: Path, rel: str) -> Path:
    """``root/rel`` if every component is a real directory / file (no symbolic link anywhere), else an error."""
    path = root
    for i, part in enumerate(rel.split("/")):
        path = path / part
        st = _lstat(path)
        if st is None:
            raise EdgeshrinkError(f"bundle file {rel} is missing from {root}")
        if stat.S_ISLNK(st.st_mode):
            raise EdgeshrinkError(f"bundle file {rel} is (or lies under) a symbolic link: refused, links are never "
                                  f"followed")
        last = i == rel.count("/")
        if last and not stat.S_ISREG(st.st_mode):
            raise EdgeshrinkError(f"bundle file {rel} is not a regular file")
        if not last and not stat.S_ISDIR(st.st_mode):
            raise EdgeshrinkError(f"bundle file {rel}: {path.name} is not a directory")
    return path


def _walk(root: Path) -> list[str]:
    """Every non-hidden file under ``root`` as a relative posix path; any symbolic link is refused."""
    found = []
    for top, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(top) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                raise EdgeshrinkError(f"bundle file {rel} is a symbolic link: refused, links are never followed")
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [(Path(top) / f).relative_to(root).as_posix() for f in files if not f.startswith(".")]
    return found


# -- the manifest --------------------------------------------------------------------------------------
def required_files(manifest: dict) -> list[str]:
    """The files the runtime opens for this manifest's task: decided here, so a bundle cannot opt out."""
    tokenizer = manifest.get("tokenizer") or {}
    needed = ["model.onnx"]
    if runtime_task(manifest["task"]).tokenized:
        needed.append(tokenizer["file"])
    if tokenizer.get("chat_template"):
        needed.append(tokenizer["chat_template"])
    if manifest.get("router"):
        needed.append(manifest["router"]["file"])
    if manifest.get("canary"):
        needed.append(manifest["canary"]["file"])
    return needed


def _load_json(path: Path, what: str):
    st = _lstat(path)
    if st is None or stat.S_ISDIR(st.st_mode):
        return None
    if stat.S_ISLNK(st.st_mode):
        raise EdgeshrinkError(f"{path} is a symbolic link: refused, links are never followed")
    if not stat.S_ISREG(st.st_mode):
        raise EdgeshrinkError(f"{path} is not a regular file")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise EdgeshrinkError(f"{path} is {st.st_size} bytes; a {what} is at most {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EdgeshrinkError(f"{path} is corrupt (not valid JSON)") from None
    except RecursionError:
        raise EdgeshrinkError(f"{path} is nested too deeply to be a {what}") from None


def read_manifest(bundle: str | Path, verify: bool = True, trust=None) -> dict:
    """The checked manifest of ``bundle`` (see the module docstring); ``verify`` also checks every listed file's
    size and sha256 and, first, its signature under a trust list (``trust``: PEM public keys, None:
    $EDGESHRINK_TRUST, []: none; skip ``verify`` only where the caller has just verified the same bundle)."""
    from edgeshrink.runtime.manifest import validate

    bundle = Path(bundle)
    if not bundle.exists():
        raise EdgeshrinkError(f"bundle {bundle} does not exist")
    if verify:
        check_bundle_trust(bundle, trust)
    manifest = _load_json(bundle / MANIFEST_NAME, "manifest") if bundle.is_dir() else None
    if manifest is None:
        raise EdgeshrinkError(f"{bundle} is not a device bundle (no {MANIFEST_NAME}); make one with `edgeshrink export`")
    if not isinstance(manifest, dict) or manifest.get("kind") != "edgeshrink-bundle":
        kind = manifest.get("kind") if isinstance(manifest, dict) else type(manifest).__name__
        raise EdgeshrinkError(f"{bundle} is not a device bundle (manifest kind {str(kind)[:40]!r})")
    version = manifest.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise EdgeshrinkError(f"{bundle} has manifest schema {version}; this edgeshrink reads up to {SCHEMA_VERSION}: "
                              f"upgrade edgeshrink")
    validate(manifest, bundle / MANIFEST_NAME)
    listed = manifest["files"]
    for rel in listed:
        check_relative(rel, "file")
    for rel in required_files(manifest):
        check_relative(rel, "file")
        if rel not in listed:
            raise EdgeshrinkError(f"bundle file {rel} is required for a {manifest['task']} bundle but not listed in "
                                  f"the manifest's files (its hash cannot be checked)")
    unlisted = sorted(set(_walk(bundle)) - set(listed) - {MANIFEST_NAME, SIGNATURE_NAME})
    if unlisted:
        raise EdgeshrinkError(f"bundle file {unlisted[0]} is not listed in the manifest: a bundle holds only files "
                              f"whose hashes it records")
    for rel, meta in listed.items():
        path = regular_file(bundle, rel)
        if verify and (path.stat().st_size != meta["size_bytes"] or sha256_of(path) != meta["sha256"]):
            raise EdgeshrinkError(f"bundle file {rel} is corrupt or was modified (sha256 does not match the manifest)")
    return manifest


def check_bundle_trust(bundle: str | Path, trust=None) -> dict | None:
    """Under a trust list (``trust``, None: $EDGESHRINK_TRUST), ``bundle``'s signature checked (links refused
    first: nothing is followed): who signed it; None when no trust list is configured."""
    keys = trusted_keys(trust)
    if not keys:
        return None
    bundle = Path(bundle)
    if not bundle.is_dir() or bundle.is_symlink():
        raise EdgeshrinkError(f"{bundle} is not a device bundle directory")
    _walk(bundle)
    return verify_signature(bundle, keys)


def bundle_file(bundle: str | Path, manifest: dict, rel: str) -> Path:
    """The path of a file the manifest lists (inside the bundle, no links): how readers open bundle files."""
    check_relative(rel, "file")
    if rel not in manifest.get("files", {}):
        raise EdgeshrinkError(f"bundle file {rel} is not listed in the manifest of {bundle}")
    return regular_file(Path(bundle), rel)


def read_bundle_text(bundle: str | Path, manifest: dict, rel: str, verify: bool = True,
                     max_bytes: int = 64 << 20) -> str:
    """A listed text file's content (at most ``max_bytes``), its hash checked against the manifest in the same
    read."""
    path = bundle_file(bundle, manifest, rel)
    if path.stat().st_size > max_bytes:
        raise EdgeshrinkError(f"bundle file {rel} is {path.stat().st_size} bytes; at most {max_bytes >> 20} MiB here")
    data = path.read_bytes()
    if verify and hashlib.sha256(data).hexdigest() != manifest["files"][rel]["sha256"]:
        raise EdgeshrinkError(f"bundle file {rel} is corrupt or was modified (sha256 does not match the manifest)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise EdgeshrinkError(f"bundle file {rel} is not UTF-8 text") from None
