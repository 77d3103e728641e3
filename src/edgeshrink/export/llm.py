"""Export a decoder language model to an LLM bundle: ONNX with a KV cache, validated token for token.

    from edgeshrink.export.llm import export_llm, LLMExportConfig
    manifest = export_llm("smollm2", "runs/smollm2-fp32")        # a short name, a GGUF file or an HF directory

The graph comes from one of two exporters (``LLMExportConfig.exporter``; the runtime reads inputs and
outputs back from the session, so both graphs run the same way): onnxruntime-genai's model builder
(default where the family's registry entry lists it: fused GroupQueryAttention and fused q/k/v, ~340
nodes for SmolLM2, 35% faster INT4 decoding than optimum's graph measured here) or optimum-onnx's
``text-generation-with-past`` (~7,400 nodes; the fallback for families the builder lacks). The builder is
only needed to export: the bundle runs on onnxruntime alone. Validation, an error when it
fails: logits of a prefill and of a decode step against PyTorch (max-abs-diff within ``tolerance``),
and greedy continuations of ``validation_prompts`` prompts × ``validation_new_tokens`` tokens that must be
token-identical to PyTorch's (eos ignored on both sides). The bundle holds ``model.onnx``, the tokenizer,
the chat template and a manifest with generation defaults (eos ids, context length), FLOPs and weight
bytes per token, the validation result and every file's hash.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from edgeshrink._files import atomic_output_dir, check_output_dir
from edgeshrink._quiet import quiet
from edgeshrink.errors import EdgeshrinkError, first_line
from edgeshrink.export.config import LLMExportConfig


def export_llm(model: str | Path, out: str | Path, config: LLMExportConfig | None = None, *, force: bool = False,
               progress=None) -> dict:
    """Export ``model`` (see the module docstring) to a validated LLM bundle at ``out``; return its manifest."""
    from edgeshrink.export.bundle import graph_io, write_manifest
    from edgeshrink.models import arch
    from edgeshrink.models.llm import import_llm, load_causal_lm
    from edgeshrink.models.sources import read_record, weights_sha256

    config = config or LLMExportConfig()
    check_output_dir(out, force)
    model_dir = import_llm(model, progress=progress)
    net, tokenizer = load_causal_lm(model_dir)
    if not getattr(tokenizer, "is_fast", False):
        raise EdgeshrinkError(f"{model_dir} has no fast tokenizer (tokenizer.json); the device runtime needs one")
    family = arch.family_of(net.config)
    text_config = net.config.get_text_config() if hasattr(net.config, "get_text_config") else net.config

    exporter = choose_exporter(family, config.exporter, net.config)
    with atomic_output_dir(out, force) as tmp:
        if progress:
            progress(f"exporting to ONNX ({EXPORTER_LABELS[exporter]})")
        try:
            with quiet():
                EXPORTERS[exporter](model_dir, tmp / "_export", config)
        except EdgeshrinkError:
            raise
        except Exception as exc:  # the exporters raise many types; the first line says what went wrong
            raise EdgeshrinkError(f"ONNX export of {model_dir} ({exporter}) failed: {first_line(exc)}") from None
        for path in (tmp / "_export").iterdir():
            if path.name.startswith("model.onnx"):  # the graph and its external data, if any
                shutil.move(path, tmp / path.name)
        shutil.rmtree(tmp / "_export")
        # optimum folds a tied head's transpose into a second table; the builder's graph reads the one table
        retied = retie_folded_lm_head(tmp / "model.onnx") if exporter == "optimum" else 0
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"), pretty=False)  # 45% of the indented size
        template = None
        if tokenizer.chat_template:
            template = "chat_template.jinja"
            (tmp / template).write_text(tokenizer.chat_template, encoding="utf-8")
        eos = net.generation_config.eos_token_id if net.generation_config is not None else None
        eos_ids = sorted({*(eos if isinstance(eos, list) else [eos] if eos is not None else []),
                          *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []),
                          *family.stop_token_ids(tokenizer)})  # Gemma's <end_of_turn> ends a chat turn
        inputs, outputs = graph_io(tmp / "model.onnx")
        fields = {
            "task": "text-generation",
            "family": family.name,
            "model_type": net.config.model_type,
            "source": {"model": str(model), "path": str(Path(model_dir).resolve()),
                       "weights_sha256": weights_sha256(model_dir),
                       "parameters": int(sum(p.numel() for p in net.parameters())),
                       "record": read_record(model_dir).get("source")},
            "tokenizer": {"file": "tokenizer.json", "chat_template": template, "add_special_tokens": True,
                          "special_tokens": {k: getattr(tokenizer, k) for k in ("bos_token", "eos_token")
                                             if getattr(tokenizer, k, None) is not None}},
            "generation": {"eos_token_ids": eos_ids, "bos_token_id": tokenizer.bos_token_id,
                           "context_length": int(text_config.max_position_embeddings)},
            "export": {**config.to_dict(), "exporter": exporter, "exporter_label": EXPORTER_LABELS[exporter],
                       "retied_lm_heads": retied},
            "inputs": inputs,
            "outputs": outputs,
            "cost": cost_per_token(net),
        }
        if trained_grid := read_record(model_dir).get("quantization_aware"):  # quantize reads this grid back
            fields["source"]["quantization_aware"] = trained_grid
        write_manifest(tmp, {**fields, "validation": None})
        try:
            report = validate_llm(tmp, net, tokenizer, config, progress)
        except EdgeshrinkError:
            raise
        except Exception as exc:  # onnxruntime refusing to run the graph it was given
            raise EdgeshrinkError(f"the exported graph ({exporter}) does not run: {first_line(exc)}") from None
        manifest = write_manifest(tmp, {**fields, "validation": report})
    return manifest


def summarize(manifest: dict, out) -> str:
    v = manifest["validation"]
    return (f"LLM bundle {out}: {manifest['size_bytes'] / 1e6:.1f} MB, {manifest['family']}, exporter "
            f"{manifest['export']['exporter']}, validated: {v['token_identical']}/{v['prompts']} greedy continuations "
            f"of {v['new_tokens']} tokens identical to PyTorch, logits max-abs-diff "
            f"{max(v['prefill_max_abs_diff'], v['decode_step_max_abs_diff']):.2e}")


def _export_optimum(model_dir: Path, dst: Path, config: LLMExportConfig) -> None:
    from optimum.exporters.onnx import main_export

    main_export(str(model_dir), output=str(dst), task="text-generation-with-past", library_name="transformers",
                opset=config.opset, device="cpu", do_validation=False)


def _export_builder(model_dir: Path, dst: Path, config: LLMExportConfig) -> None:
    from unittest import mock

    from onnxruntime_genai.models.builder import create_model

    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):  # a local directory: nothing may be fetched
        create_model("model", str(model_dir), str(dst), "fp32", "cpu", str(dst / "_cache"), hf_token="false",
                     hf_remote=False)


# Exporter name -> function writing model.onnx (+ external data) into a directory, and what it is.
EXPORTERS = {"builder": _export_builder, "optimum": _export_optimum}
EXPORTER_LABELS = {"builder": "onnxruntime-genai model builder, fp32", "optimum": "optimum-onnx text-generation-with-past"}
_EXPORTER_PACKAGES = {"builder": ("onnxruntime_genai", "onnxruntime-genai"), "optimum": ("optimum.exporters.onnx", "optimum-onnx")}


def choose_exporter(family, wanted: str, model_config=None) -> str:
    """``wanted``, or for ``auto`` the family's first exporter that is installed and takes this model's shape;
    one-line refusals."""
    import importlib.util

    def installed(name: str) -> bool:
        module = _EXPORTER_PACKAGES[name][0]
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            return False

    def refusal(name: str) -> str | None:
        """Why the builder's graph cannot run this model on ONNX Runtime's CPU kernels, or None."""
        if name != "builder" or model_config is None:
            return None
        text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
        head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        if head % 16:
            return f"its head size {head} is not a multiple of 16 (GroupQueryAttention's CPU kernel needs that)"
        return None

    if wanted != "auto":
        if wanted not in family.llm_exporters:
            raise EdgeshrinkError(f"exporter {wanted!r} does not handle {family.label or family.name}; "
                                  f"it takes {', '.join(family.llm_exporters)}")
        if not installed(wanted):
            raise EdgeshrinkError(f"exporter {wanted!r} needs the package {_EXPORTER_PACKAGES[wanted][1]}: "
                                  "pip install 'edgeshrink[llm]'")
        if refusal(wanted):
            raise EdgeshrinkError(f"exporter {wanted!r} cannot export this model: {refusal(wanted)}")
        return wanted
    for name in family.llm_exporters:
        if installed(name) and not refusal(name):
            return name
    raise EdgeshrinkError(f"no LLM exporter installed for {family.label or family.name}: pip install 'edgeshrink[llm]'")


def retie_folded_lm_head(path: Path) -> int:
    """Store a tied LM head once: a MatMul weight equal to an embedding table transposed becomes
    ``Transpose(table)``; return how many were re-tied.

    The exporter folds the tied head's transpose into a second constant for some families (Gemma 3), so the
    largest table is stored twice: 671 MB more for Gemma 3 270M, and a larger vocabulary would pass the
    2 GB protobuf limit. The quantizer unties it again on its own terms (compress/llm_quantize.py).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    tables = {n.input[0]: numpy_helper.to_array(inits[n.input[0]]) for n in graph.node
              if n.op_type == "Gather" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    retied = 0
    for node in list(graph.node):
        if node.op_type != "MatMul" or node.input[1] not in inits or uses[node.input[1]] != 1:
            continue
        weight = inits[node.input[1]]
        for name, table in tables.items():
            if list(weight.dims) == list(table.shape[::-1]) and np.array_equal(numpy_helper.to_array(weight), table.T):
                transposed = name + "_transposed"
                graph.node.insert(list(graph.node).index(node),
                                  helper.make_node("Transpose", [name], [transposed], perm=[1, 0], name=transposed))
                graph.initializer.remove(weight)
                node.input[1] = transposed
                retied += 1
                break
    if retied:
        size = sum(i.ByteSize() for i in graph.initializer)
        for stale in path.parent.glob(path.name + "*"):
            stale.unlink()
        onnx.save(model, str(path), save_as_external_data=size > 1_800_000_000, location=path.name + ".data")
    return retied


def cost_per_token(net) -> dict:
    """FLOPs and fp32 weight bytes of one decode step, from the model's linear layers (LM head included).

    FLOPs = 2 × (weights multiplied per token) + an attention term per token already in the context; the
    embedding lookup reads one row, so the embedding table counts only where it is also the LM head.
    """
    import torch

    matmul = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Linear))
    config = net.config.get_text_config() if hasattr(net.config, "get_text_config") else net.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention_per_context_token = 4 * config.num_hidden_layers * config.num_attention_heads * head_dim
    return {"flops_per_token": 2 * matmul, "attention_flops_per_context_token": attention_per_context_token,
            "weight_bytes_per_token": 4 * matmul, "matmul_parameters": int(matmul)}


