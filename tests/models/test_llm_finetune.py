"""A decoder fine-tuned on a prompted task learns it; the torch scorer and the torch-free runtime agree."""

import json
import random

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.export.llm import LLMExportConfig, export_llm
from edgeshrink.models.finetune import FinetuneConfig, finetune
from tests.conftest import write_csv
from tests.families import make_causal_lm


def separable_rows(n: int, seed: int = 0):
    """Random filler words and one cue word that decides the label: learnable by a two-layer model."""
    rng = random.Random(seed)
    filler = ["the", "film", "plot", "actor", "scene", "story", "music", "ending", "cast", "camera"]
    rows = []
    for _ in range(n):
        label = rng.choice(["negative", "positive"])
        words = [rng.choice(filler) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), "great" if label == "positive" else "awful")
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm-ft")
    data = write_csv(root / "cues.csv", separable_rows(400))
    base = make_causal_lm("llama", root / "base")
    record = finetune(str(base), str(data), root / "tuned", FinetuneConfig(epochs=4, batch_size=16, learning_rate=3e-3))
    return root, data, base, record


def test_fine_tuning_learns_the_task(tuned):
    root, _, _, record = tuned
    assert record["test"]["accuracy"] >= 0.9, record["test"]
    assert record["history"][-1]["loss"] < record["history"][0]["loss"]
    assert record["prompted_task"]["scored_by"] == "label log-likelihood"
    saved = json.loads((root / "tuned" / "edgeshrink.json").read_text())
    assert saved["prompted_task"]["prompt"]["labels"] == ["negative", "positive"]


def test_runtime_scores_equal_the_torch_scores(tuned, tmp_path):
    """The exported bundle answers what was trained: PromptedLLM's label log-likelihoods (ONNX Runtime,
    KV cache) equal the fine-tuner's (torch, one padded pass), single- and multi-token answers."""
    from edgeshrink.models.llm import load_causal_lm as _load
    from edgeshrink.models.llm_finetune import HFPrompter, answer_logliks, context_length
    from edgeshrink.runtime import load
    from edgeshrink.runtime.prompted import PromptedLLM

    root, _, _, record = tuned
    export_llm(root / "tuned", tmp_path / "bundle", LLMExportConfig(validation_prompts=2, validation_new_tokens=4))
    net, tokenizer = _load(root / "tuned", "cpu")
    texts = [text for text, _ in separable_rows(6, seed=3)] + ["great " * 400]  # the last one is cut
    for answers, single in (({"negative": "a", "positive": "b"}, True), ({}, False)):
        prompt = {**record["prompted_task"]["prompt"], "answers": answers, "max_text_tokens": 64}
        runtime = PromptedLLM(load(tmp_path / "bundle"), prompt)
        torch_side = HFPrompter(tokenizer, prompt, context_length(net.config))
        assert runtime.text_limit == torch_side.text_limit < 64  # the tiny model's context cuts harder
        assert runtime.answer_ids == torch_side.answer_ids
        assert (max(len(a) for a in runtime.answer_ids) == 1) == single  # both scoring paths are covered
        result = runtime.predict(texts)
        np.testing.assert_allclose(result.answer_logliks, answer_logliks(net, torch_side, texts), atol=2e-3)
        assert result.truncated == [False] * 6 + [True]
        np.testing.assert_allclose(result.probabilities.sum(1), 1, atol=1e-5)
        assert (result.signals["min-logprob"] <= result.signals["mean-logprob"] + 1e-9).all()
        if single:  # one answer token: its mean is its minimum
            np.testing.assert_allclose(result.signals["min-logprob"], result.signals["mean-logprob"])


def test_cli_fine_tunes_a_language_model_and_refuses_prompts_for_classifiers(tuned, tmp_path, tiny_model, tiny_csv):
    root, data, base, _ = tuned
    (tmp_path / "short.yaml").write_text("user: '{text}'\nmax_text_tokens: 12\n")  # two shots fit 128 positions
    result = CliRunner().invoke(app, ["finetune", str(base), "--data", str(data), "--out", str(tmp_path / "m"),
                                      "--epochs", "0.2", "--few-shot", "2", "--prompt", str(tmp_path / "short.yaml"),
                                      "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    shots = json.loads((tmp_path / "r.json").read_text())["prompted_task"]["prompt"]["shots"]
    assert len(shots) == 2 and {label for _, label in shots} == {"negative", "positive"}
    result = CliRunner().invoke(app, ["finetune", str(tiny_model), "--data", str(tiny_csv), "--out",
                                      str(tmp_path / "c"), "--few-shot", "2"])
    assert result.exit_code == 2 and "apply to language models" in result.output and not (tmp_path / "c").exists()
