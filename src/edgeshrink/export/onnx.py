"""Classifier bundles: a Hugging Face text classifier (optimum-onnx) or a plain torch module such as a CNN
(torch.onnx), validated against the source on several shapes. ``edgeshrink.export.export`` calls these.

    from edgeshrink.export.onnx import export_module
    manifest = export_module(net, (torch.rand(8, 1, 8, 8),), "runs/bundle", labels=[str(d) for d in range(10)])
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from edgeshrink._files import atomic_output_dir, check_output_dir, sha256_file
from edgeshrink._quiet import quiet
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.export.bundle import graph_io, write_manifest
from edgeshrink.export.config import ExportConfig
from edgeshrink.export.optimize import optimize_onnx
from edgeshrink.export.validate import text_inputs, validate_outputs
from edgeshrink.models.sources import model_labels, read_record, resolve_model, weights_sha256

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def export_encoder(model: str | Path, out: str | Path, config: ExportConfig | None = None, *, force: bool = False,
                   progress=None) -> dict:
    """Export a local Hugging Face sequence classifier to a validated device bundle; return its manifest."""
    import torch
    from optimum.exporters.onnx import onnx_export_from_model

    from edgeshrink.bench.flops import text_flops_table
    from edgeshrink.models import arch
    from edgeshrink.models.torch_text import load_classifier

    config = config or ExportConfig()
    check_output_dir(out, force)
    model_dir = resolve_model(model)
    record = read_record(model_dir)
    net, tokenizer = load_classifier(model_dir)
    hf_config = net.config
    family = arch.family_of(hf_config)
    max_length = min(config.max_length or record.get("max_length", 128), family.max_length(hf_config))
    labels = list(model_labels(model_dir))
    head = "untrained" if net.edgeshrink_untrained_head else "trained"
    too_long = [shape for shape in config.validation_shapes or [] if shape[1] > max_length]
    if too_long:
        raise EdgeshrinkError(f"validation shape {tuple(too_long[0])} is longer than the export's max_length "
                              f"{max_length}")

    with atomic_output_dir(out, force) as tmp:
        raw = tmp / "_export"
        # Export the model object the validation below runs: one set of weights, a random head included. The
        # tracing input is optimum's 16 tokens, or fewer where the model holds fewer.
        try:
            with quiet():
                onnx_export_from_model(net, str(raw), opset=config.opset, task="text-classification",
                                       do_validation=False, device="cpu", sequence_length=min(16, max_length),
                                       custom_onnx_configs={"model": _onnx_config(net)})
        except Exception as exc:  # optimum raises many types; the first line says what went wrong
            raise EdgeshrinkError(f"ONNX export of {model_dir} failed: {str(exc).splitlines()[0]}") from None
        onnx_path = tmp / "model.onnx"
        if config.optimize == "none":
            shutil.move(raw / "model.onnx", onnx_path)
            optimization = "none"
        else:
            attention = family.attention_of(family.block_list(net)[0])  # heads after any pruning
            optimization = optimize_onnx(raw / "model.onnx", onnx_path, config.optimize, family.ort_fusion,
                                         attention.heads, attention.heads * attention.head_size)
        shutil.rmtree(raw)
        tokenizer.save_pretrained(tmp / "_tok")
        for name in TOKENIZER_FILES:
            if (tmp / "_tok" / name).exists():
                shutil.move(tmp / "_tok" / name, tmp / name)
        shutil.rmtree(tmp / "_tok")

        inputs, outputs = graph_io(onnx_path)
        input_names = [i["name"] for i in inputs]
        rng = np.random.default_rng(config.seed)
        shapes = config.validation_shapes or [(1, min(8, max_length)), (1, max_length), (4, min(16, max_length)),
                                              (4, max_length)]
        specials = dict(cls_id=tokenizer.cls_token_id or 0, sep_id=tokenizer.sep_token_id or 0,
                        pad_id=tokenizer.pad_token_id or 0)
        feeds_list = [text_inputs(b, s, hf_config.vocab_size, input_names, rng, **specials) for b, s in shapes]

        def reference(feeds: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                return net(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()

        report = validate_outputs(str(onnx_path), reference, feeds_list, config.tolerance)
        manifest = write_manifest(tmp, {
            "task": "text-classification",
            "labels": labels,
            "model_type": hf_config.model_type,
            "family": family.name,
            "classification_head": head,
            "max_length": max_length,
            "tokenizer": {"file": "tokenizer.json", "pad_id": specials["pad_id"],
                          "pad_token": tokenizer.pad_token, "lowercase": bool(getattr(tokenizer, "do_lower_case", False))},
            "source": {"model": str(model), "path": str(Path(model_dir).resolve()),
                       "weights_sha256": weights_sha256(model_dir),
                       "parameters": int(sum(p.numel() for p in net.parameters()))},
            "split": (record.get("data") or {}).get("split"),
            "test_accuracy_source": (record.get("test") or {}).get("accuracy"),
            "export": {**config.to_dict(), "exporter": "optimum-onnx", "optimization": optimization},
            "opset": config.opset,
            "inputs": inputs,
            "outputs": outputs,
            "validation": report,
            "flops_per_example": text_flops_table(net, max_length),
        })
    return manifest


def summarize(manifest: dict, out) -> str:
    v = manifest["validation"]
    return (f"bundle {out}: {manifest['size_bytes'] / 1e6:.1f} MB, optimisation {manifest['export']['optimization']}, "
            f"validated max-abs-diff {v['max_abs_diff']:.2e} <= {v['tolerance']:.0e} on {len(v['per_shape'])} shapes")


def _onnx_config(net):
    """optimum's ONNX config for ``net``, tracing with token type 0 only: optimum draws token types from {0, 1},
    past the table of a model with type_vocab_size 1 (the graph does not depend on the values traced)."""
    from optimum.exporters.onnx import onnx_export_from_model  # noqa: F401 (registers the ONNX configs)
    from optimum.exporters.tasks import TasksManager
    from optimum.utils import DummyTextInputGenerator

    class FirstTokenType(DummyTextInputGenerator):
        def generate(self, input_name: str, framework: str = "pt", int_dtype: str = "int64", float_dtype: str = "fp32"):
            if input_name == "token_type_ids":
                return self.random_int_tensor([self.batch_size, self.sequence_length], max_value=1,
                                              framework=framework, dtype=int_dtype)
            return super().generate(input_name, framework, int_dtype, float_dtype)

    constructor = TasksManager.get_exporter_config_constructor(exporter="onnx", model=net, task="text-classification",
                                                               library_name="transformers")
    generators = tuple(FirstTokenType if g is DummyTextInputGenerator else g
                       for g in constructor.func.DUMMY_INPUT_GENERATOR_CLASSES)
    onnx_config = type(constructor.func.__name__, (constructor.func,), {"DUMMY_INPUT_GENERATOR_CLASSES": generators})
    return onnx_config(net.config, **constructor.keywords)


def export_cnn(model: str | Path, out: str | Path, config: ExportConfig | None = None, *, force: bool = False,
               progress=None) -> dict:
    """Export a trained CNN directory (models/cnn.py) to a validated tensor bundle that records its split."""
    import torch

    from edgeshrink.models.cnn import WEIGHTS_NAME, load_cnn

    net, record = load_cnn(model)
    # Validation inputs in the data's range (pixels scaled to [0, 1]), not only random normals.
    generator = torch.Generator().manual_seed((config or ExportConfig()).seed)
    example = torch.rand((8, *record["architecture"]["input_shape"]), generator=generator)
    return export_module(net, (example,), out, record["labels"], config, input_names=["input"], force=force, fields={
        "model_type": "cnn",
        "architecture": record["architecture"],
        "source": {"model": str(model), "path": str(Path(model).resolve()),
                   "weights_sha256": sha256_file(Path(model) / WEIGHTS_NAME),
                   "parameters": int(sum(p.numel() for p in net.parameters()))},
        "split": (record.get("data") or {}).get("split"),
        "test_accuracy_source": (record.get("test") or {}).get("accuracy"),
    })


def export_module(module, example_inputs: tuple, out: str | Path, labels: list[str],
                  config: ExportConfig | None = None, input_names: list[str] | None = None,
                  force: bool = False, fields: dict | None = None) -> dict:
    """Export a plain ``torch.nn.Module`` classifier (tensor inputs, logits out) to a validated bundle.

    ``example_inputs`` is a tuple of tensors with batch as the first axis; the batch axis is dynamic.
    ``fields`` adds to (or replaces) manifest entries: where the module came from, its data split.
    """
    import torch

    from edgeshrink.bench.flops import module_flops

    config = config or ExportConfig()
    check_output_dir(out, force)
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    input_names = input_names or [f"input_{i}" if len(example_inputs) > 1 else "input" for i in range(len(example_inputs))]
    module = module.eval()
    with torch.inference_mode():
        n_out = module(*example_inputs).shape[-1]
    if n_out != len(labels):
        raise EdgeshrinkError(f"the module outputs {n_out} classes but {len(labels)} labels were given")

    with atomic_output_dir(out, force) as tmp:
        onnx_path = tmp / "model.onnx"
        raw_path = tmp / "_raw.onnx" if config.optimize != "none" else onnx_path
        try:
            with quiet():
                torch.onnx.export(module, example_inputs, str(raw_path), input_names=input_names,
                                  output_names=["logits"], opset_version=config.opset, dynamo=False,
                                  dynamic_axes={name: {0: "batch"} for name in [*input_names, "logits"]})
        except Exception as exc:
            raise EdgeshrinkError(f"torch.onnx.export failed: {str(exc).splitlines()[0]}") from None
        optimization = "none"
        if config.optimize != "none":
            optimization = optimize_onnx(raw_path, onnx_path, "basic")
            raw_path.unlink()
        rng = np.random.default_rng(config.seed)
        feeds_list = [{name: example.numpy()[rng.integers(0, example.shape[0], size=batch)]
                       for name, example in zip(input_names, example_inputs)} for batch in (1, 4)]

        def reference(feeds):
            with torch.inference_mode():
                return module(*[torch.from_numpy(feeds[n]) for n in input_names]).numpy()

        report = validate_outputs(str(onnx_path), reference, feeds_list, config.tolerance)
        inputs, outputs = graph_io(onnx_path)
        manifest = write_manifest(tmp, {
            "task": "tensor-classification",
            "labels": list(labels),
            "model_type": type(module).__name__,
            "source": {"model": type(module).__qualname__, "weights_sha256": None,
                       "parameters": int(sum(p.numel() for p in module.parameters()))},
            "split": None,
            "export": {**config.to_dict(), "exporter": "torch.onnx", "optimization": optimization},
            "opset": config.opset,
            "inputs": inputs,
            "outputs": outputs,
            "validation": report,
            "flops_per_example": {"fixed": module_flops(module, tuple(e[:1] for e in example_inputs))},
            **(fields or {}),
        })
    return manifest
