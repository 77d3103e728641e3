"""Make a bundle a release: a version number an update channel orders by, and the canary it is checked with.

    edgeshrink release runs/device --version 3 --canary-data sentiment-movies --sign-key keys/edgeshrink.key

In place, like ``route calibrate``: the canary file is written first, then the manifest (its ``release`` and
``canary`` entries, the canary's hash) replaces the old one in one rename, then the bundle is signed. A
reader sees the bundle before or after, never between. A signature over the old files is removed at the
rename: the bundle changed, so it is unsigned until signed again (``--sign-key``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
from pathlib import Path

from pydantic import Field

from edgeshrink.config import Config
from edgeshrink.data.sources import DataConfig
from edgeshrink.errors import EdgeshrinkError


class ReleaseConfig(Config):
    version: int = 1  # of this config
    release: int = Field(ge=1, le=2**53)  # the bundle's release version: updates only ever go up
    channel: str | None = Field(None, max_length=128)  # the channel it is meant for (recorded)
    notes: str | None = Field(None, max_length=4096)
    # the canary: drawn from the test part of the bundle's recorded split (None: keep the bundle's canary, if any)
    canary_data: DataConfig | None = None
    canary_size: int = Field(200, ge=20, le=100_000)
    seed: int = 0


def _draw(bundle: Path, manifest: dict, config: ReleaseConfig):
    from edgeshrink.data import load_data
    from edgeshrink.data.provenance import split_as_recorded

    examples = load_data(config.canary_data)
    recorded = manifest.get("split")
    test = split_as_recorded(examples, recorded, f"bundle {bundle}").test if recorded else examples
    unknown = sorted(set(test.labels) - set(manifest.get("labels") or []))
    if unknown:
        raise EdgeshrinkError(f"canary data has label {unknown[0]!r}, which {bundle} does not know (map it with "
                              f"--label-map)")
    rows = sorted(random.Random(config.seed).sample(range(len(test)), min(config.canary_size, len(test))))
    if len(rows) < 20:
        raise EdgeshrinkError(f"the canary needs at least 20 held-out examples; the data gives {len(rows)}")
    return test.subset(rows), bool(recorded)


def release(bundle: str | Path, config: ReleaseConfig, sign_key: str | Path | None = None,
            password_env: str | None = None, progress=None) -> dict:
    """Stamp ``bundle`` with ``config.release`` (and a canary from ``config.canary_data``), then sign it with
    ``sign_key``. Returns the manifest's new ``release`` and ``canary`` entries (and ``signed``)."""
    from edgeshrink import tasks
    from edgeshrink._files import atomic_write_text, sha256_file
    from edgeshrink.deploy.canary import CANARY_NAME, Canary, host, read_canary, score
    from edgeshrink.runtime import load
    from edgeshrink.runtime.bundle import MANIFEST_NAME, read_manifest
    from edgeshrink.runtime.manifest import validate
    from edgeshrink.runtime.trust import SIGNATURE_NAME

    say = progress or (lambda message: None)
    bundle = Path(bundle)
    manifest = read_manifest(bundle, verify=True, trust=[])
    if config.canary_data is not None:
        tasks.named(manifest["task"]).implementation("release-canary")  # a one-line refusal where it does not apply
    previous = (manifest.get("release") or {}).get("version")
    if previous is not None and config.release < previous:
        raise EdgeshrinkError(f"{bundle} is release {previous}; a release number never goes down (give "
                              f"--version {previous} or more)")
    entry = {"version": config.release, "released_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
             **({"channel": config.channel} if config.channel else {}), **({"notes": config.notes} if config.notes else {})}
    new = {**manifest, "release": entry}
    tmp = None
    if config.canary_data is not None:
        sample, held_out = _draw(bundle, manifest, config)
        say(f"scoring the canary: {len(sample)} held-out examples of {sample.name}")
        predictor = load(bundle, trust=[])
        tmp = bundle / f".canary.tmp-{os.getpid()}"
        tmp.write_text(json.dumps({"texts": sample.texts, "labels": sample.labels, "ids": sample.ids}))
        accuracy = score(predictor, Canary(sample.texts, sample.labels, 0.0, {}))
        digest = sha256_file(tmp)
        name = CANARY_NAME.format(digest[:12])  # a name of its own: the listed canary is never overwritten
        files = {k: v for k, v in manifest["files"].items() if k != (manifest.get("canary") or {}).get("file")}
        new["files"] = {**files, name: {"size_bytes": tmp.stat().st_size, "sha256": digest}}
        new["canary"] = {"file": name, "sha256": digest, "examples": len(sample), "accuracy": accuracy,
                         "data": f"{sample.name}: {'test part of the recorded split' if held_out else 'as given'}",
                         "measured_on": host()}
        new["size_bytes"] = sum(f["size_bytes"] for f in new["files"].values())
    elif manifest.get("canary"):
        read_canary(bundle, manifest)  # still a valid canary
    validate(new, bundle / MANIFEST_NAME)
    old_canary = (manifest.get("canary") or {}).get("file")
    try:
        if tmp is not None:
            os.replace(tmp, bundle / new["canary"]["file"])
        (bundle / SIGNATURE_NAME).unlink(missing_ok=True)
        atomic_write_text(bundle / MANIFEST_NAME, json.dumps(new, indent=2))  # the commit point
    except BaseException:
        if tmp is not None and new["canary"]["file"] != old_canary:
            (bundle / new["canary"]["file"]).unlink(missing_ok=True)
        raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    if old_canary and old_canary != (new.get("canary") or {}).get("file"):
        (bundle / old_canary).unlink(missing_ok=True)  # no longer listed
    read_manifest(bundle, verify=True, trust=[])
    result = {"bundle": str(bundle), "release": new["release"], "canary": new.get("canary"), "signed": None}
    if sign_key is not None:
        from edgeshrink.signing import sign_bundle

        result["signed"] = sign_bundle(bundle, sign_key, password_env)
    return result
