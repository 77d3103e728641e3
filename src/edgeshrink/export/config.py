"""Settings of `edgeshrink export` (the CLI and recipes build this same object)."""

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
