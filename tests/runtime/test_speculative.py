"""Speculative decoding: greedy output equals the target's token for token; sampling keeps its distribution."""

import numpy as np
import pytest
from scipy.stats import chisquare

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export.llm import LLMExportConfig, export_llm
from edgeshrink.runtime import load
from edgeshrink.runtime.speculative import LocalTarget, PromptLookup, Sampling, distribution, speculate
from tests.families import make_causal_lm

PROMPTS = [f"prompt {i}: " + " ".join(["a good film", "the plot", "music and cast", "why"][j % 4] for j in range(i % 5 + 1))
           for i in range(16)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec")
    quick = LLMExportConfig(validation_prompts=2, validation_new_tokens=4)
    export_llm(make_causal_lm("llama", root / "target", seed=0), root / "target-bundle", quick)
    export_llm(noisy_copy(root / "target", root / "draft"), root / "draft-bundle", quick)
    return load(root / "target-bundle"), load(root / "draft-bundle")


def noisy_copy(source, out, noise: float = 0.3):
    """The target with noise on every weight: a draft that agrees often but not always (like a quantized one)."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(source, out)
    model = AutoModelForCausalLM.from_pretrained(out)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in model.parameters():
            weight += noise * weight.std() * torch.randn(weight.shape, generator=generator)
    model.save_pretrained(out)
    return out


def test_greedy_output_is_the_targets_token_for_token(pair):
    target, draft = pair
    totals = {"rounds": 0, "generated": 0, "accepted": 0}
    for i, prompt in enumerate(PROMPTS):
        alone = target.generate(prompt, max_new_tokens=24, ignore_eos=False)
        result = speculate(draft, LocalTarget(target), prompt, max_new_tokens=24, k=1 + i % 6)
        assert result.token_ids == alone.token_ids, prompt
        assert result.stop_reason == alone.stop_reason
        for key in totals:
            totals[key] += result.stats[key]
    assert totals["rounds"] < totals["generated"]  # some drafted tokens were kept: fewer target passes
    assert totals["accepted"] < totals["generated"]  # and some were rejected: corrections were exercised


def test_a_perfect_draft_is_always_accepted_and_k_adapts(pair):
    target, _ = pair
    result = speculate(target, LocalTarget(target), PROMPTS[3], max_new_tokens=40, k=2, k_max=8)
    assert result.stats["acceptance_rate"] == 1.0
    assert result.stats["mean_draft_length"] > 2  # grew from 2 towards k_max
    assert result.stats["target_passes_per_token"] <= 0.25
    fixed = speculate(target, LocalTarget(target), PROMPTS[3], max_new_tokens=40, k=2, adaptive=False)
    assert fixed.token_ids == result.token_ids and fixed.stats["mean_draft_length"] <= 2


def test_sampling_keeps_the_targets_distribution(pair):
    """The first token drawn by speculative sampling (draft: another model) follows the target's own
    top-5 distribution at temperature 1.3: a chi-square test over 3,000 draws."""
    target, draft = pair
    sampling = Sampling(temperature=1.3, top_k=5)
    ids = target.encode(PROMPTS[0])
    support, p = distribution(target.logits(ids)[-1], sampling)
    q_support, _ = distribution(draft.logits(ids)[-1], sampling)
    assert set(q_support) != set(support)  # the draft proposes tokens the target never draws: rejections happen
    counts = dict.fromkeys(support.tolist(), 0)
    local = LocalTarget(target)
    for seed in range(3000):
        token = speculate(draft, local, ids, max_new_tokens=1, sampling=sampling, seed=seed).token_ids[0]
        counts[token] += 1
    assert sum(counts.values()) == 3000  # nothing outside the target's support
    assert chisquare(list(counts.values()), 3000 * p).pvalue > 1e-3


def test_bad_arguments_are_one_line_errors(pair):
    target, draft = pair
    for kwargs in ({"max_new_tokens": 0}, {"k": 0}, {"k": 9, "k_max": 8}, {"sampling": Sampling(top_p=0)},
                   {"max_new_tokens": 10_000}):
        with pytest.raises(EdgeshrinkError):
            speculate(draft, LocalTarget(target), "hi", **{"max_new_tokens": 4, **kwargs})


def test_cli_generate_with_a_draft_prints_the_targets_output(pair, tmp_path):
    import json

    from typer.testing import CliRunner

    from edgeshrink.cli import app
    from edgeshrink.runtime.sampling import DEFAULT_REPETITION_PENALTY

    target, draft = pair
    runner = CliRunner()
    alone = runner.invoke(app, ["generate", str(target.path), "a good film", "--max-new-tokens", "12"])
    drafted = runner.invoke(app, ["generate", str(target.path), "a good film", "--max-new-tokens", "12", "--draft",
                                  str(draft.path), "--json", str(tmp_path / "s.json")])
    assert alone.exit_code == 0 and drafted.exit_code == 0, drafted.output
    # the CLI's default repetition penalty on both paths
    want = target.generate("a good film", 12, repetition_penalty=DEFAULT_REPETITION_PENALTY).text
    assert json.loads((tmp_path / "s.json").read_text())["text"] == want
    assert "passes of" in drafted.output and "draft acceptance" in drafted.output
    bad = runner.invoke(app, ["generate", str(target.path), "hi", "--draft", str(draft.path), "--stop", "x"])
    assert bad.exit_code == 2 and "--stop" in bad.output


@pytest.mark.parametrize("penalties", [{"repetition_penalty": 1.4}, {"frequency_penalty": 0.8, "presence_penalty": 0.3}])
def test_greedy_speculation_with_penalties_is_the_targets_penalized_output(pair, penalties):
    target, draft = pair
    sampling = Sampling(**penalties)
    differs = 0
    for i, prompt in enumerate(PROMPTS[:6]):
        alone = target.generate(prompt, max_new_tokens=24, **penalties)
        result = speculate(draft, LocalTarget(target), prompt, max_new_tokens=24, sampling=sampling, k=1 + i % 4)
        assert result.token_ids == alone.token_ids, prompt
        differs += alone.token_ids != target.generate(prompt, max_new_tokens=24, repetition_penalty=1.0).token_ids
    assert differs  # the penalties changed some answers: the test sees them applied on both sides


# -- prompt lookup: n-gram drafts from the prompt and the answer, no draft model --------------------------------

REPEATS = ["the plot the plot the plot the plot", "a good film, music and cast. a good film, music and cast. a good",
           "why the plot why the plot why", "music", "a good film and the plot and music and cast and why not"]


def test_prompt_lookup_drafts_the_tokens_after_the_latest_match():
    from types import SimpleNamespace

    lookup = PromptLookup(SimpleNamespace(eos_ids={99}), ngram_max=3, ngram_min=1)
    assert lookup.lookup([1, 2, 3, 4, 5, 1, 2, 3], 2) == [4, 5]  # the trigram 1 2 3
    assert lookup.lookup([1, 2, 7, 1, 2, 8, 5, 2], 4) == [8, 5, 2]  # unigram 2, latest match, to the end
    assert lookup.lookup([7, 3, 9, 99, 6, 3], 5) == [9, 99]  # a draft ends at an end token
    assert lookup.lookup([1, 2, 3, 4], 4) == [] and lookup.lookup([5], 4) == []  # no match: no draft
    assert PromptLookup(SimpleNamespace(eos_ids=set())).lookup([1, 2, 7, 1, 2, 8, 5, 2], 4) == []  # bigrams at least
    with pytest.raises(EdgeshrinkError, match="ngram"):
        PromptLookup(SimpleNamespace(eos_ids=set()), ngram_max=2, ngram_min=3)


def test_prompt_lookup_greedy_output_is_the_targets_token_for_token(pair):
    target, _ = pair
    totals = {"rounds": 0, "generated": 0, "accepted": 0, "drafted": 0, "rounds_without_draft": 0}
    for i, prompt in enumerate(PROMPTS[:8] + REPEATS):
        alone = target.generate(prompt, max_new_tokens=32)
        result = speculate(PromptLookup(target, ngram_max=1 + i % 3, ngram_min=1), LocalTarget(target), prompt,
                           max_new_tokens=32, k=1 + i % 5)
        assert result.token_ids == alone.token_ids, prompt
        assert result.stop_reason == alone.stop_reason
        for key in totals:
            totals[key] += result.stats[key]
    assert totals["rounds"] < totals["generated"]  # drafts were kept: fewer target passes than tokens
    assert 0 < totals["accepted"] < totals["drafted"]  # and some were rejected
    assert totals["rounds_without_draft"] > 0  # and some rounds found no match (a plain step)


def test_prompt_lookup_sampling_keeps_the_targets_distribution(pair):
    """A deterministic draft (one-hot q): the first token still follows the target's own top-5 distribution."""
    target, _ = pair
    sampling = Sampling(temperature=1.3, top_k=5)
    lookup = PromptLookup(target, ngram_max=1)  # and so ngram_min 1
    base = target.encode(PROMPTS[1])
    for candidate in range(20, 200):  # a prompt whose lookup drafts a likely token that is not certain
        ids = [base[-1], candidate] + base
        support, p = distribution(target.logits(ids)[-1], sampling)
        if lookup.lookup(ids, 1) == [candidate] and candidate in support and p[support == candidate][0] < 0.6:
            break
    else:
        pytest.fail("no prompt drafts a token of the target's support")
    counts = dict.fromkeys(support.tolist(), 0)
    local = LocalTarget(target)
    for seed in range(3000):
        result = speculate(lookup, local, ids, max_new_tokens=1, sampling=sampling, seed=seed)
        counts[result.token_ids[0]] += 1
    assert result.stats["drafted"] == 1
    assert sum(counts.values()) == 3000
    assert chisquare(list(counts.values()), 3000 * p).pvalue > 1e-3


def without_kv_cache(bundle, out):
    """A copy of ``bundle`` whose model.onnx is a decoder without a KV cache (logits from the ids alone)."""
    import json
    import shutil

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeshrink.runtime.bundle import sha256_of

    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    vocab = len(load(bundle).tokenizer.get_vocab())
    table = numpy_helper.from_array(np.random.default_rng(0).normal(size=(vocab, vocab)).astype(np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["logits"])], "no_cache",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", vocab])], [table])
    for name in [f for f in manifest["files"] if f.startswith("model.onnx")]:
        (out / name).unlink()
        del manifest["files"][name]
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), out / "model.onnx")
    manifest["files"]["model.onnx"] = {"size_bytes": (out / "model.onnx").stat().st_size,
                                       "sha256": sha256_of(out / "model.onnx")}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("shared", [True, False], ids=["shared-cache", "copying-cache"])
