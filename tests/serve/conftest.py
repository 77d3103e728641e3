"""Real servers as subprocesses on 127.0.0.1 ephemeral ports (no mocks of the HTTP layer)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import make_texts, make_tiny_bert, write_csv


class Server:
    def __init__(self, args: list[str], env: dict | None = None, timeout_s: float = 60.0):
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgeshrink-serve-{os.getpid()}-{time.monotonic_ns()}.log"
        self.err = open(self.log, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "edgeshrink", *args], stdout=subprocess.PIPE,
                                        stderr=self.err, text=True, env={**os.environ, **(env or {})})
        self.url = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("listening on "):
                self.url = line.split()[-1]
                break
            if not line and self.process.poll() is not None:
                break
        if self.url is None:
            self.stop()
            raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.err.close()

    def stderr(self) -> str:
        self.err.flush()
        return self.log.read_text()


@pytest.fixture
def start():
    servers = []

    def _start(*args, env=None) -> Server:
        server = Server([str(a) for a in args], env=env)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop()


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
