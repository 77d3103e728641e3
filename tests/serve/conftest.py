"""Real servers as subprocesses on 127.0.0.1 ephemeral ports (no mocks of the HTTP layer)."""

import shutil

import pytest

from tests.conftest import make_texts, make_tiny_bert, write_csv


@pytest.fixture(scope="session")
def serve_models(tiny_bundle, tmp_path_factory):
    """A cloud bundle (another random model, so the two disagree) and a device bundle whose router
    escalates about half of the requests (budget policy)."""
    from edgeshrink.export import ExportConfig, export
    from edgeshrink.route.calibrate import RouteConfig, calibrate

    root = tmp_path_factory.mktemp("serve")
    data = write_csv(root / "d.csv", make_texts(800, seed=3))
    cloud = root / "cloud-bundle"
    export(make_tiny_bert(root / "cloud", seed=1), cloud, ExportConfig(), force=True)
    device = root / "device"
    shutil.copytree(tiny_bundle, device)
    calibrate(device, cloud, str(data), RouteConfig(policy="budget", budget=0.5))
    plain = root / "device-no-router"
    shutil.copytree(tiny_bundle, plain)
    return {"cloud": cloud, "device": device, "plain": plain, "data": data}
