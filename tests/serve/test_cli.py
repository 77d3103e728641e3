"""`serve` refuses to start, with one clear line, on what would make it serve wrongly."""

import shutil
import socket

from typer.testing import CliRunner

from edgeshrink.cli import app

runner = CliRunner()


def _error(args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def test_serve_refuses_a_bundle_that_fails_its_hashes(serve_models, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(serve_models["plain"], broken)
    with open(broken / "tokenizer.json", "a") as fh:
        fh.write(" ")
    assert "tokenizer.json" in _error(["serve", broken, "--port", 0])


def test_serve_refuses_escalation_without_a_router(serve_models):
    """A cloud with no router.json to decide what goes there: one line naming both ways out (issue 27)."""
    out = _error(["serve", serve_models["plain"], "--cloud", "http://127.0.0.1:9", "--port", 0])
    assert "has no router.json" in out and "edgeshrink route calibrate --device" in out
    assert "--route cloud-on-request" in out and len(out.strip().splitlines()) == 1
    assert "without --cloud" in _error(["serve", serve_models["plain"], "--route", "cloud-on-request", "--port", 0])
    assert "'router' or 'cloud-on-request'" in _error(["serve", serve_models["plain"], "--cloud", "http://127.0.0.1:9",
                                                      "--route", "sometimes", "--port", 0])
    assert "go with --route router" in _error(["serve", serve_models["device"], "--cloud", "http://127.0.0.1:9",
                                               "--route", "cloud-on-request", "--audit-fraction", 0.1, "--port", 0])


def test_serve_refuses_a_port_in_use(serve_models):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert f"port {port} on 127.0.0.1 is in use" in _error(["serve", serve_models["plain"], "--port", port])
        assert "is in use" in _error(["serve-cloud", serve_models["cloud"], "--port", port])


def test_serve_refuses_a_cloud_url_that_is_not_http(serve_models):
    assert "must be http(s)" in _error(["serve", serve_models["device"], "--cloud", "ftp://host:21", "--port", 0])
    assert "must be http(s)" in _error(["serve", serve_models["device"], "--cloud", "localhost:8001", "--port", 0])


def test_serve_refuses_options_that_make_no_sense(serve_models, tmp_path):
    assert "without --cloud" in _error(["serve", serve_models["device"], "--deadline-ms", 100, "--port", 0])
    assert "max_batch_size" in _error(["serve", serve_models["device"], "--max-batch-size", 0, "--port", 0])
    assert "MISSING_KEY_VAR" in _error(["serve", serve_models["plain"], "--api-key-env", "MISSING_KEY_VAR",
                                        "--port", 0])
    bad = tmp_path / "serve.yaml"
    bad.write_text("limits: {max_textz: 3}\n")
    assert "unknown key" in _error(["serve", serve_models["plain"], "--config", bad, "--port", 0])


def test_engine_and_protocol_options_are_checked(serve_models, monkeypatch):
    cloud = serve_models["cloud"]
    assert "unknown engine 'gunicorn'" in _error(["serve-cloud", cloud, "--port", 0, "--engine", "gunicorn"])
    assert "apply to --engine ray" in _error(["serve-cloud", cloud, "--port", 0, "--replicas", 2])
    assert "min_replicas is above max_replicas" in _error(["serve-cloud", cloud, "--port", 0, "--engine", "ray",
                                                           "--min-replicas", 3, "--max-replicas", 2])
    assert "--cloud-model applies to language-model bundles and to --cloud-protocol v2" in _error(
        ["serve", serve_models["device"], "--cloud", "http://127.0.0.1:9", "--cloud-model", "m", "--port", 0])
    assert "'edgeshrink' or 'v2'" in _error(["serve", serve_models["device"], "--cloud", "http://127.0.0.1:9",
                                             "--cloud-protocol", "grpc", "--port", 0])
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if the extra were not installed
    out = _error(["serve-cloud", cloud, "--port", 0, "--engine", "ray"])
    assert out.strip() == "error: --engine ray needs Ray Serve: pip install 'edgeshrink[ray]'"


def test_ray_serve_config_makes_ray_serve_options():
    from edgeshrink.serve.ray_engine import RayServeConfig

    assert RayServeConfig(replicas=2, replica_cpus=0.5).deployment_options() == {
        "ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 64, "num_replicas": 2}
    scaled = RayServeConfig(min_replicas=1, max_replicas=4).deployment_options()
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2.0}
    assert "num_replicas" not in scaled
    assert RayServeConfig.from_json(RayServeConfig(max_replicas=3, min_replicas=0).to_json()).max_replicas == 3
