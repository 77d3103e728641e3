"""An update channel: signed releases in a directory any web server (or ``serve-cloud --publish``) can serve.

    CHANNEL/latest                               the newest version number (a pointer: trusted for nothing)
    CHANNEL/releases/<V>/channel.json            the channel document: name, version, task, labels, the
                                                 bundle's files with sizes and sha256, minimum runtime version
    CHANNEL/releases/<V>/channel.sig.json        its signature (OpenSSF model-signing, the publisher's key)
    CHANNEL/releases/<V>/bundle/...              the bundle, itself signed

``publish`` writes a release under a temporary name, renames it into ``releases/`` and then replaces
``latest``: a reader sees the old release or the new one. A device (``fetch_release``) reads ``latest``,
the document and its signature (verified against its trust list before the document is parsed), refuses a
version it must not take (not newer than the one it runs: a replayed or older release is a rollback
attack), then downloads each listed file into a directory of its own with the listed size as a ceiling, a
deadline for the whole update and a limit on how long any read may stall, checks each sha256, and last
checks the bundle's own signature and manifest. Anything else is a one-line refusal and leaves nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError

DOC_NAME, DOC_SIGNATURE = "channel.json", "channel.sig.json"
MAX_DOC_BYTES = 4 << 20
MAX_POINTER_BYTES = 64
SCHEMA_VERSION = 1


def runtime_version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


# -- the document -------------------------------------------------------------------------------------------
def _doc_schema():
    from typing import Annotated, Literal, Optional

    from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    class FileEntry(Strict):
        size_bytes: Annotated[StrictInt, Field(ge=0, le=1 << 42)]
        sha256: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]

    class Doc(Strict):
        kind: Literal["edgeshrink-channel"]
        schema_version: Annotated[StrictInt, Field(ge=1, le=SCHEMA_VERSION)]
        name: Annotated[StrictStr, Field(min_length=1, max_length=128)]
        version: Annotated[StrictInt, Field(ge=1, le=2**53)]
        task: Annotated[StrictStr, Field(max_length=64)]
        labels: Optional[Annotated[list[Annotated[StrictStr, Field(max_length=256)]], Field(max_length=100_000)]]
        files: Annotated[dict[Annotated[StrictStr, Field(min_length=1, max_length=255)], FileEntry],
                         Field(min_length=1, max_length=10_000)]
        size_bytes: Annotated[StrictInt, Field(ge=0, le=1 << 48)]
        min_runtime: Annotated[StrictStr, Field(pattern=r"^\d+(\.\d+){0,2}$")]
        published_at: Annotated[StrictStr, Field(max_length=64)]
        notes: Optional[Annotated[StrictStr, Field(max_length=4096)]] = None

    return Doc


def check_doc(doc, where: str) -> dict:
    from pydantic import ValidationError

    from edgeshrink.runtime.bundle import check_relative

    try:
        _doc_schema().model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"]) or "document"
        raise EdgeshrinkError(f"{where} is not a valid channel document: {at}: {first['msg']}"[:240]) from None
    for rel in doc["files"]:
        check_relative(rel, "file")
    if "manifest.json" not in doc["files"]:
        raise EdgeshrinkError(f"{where} lists no manifest.json: not a bundle")
    return doc


# -- publishing ----------------------------------------------------------------------------------------------
def latest_version(channel: Path) -> int | None:
    pointer = channel / "latest"
    if not pointer.is_file():
        return None
    text = pointer.read_text().strip()
    return int(text) if text.isdigit() else None


def publish(bundle: str | Path, channel: str | Path, key: str | Path, name: str | None = None,
            min_runtime: str | None = None, keep: int = 3, password_env: str | None = None) -> dict:
    """Publish ``bundle`` (a release: ``edgeshrink release``) on ``channel``, signed with ``key`` (the bundle
    too, if it is not signed yet). The release number must be above the channel's latest."""
    from edgeshrink import __version__
    from edgeshrink._files import atomic_write_text, sha256_file
    from edgeshrink.runtime.bundle import read_manifest
    from edgeshrink.runtime.trust import SIGNATURE_NAME
    from edgeshrink.signing import check_signing_key, sign_bundle, sign_file

    bundle, channel = Path(bundle), Path(channel)
    check_signing_key(key, password_env)  # a bad key is refused before the channel is touched
    manifest = read_manifest(bundle, verify=True, trust=[])
    version = (manifest.get("release") or {}).get("version")
    if version is None:
        raise EdgeshrinkError(f"{bundle} has no release version: stamp one with `edgeshrink release {bundle} "
                              f"--version N`")
    channel.mkdir(parents=True, exist_ok=True)
    latest = latest_version(channel)
    if latest is not None and version <= latest:
        raise EdgeshrinkError(f"channel {channel} is at version {latest}; publish a higher release than {version}")
    releases = channel / "releases"
    releases.mkdir(exist_ok=True)
    work = releases / f".{version}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        shutil.copytree(bundle, work / "bundle", symlinks=True)
        if not (work / "bundle" / SIGNATURE_NAME).exists():
            sign_bundle(work / "bundle", key, password_env)
        files = {}
        for path in sorted(p for p in (work / "bundle").rglob("*") if p.is_file()):
            files[path.relative_to(work / "bundle").as_posix()] = {"size_bytes": path.stat().st_size,
                                                                   "sha256": sha256_file(path)}
        doc = {"kind": "edgeshrink-channel", "schema_version": SCHEMA_VERSION,
               "name": name or (manifest.get("release") or {}).get("channel") or bundle.name,
               "version": version, "task": manifest["task"], "labels": manifest.get("labels"), "files": files,
               "size_bytes": sum(f["size_bytes"] for f in files.values()),
               "min_runtime": min_runtime or ".".join(str(p) for p in runtime_version_tuple(__version__)),
               "published_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        check_doc(doc, "the new channel document")
        (work / DOC_NAME).write_text(json.dumps(doc, indent=2))
        sign_file(work / DOC_NAME, work / DOC_SIGNATURE, key, password_env)
        target = releases / str(version)
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
        atomic_write_text(channel / "latest", f"{version}\n")  # the commit point
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in sorted((int(p.name) for p in releases.iterdir() if p.name.isdigit()), reverse=True)[keep:]:
        shutil.rmtree(releases / str(old), ignore_errors=True)
    return {"channel": str(channel), "name": doc["name"], "version": version, "files": len(files),
            "size_bytes": doc["size_bytes"]}


# -- reading a channel ---------------------------------------------------------------------------------------
class Source:
    """Bytes of a channel's files, from a directory or over HTTP(S), each with a size ceiling, a stall limit
    and the update's deadline."""

    def __init__(self, where: str, deadline: float, stall_s: float):
        self.where, self.deadline, self.stall_s = where, deadline, stall_s
        self.http = where.startswith(("http://", "https://"))
        self.client = None
        if self.http:
            import httpx

            # identity: the bytes hashed are the bytes published (a server's gzip would change them)
            self.client = httpx.Client(timeout=httpx.Timeout(stall_s, connect=min(stall_s, 10.0)),
                                       follow_redirects=False, trust_env=False,
                                       headers={"Accept-Encoding": "identity"})

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def _left(self, what: str) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise EdgeshrinkError(f"{what}: the update ran past its deadline")
        return left

    def read(self, rel: str, max_bytes: int, into=None, exact: int | None = None) -> bytes | None:
        """``rel``'s bytes (or streamed into the open file ``into``); refused past ``max_bytes``, short of
        ``exact``, stalled longer than stall_s, or past the deadline."""
        from edgeshrink.runtime.bundle import check_relative, regular_file

        check_relative(rel, "file")
        what = f"{self.where}/{rel}"
        chunks, got = [], 0

        def take(block: bytes) -> None:
            nonlocal got
            got += len(block)
            if got > max_bytes:
                raise EdgeshrinkError(f"{what} is larger than the {max_bytes} bytes expected")
            if into is not None:
                into.write(block)
            else:
                chunks.append(block)

        if not self.http:
            try:
                path = regular_file(Path(self.where), rel)
                with open(path, "rb") as fh:
                    while block := fh.read(1 << 20):
                        self._left(what)
                        take(block)
            except EdgeshrinkError as exc:
                raise EdgeshrinkError(f"channel {self.where}: {exc}") from None
            except OSError as exc:
                raise EdgeshrinkError(f"cannot read {what}: {exc.strerror}") from None
        else:
            import httpx

            url = f"{self.where.rstrip('/')}/{rel}"
            try:
                with self.client.stream("GET", url) as response:
                    if response.status_code != 200:
                        raise EdgeshrinkError(f"{url} answered HTTP {response.status_code}")
                    length = response.headers.get("content-length")
                    if length is not None and length.isdigit() and int(length) > max_bytes:
                        raise EdgeshrinkError(f"{url} is {length} bytes; at most {max_bytes} expected")
                    for block in response.iter_bytes(1 << 16):
                        self._left(what)
                        take(block)
            except httpx.TimeoutException:
                raise EdgeshrinkError(f"{url}: no data for {self.stall_s:g} s (the channel stalled)") from None
            except httpx.HTTPError as exc:
                raise EdgeshrinkError(f"cannot fetch {url}: {type(exc).__name__}: {str(exc)[:120]}") from None
        if exact is not None and got != exact:
            raise EdgeshrinkError(f"{what} is {got} bytes, {exact} listed (a truncated download)")
        return None if into is not None else b"".join(chunks)


class _HashingWriter:
    """A file that hashes what is written to it (a download checked in the same pass)."""

    def __init__(self, fh):
        self.fh, self.digest = fh, hashlib.sha256()

    def write(self, block: bytes) -> None:
        self.digest.update(block)
        self.fh.write(block)


@dataclass
class Offer:
    version: int
    doc: dict
    signed_by: dict
    release: str  # "releases/<V>"


def read_offer(source: Source, keys: list[Path]) -> Offer:
    """The channel's latest release document, its signature checked against ``keys`` before it is parsed."""
    import tempfile

    from edgeshrink.runtime.trust import verify_file_signature

    pointer = source.read("latest", MAX_POINTER_BYTES).decode("ascii", "replace").strip()
    if not pointer.isdigit() or len(pointer) > 16:
        raise EdgeshrinkError(f"channel {source.where}: 'latest' does not hold a version number")
    release = f"releases/{int(pointer)}"
    with tempfile.TemporaryDirectory(prefix="edgeshrink-offer-") as tmp:
        doc_path, sig_path = Path(tmp) / DOC_NAME, Path(tmp) / DOC_SIGNATURE
        doc_path.write_bytes(source.read(f"{release}/{DOC_NAME}", MAX_DOC_BYTES))
        sig_path.write_bytes(source.read(f"{release}/{DOC_SIGNATURE}", MAX_DOC_BYTES))
        signed_by = verify_file_signature(doc_path, sig_path, keys, f"channel document {release}/{DOC_NAME}")
        try:
            doc = json.loads(doc_path.read_bytes().decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise EdgeshrinkError(f"channel document {release}/{DOC_NAME} is not JSON") from None
    check_doc(doc, f"channel document {release}/{DOC_NAME}")
    if doc["version"] != int(pointer):
        raise EdgeshrinkError(f"channel document {release}/{DOC_NAME} says version {doc['version']}, not {pointer}")
    return Offer(doc["version"], doc, signed_by, release)


def download(source: Source, offer: Offer, into: Path) -> Path:
    """The offered bundle's files into ``into/bundle`` (a new directory), each checked against the signed
    document's size and sha256."""
    from edgeshrink.runtime.bundle import check_relative

    out = into / "bundle"
    out.mkdir(parents=True)
    for rel, meta in offer.doc["files"].items():
        target = out.joinpath(*check_relative(rel, "file").split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as fh:
            writer = _HashingWriter(fh)
            source.read(f"{offer.release}/bundle/{rel}", meta["size_bytes"], into=writer, exact=meta["size_bytes"])
        if writer.digest.hexdigest() != meta["sha256"]:
            raise EdgeshrinkError(f"downloaded {rel} does not match the signed channel document's sha256")
    return out
