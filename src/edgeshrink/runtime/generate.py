"""Run an LLM bundle: streaming generation with a KV cache, torch-free (onnxruntime, tokenizers, numpy).

    from edgeshrink.runtime import load
    llm = load("runs/smollm2-bundle")                     # an LLM bundle (task text-generation)
    for token in llm.stream("The capital of France is", max_new_tokens=16):
        print(token.text, end="", flush=True)
    result = llm.generate([{"role": "user", "content": "Hi"}], max_new_tokens=32, temperature=0.7, seed=0)
    result.text, result.token_ids, result.logprobs

The graph's inputs are read from the session (``input_ids``, ``attention_mask``, optional
``position_ids``, ``past_key_values.{i}.key/value``), so the same code runs every exporter's graph.
Each step feeds only the new token and the previous step's ``present`` tensors back as the past. On the
onnxruntime-genai builder's graphs (GroupQueryAttention, which finds each sequence's length from the
attention mask) past and present share one preallocated buffer per layer (runtime/kv_cache.py): the
kernel writes the new keys and values in place, and the cache is not copied out and in every token.
Chat messages are rendered with the bundle's chat template in a bounded sandbox (runtime/chat_template.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeshrink.errors import EdgeshrinkError, first_line
from edgeshrink.runtime.bundle import bundle_file, open_session, read_bundle_text, read_manifest
from edgeshrink.runtime.kv_cache import SharedCache, shares_buffers
from edgeshrink.runtime.sampling import Sampling, distribution, log_softmax, penalized
from edgeshrink.runtime.tasks import runtime_task

__all__ = ["Generation", "Generator", "Sampling", "Token", "distribution", "log_softmax"]

MAX_DRAFT = 8  # prompt lookup: the most drafted tokens one pass carries
DEFAULT_NEW_TOKENS = 128  # with max_new_tokens None: at most this many, and never past the context
_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
       "tensor(int32)": np.int32}


def empty_past(inputs: dict, names) -> dict[str, np.ndarray]:
    """Empty KV-cache arrays for the graph inputs ``names`` (``inputs``: name -> onnxruntime NodeArg): batch 1,
    every other dynamic axis 0."""
    past = {}
    for name in names:
        meta = inputs[name]
        shape = [1 if isinstance(d, str) and "batch" in d else (0 if isinstance(d, str) else d) for d in meta.shape]
        past[name] = np.zeros(shape, dtype=_NP.get(meta.type, np.float32))
    return past


def prefill_feeds(inputs: dict, ids: list[int]) -> dict[str, np.ndarray]:
    """The feeds of one prefill pass of ``ids`` from an empty cache, for a graph with inputs ``inputs``."""
    feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
             "position_ids": np.arange(len(ids), dtype=np.int64)[None]}
    feeds = {k: v for k, v in feeds.items() if k in inputs}
    feeds.update(empty_past(inputs, [n for n in inputs if n.startswith("past_key_values.")]))
    return feeds


def sequence_axis(shape) -> int:
    """The sequence axis of a past_key_values input: the one whose name says sequence or past, else 2
    ([batch, kv heads, sequence, head dim])."""
    for i, dim in enumerate(shape):
        if isinstance(dim, str) and ("sequence" in dim or "past" in dim):
            return i
    return 2


@dataclass
class Token:
    id: int
    text: str  # the text this token adds to the decoded output
    logprob: float  # log-probability of this token under the model (before temperature)
    entropy: float = 0.0  # entropy (nats) of the model's next-token distribution at this step (before temperature)
    margin: float = 0.0  # the step's top probability minus its second (before temperature)


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    logprobs: list[float]
    stop_reason: str  # "eos" | "stop" | "length"
    prompt_tokens: int
    first_token_ms: float
    decode_tokens_per_s: float | None


class Generator:
    """A loaded LLM bundle. ``threads`` sets ONNX Runtime's intra-op threads (None: its default)."""

    def __init__(self, bundle: str | Path, threads: int | None = None, verify: bool = True, trust=None):
        from edgeshrink.runtime.predictor import load_tokenizer

        self.path = Path(bundle)
        self.manifest = read_manifest(self.path, verify=verify, trust=trust)
        if not runtime_task(self.manifest.get("task")).generates:
            raise EdgeshrinkError(f"{self.path} is not a language-model bundle (task {self.manifest.get('task')!r}): "
                                  f"use `edgeshrink predict`")
        self.session = open_session(self.path / "model.onnx", threads)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]
        missing = [n for n in ["input_ids", "logits", *(n.replace("past_key_values.", "present.") for n in self.past_names)]
                   if n not in self.inputs and n not in self.outputs]
        if missing:
            raise EdgeshrinkError(f"{self.path}: model.onnx is not a decoder with a KV cache (no {missing[0]!r})")
        # the builder's GroupQueryAttention graphs take a past longer than the sequence: one buffer for past and present
        self.shared_kv = shares_buffers(self.manifest, self.session, self.past_names)
        gen = self.manifest["generation"]
        self.eos_ids = set(gen.get("eos_token_ids") or [])
        self.context_length = int(gen["context_length"])
        tok_meta = self.manifest["tokenizer"]
        self.tokenizer = load_tokenizer(bundle_file(self.path, self.manifest, tok_meta["file"]))
        template = tok_meta.get("chat_template")
        self.chat_template = read_bundle_text(self.path, self.manifest, template, verify=verify) if template else None
        self._renderer = None
        self._draft_budget = None  # prompt lookup's (speculative.DraftBudget), made on first use

    # -- prompts ------------------------------------------------------------------------------------
    def encode(self, prompt) -> list[int]:
        """Token ids of a prompt: a string (tokenized as is) or a list of chat messages (chat template)."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=self.manifest["tokenizer"].get("add_special_tokens", True)).ids
        if self.chat_template is None:
            raise EdgeshrinkError(f"{self.path} has no chat template: give a plain prompt, not chat messages")
        return self.tokenizer.encode(self.render_chat(prompt), add_special_tokens=False).ids

    def render_chat(self, messages: list[dict]) -> str:
        """The prompt text of chat ``messages``: the bundle's template in the bounded sandbox (chat_template.py)."""
        if self._renderer is None:
            from edgeshrink.runtime.chat_template import ChatTemplate

            self._renderer = ChatTemplate(self.chat_template, self.manifest["tokenizer"].get("special_tokens", {}),
                                          name=str(self.path / self.manifest["tokenizer"]["chat_template"]))
        return self._renderer.render(messages)

    # -- the model ----------------------------------------------------------------------------------
    def _empty_past(self) -> dict[str, np.ndarray] | SharedCache:
        """An empty KV cache: a SharedCache on graphs that share past and present buffers, else empty arrays."""
        if self.shared_kv:
            return SharedCache(self.session, self.past_names, self.context_length)
        return empty_past(self.inputs, self.past_names)

    def _step(self, ids: list[int], past: dict, total: int) -> tuple[np.ndarray, dict]:
        """Run ``ids`` (new tokens) after the first ``total - len(ids)`` positions of ``past``; return (logits of
        every new position, the new past). A SharedCache is updated in place and returned."""
        if isinstance(past, SharedCache):
            try:
                return past.step(ids, total), past
            except EdgeshrinkError:
                raise
            except Exception as exc:  # onnxruntime's own error types
                raise EdgeshrinkError(f"{self.path}: model.onnx failed to run: {first_line(exc)}") from None
        feeds = {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": np.ones((1, total), np.int64)}
        if "position_ids" in self.inputs:
            feeds["position_ids"] = np.arange(total - len(ids), total, dtype=np.int64)[None]
        feeds.update(past)
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        try:
            results = dict(zip(self.outputs, self.session.run(None, feeds)))
        except Exception as exc:  # onnxruntime's own error types: a graph that does not fit its manifest
            raise EdgeshrinkError(f"{self.path}: model.onnx failed to run: {first_line(exc)}") from None
        new_past = {name: results[name.replace("past_key_values.", "present.")] for name in self.past_names}
        return results["logits"][0], new_past

    def check_feeds(self) -> dict[str, np.ndarray]:
        """Inputs to check an equivalent model against this one (`edgeshrink pack --target mobile`): the prefill of
        a short prompt from an empty cache."""
        return prefill_feeds(self.inputs, self.encode("The capital of France is"))

    def logits(self, ids: list[int]) -> np.ndarray:
        """Logits at every position of ``ids`` (one prefill pass): for perplexity and validation."""
        return self._step(list(ids), self._empty_past(), len(ids))[0]

    # -- generation ---------------------------------------------------------------------------------
    def prompt_ids(self, prompt, max_new_tokens: int | None) -> list[int]:
        """The ids of a prompt (text, chat messages or ids) that leaves room for ``max_new_tokens`` (None: for at
        least one), or an error."""
        if max_new_tokens is not None and max_new_tokens <= 0:
            raise EdgeshrinkError(f"max_new_tokens must be positive, got {max_new_tokens}")
        ids = self.encode(prompt) if not isinstance(prompt, (list, tuple)) or (prompt and isinstance(prompt[0], dict)) \
            else list(prompt)
        if not ids:
            raise EdgeshrinkError("the prompt is empty")
        if len(ids) + (max_new_tokens or 1) > self.context_length:
            raise EdgeshrinkError(f"prompt of {len(ids)} tokens + max_new_tokens {max_new_tokens or 1} exceeds the "
                                  f"context length {self.context_length}")
        return ids

    def stream(self, prompt, max_new_tokens: int | None = 64, temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
               stop: list[str] | tuple = (), seed: int | None = None, ignore_eos: bool = False, info: dict | None = None,
               repetition_penalty: float = 1.0, frequency_penalty: float = 0.0,
               presence_penalty: float = 0.0, prompt_lookup: int = 0):
        """Yield ``Token``s as they are produced (``max_new_tokens`` None: what the context leaves, at most
        DEFAULT_NEW_TOKENS). ``info`` (a dict) receives timings and the stop reason. The penalties are
        runtime/sampling.py's, over the answer so far; off by default here, as in Hugging Face and vLLM (the CLI
        and the services default to sampling.DEFAULT_REPETITION_PENALTY).

        ``prompt_lookup`` n > 0: each step also feeds the tokens that followed the latest earlier occurrence of
        the last n (down to 2) tokens of the prompt and answer (speculative.PromptLookup), so one pass computes
        the rows of the positions after them too. Every token is still drawn from its own row exactly as without
        lookup (with a one-hot draft, speculative sampling's accept rule is drawing from p), so the output is
        the same, seed for seed; a drafted token that was not drawn only cuts the cache back. How many drafted
        tokens a pass carries (0 to MAX_DRAFT) follows what passes cost here and how often drafts were kept
        (speculative.DraftBudget, learnt across answers). ``info`` gets ``target_passes``, ``drafted`` and
        ``accepted``."""
        sampling = Sampling(temperature, top_k, top_p, repetition_penalty, frequency_penalty, presence_penalty)
        sampling.check()
        lookup = self._prompt_lookup(prompt_lookup)
        if any(not isinstance(s, str) or not s for s in stop):
            raise EdgeshrinkError("a stop string must be a non-empty string")
        ids = self.prompt_ids(prompt, max_new_tokens)
        if max_new_tokens is None:
            max_new_tokens = min(DEFAULT_NEW_TOKENS, self.context_length - len(ids))
        rng = np.random.default_rng(seed)
        info = info if info is not None else {}
        info.update(prompt_tokens=len(ids), stop_reason="length")
        started = time.perf_counter()
        logits, past = self._step(ids, self._empty_past(), len(ids))
        total, generated, text_so_far = len(ids), [], ""
        rows, drafted = [logits[-1]], []  # rows computed ahead: rows[i + 1] follows drafted[i]
        counts = {"target_passes": 1, "drafted": 0, "accepted": 0}
        if lookup:  # counted into info as they happen (a consumer may stop the stream early)
            info.update(counts)
            counts = info
        for step in range(max_new_tokens):
            row = rows.pop(0)
            logprobs = log_softmax(row)  # the model's own, before penalties and temperature
            support, probs = distribution(penalized(row, sampling, generated), sampling)
            token = int(rng.choice(support, p=probs))
            if drafted:  # the next row is only right if the drafted token is the one drawn
                kept = token == drafted[0]
                self._draft_budget.observe_drafts(1, int(kept))
                if kept:
                    counts["accepted"] += 1
                    drafted.pop(0)
                else:
                    past = self._cut(past, total - len(drafted))
                    total -= len(drafted)
                    rows, drafted = [], []
            if step == 0:
                info["first_token_ms"] = (time.perf_counter() - started) * 1000
                decode_started = time.perf_counter()
            if token in self.eos_ids and not ignore_eos:
                info["stop_reason"] = "eos"
                break
            generated.append(token)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            # A character split over several byte tokens decodes to U+FFFD until its last byte comes: hold
            # the text back until then (or until the last step), so the pieces join to the final text.
            if text.endswith("\ufffd") and step + 1 < max_new_tokens:
                piece = ""
            else:
                piece, text_so_far = text[len(text_so_far):], text
            top2 = np.exp(np.partition(logprobs, -2)[-2:])
            yield Token(token, piece, float(logprobs[token]), float(-(np.exp(logprobs) * logprobs).sum()),
                        float(top2.max() - top2.min()))
            if stop and any(s in text_so_far for s in stop):
                info["stop_reason"] = "stop"
                break
            if step + 1 < max_new_tokens and not rows:
                room = min(max_new_tokens - step - 2, self.context_length - total - 1, MAX_DRAFT)
                length = self._draft_budget.length(room) if lookup and room > 0 else 0
                draft = lookup.lookup(ids + generated, length) if length else []
                total += 1 + len(draft)
                pass_started = time.perf_counter()
                logits, past = self._step([token] + draft, past, total)
                if lookup:
                    self._draft_budget.observe_pass(1 + len(draft), time.perf_counter() - pass_started)
                rows, drafted = list(logits[-(len(draft) + 1):]), draft
                counts["target_passes"] += 1
                counts["drafted"] += len(draft)
        steps = len(generated) - 1
        info["decode_tokens_per_s"] = steps / (time.perf_counter() - decode_started) if steps > 0 else None

    def _prompt_lookup(self, ngram: int):
        """The n-gram drafter of ``stream(prompt_lookup=ngram)`` (None for 0), or a one-line refusal."""
        if not isinstance(ngram, int) or isinstance(ngram, bool) or ngram < 0:
            raise EdgeshrinkError(f"prompt_lookup must be a whole number of tokens >= 0, got {ngram!r}")
        if not ngram:
            return None
        if not self.past_names:  # each pass would need the whole sequence again: nothing to gain, refused
            raise EdgeshrinkError(f"{self.path}: model.onnx has no KV cache (no past_key_values inputs): "
                                  f"prompt lookup needs one")
        from edgeshrink.runtime.speculative import DraftBudget, PromptLookup

        if self._draft_budget is None:  # what passes cost here and how often drafts are kept, across answers
            self._draft_budget = DraftBudget()
        return PromptLookup(self, ngram_max=ngram)

    def _cut(self, past, length: int):
        """The KV cache cut back to its first ``length`` positions."""
        if isinstance(past, SharedCache):
            past.truncate(length)
            return past
        return {name: np.take(value, range(length), axis=sequence_axis(self.inputs[name].shape))
                for name, value in past.items()}

    def generate(self, prompt, max_new_tokens: int | None = 64, **options) -> Generation:
        """Generate to the end (see ``stream`` for the options)."""
        info: dict = {}
        tokens = list(self.stream(prompt, max_new_tokens, info=info, **options))
        ids = [t.id for t in tokens]
        text = "".join(t.text for t in tokens)  # what streaming showed (an unfinished character at eos is dropped)
        for s in options.get("stop") or ():
            if s in text:
                text = text[:text.index(s)]
        return Generation(text, ids, [t.logprob for t in tokens], info["stop_reason"], info["prompt_tokens"],
                          info.get("first_token_ms", 0.0), info.get("decode_tokens_per_s"))
