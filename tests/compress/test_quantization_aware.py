"""Quantization-aware healing: the student trains through the INT4 grid quantize writes, and the INT4 bundle's
logits are the trained model's; refusals in one line."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.compress import LLMQuantConfig, quantize
from edgeshrink.compress.distill import distill
from edgeshrink.compress.distill.decoder import LLMDistillConfig
from edgeshrink.compress.prune import prune
from edgeshrink.compress.prune.decoder import LLMPruneConfig
from edgeshrink.compress.quantize.aware import fake_quantize, fake_quantized, read_trained_grid
from edgeshrink.compress.quantize.gguf_grid import round_to_grid
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export.llm import LLMExportConfig, export_llm
from tests.conftest import make_texts
from tests.families import make_causal_lm

FAST = dict(epochs=1, sequence_tokens=32, batch_size=4, train_tokens=32 * 8, top_k=8, calibration_windows=2,
            precision="fp32", learning_rate=1e-3)
QUANT = dict(method="int4-weight", evaluate=False, answer_prompts=0)


@pytest.fixture(scope="module")
def healed(tmp_path_factory):
    """A tied tiny Llama cut to 2 blocks, healed through its INT4 grid, exported and quantized (grid auto)."""
    root = tmp_path_factory.mktemp("qat")
    text = root / "text.txt"
    text.write_text("\n\n".join(t for t, _ in make_texts(90, seed=7)))
    teacher = make_causal_lm("llama", root / "teacher", tie_word_embeddings=True, num_hidden_layers=4)
    prune(teacher, root / "student", LLMPruneConfig(blocks=[1, 2]), data=str(text))
    record = distill(teacher, root / "student", root / "healed", LLMDistillConfig(**FAST, quantization_aware=True),
                     data=str(text))
    export_llm(root / "healed", root / "fp32", LLMExportConfig(validation_prompts=2, validation_new_tokens=4))
    manifest = quantize(root / "fp32", root / "int4", LLMQuantConfig(**QUANT), data=str(text))
    return root, text, record, manifest


def test_torch_and_numpy_quantizers_give_one_grid():
    weights = torch.randn(24, 96, generator=torch.Generator().manual_seed(0)) * 0.05
    weights[0, :32] = 0  # a block of zeros: scale 0
    weights[1, :32] = weights[1, :32].abs() + 0.01  # all positive: zero point 0
    weights[2, 32:64] = -weights[2, 32:64].abs()  # all negative: zero point 15
    ours = fake_quantize(weights, 32).detach().numpy()
    grid = round_to_grid("w", "F32", weights.numpy(), 4, 32)
    assert np.array_equal(ours, grid.reconstruct())  # bit for bit
    again, line = read_trained_grid("w", ours, 4, 32)  # the grid values read back: the same codes, nothing moves
    assert np.array_equal(again.codes, grid.codes) and line["max_abs_error"] <= 1e-7
    with pytest.raises(EdgeshrinkError, match="not on the INT4 grid"):
        read_trained_grid("w", weights.numpy(), 4, 32)


def test_gradients_reach_the_latent_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(make_causal_lm("llama", tmp_path / "m", tie_word_embeddings=True))
    assert fake_quantized(net, 32, frozen=False) == 2 * 7 + 2  # 7 Linears a block, the embedding and the tied head
    proj = net.model.layers[0].mlp.up_proj
    latent = proj.parametrizations.weight.original
    assert not torch.equal(proj.weight, latent)  # the forward reads the grid values
    net(input_ids=torch.tensor([[1, 2, 3, 4, 5]])).logits.square().mean().backward()
    assert latent.grad is not None and latent.grad.abs().sum() > 0
    assert net.model.embed_tokens.parametrizations.weight.original is net.lm_head.parametrizations.weight.original


def test_int4_logits_equal_the_trained_model(healed):
    from transformers import AutoModelForCausalLM

    from edgeshrink.compress.quantize.aware import quantized_weights
    from edgeshrink.runtime.generate import Generator

    root, _, record, manifest = healed
    assert record["quantization_aware"] == {"bits": 4, "block_size": 32, "grid": "min-max integer zero point"}
    assert json.loads((root / "fp32" / "manifest.json").read_text())["source"]["quantization_aware"]["block_size"] == 32
    q = manifest["quantization"]
    assert q["grid"] == "trained" and q["gguf_grid"]["matmuls_left"] == []
    assert {line["grid"] for line in q["gguf_grid"]["trained"].values()} == {"trained"}
    assert max(line["max_abs_error"] for line in q["gguf_grid"]["trained"].values()) < 1e-6
    net = AutoModelForCausalLM.from_pretrained(root / "healed").eval()
    for module in quantized_weights(net).values():  # the saved weights are their own grid values
        assert torch.allclose(fake_quantize(module.weight, 32), module.weight, rtol=0, atol=1e-7)
    ids = Generator(root / "int4", verify=False).tokenizer.encode("the film was a quiet surprise to everyone").ids
    with torch.no_grad():
        expected = net(input_ids=torch.tensor([ids])).logits[0].numpy()
    got = Generator(root / "int4", verify=False).logits(ids)
    assert np.abs(got - expected).max() < 1e-4  # fp32 compute at accuracy level 0 (measured 2-4e-7, all 4 families)


def test_refusals_one_line_exit_2_nothing_written(healed, tmp_path):
    root, text, _, _ = healed
    runner = CliRunner()
    too_wide = runner.invoke(app, ["distill", "--teacher", str(root / "teacher"), "--student", str(root / "student"),
                                   "--data", str(text), "--out", str(tmp_path / "d"), "--quantization-aware",
                                   "--qat-block-size", "128"])
    assert too_wide.exit_code == 2 and len(too_wide.stderr.strip().splitlines()) == 1, too_wide.output
    assert "grid that the exporter will not produce" in too_wide.stderr and "not a multiple of the INT4 block (128)" \
        in too_wide.stderr
    assert not (tmp_path / "d").exists() and not (tmp_path / "d.partial").exists()
    for flags, said in [(["--grid", "rtn"], "--grid rtn would re-round it"),
                        (["--grid", "calibrated"], "--grid calibrated would re-round it"),
                        (["--block-size", "64"], "--block-size 64 would re-round it"),
                        (["--head-bits", "8"], "--head-bits 8 would re-round")]:
        out = tmp_path / f"q{len(flags[1])}"
        result = runner.invoke(app, ["quantize", str(root / "fp32"), "--out", str(out), "--method", "int4-weight",
                                     "--data", str(text), *flags])
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
        assert "was trained through its INT4 grid" in result.stderr and said in result.stderr
        assert not out.exists()


def test_fine_tuning_a_language_model_through_its_grid(tmp_path):
    from edgeshrink.models.finetune import finetune
    from edgeshrink.models.finetune.decoder import LLMFinetuneConfig
    from safetensors.torch import load_file
    from tests.conftest import write_csv
    from tests.models.test_llm_finetune import separable_rows

    data = write_csv(tmp_path / "cues.csv", separable_rows(120))
    base = make_causal_lm("llama", tmp_path / "base")
    config = LLMFinetuneConfig(epochs=1, batch_size=16, learning_rate=3e-3, quantization_aware=True)
    record = finetune(str(base), tmp_path / "tuned", config, data=str(data))
    assert record["quantization_aware"]["block_size"] == 32
    saved = load_file(str(tmp_path / "tuned" / "model.safetensors"))
    before = load_file(str(base / "model.safetensors"))
    assert not torch.equal(saved["model.layers.0.mlp.up_proj.weight"], before["model.layers.0.mlp.up_proj.weight"])
    for name, weight in saved.items():  # every Linear and table, trained, lies on its grid
        if weight.ndim == 2:
            assert read_trained_grid(name, weight.numpy(), 4, 32)[1]["max_abs_error"] < 1e-6  # else refused
    assert len([k for k in saved if saved[k].ndim == 2]) >= 2 * 7 + 1


def test_configs_round_trip_and_keep_their_cache_keys_while_off():
    from edgeshrink.models.finetune.decoder import LLMFinetuneConfig

    for cls in (LLMDistillConfig, LLMFinetuneConfig):
        on = cls(quantization_aware=True, quantization_block_size=64)
        assert cls.from_json(on.to_json()) == on
        assert on.key_form()["quantization_block_size"] == 64
        assert "quantization_aware" not in cls().key_form()  # a step cached before QAT existed keeps its key
    with pytest.raises(EdgeshrinkError, match="quantization_block_size"):
        LLMDistillConfig.from_dict({"quantization_aware": True, "quantization_block_size": 48})


def test_frozen_tables_of_a_gguf_model_stay_on_its_grid_and_the_int4_model_is_still_the_trained_one(tmp_path):
    """A student cut from a GGUF-imported model trains its Linears through the INT4 grid and leaves the frozen
    vocabulary table on the GGUF's Q8_0 grid; quantize keeps that table and reads every other weight back."""
    from transformers import AutoModelForCausalLM

    from edgeshrink.runtime.generate import Generator
    from tests.compress.test_llm_quantize import _onto_gguf_grid

    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(t for t, _ in make_texts(90, seed=7)))
    teacher = make_causal_lm("llama", tmp_path / "teacher", tie_word_embeddings=True, num_hidden_layers=4,
                             hidden_size=64, intermediate_size=128)
    _onto_gguf_grid(teacher, tmp_path / "teacher.gguf")
    table = AutoModelForCausalLM.from_pretrained(teacher).get_input_embeddings().weight.detach().clone()
    prune(teacher, tmp_path / "student", LLMPruneConfig(blocks=[1, 2]), data=str(text))
    record = distill(teacher, tmp_path / "student", tmp_path / "healed",
                     LLMDistillConfig(**FAST, quantization_aware=True), data=str(text))
    assert record["quantization_aware"]["tables"] == "gguf"
    net = AutoModelForCausalLM.from_pretrained(tmp_path / "healed").eval()
    assert torch.equal(net.get_input_embeddings().weight, table)  # not brought to 4 bits: still the Q8_0 values
    export_llm(tmp_path / "healed", tmp_path / "fp32", LLMExportConfig(validation_prompts=2, validation_new_tokens=4))
    manifest = quantize(tmp_path / "fp32", tmp_path / "int4", LLMQuantConfig(**QUANT), data=str(text))
    q = manifest["quantization"]["gguf_grid"]
    assert manifest["quantization"]["grid"] == "trained" and q["kept"] == {"Q8_0": 1} and q["matmuls_left"] == []
    assert len(q["trained"]) == 2 * 5 and q["rounded"] == {}  # 2 blocks: q/k/v/o, gate+up fused, down = 5 MatMulNBits
    ids = Generator(tmp_path / "int4", verify=False).tokenizer.encode("the film was a quiet surprise to everyone").ids
    with torch.no_grad():
        expected = net(input_ids=torch.tensor([ids])).logits[0].numpy()
    got = Generator(tmp_path / "int4", verify=False).logits(ids)
    assert q["max_abs_error_kept"] == 0 and max(line["max_abs_error"] for line in q["trained"].values()) < 1e-6
    # Every weight is the trained one; only the 8-bit head's kernel differs: MatMulNBits at 8 bits always runs
    # with int8 activations (accuracy level 4, gguf_grid.py: the fp32 path is ~90x slower), 4.1e-3 measured here
    # where a 4-bit table gives 2-4e-7 (test_int4_logits_equal_the_trained_model).
    assert np.abs(got - expected).max() < 2e-2 and (got.argmax(1) == expected.argmax(1)).all()
    (tmp_path / "teacher.gguf").rename(tmp_path / "moved.gguf")  # the table's grid can no longer be read: refused
    result = CliRunner().invoke(app, ["quantize", str(tmp_path / "fp32"), "--out", str(tmp_path / "again"),
                                      "--method", "int4-weight", "--data", str(text)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "no longer on disk unchanged" in result.stderr and not (tmp_path / "again").exists()


def test_an_uncut_model_can_be_healed_through_its_own_grid(healed, tmp_path):
    """A student as large as its teacher is refused for plain distillation (nothing to gain) but not for
    quantization-aware healing: training the whole model through its INT4 grid is what keeps it at INT4."""
    from transformers import AutoModelForCausalLM

    root, text, _, _ = healed
    record = distill(root / "teacher", root / "teacher", tmp_path / "uncut",
                     LLMDistillConfig(**FAST, quantization_aware=True), data=str(text))
    assert record["quantization_aware"]["bits"] == 4
    net = AutoModelForCausalLM.from_pretrained(tmp_path / "uncut")
    assert net.config.num_hidden_layers == 4  # nothing cut
    proj = net.model.layers[3].mlp.down_proj.weight
    assert torch.allclose(fake_quantize(proj, 32), proj, rtol=0, atol=1e-7)  # on its grid
    with pytest.raises(EdgeshrinkError, match="not smaller than its teacher"):
        distill(root / "teacher", root / "teacher", tmp_path / "plain", LLMDistillConfig(**FAST), data=str(text))
