"""Penalties on the next-token logits (runtime/sampling.py) and loops in answers (runtime/loops.py)."""

import math

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export.llm import LLMExportConfig, export_llm
from edgeshrink.runtime import load
from edgeshrink.runtime.loops import ends_in_loop, find_loop
from edgeshrink.runtime.sampling import Sampling, distribution, penalized
from tests.families import make_causal_lm


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_generated_tokens():
    logits = np.array([2.0, -2.0, 1.0, -1.0, 0.5], np.float32)
    out = penalized(logits, Sampling(repetition_penalty=2.0), [0, 1, 0])
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0, -1.0, 0.5])  # counted once, however often seen
    assert out is not logits and logits[0] == 2.0  # the model's logits are left alone
    assert penalized(logits, Sampling(), [0, 1]) is logits  # no penalty: nothing copied
    assert penalized(logits, Sampling(repetition_penalty=2.0), []) is logits  # nothing generated yet


def test_frequency_and_presence_penalties_are_openais_formula():
    logits = np.zeros(4, np.float32)
    out = penalized(logits, Sampling(frequency_penalty=0.5, presence_penalty=1.0), [2, 2, 2, 3])
    np.testing.assert_allclose(out, [0, 0, -(0.5 * 3 + 1.0), -(0.5 + 1.0)])
    negative = penalized(logits, Sampling(frequency_penalty=-1.0), [1])  # negative values encourage repeats
    assert negative[1] == 1.0


def test_a_penalty_can_change_the_greedy_choice():
    logits = np.array([3.0, 2.9, 0.0], np.float32)
    assert distribution(logits, Sampling())[0][0] == 0
    assert distribution(penalized(logits, Sampling(repetition_penalty=1.1), [0]), Sampling())[0][0] == 1


@pytest.mark.parametrize("bad, message", [
    ({"repetition_penalty": 0}, "repetition_penalty must be a positive number"),
    ({"repetition_penalty": -1.2}, "repetition_penalty must be a positive number"),
    ({"repetition_penalty": math.nan}, "repetition_penalty must be a positive number"),
    ({"repetition_penalty": math.inf}, "repetition_penalty must be a positive number"),
    ({"frequency_penalty": 2.5}, "frequency_penalty must be in \\[-2, 2\\]"),
    ({"presence_penalty": -3}, "presence_penalty must be in \\[-2, 2\\]"),
    ({"presence_penalty": math.nan}, "presence_penalty must be in \\[-2, 2\\]"),
    ({"temperature": math.inf}, "need temperature >= 0")])
def test_bad_settings_are_one_line_errors(bad, message):
    with pytest.raises(EdgeshrinkError, match=message) as error:
        Sampling(**bad).check()
    assert "\n" not in str(error.value)


# -- loops ---------------------------------------------------------------------------------------------------
def test_a_repeated_block_is_a_loop_and_a_short_run_is_not():
    answer = [5, 6, 7, 8, 9, 10]
    la_france = [20, 21, 22, 23]  # "la France, " four tokens
    looping = answer + la_france * 4 + [20, 21]
    loop = find_loop(looping)
    assert (loop.start, loop.period, loop.repeats) == (6, 4, 4) and loop.end == 22
    assert ends_in_loop(looping) == loop
    assert find_loop(answer + la_france * 2) is None  # twice is no loop
    assert find_loop([1, 2] + [0] * 11) is None  # "00000000000": 11 tokens < min_span
    assert find_loop([1, 2] + [0] * 12) == find_loop([1, 2] + [0] * 12, min_span=12)
    assert find_loop([1, 2] + [0] * 12).period == 1
    assert find_loop(list(range(200))) is None and find_loop([]) is None


def test_a_loop_that_ended_is_found_but_does_not_end_the_sequence():
    middle = [1, 2, 3] + [7, 8, 9] * 5 + [40, 41, 42, 43, 44]
    assert find_loop(middle).start == 3 and find_loop(middle).period == 3
    assert ends_in_loop(middle) is None
    # the first loop is the earliest; a later one that runs to the end is what ends_in_loop reports
    two = [7, 8, 9] * 5 + [50] + [60, 61] * 8
    assert find_loop(two).period == 3 and ends_in_loop(two).period == 2 and ends_in_loop(two).start == 16


def test_loop_limits_are_checked():
    with pytest.raises(ValueError):
        find_loop([1, 2, 3], min_repeats=1)


# -- in generation --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("penalties")
    export_llm(make_causal_lm("llama", root / "m"), root / "chat",
               LLMExportConfig(validation_prompts=2, validation_new_tokens=4))
    return root / "chat"


def _greedy_by_hand(llm, prompt: str, steps: int, sampling: Sampling) -> list[int]:
    ids = llm.encode(prompt)
    generated: list[int] = []
    for _ in range(steps):
        row = llm.logits(ids + generated)[-1]
        generated.append(int(distribution(penalized(row, sampling, generated), sampling)[0][0]))
    return generated


@pytest.mark.parametrize("options", [{"repetition_penalty": 1.5}, {"frequency_penalty": 1.0, "presence_penalty": 0.5}])
def test_generation_applies_the_penalties_step_by_step(bundle, options):
    llm = load(bundle)
    plain = llm.generate("a good film", 24, ignore_eos=True, repetition_penalty=1.0).token_ids
    result = llm.generate("a good film", 24, ignore_eos=True, **options).token_ids
    assert result == _greedy_by_hand(llm, "a good film", 24, Sampling(**options))
    assert result != plain  # a tiny random model repeats itself: the penalties must change its answer
    assert find_loop(plain) is not None and find_loop(result) is None


def test_generate_cli_takes_the_penalties_and_refuses_bad_ones_in_one_line(bundle):
    runner = CliRunner()
    ok = runner.invoke(app, ["generate", str(bundle), "a good film", "--max-new-tokens", "6",
                             "--repetition-penalty", "1.3", "--frequency-penalty", "0.5", "--presence-penalty", "0.2"])
    assert ok.exit_code == 0, ok.output
    for flag, value in (("--repetition-penalty", "0"), ("--frequency-penalty", "2.5"), ("--presence-penalty", "-9")):
        bad = runner.invoke(app, ["generate", str(bundle), "a good film", flag, value])
        assert bad.exit_code != 0 and flag.strip("-").replace("-", "_") in bad.output
        assert len(bad.output.strip().splitlines()) == 1 and "Traceback" not in bad.output
