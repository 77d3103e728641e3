"""The manifest schema: what a bundle's manifest.json may say, with bounds, checked before the bundle is used.

Unknown keys are refused at every level the runtime reads; numbers are strict (no "69" for 69) and bounded;
the fields a task needs must be there. Provenance sections that only reports read (``source``, ``export``,
``validation``, ...) are free-form but still bounded by the manifest's size and nesting. pydantic is imported
only when a bundle is read, so ``import edgeshrink.runtime`` stays light.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError

from edgeshrink.runtime.tasks import TASK_NAMES, runtime_task
MAX_ID = 2**31 - 1  # token ids, pad ids: int32 range
MAX_POSITIONS = 1 << 20  # max_length, context_length
MAX_FILES = 100_000
MAX_LABELS = 100_000
MAX_VERSION = 2**53  # a release version: exact in a JSON number anywhere (the web runtime's too)
# Variables every chat template is rendered with: a special token may not take one of these names.
TEMPLATE_VARIABLES = ("messages", "add_generation_prompt", "raise_exception", "tools", "documents")


@lru_cache(maxsize=1)
def _schema():
    from typing import Annotated, Literal, Optional, Union

    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, \
        model_validator

    def Int(lo: int, hi: int):
        return Annotated[StrictInt, Field(ge=lo, le=hi)]

    def Str(max_length: int = 1024, min_length: int = 0):
        return Annotated[StrictStr, Field(min_length=min_length, max_length=max_length)]

    Sha = Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]
    RelPath = Str(255, 1)  # confined to the bundle by runtime/bundle.py's check_relative
    Free = Optional[Union[dict, list, StrictStr, StrictInt, float, StrictBool]]  # provenance: reports only

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    class FileEntry(Strict):
        size_bytes: Int(0, 1 << 42)
        sha256: Sha

    class Tokenizer(Strict):
        file: RelPath
        pad_id: Optional[Int(0, MAX_ID)] = None
        pad_token: Optional[Str(256)] = None
        lowercase: Optional[StrictBool] = None
        chat_template: Optional[RelPath] = None
        add_special_tokens: StrictBool = True
        special_tokens: Annotated[dict[Annotated[StrictStr, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], Str(256)],
                                  Field(max_length=32)] = {}

        @field_validator("special_tokens")
        @classmethod
        def _names(cls, value):
            clash = sorted(set(value) & set(TEMPLATE_VARIABLES))
            if clash:
                raise ValueError(f"a special token may not be named {clash[0]!r} (a chat-template variable)")
            return value

    class Generation(Strict):
        eos_token_ids: Annotated[list[Int(0, MAX_ID)], Field(max_length=64)] = []
        bos_token_id: Optional[Int(0, MAX_ID)] = None
        context_length: Int(2, MAX_POSITIONS)

    class TensorSpec(Strict):
        name: Str(256, 1)
        dtype: Str(32, 1)
        shape: Annotated[list[Union[Int(0, 1 << 31), Str(128)]], Field(max_length=16)]

    class RouterEntry(Strict):
        file: RelPath
        sha256: Sha
        policy: Str(64)

    class Release(Strict):  # `edgeshrink release`: what an update channel orders versions by
        version: Int(1, MAX_VERSION)
        channel: Optional[Str(128)] = None
        notes: Optional[Str(4096)] = None
        released_at: Optional[Str(64)] = None

    class Canary(Strict):  # a held-out labelled sample the bundle carries, scored where the bundle runs
        file: RelPath
        sha256: Sha
        examples: Int(1, 1_000_000)
        accuracy: Annotated[float, Field(ge=0, le=1)]
        data: Optional[Str(1024)] = None
        measured_on: Free = None

    class Manifest(Strict):
        schema_version: Int(1, 1)
        kind: Literal["edgeshrink-bundle"]
        task: Literal[TASK_NAMES]
        files: Annotated[dict[Str(255, 1), FileEntry], Field(max_length=MAX_FILES)]
        size_bytes: Int(0, 1 << 48)
        labels: Optional[Annotated[list[Str(256, 1)], Field(min_length=2, max_length=MAX_LABELS)]] = None
        max_length: Optional[Int(1, MAX_POSITIONS)] = None
        tokenizer: Optional[Tokenizer] = None
        generation: Optional[Generation] = None
        inputs: Optional[Annotated[list[TensorSpec], Field(max_length=64)]] = None
        outputs: Optional[Annotated[list[TensorSpec], Field(max_length=4096)]] = None
        router: Optional[RouterEntry] = None
        router_history: Optional[Annotated[list[dict], Field(max_length=10_000)]] = None
        release: Optional[Release] = None
        canary: Optional[Canary] = None
        # provenance: written by the verbs, read by reports and by the next verb's checks
        edgeshrink_version: Optional[Str(64)] = None
        created_at: Optional[Str(64)] = None
        created_on: Free = None
        model_type: Optional[Str(128)] = None
        family: Optional[Str(128)] = None
        classification_head: Optional[Str(64)] = None
        source: Free = None
        split: Free = None
        test_accuracy_source: Optional[float] = None
        export: Free = None
        opset: Optional[Int(1, 1000)] = None
        validation: Free = None
        flops_per_example: Free = None
        cost: Free = None
        quantization: Optional[dict] = None
        peer: Free = None
        architecture: Free = None  # a CNN's layers (models/cnn.py)

        @field_validator("labels")
        @classmethod
        def _labels_distinct(cls, value):
            if value is not None and len(set(value)) != len(value):
                raise ValueError("labels must be distinct")
            return value

        @model_validator(mode="after")
        def _task_fields(self):
            problem = runtime_task(self.task).manifest_problem(self)
            if problem:
                raise ValueError(problem)
            if self.quantization is not None and not isinstance(self.quantization.get("method", ""), str):
                raise ValueError("quantization.method must be a string")
            return self

    return Manifest


def validate(manifest: dict, path: str | Path = "manifest.json") -> None:
    """Check ``manifest`` against the schema; raise a one-line EdgeshrinkError naming the field and the rule."""
    from pydantic import ValidationError

    try:
        _schema().model_validate(manifest)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        message = {"extra_forbidden": "unknown key", "missing": "missing"}.get(first["type"], first["msg"])
        problem = f"{where}: {message}"[:200]
        raise EdgeshrinkError(f"{path} is not a valid bundle manifest: {problem}") from None
    except RecursionError:
        raise EdgeshrinkError(f"{path} is nested too deeply to be a bundle manifest") from None
