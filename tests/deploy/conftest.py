"""Keys, releases and channels built in the tests from tiny trained bundles (no network, a few seconds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import make_texts, make_tiny_bert, write_csv


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> dict:
    """Two key pairs: the publisher's (``key``/``pub``) and someone else's (``other_key``/``other_pub``)."""
    from edgeshrink.signing import new_keys

    root = tmp_path_factory.mktemp("keys")
    key, pub = new_keys(root)
    other_key, other_pub = new_keys(root, name="other")
    return {"key": key, "pub": pub, "other_key": other_key, "other_pub": other_pub}


@pytest.fixture(scope="session")
def releases(trained_bundle, keys, tmp_path_factory) -> dict:
    """Signed releases of the trained tiny bundle, each with a router (budget 0.3, calibrated against another
    model) and a 60-text canary: ``v1``; ``v2`` (the same model, INT8: other probabilities, same labels almost
    always); ``unrelated`` (release 3: a random model, which fails the canary); ``drifting`` (release 3: v1's
    model with a router calibrated on other traffic, whose drift signals fire on v1's traffic)."""
    from edgeshrink.compress import quantize
    from edgeshrink.compress.quantize.config import QuantConfig
    from edgeshrink.deploy.release import ReleaseConfig, release
    from edgeshrink.export import ExportConfig, export
    from edgeshrink.route.calibrate import RouteConfig, calibrate

    data, _, bundle = trained_bundle
    root = tmp_path_factory.mktemp("releases")
    cloud = root / "cloud"
    export(make_tiny_bert(root / "cloud-model", seed=1), cloud, ExportConfig(), force=True)
    route_data = write_csv(root / "route.csv", make_texts(600, seed=5))
    # other traffic: short texts of the words that carry no sentiment
    rng = __import__("random").Random(7)
    neutral = "the a film movie plot actor scene story was is".split()
    other = write_csv(root / "other.csv", [(" ".join(rng.choice(neutral) for _ in range(rng.randint(1, 3))),
                                           rng.choice(["positive", "negative"])) for _ in range(600)])

    def make(name: str, source: Path, version: int, traffic: Path = route_data) -> Path:
        out = root / name
        shutil.copytree(source, out)
        calibrate(out, cloud, str(traffic), RouteConfig(policy="budget", budget=0.3))
        release(out, ReleaseConfig.from_dict({"release": version, "canary_size": 60,
                                              "canary_data": {"source": str(data)}}), sign_key=keys["key"])
        return out

    int8 = root / "int8-source"
    quantize(bundle, int8, QuantConfig(method="dynamic-int8"), data=str(data))
    unrelated_source = root / "unrelated-source"
    export(_inverted(trained_bundle[1], root / "inverted-model"), unrelated_source, ExportConfig(), force=True)
    return {"v1": make("v1", bundle, 1), "v2": make("v2", int8, 2), "drifting": make("drifting", bundle, 3, other),
            "unrelated": _unrelated(root, unrelated_source, keys, data), "data": data, "cloud": cloud, "root": root}


def _inverted(model: Path, out: Path) -> Path:
    """The trained model with its classifier's two rows swapped: it answers the other label (the same split)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(model, out)
    net = AutoModelForSequenceClassification.from_pretrained(out)
    with torch.no_grad():
        net.classifier.weight.copy_(net.classifier.weight.flip(0))
        net.classifier.bias.copy_(net.classifier.bias.flip(0))
    net.save_pretrained(out)
    return out


def _unrelated(root: Path, source: Path, keys: dict, data: Path) -> Path:
    """Release 3 of a model that answers the other label: it meets its own recorded canary accuracy but
    disagrees with v1 on almost every canary text."""
    from edgeshrink.deploy.release import ReleaseConfig, release

    out = root / "unrelated"
    shutil.copytree(source, out)
    release(out, ReleaseConfig.from_dict({"release": 3, "canary_size": 60, "canary_data": {"source": str(data)}}),
            sign_key=keys["key"])
    return out


def publish_to(channel: Path, bundle: Path, keys: dict, key: str = "key") -> dict:
    from edgeshrink.deploy.channel import publish

    return publish(bundle, channel, keys[key])
