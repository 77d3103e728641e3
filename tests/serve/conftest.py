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


@pytest.fixture(scope="module")
def llm_bundles(tmp_path_factory):
    """Two tiny random llama bundles of one tokenizer: "cloud" and "device" (the LLM services' tests)."""
    from edgeshrink.export.llm import LLMExportConfig, export_llm
    from tests.families import make_causal_lm

    root = tmp_path_factory.mktemp("llm-serve")
    quick = LLMExportConfig(validation_prompts=2, validation_new_tokens=4)
    export_llm(make_causal_lm("llama", root / "cloud-model", seed=0, max_position_embeddings=256), root / "cloud", quick)
    export_llm(make_causal_lm("llama", root / "device-model", seed=2, max_position_embeddings=256), root / "device",
               quick)
    return root
