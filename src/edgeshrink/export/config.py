"""Settings of `edgeshrink export`, one class per kind of graph (the CLI and recipes build these same objects)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from edgeshrink.config import Config


class ExportConfig(Config):
    version: int = 1
    opset: int = Field(17, ge=11, le=23)
    # none: the exporter's graph as is; basic: ORT's basic graph optimisations (constant folding,
    # redundant node removal) saved offline; fusion: ORT's transformer fusions (attention, layer norm,
    # GELU) where the model type allows, else basic.
    optimize: Literal["none", "basic", "fusion"] = "none"
    tolerance: float = Field(1e-4, gt=0)  # max-abs-diff of logits allowed against the source model
    max_length: int | None = Field(None, ge=8)  # None: the fine-tuning length, else 128 (capped by the model)
    # (batch, seq), seq at most the model's max_length; None: batch 1 and 4, short and long. A validation input
    # holds at least [CLS] and [SEP].
    validation_shapes: list[tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=2)]]] | None = None
    seed: int = 0


class LLMExportConfig(Config):
    version: int = 1
    exporter: Literal["auto", "builder", "optimum"] = "auto"  # auto: the family's first exporter that is installed
    opset: int | None = Field(None, ge=14, le=23)  # optimum only; None: optimum's default for the family
    tolerance: float = Field(1e-3, gt=0)  # max-abs-diff of logits allowed against PyTorch
    validation_prompts: int = Field(16, ge=1)
    validation_new_tokens: int = Field(32, ge=1)
    seed: int = 0
