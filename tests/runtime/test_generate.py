"""The torch-free generator: streaming, sampling, chat, stops, and bad requests."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export.llm import LLMExportConfig, export_llm
from edgeshrink.runtime import load
from tests.families import make_causal_lm


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    quick = LLMExportConfig(validation_prompts=2, validation_new_tokens=8)
    export_llm(make_causal_lm("llama", root / "m"), root / "chat", quick)
    export_llm(make_causal_lm("llama", root / "p", chat_template=False), root / "plain", quick)
    return root


def test_stream_matches_generate_and_logprobs(bundles):
    llm = load(bundles / "chat")
    streamed = list(llm.stream("a good film", max_new_tokens=10))
    result = llm.generate("a good film", max_new_tokens=10)
    assert [t.id for t in streamed] == result.token_ids and "".join(t.text for t in streamed).startswith(result.text[:5])
    assert all(lp <= 0 for lp in result.logprobs) and result.prompt_tokens > 0 and result.first_token_ms > 0


def test_sampling_is_seeded(bundles):
    llm = load(bundles / "chat")
    a = llm.generate("the plot", max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=3).token_ids
    b = llm.generate("the plot", max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=3).token_ids
    c = llm.generate("the plot", max_new_tokens=12, temperature=1.0, seed=4).token_ids
    assert a == b and a != c


def test_chat_template_and_stop(bundles):
    llm = load(bundles / "chat")
    ids = llm.encode([{"role": "user", "content": "hi"}])
    assert llm.tokenizer.decode(ids, skip_special_tokens=False).startswith("<|im_start|>user\nhi<|im_end|>")
    full = llm.generate("a film", max_new_tokens=20, ignore_eos=True)
    assert len(full.text) > 3
    stop = full.text[2:4]
    cut = llm.generate("a film", max_new_tokens=20, ignore_eos=True, stop=[stop])
    assert cut.stop_reason == "stop" and stop not in cut.text and len(cut.token_ids) < 20


def test_bad_requests(bundles):
    llm = load(bundles / "plain")
    with pytest.raises(EdgeshrinkError, match="max_new_tokens must be positive"):
        llm.generate("x", max_new_tokens=0)
    with pytest.raises(EdgeshrinkError, match="exceeds the context length 128"):
        llm.generate("film " * 200, max_new_tokens=4)
    with pytest.raises(EdgeshrinkError, match="no chat template"):
        llm.generate([{"role": "user", "content": "hi"}])
    result = CliRunner().invoke(app, ["generate", str(bundles / "plain"), "--chat"])
    assert result.exit_code == 2 and "no chat template" in result.stderr


def test_bundle_hashes_are_checked(bundles, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(bundles / "chat", broken)
    with open(broken / "model.onnx", "ab") as fh:
        fh.write(b"x")
    result = CliRunner().invoke(app, ["generate", str(broken), "hello"])
    assert result.exit_code == 2 and "corrupt or was modified" in result.stderr


def test_cli_generate_streams_and_torch_is_never_imported(bundles, tmp_path):
    result = CliRunner().invoke(app, ["generate", str(bundles / "chat"), "a good film", "--max-new-tokens", "6",
                                      "--json", str(tmp_path / "g.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "g.json").read_text())["turns"][0]["prompt_tokens"] > 0
    code = (f"import sys; from edgeshrink.runtime import load; g = load({str(bundles / 'chat')!r}); "
            "g.generate('a film', max_new_tokens=4); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_max_new_tokens_defaults_to_what_the_context_leaves(bundles):
    """Issue 25, item 18: a default longer than the context was an error; it is now capped to what it leaves."""
    llm = load(bundles / "plain")
    prompt = "film " * 100
    n = len(llm.encode(prompt))
    result = llm.generate(prompt, max_new_tokens=None, ignore_eos=True)
    assert len(result.token_ids) == 128 - n and result.stop_reason == "length"
    short = llm.generate("a film", max_new_tokens=None, ignore_eos=True)
    assert len(short.token_ids) == min(128, 128 - short.prompt_tokens)
    cli = CliRunner().invoke(app, ["generate", str(bundles / "plain"), prompt])
    assert cli.exit_code == 0, cli.output


def test_empty_and_nan_options_are_refused(bundles):
    llm = load(bundles / "plain")
    with pytest.raises(EdgeshrinkError, match="stop string must be a non-empty"):
        llm.generate("a film", max_new_tokens=2, stop=[""])
    with pytest.raises(EdgeshrinkError, match="finite numbers"):
        llm.generate("a film", max_new_tokens=2, temperature=float("nan"))


def test_interactive_chat_says_how_to_leave_and_leaves_on_exit(bundles):
    result = CliRunner().invoke(app, ["generate", str(bundles / "chat"), "--chat", "--max-new-tokens", "2"],
                                input="hello\n/exit\nnot read\n")
    assert result.exit_code == 0, result.output
    assert "leave with Ctrl-D or /exit or /quit" in result.stderr
    assert result.stdout.count("you> ") == 2  # one answer, then /exit ends it before "not read"
    ended = CliRunner().invoke(app, ["generate", str(bundles / "chat"), "--chat", "--max-new-tokens", "2"], input="")
    assert ended.exit_code == 0 and "leave with Ctrl-D" in ended.stderr  # Ctrl-D (end of input) leaves too