def test_prompt_lookup_in_the_generator_is_the_same_output_seed_for_seed(pair, shared):
    """Generator.stream(prompt_lookup=n): every token is drawn from its own row as without lookup, so greedy
    output is token for token the same and sampled output seed for seed; drafts cut fewer passes."""
    target, _ = pair
    kept = target.shared_kv
    target.shared_kv = shared and kept  # the copying path too (np.take cuts instead of a shorter total)
    try:
        counts = {"target_passes": 0, "drafted": 0, "accepted": 0, "tokens": 0}
        for i, prompt in enumerate(PROMPTS[:6] + REPEATS):
            options = dict(temperature=0.9, top_k=20, seed=i) if i % 2 else {}
            alone = target.generate(prompt, 24, repetition_penalty=1.1, **options)
            info: dict = {}
            tokens = list(target.stream(prompt, 24, info=info, prompt_lookup=1 + i % 3, repetition_penalty=1.1,
                                        **options))
            assert [t.id for t in tokens] == alone.token_ids, prompt
            assert np.allclose([t.logprob for t in tokens], alone.logprobs, atol=1e-4)
            assert info["stop_reason"] == alone.stop_reason
            counts["tokens"] += len(tokens)
            for key in ("target_passes", "drafted", "accepted"):
                counts[key] += info[key]
        assert counts["target_passes"] < counts["tokens"]  # drafts kept: fewer passes than tokens
        assert 0 < counts["accepted"] < counts["drafted"]  # and some drafted tokens were not drawn
        stopped = target.generate(REPEATS[0], 24, stop=["plot"], prompt_lookup=2)
        assert stopped.token_ids == target.generate(REPEATS[0], 24, stop=["plot"]).token_ids
    finally:
        target.shared_kv = kept


