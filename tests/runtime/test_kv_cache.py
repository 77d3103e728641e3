"""The shared past/present KV cache (runtime/kv_cache.py): token for token what the copying path generates."""

import numpy as np
import pytest

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export.llm import LLMExportConfig, export_llm
from edgeshrink.runtime import kv_cache, load
from edgeshrink.runtime.speculative import CachedModel, LocalTarget, speculate
from tests.families import make_causal_lm
from tests.runtime.test_speculative import noisy_copy

PROMPTS = ["a good film", "the plot and the music and the cast, why " * 3, "x", "music " * 9]
QUICK = LLMExportConfig(validation_prompts=2, validation_new_tokens=4)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("kv")
    export_llm(make_causal_lm("llama", root / "target", seed=0), root / "target-bundle", QUICK.model_copy(update={"exporter": "builder"}))
    export_llm(noisy_copy(root / "target", root / "draft"), root / "draft-bundle", QUICK.model_copy(update={"exporter": "builder"}))
    return load(root / "target-bundle"), load(root / "draft-bundle")


@pytest.fixture(params=[3, 256], ids=["small-buffers", "default-buffers"])
def capacity(request, monkeypatch):
    """Buffers of 3 positions first: every generation below crosses several reallocations."""
    monkeypatch.setattr(kv_cache, "MIN_CAPACITY", request.param)
    return request.param


def copying(generator, shared: bool):
    generator.shared_kv = shared
    return generator


def test_builder_bundles_share_buffers_and_generate_the_same_tokens(pair, capacity):
    target, _ = pair
    assert target.shared_kv and isinstance(target._empty_past(), kv_cache.SharedCache)
    room = target.context_length
    for prompt in PROMPTS:
        new = min(40, room - len(target.encode(prompt)))
        shared = copying(target, True).generate(prompt, max_new_tokens=new, ignore_eos=True)
        alone = copying(target, False).generate(prompt, max_new_tokens=new, ignore_eos=True)
        target.shared_kv = True
        assert shared.token_ids == alone.token_ids, prompt
        assert np.allclose(shared.logprobs, alone.logprobs, atol=1e-4)


def test_the_whole_context_fits(pair):
    target, _ = pair
    ids = target.encode("the plot")
    new = target.context_length - len(ids)
    shared = target.generate(ids, max_new_tokens=new, ignore_eos=True)
    alone = copying(target, False).generate(ids, max_new_tokens=new, ignore_eos=True)
    target.shared_kv = True
    assert shared.token_ids == alone.token_ids and len(shared.token_ids) == new


def test_a_cut_back_cache_gives_the_logits_of_a_fresh_one(pair, capacity):
    target, _ = pair
    ids = target.encode(PROMPTS[1])
    model = CachedModel(target)
    assert isinstance(model.past, kv_cache.SharedCache)
    model.logits(ids + [5, 6, 7, 8], rows=5)
    cut = model.logits(ids[:4] + [9, 10], rows=2)  # back to 4 positions, then 2 new ones
    fresh = target.logits(ids[:4] + [9, 10])
    assert np.allclose(cut[-2:], fresh[-2:], atol=1e-4)
    assert model.past.length == 6


def test_speculative_decoding_is_unchanged(pair, capacity):
    target, draft = pair
    for i, prompt in enumerate(PROMPTS):
        runs = []
        for shared in (True, False):
            copying(target, shared), copying(draft, shared)
            runs.append(speculate(draft, LocalTarget(target), prompt, max_new_tokens=24, k=1 + i % 4))
        target.shared_kv = draft.shared_kv = True
        assert runs[0].token_ids == runs[1].token_ids, prompt
        assert runs[0].stats["accepted"] == runs[1].stats["accepted"]
        alone = target.generate(prompt, max_new_tokens=24)
        assert runs[0].token_ids == alone.token_ids


def test_a_step_past_the_cached_prefix_is_refused(pair):
    target, _ = pair
    past = target._empty_past()
    with pytest.raises(EdgeshrinkError, match="holds 0 positions"):
        target._step([1], past, 5)


def test_optimum_graphs_keep_the_copying_path(tmp_path):
    export_llm(make_causal_lm("llama", tmp_path / "m", seed=0), tmp_path / "b", QUICK.model_copy(update={"exporter": "optimum"}))
    generator = load(tmp_path / "b")
    assert not generator.shared_kv and isinstance(generator._empty_past(), dict)
    assert len(generator.generate("a good film", max_new_tokens=8, ignore_eos=True).token_ids) == 8


@pytest.mark.parametrize("export", [True, None, "builder", ["builder"], {"exporter": 1}, {}])
def test_an_export_section_of_any_shape_is_not_the_builder(pair, export):
    """The manifest's export section is free-form provenance in an untrusted bundle: anything but
    {"exporter": "builder"} keeps the copying path, never a crash (found by tests/test_fuzz_inputs.py)."""
    target, _ = pair
    assert kv_cache.shares_buffers({**target.manifest, "export": export}, target.session, target.past_names) is False
    assert kv_cache.shares_buffers(target.manifest, target.session, target.past_names) is True
