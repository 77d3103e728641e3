"""Who made a bundle: its signature checked against a trust list before any other file of it is opened.

A signed bundle carries ``signature.sigstore.json``: the OpenSSF model-signing format (a Sigstore bundle over
an in-toto statement listing every other file of the bundle with its sha256), made with a local elliptic-curve
key (``edgeshrink keys new``, ``edgeshrink sign``). The signature is outside what it hashes and names the
signer's public key by its hash.

A trust list is a set of PEM public keys: ``load(path, trust=[...])``, ``$EDGESHRINK_TRUST`` (key files
separated by ``os.pathsep``), ``serve --trust``. Under a trust list a bundle is used only if one trusted key
signed it and every file is what was signed; otherwise it is refused in one line saying which: not signed,
not by a trusted key, or its files differ from what was signed (naming a file). Without a trust list nothing
changes (the manifest's hashes still catch damage).

``model-signing`` is imported only when a trust list is given, so the runtime stays light without one.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError

SIGNATURE_NAME = "signature.sigstore.json"
TRUST_ENV = "EDGESHRINK_TRUST"
MAX_SIGNATURE_BYTES = 16 << 20
MAX_KEY_BYTES = 64 << 10


def trusted_keys(trust=None) -> list[Path]:
    """The trust list: ``trust`` (a path or a list of paths to PEM public keys), else $EDGESHRINK_TRUST, else
    none (an empty list: signatures are not required). Each key must be a readable PEM file."""
    if trust is None:
        raw = os.environ.get(TRUST_ENV, "")
        trust = [p for p in raw.split(os.pathsep) if p.strip()]
    elif isinstance(trust, (str, Path)):
        trust = [trust]
    keys = []
    for key in trust:
        path = Path(key)
        if not path.is_file():
            raise EdgeshrinkError(f"trusted key {path} does not exist (a PEM public key from `edgeshrink keys new`)")
        if path.stat().st_size > MAX_KEY_BYTES or b"-----BEGIN PUBLIC KEY-----" not in path.read_bytes():
            raise EdgeshrinkError(f"trusted key {path} is not a PEM public key (give the .pub file, never the "
                                  f"private key)")
        keys.append(path)
    return keys


def key_id(public_key_pem: bytes) -> str:
    """A public key's short name: the first 16 hex digits of the sha256 of its PEM form, which is what a signature
    names its key by (the ``hint`` in signature.sigstore.json)."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(public_key_pem)
    except ValueError:
        raise EdgeshrinkError("not a PEM public key") from None
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()[:16]


def _differing_file(message: str) -> str:
    """The files model-signing's mismatch message names (its text is a list's repr: quotes come escaped), and
    how they differ; a changed file other than the manifest first (the manifest changes with any file)."""
    text = message.replace("\\", "")
    found = [(name, "changed") for name in re.findall(r"Hash mismatch for '([^']+)'", text)]
    for pattern, how in ((r"Extra files found in model '[^']*': ([^'\"\]]+)", "added"),
                         (r"Missing files in model '[^']*': ([^'\"\]]+)", "missing")):
        for names in re.findall(pattern, text):
            found += [(name.strip(), how) for name in names.split(",") if name.strip()]
    found.sort(key=lambda item: item[0] == "manifest.json")
    if not found:
        return ""
    more = f", and {len(found) - 1} more" if len(found) > 1 else ""
    return f"{found[0][0]} {found[0][1]}{more}"


def verify_signature(bundle: str | Path, keys: list[Path]) -> dict:
    """Check ``bundle``'s signature against ``keys``: {"key": path, "key_id": ...} of the key that signed it,
    or a one-line refusal. Reads the signature and hashes the files; opens nothing else."""
    bundle = Path(bundle)
    signature = bundle / SIGNATURE_NAME
    try:
        st = signature.lstat()
    except OSError:
        st = None
    if st is None:
        raise EdgeshrinkError(f"bundle {bundle} is not signed (no {SIGNATURE_NAME}) and a trust list is configured: "
                              f"sign it with `edgeshrink sign {bundle} --key KEY`")
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_SIGNATURE_BYTES:
        raise EdgeshrinkError(f"bundle {bundle}: {SIGNATURE_NAME} is not a signature file")
    if not keys:
        raise EdgeshrinkError("no trusted key given: pass --trust KEY.pub (or set $EDGESHRINK_TRUST)")
    signed_by, mismatch = _first_key(bundle, signature, keys, whole_file=False)
    if signed_by is not None:
        return signed_by
    if mismatch is not None:
        file = f" ({mismatch})" if mismatch else ""
        raise EdgeshrinkError(f"bundle {bundle} is signed by a trusted key but its files differ from what was "
                              f"signed{file}: refused")
    raise EdgeshrinkError(f"bundle {bundle} is not signed by a trusted key ({', '.join(k.name for k in keys)}): "
                          f"refused")


def hashing_config(whole_file: bool = False):
    """How bundles are hashed for signing: every file, sha256, the signature itself left out (``whole_file``:
    one file, a channel document)."""
    from model_signing import hashing

    config = hashing.Config().use_file_serialization(hashing_algorithm="sha256")
    return config if whole_file else config.set_ignored_paths(paths=[SIGNATURE_NAME], ignore_git_paths=False)


def _first_key(model: Path, signature: Path, keys: list[Path], whole_file: bool) -> tuple[dict | None, str | None]:
    """The first of ``keys`` whose signature ``signature`` is over exactly ``model``: ({"key", "key_id"}, None); else
    (None, what differs) when a key signed it but the files differ, else (None, None)."""
    try:
        from model_signing import verifying
    except ImportError:
        raise EdgeshrinkError("verifying signatures needs model-signing: pip install 'edgeshrink[signing]'") from None
    mismatch = None
    for key in keys:
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=key).set_hashing_config(
                hashing_config(whole_file)).verify(model, signature)
        except ValueError as exc:
            if str(exc).startswith("Signature mismatch") and mismatch is None:
                mismatch = _differing_file(str(exc))
            continue
        except Exception:  # noqa: BLE001 - a malformed signature file (protobuf/JSON errors): not by this key
            continue
        return {"key": str(key), "key_id": key_id(key.read_bytes())}, None
    return None, mismatch


def verify_file_signature(path: Path, signature: Path, keys: list[Path], what: str) -> dict:
    """One signed file (a channel document) against ``keys``: the key that signed it, or a one-line refusal."""
    if not keys:
        raise EdgeshrinkError("no trusted key given: pass --trust KEY.pub (or set $EDGESHRINK_TRUST)")
    signed_by, mismatch = _first_key(path, signature, keys, whole_file=True)
    if signed_by is not None:
        return signed_by
    if mismatch is not None:
        raise EdgeshrinkError(f"{what} was changed after it was signed: refused")
    raise EdgeshrinkError(f"{what} is not signed by a trusted key: refused")