def test_prompt_lookup_in_the_cli_and_its_refusals(pair, tmp_path):
    import json

    from typer.testing import CliRunner

    from edgeshrink.cli import app
    from edgeshrink.runtime.sampling import DEFAULT_REPETITION_PENALTY

    target, _ = pair
    runner = CliRunner()
    out = tmp_path / "s.json"
    drafted = runner.invoke(app, ["generate", str(target.path), REPEATS[0], "--max-new-tokens", "16", "--draft",
                                  "prompt-lookup", "--ngram", "2", "--json", str(out)])
    assert drafted.exit_code == 0, drafted.output
    want = target.generate(REPEATS[0], 16, repetition_penalty=DEFAULT_REPETITION_PENALTY).text
    turn = json.loads(out.read_text())["turns"][0]
    assert turn["text"] == want and turn["stop_reason"] == "length"
    assert turn["target_passes"] + turn["accepted"] == 16  # each token's row: its own pass, or a kept draft's
    assert "prompt lookup: " in drafted.output and "drafted tokens kept" in drafted.output
    no_cache = without_kv_cache(target.path, tmp_path / "no-cache")
    for args, says in [(["--ngram", "0"], "--ngram"), ([], "no KV cache")]:
        path = no_cache if not args else target.path
        bad = runner.invoke(app, ["generate", str(path), "hi", "--draft", "prompt-lookup", "--json",
                                  str(tmp_path / "bad.json"), *args])
        assert bad.exit_code == 2 and says in bad.output and len(bad.output.strip().splitlines()) == 1, bad.output
        assert not (tmp_path / "bad.json").exists()
    alone = runner.invoke(app, ["generate", str(target.path), "hi", "--ngram", "2"])
    assert alone.exit_code == 2 and "--ngram" in alone.output
    with pytest.raises(EdgeshrinkError, match="no KV cache"):
        LocalTarget(load(no_cache))
    with pytest.raises(EdgeshrinkError, match="no KV cache"):
        load(no_cache).generate("hi", 4, prompt_lookup=3)
    with pytest.raises(EdgeshrinkError, match="prompt_lookup"):
        target.generate("hi", 4, prompt_lookup=-1)
