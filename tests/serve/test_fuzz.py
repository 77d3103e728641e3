"""Fuzz both services against their own OpenAPI schema (schemathesis + hypothesis): valid and invalid
requests for every operation; no answer may be a 5xx and none may hang (a 10-second timeout per call)."""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

EXAMPLES = 40


def _fuzz(url: str) -> int:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in schemathesis.GenerationMode:
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def check(case):
                nonlocal calls
                response = case.call(base_url=url, timeout=10)
                calls += 1
                assert response.status_code < 500, (case.body, response.status_code, response.text[:300])

            try:
                check()
            except Unsatisfiable:
                if mode == schemathesis.GenerationMode.POSITIVE:
                    raise  # only an operation without inputs has no invalid requests to make
    return calls


@pytest.mark.timeout(400)
def test_fuzz_cloud_and_device_services(start, serve_models):
    cloud = start("serve-cloud", serve_models["cloud"], "--port", 0, "--rate", 0)
    device = start("serve", serve_models["device"], "--cloud", cloud.url, "--port", 0, "--rate", 0)
    for server in (cloud, device):
        assert _fuzz(server.url) >= 2 * EXAMPLES  # POST /v1/classify, both modes, at least
        assert "Traceback" not in server.stderr()


@pytest.mark.timeout(600)
def test_fuzz_language_model_services(start, tmp_path_factory):
    """The OpenAI-compatible endpoints (chat, completions, models, speculate) of both LLM services."""
    from edgeshrink.export.llm import LLMExportConfig, export_llm
    from tests.families import make_causal_lm

    root = tmp_path_factory.mktemp("fuzz-llm")
    export_llm(make_causal_lm("llama", root / "m", max_position_embeddings=256), root / "llm",
               LLMExportConfig(validation_prompts=2, validation_new_tokens=4))
    cloud = start("serve-cloud", root / "llm", "--port", 0, "--rate", 0)
    device = start("serve", root / "llm", "--cloud", cloud.url, "--cloud-model", "llm", "--route", "cloud-on-request",
                   "--port", 0, "--rate", 0)
    for server in (cloud, device):
        assert _fuzz(server.url) >= 4 * EXAMPLES  # chat and completions, both modes, at least
        assert "Traceback" not in server.stderr()
