"""Moved to compress/distill/ (issue 26). Kept only until models/llm_finetune.py, rewritten in parallel, imports
models.llm.load_causal_lm and compress.trainer.choose_precision; then delete this file."""

from edgeshrink.compress.trainer import choose_precision  # noqa: F401
from edgeshrink.models.llm import load_causal_lm as _load  # noqa: F401
