"""A Triton Inference Server model repository from a classifier bundle (``edgeshrink export --format triton``).

    from edgeshrink.export.triton import TritonConfig, export_triton
    export_triton("runs/bundle", "runs/triton", TritonConfig(name="sentiment"))

    runs/triton/
      sentiment/            ensemble: text (BYTES) -> logits (FP32, labels.txt): what clients call
      sentiment_tokenizer/  Python backend: the bundle's tokenizer.json, encoded as the device runtime does
      sentiment_onnx/       onnxruntime_onnx: the bundle's model.onnx
      edgeshrink-triton.json  what was written, from which bundle, and the structural check's results

The repository speaks the Open Inference Protocol that the device service's v2 client uses
(``serve --cloud-protocol v2 --cloud-model sentiment``); its ``logits`` output carries ``labels.txt``, so
Triton's classification extension returns label names. Triton's Python environment needs numpy and
``tokenizers``.

No container runtime runs on the machines edgeshrink is developed on, so the repository is not served
by Triton here. What is checked instead (``check_triton_repository``): every ``config.pbtxt`` parses as
Triton's own ``ModelConfig`` protobuf (from ``tritonclient[grpc]``) and names its directory; the version
directories and model files exist; the ONNX model's config matches the ONNX graph's inputs, outputs,
types and batch dimension; the ensemble's steps name existing models, tensors that exist and types
that agree; and the pipeline runs here end to end — ``model.py`` under a stand-in for Triton's
``triton_python_backend_utils``, then ONNX Runtime on ``model.onnx`` — giving the bundle's own logits.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
from pydantic import Field

from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError

RECORD = "edgeshrink-triton.json"
ONNX_TYPES = {1: "TYPE_FP32", 6: "TYPE_INT32", 7: "TYPE_INT64", 10: "TYPE_FP16"}  # onnx.TensorProto codes
CHECK_TEXTS = ["a gorgeous, witty film", "a dull mess", "très bien 🎬", "ok", "long " * 600]


class TritonConfig(Config):
    version: int = 1
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")  # the ensemble's name (default: the bundle's)
    max_batch_size: int = Field(64, ge=1)  # texts per request Triton accepts (the device service's max_texts)
    instances: int = Field(1, ge=1)  # CPU instances of the ONNX and tokenizer models
    tolerance: float = Field(1e-4, gt=0)  # max-abs-diff of the repository's logits vs the bundle's


def _tensor(name: str, data_type: str, dims, labels: bool = False) -> str:
    extra = ' label_filename: "labels.txt"' if labels else ""
    return f'  {{ name: "{name}" data_type: {data_type} dims: [ {", ".join(str(d) for d in dims)} ]{extra} }}'


def _config(name: str, head: str, max_batch: int, inputs: list[str], outputs: list[str], tail: str = "") -> str:
    return (f'name: "{name}"\n{head}\nmax_batch_size: {max_batch}\n'
            f"input [\n" + ",\n".join(inputs) + "\n]\noutput [\n" + ",\n".join(outputs) + "\n]\n" + tail)


def _onnx_signature(model_path: Path) -> tuple[list[tuple[str, str, list]], list[tuple[str, str, list]]]:
    """(name, Triton type, shape) of the ONNX graph's inputs and outputs; dynamic dimensions are -1."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def describe(values):
        rows = []
        for value in values:
            if value.name in initializers:
                continue
            tensor = value.type.tensor_type
            if tensor.elem_type not in ONNX_TYPES:
                raise EdgeshrinkError(f"{model_path.name}: tensor {value.name!r} has an element type Triton's config "
                                      f"here does not map ({tensor.elem_type})")
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            rows.append((value.name, ONNX_TYPES[tensor.elem_type], shape))
        return rows

    return describe(graph.input), describe(graph.output)