def _prompts(tokenizer, count: int, seed: int) -> list[list[int]]:
    """Random prompts of 4-24 ordinary tokens (special tokens left out), fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = np.array([i for i in range(len(tokenizer)) if i not in special])
    return [rng.choice(ordinary, size=int(rng.integers(4, 25))).tolist() for _ in range(count)]


def _torch_greedy(net, ids: list[int], new_tokens: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Greedy continuation with the KV cache; also the prefill logits and the first decode step's logits."""
    import torch

    with torch.inference_mode():
        out = net(input_ids=torch.tensor([ids]), use_cache=True)
        prefill = out.logits[0].float().numpy()
        past, token, generated, step_logits = out.past_key_values, int(out.logits[0, -1].argmax()), [], None
        for step in range(new_tokens):
            generated.append(token)
            if step + 1 == new_tokens:
                break
            out = net(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
            if step_logits is None:
                step_logits = out.logits[0, -1].float().numpy()
            past, token = out.past_key_values, int(out.logits[0, -1].argmax())
    return generated, prefill, step_logits


def validate_llm(bundle: Path, net, tokenizer, config: LLMExportConfig, progress=None) -> dict:
    """Prefill/decode logits and greedy token identity against PyTorch; raise if either fails."""
    from edgeshrink.runtime.generate import Generator

    generator = Generator(bundle, verify=False)
    prefill_diff = step_diff = 0.0
    identical, first_mismatch = 0, None
    prompts = _prompts(tokenizer, config.validation_prompts, config.seed)
    for number, ids in enumerate(prompts):
        if progress:
            progress(f"validating prompt {number + 1}/{len(prompts)}")
        want, prefill, step = _torch_greedy(net, ids, config.validation_new_tokens)
        prefill_diff = max(prefill_diff, float(np.abs(generator.logits(ids) - prefill).max()))
        if step is not None:  # one decode step through the KV cache, as generation runs it
            _, past = generator._step(ids, generator._empty_past(), len(ids))
            got_step, _ = generator._step(want[:1], past, len(ids) + 1)
            step_diff = max(step_diff, float(np.abs(got_step[-1] - step).max()))
        got = generator.generate(ids, config.validation_new_tokens, ignore_eos=True).token_ids
        if got == want:
            identical += 1
        elif first_mismatch is None:
            at = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
            first_mismatch = {"prompt": number, "position": at, "onnx": got[at], "pytorch": want[at]}
    report = {"prompts": len(prompts), "new_tokens": config.validation_new_tokens, "token_identical": identical,
              "first_mismatch": first_mismatch, "prefill_max_abs_diff": prefill_diff,
              "decode_step_max_abs_diff": step_diff, "tolerance": config.tolerance}
    report["ok"] = identical == len(prompts) and max(prefill_diff, step_diff) <= config.tolerance
    if not report["ok"]:
        raise EdgeshrinkError(f"exported language model does not match its source: {identical}/{len(prompts)} greedy "
                              f"continuations identical, logits max-abs-diff prefill {prefill_diff:.2e} / decode "
                              f"{step_diff:.2e} (tolerance {config.tolerance:.0e})")
    return report
