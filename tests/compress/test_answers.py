"""Answer agreement (compress/answers.py) on tiny random bundles: identical answers, loops, facts, prompt sets."""

import json
import shutil

import pytest

from edgeshrink.compress import LLMQuantConfig, quantize
from edgeshrink.compress.answers import FACTS, answer_prompts, compare_answers, settings, summary
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export.llm import LLMExportConfig, export_llm
from edgeshrink.runtime import load
from edgeshrink.runtime.sampling import Sampling
from tests.conftest import make_texts
from tests.families import make_causal_lm


def write_prompts(path, n=40):
    with open(path, "w") as fh:
        for i, (text, label) in enumerate(make_texts(n, seed=5)):
            fh.write(json.dumps({"id": f"p{i}", "text": f"Tell me about {text} ({i}).", "label": label}) + "\n")
    return path


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("answers")
    export_llm(make_causal_lm("llama", root / "m", tie_word_embeddings=True), root / "fp32",
               LLMExportConfig(validation_prompts=2, validation_new_tokens=4))
    shutil.copytree(root / "fp32", root / "copy")
    export_llm(make_causal_lm("llama", root / "other", seed=3), root / "other-bundle",
               LLMExportConfig(validation_prompts=2, validation_new_tokens=4))
    return root, write_prompts(root / "prompts.jsonl")


def test_the_same_weights_answer_identically_and_another_model_does_not(bundles):
    root, prompts_file = bundles
    prompts = answer_prompts(str(prompts_file), "test", len(FACTS) + 4)
    assert prompts[:len(FACTS)] == [q for q, _ in FACTS] and len(prompts) == len(FACTS) + 4
    models = {"fp32": load(root / "fp32"), "copy": load(root / "copy"), "other": load(root / "other-bundle")}
    both = {"greedy": Sampling(), "penalized": Sampling(frequency_penalty=2.0)}
    report = compare_answers(models, "fp32", prompts, answer_tokens=24, sampling=both)
    assert report["prompts"] == len(prompts) and set(report["settings"]) == {"greedy", "penalized"}
    for label in both:
        assert report["models"]["copy"][label]["identical"]["share"] == 1.0
        assert report["models"]["copy"][label]["agreed_tokens"] > report["models"]["other"][label]["agreed_tokens"]
        assert report["models"]["other"][label]["identical"]["share"] < 0.5
        low, high = report["models"]["other"][label]["identical"]["interval"]
        assert 0 <= low <= report["models"]["other"][label]["identical"]["share"] <= high <= 1
        assert report["models"]["fp32"][label]["facts"]["n"] == len(FACTS)  # a random model knows none of them
        assert report["models"]["fp32"][label]["facts"]["count"] == 0
    # a tiny random model loops greedily; a strong penalty (its logits are small: subtract) breaks loops
    greedy, penalized = (report["models"]["fp32"][k]["looping"]["count"] for k in ("greedy", "penalized"))
    assert greedy > penalized
    line, warnings = summary(report, "other")
    assert "greedy:" in line and "penalized:" in line and any("are the reference's" in w for w in warnings)
    assert summary(report, "copy")[1] == []


def test_settings_add_the_penalized_answers_only_when_a_penalty_is_on():
    assert list(settings(Sampling())) == ["greedy"]
    on = settings(Sampling(frequency_penalty=0.5, temperature=0.7))
    assert list(on) == ["greedy", "penalized"] and on["penalized"].temperature == 0  # answers stay greedy
    assert on["penalized"].frequency_penalty == 0.5


def test_prompt_sets_and_bad_requests(bundles):
    root, prompts_file = bundles
    calibration, test = (answer_prompts(str(prompts_file), part, 12) for part in ("calibration", "test"))
    assert calibration[:8] == test[:8] and not set(calibration[8:]) & set(test[8:])  # the parts stay apart
    with pytest.raises(EdgeshrinkError, match="prompts; 200 are needed"):
        answer_prompts(str(prompts_file), "test", 208)
    with pytest.raises(EdgeshrinkError, match="at least one"):
        answer_prompts(str(prompts_file), "test", 0)
    with pytest.raises(EdgeshrinkError, match="not among the models"):
        compare_answers({"a": load(root / "fp32")}, "b", ["hi"])


def test_quantize_records_the_answers_and_says_them_in_its_summary(bundles):
    from edgeshrink.compress.quantize.decoder import DecoderQuantization

    root, prompts_file = bundles
    text = root / "text.txt"
    text.write_text("\n\n".join(t for t, _ in make_texts(40, seed=9)))
    config = LLMQuantConfig(method="int4-weight", block_size=16, max_eval_examples=2, answer_prompts=10,
                            answer_tokens=12, answer_data=str(prompts_file))
    manifest = quantize(root / "fp32", root / "int4", config, data=str(text))
    answers = manifest["quantization"]["evaluation"]["answers"]
    assert answers["part"] == "calibration" and answers["prompts"] == 10 and answers["answer_tokens"] == 12
    assert set(answers["models"]) == {"source", "quantized"}
    assert answers["models"]["source"]["greedy"]["identical"]["share"] == 1.0
    line = DecoderQuantization.describe(manifest, root / "int4")
    assert "10 chat answers vs the source's (greedy: " in line
    assert ("warning:" in line) == bool(summary(answers, "quantized")[1])
    off = quantize(root / "fp32", root / "int4-none", config.model_copy(update={"answer_prompts": 0}), data=str(text))
    assert "answers" not in off["quantization"]["evaluation"]


def test_a_prompt_set_that_cannot_be_read_is_said_not_fatal(bundles, tmp_path):
    from edgeshrink.compress.quantize.decoder import DecoderQuantization

    root, _ = bundles
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(t for t, _ in make_texts(20, seed=9)))
    config = LLMQuantConfig(method="int4-weight", block_size=16, max_eval_examples=1, grid="rtn",  # 20 short texts
                            answer_data=str(tmp_path / "missing.jsonl"))
    manifest = quantize(root / "fp32", tmp_path / "q", config, data=str(text))
    assert "missing.jsonl" in manifest["quantization"]["evaluation"]["answers"]["skipped"]
    assert "; chat answers not compared: " in DecoderQuantization.describe(manifest, tmp_path / "q")