def export_triton(source: str | Path, out: str | Path, config: TritonConfig | None = None,
                  force: bool = False) -> dict:
    """Write a Triton model repository for the classifier bundle ``source`` into ``out``; check it; return
    its record (also written to ``out/edgeshrink-triton.json``)."""
    from edgeshrink import tasks
    from edgeshrink._files import atomic_output_dir, sha256_file
    from edgeshrink.runtime.bundle import bundle_file, read_manifest

    config = config or TritonConfig()
    source = Path(source)
    manifest = read_manifest(source)
    tasks.named(manifest.get("task")).implementation("export-triton")  # the tokenizer runs in Triton's Python backend
    name = config.name or source.name.replace(" ", "_")
    labels = list(manifest["labels"])
    inputs, outputs = _onnx_signature(source / "model.onnx")
    if any(shape[:1] != [-1] for _, _, shape in inputs + outputs):
        raise EdgeshrinkError(f"{source / 'model.onnx'}: every input and output needs a dynamic batch dimension first")
    logits_name = outputs[0][0]
    with atomic_output_dir(out, force) as tmp:
        cpu = f"instance_group [ {{ kind: KIND_CPU count: {config.instances} }} ]\n"
        onnx_dir, tok_dir, ens_dir = tmp / f"{name}_onnx", tmp / f"{name}_tokenizer", tmp / name
        for model_dir in (onnx_dir, tok_dir, ens_dir):
            (model_dir / "1").mkdir(parents=True)
        shutil.copyfile(bundle_file(source, manifest, "model.onnx"), onnx_dir / "1" / "model.onnx")
        for model_dir in (onnx_dir, ens_dir):
            (model_dir / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
        onnx_inputs = [_tensor(n, t, s[1:]) for n, t, s in inputs]
        (onnx_dir / "config.pbtxt").write_text(_config(
            f"{name}_onnx", 'platform: "onnxruntime_onnx"', config.max_batch_size, onnx_inputs,
            [_tensor(n, t, s[1:], labels=(n == logits_name)) for n, t, s in outputs], cpu), encoding="utf-8")
        shutil.copy2(Path(__file__).with_name("triton_tokenizer.py"), tok_dir / "1" / "model.py")
        shutil.copyfile(bundle_file(source, manifest, manifest["tokenizer"]["file"]), tok_dir / "1" / "tokenizer.json")
        (tok_dir / "1" / "tokenizer_config.json").write_text(json.dumps({
            "max_length": int(manifest["max_length"]), "pad_id": int(manifest["tokenizer"]["pad_id"]),
            "outputs": [{"name": n, "data_type": t} for n, t, _ in inputs]}, indent=2), encoding="utf-8")
        (tok_dir / "config.pbtxt").write_text(_config(
            f"{name}_tokenizer", 'backend: "python"', config.max_batch_size,
            [_tensor("text", "TYPE_STRING", [1])], onnx_inputs, cpu), encoding="utf-8")

        def mapping(kind: str, names: list[str]) -> str:
            return " ".join(f'{kind} {{ key: "{n}" value: "{n}" }}' for n in names)

        steps = (f'    {{ model_name: "{name}_tokenizer" model_version: -1 {mapping("input_map", ["text"])} '
                 f'{mapping("output_map", [n for n, _, _ in inputs])} }},\n'
                 f'    {{ model_name: "{name}_onnx" model_version: -1 {mapping("input_map", [n for n, _, _ in inputs])} '
                 f'{mapping("output_map", [logits_name])} }}')
        (ens_dir / "config.pbtxt").write_text(_config(
            name, 'platform: "ensemble"', config.max_batch_size, [_tensor("text", "TYPE_STRING", [1])],
            [_tensor(logits_name, outputs[0][1], outputs[0][2][1:], labels=True)],
            f"ensemble_scheduling {{\n  step [\n{steps}\n  ]\n}}\n"), encoding="utf-8")
        check = check_triton_repository(tmp, source, config.tolerance)
        record = {"kind": "edgeshrink-triton-repository", "name": name, "source_bundle": str(source),
                  "source_manifest_sha256": sha256_file(source / "manifest.json"), "labels": labels,
                  "models": sorted(p.name for p in tmp.iterdir() if p.is_dir()), "config": config.to_dict(),
                  "check": check}
        (tmp / RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


# -- the structural check --------------------------------------------------------------------------------------
def _parse_config(path: Path):
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise EdgeshrinkError("checking a Triton repository needs Triton's config schema: pip install "
                              "'tritonclient[grpc]'") from None
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise EdgeshrinkError(f"{path}: not a valid Triton ModelConfig ({exc})") from None


def _type_name(config, value: int) -> str:
    return type(config).DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"] \
        .enum_type.values_by_number[value].name


def _fail(where: Path, message: str) -> None:
    raise EdgeshrinkError(f"Triton repository {where}: {message}")


def check_triton_repository(repo: str | Path, bundle: str | Path | None = None, tolerance: float = 1e-4) -> dict:
    """Check a repository written by ``export_triton`` (see the module doc); with ``bundle``, also that the
    pipeline gives the bundle's logits. Returns what was checked; a failure is an EdgeshrinkError."""
    repo = Path(repo)
    configs = {}
    for model_dir in sorted(p for p in repo.iterdir() if p.is_dir()):
        if not (model_dir / "config.pbtxt").exists():
            _fail(repo, f"{model_dir.name} has no config.pbtxt")
        config = _parse_config(model_dir / "config.pbtxt")
        if config.name != model_dir.name:
            _fail(repo, f"{model_dir.name}/config.pbtxt names the model {config.name!r}")
        if not (model_dir / "1").is_dir():
            _fail(repo, f"{model_dir.name} has no version directory 1/")
        configs[config.name] = config
    ensembles = [c for c in configs.values() if c.platform == "ensemble"]
    if len(ensembles) != 1:
        _fail(repo, f"expected one ensemble, found {len(ensembles)}")
    for config in configs.values():
        kind = config.platform or config.backend
        files = {"onnxruntime_onnx": "model.onnx", "python": "model.py", "ensemble": None}
        if kind not in files:
            _fail(repo, f"{config.name}: platform/backend {kind!r} is not one this repository uses")
        if files[kind] and not (repo / config.name / "1" / files[kind]).exists():
            _fail(repo, f"{config.name}/1/{files[kind]} is missing")
        for output in config.output:
            if output.label_filename and not (repo / config.name / output.label_filename).exists():
                _fail(repo, f"{config.name}: label file {output.label_filename} is missing")
        if kind == "onnxruntime_onnx":
            _check_onnx(repo, config)
    ensemble = ensembles[0]
    _check_ensemble(repo, ensemble, configs)
    checked = {"models": sorted(configs), "schema": "tritonclient.grpc.model_config_pb2.ModelConfig",
               "ensemble": ensemble.name, "steps": [s.model_name for s in ensemble.ensemble_scheduling.step],
               "served_by_triton": False,
               "why_not_served": "no container runtime on this machine: structure and pipeline checked instead"}
    if bundle is not None:
        checked.update(run_pipeline(repo, ensemble, configs, Path(bundle), tolerance))
    return checked


def _check_onnx(repo: Path, config) -> None:
    inputs, outputs = _onnx_signature(repo / config.name / "1" / "model.onnx")
    for declared, actual, what in ((config.input, inputs, "input"), (config.output, outputs, "output")):
        graph = {n: (t, s) for n, t, s in actual}
        if {d.name for d in declared} != set(graph):
            _fail(repo, f"{config.name}: config {what}s {sorted(d.name for d in declared)} are not the ONNX graph's "
                        f"{sorted(graph)}")
        for d in declared:
            data_type, shape = graph[d.name]
            if _type_name(config, d.data_type) != data_type:
                _fail(repo, f"{config.name}: {what} {d.name} is {data_type} in the graph, "
                            f"{_type_name(config, d.data_type)} in the config")
            if config.max_batch_size and shape[0] != -1:
                _fail(repo, f"{config.name}: {what} {d.name} has no dynamic batch dimension")
            if list(d.dims) != shape[1:]:
                _fail(repo, f"{config.name}: {what} {d.name} dims {list(d.dims)} vs the graph's {shape[1:]}")


def _check_ensemble(repo: Path, ensemble, configs: dict) -> None:
    available = {t.name: (t.data_type, list(t.dims)) for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs.get(step.model_name)
        if model is None:
            _fail(repo, f"ensemble step names model {step.model_name!r}, which the repository lacks")
        if model.max_batch_size < ensemble.max_batch_size:
            _fail(repo, f"{model.name}: max_batch_size {model.max_batch_size} is below the ensemble's")
        step_inputs = {t.name: (t.data_type, list(t.dims)) for t in model.input}
        if set(step.input_map) != set(step_inputs):
            _fail(repo, f"ensemble step {model.name}: maps inputs {sorted(step.input_map)}, the model takes "
                        f"{sorted(step_inputs)}")
        for key, value in step.input_map.items():
            if value not in available:
                _fail(repo, f"ensemble step {model.name}: input {key} reads {value!r}, which nothing produces before it")
            if available[value][0] != step_inputs[key][0]:
                _fail(repo, f"ensemble step {model.name}: input {key} gets another type than it takes")
        step_outputs = {t.name: (t.data_type, list(t.dims)) for t in model.output}
        for key, value in step.output_map.items():
            if key not in step_outputs:
                _fail(repo, f"ensemble step {model.name}: maps output {key!r}, which the model does not give")
            available[value] = step_outputs[key]
    for output in ensemble.output:
        if output.name not in available or available[output.name][0] != output.data_type:
            _fail(repo, f"ensemble output {output.name} is not produced (with its type) by any step")


class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, np.asarray(array)

    def as_numpy(self):
        return self.array


def _stand_in_backend_utils() -> types.ModuleType:
    """The three pieces of Triton's ``triton_python_backend_utils`` that model.py uses."""
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.get_input_tensor_by_name = lambda request, name: request.get(name)  # a request: a dict of tensors
    module.InferenceResponse = lambda output_tensors: {t.name: t.array for t in output_tensors}
    return module


def run_pipeline(repo: Path, ensemble, configs: dict, bundle: Path, tolerance: float) -> dict:
    """The ensemble's steps run here on CHECK_TEXTS: model.py under a stand-in for Triton's Python utilities,
    then ONNX Runtime; the logits against the bundle's own."""
    import onnxruntime as ort

    from edgeshrink.runtime import load

    predictor = load(bundle)
    encoded, _ = predictor.encode(CHECK_TEXTS)
    saved = sys.modules.get("triton_python_backend_utils")
    sys.modules["triton_python_backend_utils"] = _stand_in_backend_utils()
    try:
        tensors = {"text": np.array([[t.encode()] for t in CHECK_TEXTS], dtype=object)}
        for step in ensemble.ensemble_scheduling.step:
            config = configs[step.model_name]
            feeds = {key: tensors[value] for key, value in step.input_map.items()}
            if config.backend == "python":
                path = repo / config.name / "1" / "model.py"
                spec = importlib.util.spec_from_file_location(f"_triton_{config.name}", path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                model = module.TritonPythonModel()
                model.initialize({"model_config": "{}"})
                produced = model.execute([{k: _Tensor(k, v) for k, v in feeds.items()}])[0]
                for key, value in produced.items():  # token ids must be the device runtime's, exactly
                    if key in encoded and not np.array_equal(value, encoded[key]):
                        _fail(repo, f"{config.name} encodes {key} differently from the device runtime")
            else:
                session = ort.InferenceSession(str(repo / config.name / "1" / "model.onnx"),
                                               providers=["CPUExecutionProvider"])
                names = [o.name for o in session.get_outputs()]
                produced = dict(zip(names, session.run(names, feeds)))
            for key, value in step.output_map.items():
                tensors[value] = produced[key]
    finally:
        if saved is None:
            sys.modules.pop("triton_python_backend_utils", None)
        else:
            sys.modules["triton_python_backend_utils"] = saved
    logits = tensors[ensemble.output[0].name]
    expected = predictor.predict(CHECK_TEXTS).logits
    diff = float(np.abs(logits - expected).max())
    labels = (repo / ensemble.name / "labels.txt").read_text(encoding="utf-8").split("\n")[:-1]
    if labels != predictor.labels:
        _fail(repo, "labels.txt is not the bundle's label list, in its order")
    if not diff <= tolerance:
        _fail(repo, f"the pipeline's logits differ from the bundle's by {diff:.2e} (tolerance {tolerance:.0e})")
    return {"pipeline_texts": len(CHECK_TEXTS), "pipeline_max_abs_diff": diff, "tolerance": tolerance}
