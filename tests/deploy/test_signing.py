"""Signed bundles: keys, sign, verify, the runtime's trust list; every refusal one line, nothing served."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from edgeshrink.errors import EdgeshrinkError
from tests.bundle_edit import copy_bundle, edit, entry


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "edgeshrink", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def one_line_refusal(result, *needles):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_signed_bundle_loads_under_its_key_and_verifies(releases, keys):
    from edgeshrink.runtime import load

    model = load(releases["v1"], trust=[keys["pub"]])
    assert model.predict(["a good film"]).labels
    result = cli("verify", releases["v1"], "--trust", keys["pub"], "--json", "-")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout[result.stdout.index("{"):])
    from edgeshrink.signing import public_key_id

    assert record["signed_by"]["key_id"] == public_key_id(keys["pub"]) == public_key_id(keys["key"])
    assert record["release"] == 1


@pytest.mark.parametrize("target", ["model.onnx", "tokenizer.json", "router.json", "manifest.json", "canary"])
def test_a_tampered_file_is_refused(releases, keys, tmp_path, target):
    """Each file the signature covers, changed after signing, with the manifest's hashes made consistent (as an
    attacker who can write the files would): refused by the signature, naming the file."""
    from edgeshrink.runtime import load

    bundle = copy_bundle(releases["v1"], tmp_path / "b")
    manifest = json.loads((bundle / "manifest.json").read_text())
    rel = manifest["canary"]["file"] if target == "canary" else target
    if rel == "manifest.json":
        edit(bundle, lambda m: m["release"].__setitem__("version", 99))
    else:
        path = bundle / rel
        data = path.read_bytes()
        path.write_bytes(data[:-2] + bytes([data[-2] ^ 1]) + data[-1:])
        edit(bundle, lambda m: m["files"].__setitem__(rel, entry(path)))
        if rel == manifest["router"]["file"]:
            edit(bundle, lambda m: m["router"].__setitem__("sha256", entry(path)["sha256"]))
    with pytest.raises(EdgeshrinkError, match=rf"files differ from what was signed \({re.escape(rel)} changed"):
        load(bundle, trust=[keys["pub"]])
    one_line_refusal(cli("verify", bundle, "--trust", keys["pub"]), "differ from what was signed", rel)
    one_line_refusal(cli("predict", bundle, "good", env={"EDGESHRINK_TRUST": str(keys["pub"])}), rel)


def test_wrong_key_unsigned_and_replayed_signatures_are_refused(releases, keys, tmp_path):
    from edgeshrink.runtime import load

    with pytest.raises(EdgeshrinkError, match="not signed by a trusted key"):
        load(releases["v1"], trust=[keys["other_pub"]])
    unsigned = copy_bundle(releases["v1"], tmp_path / "unsigned")
    (unsigned / "signature.sigstore.json").unlink()
    load(unsigned)  # no trust list: the hashes alone
    line = one_line_refusal(cli("predict", unsigned, "good", env={"EDGESHRINK_TRUST": str(keys["pub"])}))
    assert "is not signed" in line
    # v1's signature replayed onto v2 (another bundle, signed by the same key)
    replayed = copy_bundle(releases["v2"], tmp_path / "replayed")
    shutil.copy(releases["v1"] / "signature.sigstore.json", replayed / "signature.sigstore.json")
    with pytest.raises(EdgeshrinkError, match="files differ from what was signed"):
        load(replayed, trust=[keys["pub"]])
    # a file added after signing (even one the manifest does not list)
    added = copy_bundle(releases["v1"], tmp_path / "added")
    (added / "extra.onnx").write_bytes(b"x")
    with pytest.raises(EdgeshrinkError, match="extra.onnx added"):
        load(added, trust=[keys["pub"]])
    # garbage in place of the signature
    garbage = copy_bundle(releases["v1"], tmp_path / "garbage")
    (garbage / "signature.sigstore.json").write_text("{not json")
    with pytest.raises(EdgeshrinkError, match="not signed by a trusted key"):
        load(garbage, trust=[keys["pub"]])
    # either of two trusted keys will do
    load(releases["v1"], trust=[keys["other_pub"], keys["pub"]])


def test_a_link_in_a_signed_bundle_is_refused_before_hashing(releases, keys, tmp_path):
    from edgeshrink.runtime import load

    bundle = copy_bundle(releases["v1"], tmp_path / "b")
    os.symlink("/etc/passwd", bundle / "passwd")
    with pytest.raises(EdgeshrinkError, match="symbolic link"):
        load(bundle, trust=[keys["pub"]])


def test_trust_list_errors(releases, keys, tmp_path):
    one_line_refusal(cli("verify", releases["v1"], "--trust", tmp_path / "none.pub"), "does not exist")
    one_line_refusal(cli("verify", releases["v1"], "--trust", keys["key"]), "not a PEM public key")
    one_line_refusal(cli("sign", releases["v1"], "--key", keys["pub"]), "public key")


def test_changing_a_signed_bundle_drops_its_signature(releases, keys, tmp_path):
    """A verb that rewrites a signed bundle (a recalibrated router, a re-release) removes the signature it made
    stale, so the bundle is plainly unsigned until signed again, not wrongly signed."""
    from edgeshrink.deploy.release import ReleaseConfig, release
    from edgeshrink.route.calibrate import RouteConfig, calibrate
    from edgeshrink.runtime.bundle import read_manifest

    bundle = copy_bundle(releases["v1"], tmp_path / "b")
    calibrate(bundle, releases["cloud"], str(releases["data"]), RouteConfig(policy="budget", budget=0.2))
    assert not (bundle / "signature.sigstore.json").exists()
    read_manifest(bundle)
    result = release(bundle, ReleaseConfig(release=4), sign_key=keys["key"])
    assert result["signed"]["key_id"] and (bundle / "signature.sigstore.json").exists()
    with pytest.raises(EdgeshrinkError, match="never goes down"):
        release(bundle, ReleaseConfig(release=3))
    # the CLI: --sign-key on a verb that writes a bundle
    out = tmp_path / "signed-export"
    result = cli("quantize", releases["v1"], "--method", "dynamic-int8", "--out", out, "--no-eval",
                 "--sign-key", keys["key"])
    assert result.returncode == 0, result.stderr
    assert "signed" in result.stdout
    assert cli("verify", out, "--trust", keys["pub"]).returncode == 0


def test_keys_new_refuses_to_overwrite_and_encrypts(tmp_path, releases):
    first = cli("keys", "new", "--out", tmp_path)
    assert first.returncode == 0, first.stderr
    assert oct((tmp_path / "edgeshrink.key").stat().st_mode & 0o777) == "0o600"
    one_line_refusal(cli("keys", "new", "--out", tmp_path), "--force")
    result = cli("keys", "new", "--out", tmp_path, "--name", "locked", "--password-env", "PW", env={"PW": "s3cret"})
    assert result.returncode == 0, result.stderr
    assert b"ENCRYPTED" in (tmp_path / "locked.key").read_bytes()
    bundle = copy_bundle(releases["v1"], tmp_path / "b")
    one_line_refusal(cli("sign", bundle, "--key", tmp_path / "locked.key"), "locked.key")
    assert cli("sign", bundle, "--key", tmp_path / "locked.key", env={"EDGESHRINK_KEY_PASSWORD": "s3cret"}
               ).returncode == 0
    assert cli("verify", bundle, "--trust", tmp_path / "locked.pub").returncode == 0


def test_sign_refuses_a_corrupt_bundle(releases, keys, tmp_path):
    bundle = copy_bundle(releases["v1"], tmp_path / "b")
    (bundle / "tokenizer.json").write_text("{}")
    one_line_refusal(cli("sign", bundle, "--key", keys["key"]), "tokenizer.json", "corrupt or was modified")


def test_verify_accuracy_scores_the_canary_here(releases, keys, tmp_path):
    result = cli("verify", releases["v1"], "--trust", keys["pub"], "--accuracy", "--json", "-")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout[result.stdout.index("{"):])
    accuracy = record["accuracy"]
    assert accuracy["examples"] == 45 and accuracy["ok"]  # the whole held-out test part of 300 examples (15%)
    assert abs(accuracy["accuracy"] - accuracy["recorded_accuracy"]) <= 1e-9  # the same host, the same kernels
    # a bundle whose recorded figure this host does not reach (as if measured where kernels round otherwise)
    bundle = copy_bundle(releases["v1"], tmp_path / "b")
    edit(bundle, lambda m: m["canary"].__setitem__("accuracy", min(1.0, accuracy["accuracy"] + 0.05)))
    (bundle / "signature.sigstore.json").unlink()
    line = one_line_refusal(cli("verify", bundle, "--accuracy"), "below its recorded")
    assert "points" in line


def test_canary_check_refuses_a_version_below_its_recorded_accuracy(releases, tmp_path):
    """The update gate's accuracy half: a version that scores less here than it recorded (beyond the tolerance) is
    refused even when it agrees with the running one; within the tolerance it passes."""
    from edgeshrink.deploy.canary import CanaryConfig, canary_check
    from edgeshrink.runtime import load

    running = load(releases["v1"])
    bundle = copy_bundle(releases["v1"], tmp_path / "b")
    (bundle / "signature.sigstore.json").unlink()
    recorded = json.loads((bundle / "manifest.json").read_text())["canary"]["accuracy"]
    edit(bundle, lambda m: m["canary"].__setitem__("accuracy", recorded + 0.05))
    result = canary_check(load(bundle), running, CanaryConfig())
    assert not result["ok"] and result["agreement"] == 1.0
    assert "below the recorded" in result["reason"]
    assert canary_check(load(bundle), running, CanaryConfig(accuracy_tolerance=0.06))["ok"]
    no_canary = copy_bundle(releases["cloud"], tmp_path / "none")
    assert canary_check(load(no_canary), running, CanaryConfig())["reason"].startswith("the new version carries no")
    assert canary_check(load(no_canary), running, CanaryConfig(require=False))["ok"]
