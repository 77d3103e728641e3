"""One update check, for the device service and for a Python program that updates a device itself.

    from edgeshrink.deploy.updater import check_for_update
    result = check_for_update("runs/device", "https://example.com/channel", trust=["keys/edgeshrink.pub"])
    result["outcome"], result["bundle"]      # "installed" | "up_to_date" | "refused" | "failed"; the bundle to use

``fetch_update`` is the shared step (deploy/channel.py's reading, the version store's staging, the canary):
read the channel's offer, refuse what must not be taken, download, verify signature, hashes and release
number, stage the bundle in the store (uncommitted), load it and run the canary against the running version.
The caller commits (``VersionStore.commit_staged``) and swaps. Runs on the device: no torch.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError


def fetch_update(source_where: str, store, keys: list[Path], running, canary_config, timeout_s: float = 300.0,
                 stall_s: float = 10.0, threads: int | None = None, needs_router: bool = False) -> dict:
    """``running``: the predictor now answering (its manifest says its release). Returns {"outcome": "staged",
    "version", "name", "path", "predictor", "signed_by", "canary"} or {"outcome": "up_to_date" | "refused" |
    "failed", "version"?, "reason"?}."""
    from edgeshrink import __version__
    from edgeshrink.deploy.canary import canary_check
    from edgeshrink.deploy.channel import Source, download, read_offer, runtime_version_tuple
    from edgeshrink.runtime import load
    from edgeshrink.runtime.bundle import check_bundle_trust, read_manifest

    current = (running.manifest.get("release") or {}).get("version")
    source = Source(source_where, time.monotonic() + timeout_s, stall_s)
    try:
        offer = read_offer(source, keys)
        doc = offer.doc
        if offer.version == current:
            return {"outcome": "up_to_date", "version": offer.version}
        why = store.refusal(offer.version)
        if why is None and runtime_version_tuple(doc["min_runtime"]) > runtime_version_tuple(__version__):
            why = f"version {offer.version} needs edgeshrink {doc['min_runtime']}; this is {__version__}"
        if why is None and (doc["task"] != running.manifest["task"] or doc["labels"] != running.manifest.get("labels")):
            why = f"version {offer.version} changes the task or labels this service answers with"
        if why is None and needs_router and not any(rel == "router.json" or rel.startswith("router-")
                                                    for rel in doc["files"]):
            why = f"version {offer.version} has no router, and this service escalates by one"
        if why is not None:
            return {"outcome": "refused", "version": offer.version, "reason": why}
        work = store.incoming()
        try:
            bundle = download(source, offer, work)
            signed_by = check_bundle_trust(bundle, keys)
            manifest = read_manifest(bundle, verify=True, trust=[])
            if needs_router and not manifest.get("router"):
                raise EdgeshrinkError(f"version {offer.version} has no router, and this service escalates by one")
            if (manifest.get("release") or {}).get("version") != offer.version:
                raise EdgeshrinkError(f"the bundle of version {offer.version} says release "
                                      f"{(manifest.get('release') or {}).get('version')}")
            name, staged = store.stage(bundle, offer.version)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        try:
            # its files were hashed against the signed document, the signature and the manifest just above
            predictor = load(staged, threads=threads, verify=False)
            canary = canary_check(predictor, running, canary_config)
        except BaseException:
            store.discard(name)
            raise
        if not canary["ok"]:
            store.discard(name)
            store.reject(offer.version, f"canary: {canary['reason']}")
            return {"outcome": "refused", "version": offer.version, "reason": f"canary: {canary['reason']}",
                    "canary": canary}
        return {"outcome": "staged", "version": offer.version, "name": name, "path": staged,
                "predictor": predictor, "signed_by": signed_by, "canary": canary}
    except EdgeshrinkError as exc:
        return {"outcome": "failed", "reason": str(exc)}
    finally:
        source.close()


def check_for_update(bundle: str | Path, source: str, trust, store: str | Path | None = None, keep: int = 3,
                     canary=None, timeout_s: float = 300.0, stall_s: float = 10.0) -> dict:
    """One check of ``source`` for the device whose shipped bundle is ``bundle``, with the same store, checks and
    canary as ``serve --update-from`` (store default: BUNDLE.versions). Returns {"outcome", "bundle": the version
    to use now, "version", "reason"?, "canary"?}. The watch and rollback on live traffic are the service's."""
    from edgeshrink.deploy.canary import CanaryConfig
    from edgeshrink.deploy.store import VersionStore
    from edgeshrink.runtime import load
    from edgeshrink.runtime.bundle import read_manifest
    from edgeshrink.runtime.trust import trusted_keys

    keys = trusted_keys(trust)
    if not keys:
        raise EdgeshrinkError("updates need a trust list: pass trust=[KEY.pub] (or set $EDGESHRINK_TRUST)")
    versions = VersionStore(store or f"{Path(bundle).absolute()}.versions", keep)
    current = versions.open(Path(bundle), lambda path: (read_manifest(path, trust=keys).get("release") or {})
                            .get("version"))
    outcome = fetch_update(source, versions, keys, load(current, trust=[]), canary or CanaryConfig(), timeout_s,
                           stall_s)
    if outcome["outcome"] == "staged":
        current = versions.commit_staged(outcome["name"], outcome["version"], outcome["canary"])
        outcome = {"outcome": "installed", "version": outcome["version"], "canary": outcome["canary"]}
    return {**outcome, "bundle": str(current)}
