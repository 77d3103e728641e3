"""A device's versions on disk: the one it serves, the few before it, and what it refused.

    STORE/state.json          {"current": "v3-1a2b3c4d", "versions": [...oldest..newest], "highest": 3,
                               "rejected": {"4": "why"}, "events": [...]}
    STORE/versions/<name>/    complete bundles, each moved in with one rename after it was verified
    STORE/.incoming-*         downloads in progress (removed at the next start)

The commit point of an update is the durable replacement of ``state.json`` (written, flushed, renamed, the
directory flushed). A ``kill -9`` at any moment leaves ``state.json`` naming either the old version or the
new one, and a version directory is complete before ``state.json`` can name it; at the next start the store
removes downloads in progress and version directories nothing names. A version found damaged at start is
skipped for the one before it (the event is recorded).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError

STATE_NAME = "state.json"
MAX_EVENTS = 200


class VersionStore:
    def __init__(self, root: str | Path, keep: int = 3):
        self.root, self.keep = Path(root), max(1, keep)
        self.versions = self.root / "versions"
        self.state = {"current": None, "versions": [], "highest": 0, "rejected": {}, "events": []}

    # -- state ---------------------------------------------------------------------------------------------
    def _load(self) -> None:
        path = self.root / STATE_NAME
        if not path.exists():
            return
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            assert isinstance(state, dict) and isinstance(state.get("versions"), list)
        except (ValueError, AssertionError, OSError):
            raise EdgeshrinkError(f"{path} is corrupt: move the store {self.root} aside to start from the shipped "
                                  f"bundle") from None
        self.state.update(state)

    def _save(self) -> None:
        from edgeshrink._files import atomic_write_bytes

        self.state["events"] = self.state["events"][-MAX_EVENTS:]
        atomic_write_bytes(self.root / STATE_NAME, json.dumps(self.state, indent=2).encode(), durable=True)

    def event(self, kind: str, **fields) -> dict:
        now = time.time()
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "unix": round(now, 3), "event": kind,
                  **fields}
        self.state["events"].append(record)
        return record

    @property
    def current(self) -> Path | None:
        return self.versions / self.state["current"] if self.state["current"] else None

    def version_of(self, name: str | None) -> int | None:
        return int(name[1:].split("-")[0]) if name else None

    # -- start -----------------------------------------------------------------------------------------------
    def open(self, shipped: Path, usable) -> Path:
        """Recover after any crash and return the bundle to serve. ``shipped``: the bundle the service was
        started with (installed as the first version of an empty store, or when newer than the store's);
        ``usable(path)``: raises EdgeshrinkError when a version must not be served (bad hash, signature)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.versions.mkdir(exist_ok=True)
        self._load()
        for leftover in self.root.glob(".incoming-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        named = set(self.state["versions"])
        for path in self.versions.iterdir():
            if path.name not in named:  # moved in, never committed (a crash between the rename and state.json)
                shutil.rmtree(path, ignore_errors=True)
        try:
            shipped_version = usable(shipped)
        except EdgeshrinkError as exc:  # the bundle given cannot be used: the store's own versions still can
            if self.state["current"] is None:
                raise
            self.event("skipped", version="shipped", reason=str(exc))
            self._save()
            shipped_version = None
        if self.state["current"] is None or (shipped_version or 0) > (self.version_of(self.state["current"]) or 0):
            self.install_copy(shipped, shipped_version or 0, "shipped")
        while True:
            current = self.current
            try:
                usable(current)
                return current
            except EdgeshrinkError as exc:
                self.event("skipped", version=self.state["current"], reason=str(exc))
                self.state["versions"].remove(self.state["current"])
                if not self.state["versions"]:
                    self.state["current"] = None
                    self._save()
                    raise EdgeshrinkError(f"no usable version in {self.root}: {exc}") from None
                self.state["current"] = self.state["versions"][-1]
                self._save()

    def install_copy(self, bundle: Path, version: int, how: str) -> Path:
        work = self.incoming()
        shutil.copytree(bundle, work / "bundle", symlinks=True)
        return self.commit(work / "bundle", version, how)

    # -- an update -------------------------------------------------------------------------------------------
    def incoming(self) -> Path:
        import tempfile

        return Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root))

    def refusal(self, version: int) -> str | None:
        """Why ``version`` must not be installed (rollback protection), or None."""
        running = self.version_of(self.state["current"]) or 0
        if version <= running:
            return f"version {version} is not newer than the running version {running} (rollback protection)"
        if str(version) in self.state["rejected"]:
            return f"version {version} was refused here before: {self.state['rejected'][str(version)]}"
        return None

    def reject(self, version: int, reason: str) -> None:
        self.state["rejected"][str(version)] = reason[:300]
        self.event("rejected", version=version, reason=reason[:300])
        self._save()

    def stage(self, bundle: Path, version: int) -> tuple[str, Path]:
        """Move a verified bundle (inside an ``incoming()`` directory) in, not yet named by state.json (a crash
        now leaves a directory the next start removes)."""
        from edgeshrink._files import sync_dir

        name = f"v{version}-{os.urandom(4).hex()}"
        os.replace(bundle, self.versions / name)
        sync_dir(self.versions)
        return name, self.versions / name

    def discard(self, name: str) -> None:
        shutil.rmtree(self.versions / name, ignore_errors=True)

    def commit_staged(self, name: str, version: int, canary: dict | None = None, how: str = "update") -> Path:
        """Name a staged version current, durably: the commit point of an update."""
        previous = self.state["current"]
        self.state["versions"].append(name)
        self.state["current"] = name
        self.state["highest"] = max(self.state["highest"], version)
        self.event("installed", version=version, name=name, previous=self.version_of(previous), how=how,
                   **({"canary": {k: canary[k] for k in ("examples", "accuracy", "recorded_accuracy", "agreement")
                                  if k in canary}} if canary else {}))
        self._save()
        self._prune()
        return self.versions / name

    def commit(self, bundle: Path, version: int, how: str) -> Path:
        name, _ = self.stage(bundle, version)
        shutil.rmtree(bundle.parent, ignore_errors=True)
        return self.commit_staged(name, version, how=how)

    def rollback(self, reason: str) -> Path:
        """Back to the version before the current one; the current one is rejected (never taken again)."""
        names = self.state["versions"]
        if len(names) < 2:
            raise EdgeshrinkError("no earlier version to roll back to")
        bad = names.pop()
        self.state["current"] = names[-1]
        self.state["rejected"][str(self.version_of(bad))] = reason[:300]
        self.event("rolled_back", version=self.version_of(bad), to=self.version_of(names[-1]), reason=reason[:300])
        self._save()
        shutil.rmtree(self.versions / bad, ignore_errors=True)
        return self.current

    def _prune(self) -> None:
        names = self.state["versions"]
        while len(names) > self.keep:
            old = names.pop(0)
            self._save()
            shutil.rmtree(self.versions / old, ignore_errors=True)
