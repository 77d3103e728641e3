"""Request preparation: the OpenAI request bodies, checked, and a chat or a prompt rendered into a ``Prepared``
device request (prompt ids, token budget, sampling options, the route asked for).

    prepared = await prepare(body, "/v1/chat/completions", generator, "smollm2", config.llm)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgeshrink.errors import EdgeshrinkError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown or misspelt field is refused, never ignored


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class RouteOptions(Strict):
    route: Literal["auto", "device", "cloud", "handoff", "answer"] = Field(
        "auto", description="auto: the service's policy decides; device: never escalate (private); cloud: always "
        "escalate; handoff: stream the device's tokens and hand the rest to the cloud at the first unsure one; "
        "answer: score the device's whole answer, then keep it or escalate")


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    """The options both endpoints share (OpenAI's names and defaults; unsupported values are refused)."""
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, description="Default: what the context leaves after the prompt, "
                                   "at most the service's default (chat) or 16 (completions).")
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0)
    user: str | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    repetition_penalty: float | None = Field(None, gt=0, allow_inf_nan=False, description="vLLM's extension: "
                                             "divides the logits of tokens already generated (1: off; default: "
                                             "the service's)")
    edgeshrink: RouteOptions | None = None

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not s for s in stops):
            raise EdgeshrinkError("stop: an empty string would stop before the first token; give non-empty strings")
        if len(stops) > 4:
            raise EdgeshrinkError(f"stop: at most 4 strings, got {len(stops)}")
        return tuple(stops)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int] = Field(description="A string, or token ids (OpenAI's form; a device "
                                                "service's handoff continues an answer this way)")


class SpeculateRequest(Strict):
    tokens: list[int] = Field(min_length=1, description="The accepted sequence: prompt and generated tokens.")
    draft: list[int] = Field(min_length=1, max_length=32, description="The drafted continuation to verify.")
    temperature: float = Field(0.0, ge=0, le=2, allow_inf_nan=False)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    repetition_penalty: float = Field(1.0, gt=0, allow_inf_nan=False)
    frequency_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    presence_penalty: float = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    prompt_tokens: int = Field(0, ge=0, description="How many of `tokens` are the prompt, which the penalties do "
                               "not count.")
    session: str | None = Field(None, max_length=128, description="Reuse this client's KV cache between rounds.")


class Refused(Exception):
    """A request the service does not answer: the HTTP status and the one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Prepared:
    """One request, ready for the routing engine: what the device generates from, and what the cloud is sent."""
    path: str  # the endpoint, which an escalation calls on the cloud too
    ids: list[int]  # the rendered prompt's token ids
    max_tokens: int
    options: dict  # the generator's sampling options: temperature, top_p, seed, stop, penalties
    route: str  # auto | device | cloud
    body: ChatRequest | CompletionRequest

    def cloud_payload(self) -> dict:
        """The OpenAI request an escalation sends (the cloud renders the chat itself)."""
        body = self.body
        payload = {"messages": [m.model_dump(exclude_none=True) for m in body.messages]} \
            if isinstance(body, ChatRequest) else {"prompt": body.prompt}
        return payload | self.sampling_payload(self.max_tokens)

    def continuation_payload(self, prompt: list[int] | str, max_tokens: int) -> dict:
        """The /v1/completions request of a handoff: the cloud continues ``prompt`` (the rendered prompt and the
        device's tokens so far, as ids or as text) for up to ``max_tokens`` tokens, sampling as asked."""
        return {"prompt": prompt} | self.sampling_payload(max_tokens)

    def sampling_payload(self, max_tokens: int) -> dict:
        body = self.body
        payload = {"max_tokens": max_tokens, "temperature": body.temperature, "top_p": body.top_p}
        if body.stop:
            payload["stop"] = body.stop
        if body.seed is not None:
            payload["seed"] = body.seed
        # Penalties as the client asked (OpenAI's two when not 0; the extension only when given): a plain
        # OpenAI-compatible cloud refuses a field it does not know.
        for key in ("frequency_penalty", "presence_penalty"):
            if getattr(body, key):
                payload[key] = getattr(body, key)
        if body.repetition_penalty is not None:
            payload["repetition_penalty"] = body.repetition_penalty
        return payload


async def prepare(body: ChatRequest | CompletionRequest, path: str, generator, name: str, limits) -> Prepared:
    """Check ``body`` against the served model ``name`` and ``limits`` (LLMServeConfig), render it with
    ``generator``'s tokenizer and chat template, and fix the token budget; raises ``Refused``."""
    if body.model != name:
        raise Refused(404, f"model {body.model!r} is not served here; GET /v1/models lists {name!r}")
    chat = isinstance(body, ChatRequest)
    asked = (body.max_completion_tokens or body.max_tokens) if chat else body.max_tokens
    if asked is not None and asked > limits.max_tokens_limit:
        raise Refused(422, f"max_tokens {asked} is over this service's limit of {limits.max_tokens_limit}")
    try:
        stops = body.stops()
    except EdgeshrinkError as exc:
        raise Refused(422, str(exc)) from None
    if chat:
        if generator.chat_template is None:
            raise Refused(400, f"model {name} has no chat template: use /v1/completions")
        prompt = [{"role": m.role, "content": m.text()} for m in body.messages]
    elif body.prompt and all(isinstance(t, int) for t in body.prompt):  # token ids
        vocabulary = generator.tokenizer.get_vocab_size()
        if any(not 0 <= t < vocabulary for t in body.prompt):
            raise Refused(422, f"prompt: token ids must be in [0, {vocabulary})")
        prompt = list(body.prompt)
    else:
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1 or not prompts[0]:
            raise Refused(422, "prompt: one non-empty string, or token ids")
        prompt = prompts[0]
    if isinstance(prompt, list) and not chat:
        ids = prompt  # token ids, as given
    else:
        try:  # in a thread: a chat template may take long to render, and the service must keep answering
            ids = await asyncio.to_thread(generator.encode, prompt)
        except EdgeshrinkError as exc:
            raise Refused(400, str(exc)) from None
    if not ids:
        raise Refused(422, "the prompt is empty")
    # Not asked: OpenAI's default (chat: the service's, completions: 16), cut to what the context leaves.
    room = generator.context_length - len(ids)
    max_tokens = asked or max(1, min(limits.default_max_tokens if chat else 16, limits.max_tokens_limit, room))
    if len(ids) + max_tokens > generator.context_length:
        raise Refused(400, f"the prompt's {len(ids)} tokens + max_tokens {max_tokens} exceed the context length "
                           f"{generator.context_length}")
    options = {"temperature": body.temperature, "top_p": body.top_p, "seed": body.seed, "stop": stops,
               "repetition_penalty": limits.repetition_penalty if body.repetition_penalty is None
               else body.repetition_penalty,
               "frequency_penalty": body.frequency_penalty, "presence_penalty": body.presence_penalty}
    return Prepared(path, ids, max_tokens, options, body.edgeshrink.route if body.edgeshrink else "auto", body)
