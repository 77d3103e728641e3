"""Sign bundles: a local key pair, and the OpenSSF model-signing signature a trust list checks.

    from edgeshrink.signing import new_keys, sign_bundle
    private, public = new_keys("keys/")                 # keys/edgeshrink.key (0600) and keys/edgeshrink.pub
    sign_bundle("runs/demo/bundle", private)            # writes runs/demo/bundle/signature.sigstore.json
    from edgeshrink.runtime import load
    load("runs/demo/bundle", trust=[public])            # refused unless that key signed exactly these files

Keys are NIST P-256 (the elliptic-curve keys model-signing signs with), PEM, the private one unencrypted
unless a password is given (``password_env``: the name of the environment variable that holds it; an
encrypted key is opened with $EDGESHRINK_KEY_PASSWORD unless another variable is named). Signing
needs ``pip install 'edgeshrink[signing]'`` (model-signing and pyOpenSSL, which model-signing 1.1 imports
without declaring it) and no network.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime.trust import SIGNATURE_NAME, key_id

PRIVATE_NAME, PUBLIC_NAME = "edgeshrink.key", "edgeshrink.pub"


PASSWORD_ENV = "EDGESHRINK_KEY_PASSWORD"  # where an encrypted key's password is read from by default


def _password(password_env: str | None) -> bytes | None:
    if password_env is None:
        value = os.environ.get(PASSWORD_ENV)
        return value.encode("utf-8") if value else None
    value = os.environ.get(password_env)
    if not value:
        raise EdgeshrinkError(f"environment variable {password_env} (the key's password) is not set")
    return value.encode("utf-8")


def new_keys(out: str | Path, name: str = "edgeshrink", password_env: str | None = None,
             force: bool = False) -> tuple[Path, Path]:
    """A new P-256 key pair in ``out``: ``NAME.key`` (private, mode 0600) and ``NAME.pub`` (what devices trust)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from edgeshrink._files import atomic_write_bytes

    out = Path(out)
    private, public = out / f"{name}.key", out / f"{name}.pub"
    if not force and (private.exists() or public.exists()):
        raise EdgeshrinkError(f"{private} or {public} exists; pass --force to replace the key pair (bundles signed "
                              f"with the old key will no longer verify against the new one)")
    password = _password(password_env)
    key = ec.generate_private_key(ec.SECP256R1())
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(private, private_pem, mode=0o600)
        atomic_write_bytes(public, public_pem)
    except OSError as exc:
        raise EdgeshrinkError(f"cannot write keys to {out}: {exc.strerror}") from None
    return private, public


def _signer(key: str | Path, password_env: str | None, whole_file: bool = False):
    try:
        from model_signing import signing
    except ImportError:
        raise EdgeshrinkError("signing needs model-signing: pip install 'edgeshrink[signing]'") from None
    from edgeshrink.runtime.trust import hashing_config

    key = Path(key)
    if not key.is_file():
        raise EdgeshrinkError(f"signing key {key} does not exist (make one with `edgeshrink keys new`)")
    text = key.read_bytes()[:1 << 16]
    if b"PRIVATE KEY-----" not in text:
        raise EdgeshrinkError(f"{key} is not a PEM private key" + (" (that is a public key: sign with the .key file)"
                                                                    if b"PUBLIC KEY" in text else ""))
    password = _password(password_env)
    try:
        config = signing.Config().use_elliptic_key_signer(private_key=key,
                                                          password=password)
    except (ValueError, TypeError) as exc:
        raise EdgeshrinkError(f"cannot use {key} as a signing key: {str(exc).splitlines()[0][:160]}") from None
    return config.set_hashing_config(hashing_config(whole_file))


def check_signing_key(key: str | Path, password_env: str | None = None) -> None:
    """Refuse, in one line, a key that cannot sign (missing, not a private key, wrong password)."""
    _signer(key, password_env)


def public_key_id(key: str | Path, password_env: str | None = None) -> str:
    """The key id (as ``verify`` prints it) of a private or public PEM key."""
    from cryptography.hazmat.primitives import serialization

    data = Path(key).read_bytes()
    if b"PRIVATE KEY" in data:
        private = serialization.load_pem_private_key(data, _password(password_env))
        data = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    return key_id(data)


def sign_bundle(bundle: str | Path, key: str | Path, password_env: str | None = None) -> dict:
    """Sign ``bundle`` with the private ``key``: the bundle's own hashes are checked first (a damaged bundle is
    never signed), then every file is hashed into the signature, written beside them in one rename.
    Returns {"bundle", "signature", "key_id", "files"}."""
    from edgeshrink.runtime.bundle import read_manifest

    bundle = Path(bundle)
    manifest = read_manifest(bundle, verify=True, trust=[])
    config = _signer(key, password_env)
    signature = bundle / SIGNATURE_NAME
    tmp = bundle / f".{SIGNATURE_NAME}.tmp-{os.getpid()}"
    try:
        config.sign(bundle, tmp)
        os.replace(tmp, signature)
    except OSError as exc:
        raise EdgeshrinkError(f"cannot write {signature}: {exc.strerror}") from None
    except ValueError as exc:
        raise EdgeshrinkError(f"cannot sign {bundle}: {str(exc).splitlines()[0][:160]}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return {"bundle": str(bundle), "signature": str(signature), "key_id": public_key_id(key, password_env),
            "files": len(manifest["files"]) + 1}


def sign_file(path: str | Path, signature: str | Path, key: str | Path, password_env: str | None = None) -> None:
    """Sign one file (a channel document) into ``signature``, in the same format as bundles."""
    config = _signer(key, password_env, whole_file=True)
    try:
        config.sign(Path(path), Path(signature))
    except (OSError, ValueError) as exc:
        raise EdgeshrinkError(f"cannot sign {path}: {str(exc).splitlines()[0][:160]}") from None
