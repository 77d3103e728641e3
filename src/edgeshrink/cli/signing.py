"""`edgeshrink keys new`, `sign`, `verify`, `release` and `publish`: bundles a device can trust, and the channel
that ships them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeshrink.cli._common import (HELP_STYLE, Force, JsonOut, LabelCol, LabelMap, SignKey, TextCol, config_help,
                                    data_config, fail, handled, progress_lines, write_json)

CANARY = "edgeshrink.deploy.canary:CanaryConfig"
RELEASE = "edgeshrink.deploy.release:ReleaseConfig"

keys_app = typer.Typer(no_args_is_help=True, **HELP_STYLE, help="Signing keys.")
Trust = Annotated[Optional[list[Path]], typer.Option(
    "--trust", metavar="KEY.pub", help="A trusted public key (repeatable; default: $EDGESHRINK_TRUST).")]
PasswordEnv = Annotated[Optional[str], typer.Option(
    help="The environment variable holding the private key's password (default: $EDGESHRINK_KEY_PASSWORD if set).")]


@keys_app.command("new")
@handled
def keys_new(out: Annotated[Path, typer.Option("--out", help="Folder for NAME.key (private, mode 0600) and NAME.pub.")],
             name: Annotated[str, typer.Option(help="File names.")] = "edgeshrink",
             password_env: Annotated[Optional[str], typer.Option(help="Encrypt the private key with this environment "
                                                                 "variable's value.")] = None,
             force: Force = False, json_out: JsonOut = None) -> None:
    """Make a P-256 key pair: sign bundles with the .key, give devices the .pub (--trust)."""
    from edgeshrink.signing import new_keys, public_key_id

    private, public = new_keys(out, name, password_env, force)
    typer.echo(f"private key {private} (keep it secret), public key {public} (what devices trust); key id "
               f"{public_key_id(public)}")
    write_json(json_out, {"private": str(private), "public": str(public), "key_id": public_key_id(public)})


@handled
def sign(bundle: Annotated[Path, typer.Argument(help="The device bundle (its hashes are checked first).")],
         key: Annotated[Path, typer.Option("--key", help="Private key (`edgeshrink keys new`).")],
         password_env: PasswordEnv = None, json_out: JsonOut = None) -> None:
    """Sign a bundle: signature.sigstore.json (OpenSSF model-signing) over every file, inside the bundle."""
    from edgeshrink.signing import sign_bundle

    signed = sign_bundle(bundle, key, password_env)
    typer.echo(f"signed {bundle} with key {signed['key_id']}: {signed['files']} files")
    write_json(json_out, signed)


@handled
def verify(bundle: Annotated[Path, typer.Argument(help="The device bundle.")], trust: Trust = None,
           accuracy: Annotated[bool, typer.Option("--accuracy", help="Also score the bundle's canary sample on this "
                                                  "host against the accuracy it shipped with.")] = False,
           tolerance: Annotated[Optional[float], typer.Option(help=config_help(CANARY, "accuracy_tolerance",
                                                              "--accuracy: the drop allowed (0-1)."))] = None,
           json_out: JsonOut = None) -> None:
    """Check a bundle: its signature against the trusted keys (if any are given), every file's hash, and with
    --accuracy its canary on this host. Exit 2 on any failure."""
    from edgeshrink.deploy.canary import CanaryConfig, accuracy_here
    from edgeshrink.runtime.bundle import check_bundle_trust, read_manifest
    from edgeshrink.runtime.trust import SIGNATURE_NAME

    config = CanaryConfig.build(accuracy_tolerance=tolerance)  # a bad tolerance is refused before any work
    signed = check_bundle_trust(bundle, [str(k) for k in trust] if trust else None)
    manifest = read_manifest(bundle, verify=True, trust=[])
    release = (manifest.get("release") or {}).get("version")
    record = {"bundle": str(bundle), "files": len(manifest["files"]), "signed_by": signed,
              "signature": (bundle / SIGNATURE_NAME).exists(), "release": release}
    who = f"signed by trusted key {signed['key_id']}" if signed else (
        "signed (no trust list given: signature not checked)" if record["signature"] else "not signed")
    typer.echo(f"{bundle}: {record['files']} files, every hash right; {who}"
               + (f"; release {release}" if release is not None else ""))
    if accuracy:
        result = accuracy_here(bundle, config.accuracy_tolerance, trust=[], verify=False)  # verified just above
        record["accuracy"] = result
        typer.echo(f"canary ({result['examples']} held-out texts): {100 * result['accuracy']:.2f}% here "
                   f"({' '.join(result['host']['isa'])}) vs {100 * result['recorded_accuracy']:.2f}% recorded "
                   f"({' '.join(result['recorded_on'].get('isa', []))}): {100 * result['difference']:+.2f} points, "
                   f"tolerance {100 * result['tolerance']:.1f}: {'ok' if result['ok'] else 'BELOW'}")
        write_json(json_out, record)
        if not result["ok"]:
            raise fail(f"{bundle} scores {100 * result['accuracy']:.2f}% on its canary here, below its recorded "
                       f"{100 * result['recorded_accuracy']:.2f}% by more than {100 * result['tolerance']:.1f} points")
        return
    write_json(json_out, record)


@handled
def release(bundle: Annotated[Path, typer.Argument(help="The device bundle (changed in place).")],
            version: Annotated[int, typer.Option("--version", help="The release number (a positive integer; a device "
                                                  "only ever updates to a higher one).")],
            canary_data: Annotated[Optional[str], typer.Option(
                "--canary-data", help="Data whose held-out test part (the bundle's recorded split) gives the canary "
                                      "sample: a built-in name, CSV/JSONL or load_from_disk dir.")] = None,
            canary_size: Annotated[Optional[int], typer.Option(help=config_help(RELEASE, "canary_size", "Canary examples."))] = None,
            channel: Annotated[Optional[str], typer.Option(help="The channel it is meant for (recorded).")] = None,
            notes: Annotated[Optional[str], typer.Option(help="Release notes (recorded).")] = None,
            text_column: TextCol = "text", label_column: LabelCol = "label", label_map: LabelMap = None,
            sign_key: SignKey = None, json_out: JsonOut = None) -> None:
    """Make a bundle a release: its version number and a held-out canary sample scored here (what an update is
    checked with on the device, and `verify --accuracy` re-scores), then sign it (--sign-key)."""
    from edgeshrink.deploy.release import ReleaseConfig, release as run

    config = ReleaseConfig.build(release=version, canary_size=canary_size, channel=channel, notes=notes)
    if canary_data is not None:
        config = ReleaseConfig.from_dict({**config.to_dict(), "canary_data": data_config(
            canary_data, text_column, label_column, label_map).to_dict()})
    result = run(bundle, config, sign_key=sign_key, progress=progress_lines())
    canary = result["canary"]
    typer.echo(f"{bundle}: release {version}" + (
        f"; canary {canary['examples']} held-out texts, {100 * canary['accuracy']:.2f}% here "
        f"({' '.join(canary['measured_on']['isa'])})" if canary else "; no canary (give --canary-data)")
        + (f"; signed with key {result['signed']['key_id']}" if result["signed"] else "; not signed (--sign-key)"))
    write_json(json_out, result)


@handled
def publish(bundle: Annotated[Path, typer.Argument(help="A released bundle (`edgeshrink release`).")],
            channel: Annotated[Path, typer.Option("--channel", help="The channel folder (serve it with any web server, "
                                                  "or `edgeshrink serve-cloud ... --publish DIR`).")],
            key: Annotated[Path, typer.Option("--key", help="Private key that signs the channel document (and the "
                                              "bundle, if it is not signed yet).")],
            name: Annotated[Optional[str], typer.Option(help="The channel's name (default: the release's channel, "
                                                        "else the bundle folder's name).")] = None,
            min_runtime: Annotated[Optional[str], typer.Option(help="Oldest edgeshrink that may install it (default: "
                                                               "this one).")] = None,
            keep: Annotated[int, typer.Option(help="Releases kept in the channel.")] = 3,
            password_env: PasswordEnv = None, json_out: JsonOut = None) -> None:
    """Publish a release on an update channel: copied in, signed document written, then `latest` replaced."""
    from edgeshrink.deploy.channel import publish as run

    if keep < 1:
        raise fail("--keep must be at least 1")
    result = run(bundle, channel, key, name, min_runtime, keep, password_env)
    typer.echo(f"published {result['name']} version {result['version']} on {channel}: {result['files']} files, "
               f"{result['size_bytes'] / 1e6:.1f} MB")
    write_json(json_out, result)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.command("sign")(sign)
    app.command("verify")(verify)
    app.command("release")(release)
    app.command("publish")(publish)
