"""Base class of every config object: unknown keys are rejected, values are checked, JSON round-trips."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edgeshrink.errors import EdgeshrinkError

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """A technique's settings. One class per technique; the CLI and recipes build the same class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def key_form(self) -> dict[str, Any]:
        """What a recipe step's cache key hashes: ``to_dict()``, unless the class replaced an older config and
        gives that one's shape, so a cache made before the change stays valid (compress/quantize/config.py)."""
        return self.to_dict()

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise EdgeshrinkError(f"{cls.__name__}: {_one_line(exc)}") from None

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    @classmethod
    def field_help(cls, field: str, text: str) -> str:
        """CLI help for a flag that sets ``field``: ``text`` and the default this class holds, so ``--help``
        cannot disagree with what runs."""
        return f"{text} [default: {shown(cls.model_fields[field].get_default(call_default_factory=True))}]"

    @classmethod
    def build(cls: type[C], **kwargs: Any) -> C:
        """Like the constructor, but a bad value becomes an EdgeshrinkError (for the CLI)."""
        return cls.from_dict({k: v for k, v in kwargs.items() if v is not None})


def shown(value) -> str:
    """A default as the CLI's help shows it."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):  # as the flags take a list: comma-separated
        return ",".join(shown(v) for v in value)
    return str(value)


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "value"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)
