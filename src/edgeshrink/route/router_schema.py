"""What a router file may say: the fields the router, the monitor and the evaluators read, typed and bounded.

A router file travels inside a bundle, so it is untrusted like the rest of it: checked here before any field is
used, refused in one line naming the field. Fields only reports read (``calibration``, ``guarantee``, ``data``...)
stay free-form.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError

ROUTER_SCHEMA = 1
MAX_COUNT = 10_000_000  # examples in a calibration split
MAX_ROUTER_BYTES = 256 << 20


@lru_cache(maxsize=1)
def _schema():
    from typing import Annotated, Literal, Optional

    from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator, \
        model_validator

    from edgeshrink.route.confidence import ALL_SIGNALS

    Finite = Annotated[float, Field(allow_inf_nan=False)]
    # Counts of a calibration split: bounded, as the monitor's exact tests take time in proportion to them
    # (scipy's fisher_exact: 50 ms at 10^9, minutes at 10^12, on the service's event loop).
    Count = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]
    Label = Annotated[StrictStr, Field(min_length=1, max_length=256)]

    class Loose(BaseModel):  # fields other versions add are kept (reports read them), the typed ones checked
        model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    class Policy(Loose):
        policy: Annotated[StrictStr, Field(max_length=64)]

    class Rules(Loose):
        escalate_truncated: StrictBool = True

    class Cost(Loose):
        device_latency_ms: Optional[Annotated[float, Field(ge=0, le=1e9)]] = None
        cloud_latency_ms: Annotated[float, Field(ge=0, le=1e9)] = 60.0
        network_rtt_ms: Annotated[float, Field(ge=0, le=1e9)] = 80.0
        cloud_cost_per_1000: Annotated[float, Field(ge=0, le=1e12)] = 1.0
        device_energy_mj: Optional[Annotated[float, Field(ge=0, le=1e12)]] = None

    class Reference(Loose):
        n: Optional[Count] = None
        routed: Optional[Count] = None
        scores: Annotated[list[Finite], Field(max_length=MAX_COUNT)] = []
        escalated: Optional[Count] = None
        truncated: Optional[Count] = None
        unknown: Optional[Count] = None
        label_counts: dict[Label, Count] = {}
        device_disagreement: Optional[Annotated[float, Field(ge=0, le=1)]] = None
        partial: StrictBool = False

        @model_validator(mode="after")
        def _consistent(self):  # the monitor's two-sample tests take counts out of totals
            if self.escalated is not None and (self.routed is None or self.escalated > self.routed):
                raise ValueError("escalated needs routed, and is at most routed")
            for name in ("truncated", "unknown"):
                if getattr(self, name) is not None and (self.n is None or getattr(self, name) > self.n):
                    raise ValueError(f"{name} needs n, and is at most n")
            return self

    class Handoff(Loose):  # route calibrate --handoff (route/handoff.py): what the device service streams by
        signal: Literal["logprob", "neg-entropy", "margin"]
        threshold: Optional[Finite]  # null: no safe threshold, the cloud writes every answer
        alpha: Optional[Annotated[float, Field(gt=0, lt=1)]] = None
        delta: Optional[Annotated[float, Field(gt=0, lt=1)]] = None
        loss: Literal["token", "answer"] = "token"
        reference: Optional[Reference] = None  # what the LLM service's drift watch compares live answers with

    class Router(Loose):
        kind: Literal["edgeshrink-router"] = "edgeshrink-router"
        schema_version: Annotated[StrictInt, Field(ge=1, le=ROUTER_SCHEMA)] = 1
        policy: Policy
        signal: Literal[ALL_SIGNALS]
        temperature: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)] = 1.0
        bias: Optional[Finite] = None
        threshold: Optional[Finite]  # required; null: nothing escalated by confidence
        escalate_everything: StrictBool = False
        alpha: Optional[Annotated[float, Field(ge=0, le=1)]] = None
        label_free: StrictBool = False
        n: Optional[Count] = None
        cost: Cost = Cost()
        rules: Rules = Rules()
        labels: Optional[Annotated[list[Label], Field(max_length=100_000)]] = None
        prompt: Optional[dict] = None
        reference: Optional[Reference] = None
        handoff: Optional[Handoff] = None
        task: Optional[Literal["classify", "open"]] = None
        answer_tokens: Optional[Annotated[StrictInt, Field(ge=1, le=4096)]] = None
        template: Optional[Annotated[StrictStr, Field(max_length=100_000)]] = None
        calibration: Optional[dict] = None
        data: Optional[dict] = None

        @field_validator("prompt")
        @classmethod
        def _prompt(cls, value):
            if value is not None:
                from edgeshrink.route.prompts import PromptConfig

                PromptConfig.from_dict(value)  # raises ValueError subclasses pydantic reports per field
            return value

    return Router


def router_record(config, fitted: dict, threshold, keep, calibration: dict, *, head: dict | None = None,
                  prompting: dict | None = None, label_free: bool | None = None, **fields) -> dict:
    """The router file every calibration writes: ``config`` its RouteConfig, ``fitted`` the confidence scaling,
    ``threshold`` the policy's choice, ``keep`` which examples calibrated; ``head`` (after the schema),
    ``prompting`` (after the scaling), ``calibration`` and ``fields`` add what this kind of router records, in
    the order routers have always been written."""
    return {
        "kind": "edgeshrink-router", "schema_version": ROUTER_SCHEMA, **(head or {}),
        "policy": config.to_dict(), "signal": config.signal, "temperature": fitted["temperature"],
        "bias": fitted["bias"], **(prompting or {}),
        "threshold": None if math.isinf(threshold.value) else threshold.value,
        "escalate_everything": threshold.value == math.inf, "feasible": threshold.feasible,
        "alpha": config.alpha, "delta": config.delta,
        "label_free": config.label_free if label_free is None else label_free,
        "n": int(keep.sum()), "truncated_left_out": int((~keep).sum()), "guarantee": threshold.guarantee,
        "calibration": {"escalation_rate": threshold.escalation_rate, "device_risk": threshold.device_risk,
                        **threshold.details, **calibration},
        "cost": config.cost.to_dict(), "rules": {"escalate_truncated": config.escalate_truncated},
    } | fields


def validate_router(text: str, path: str | Path = "router.json") -> dict:
    """Parse and check a router file's text; return it as a dict, or raise a one-line EdgeshrinkError."""
    from pydantic import ValidationError

    try:
        router = json.loads(text)
    except json.JSONDecodeError:
        raise EdgeshrinkError(f"{path} is corrupt (not valid JSON)") from None
    except RecursionError:
        raise EdgeshrinkError(f"{path} is nested too deeply to be a router") from None
    if not isinstance(router, dict):
        raise EdgeshrinkError(f"{path} is not a router (a JSON object is expected)")
    version = router.get("schema_version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > ROUTER_SCHEMA:
        raise EdgeshrinkError(f"{path} has schema {version}; upgrade edgeshrink")
    try:
        _schema().model_validate(router)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "router"
        raise EdgeshrinkError(f"{path} is not a valid router: {where}: {first['msg']}"[:300]) from None
    except EdgeshrinkError as exc:
        raise EdgeshrinkError(f"{path} is not a valid router: {exc}"[:300]) from None
    except RecursionError:
        raise EdgeshrinkError(f"{path} is nested too deeply to be a router") from None
    return router
