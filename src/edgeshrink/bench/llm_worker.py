"""A language-model candidate in its worker process (harness.py), for the LLM bench (llm.py).

Two kinds answer the same commands: an LLM bundle run by the device runtime (``Generator``, torch-free)
and the llama.cpp peer on a GGUF file (llama-cpp-python). Both take the same token ids, choose greedily
and decode a fixed count of tokens with eos ignored, so every candidate does the same work per run.

    ("prompt", text, lengths)         -> {length: ids}   the first `length` tokens of `text` (no BOS)
    ("ttft", threads, length)         -> seconds: prefill of `length` tokens + choosing the first token
    ("decode", threads, length, new)  -> {"ttft_s", "tokens_per_s", "tokens"}: `new` greedy tokens
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeshrink.errors import EdgeshrinkError


class LanguageModel:
    """The commands; a subclass gives kind, set_threads, tokenize and run."""

    commands = ("prompt", "ttft", "decode")
    prompts: dict[int, list[int]]

    def info(self) -> dict:
        return {"kind": self.kind}

    def prompt(self, text: str, lengths: list[int]) -> dict[int, list[int]]:
        ids = self.tokenize(text)
        if len(ids) < max(lengths):
            raise EdgeshrinkError(f"the prompt text has {len(ids)} tokens; {max(lengths)} are needed")
        self.prompts = {n: ids[:n] for n in lengths}
        return self.prompts

    def ttft(self, threads: int, length: int) -> float:
        self.set_threads(threads)
        return self.run(self.prompts[length], 1)[0]

    def decode(self, threads: int, length: int, new_tokens: int) -> dict:
        self.set_threads(threads)
        ttft, rate, tokens = self.run(self.prompts[length], new_tokens)
        return {"ttft_s": ttft, "tokens_per_s": rate, "tokens": tokens}


class BundleLM(LanguageModel):
    """An LLM bundle through the device runtime: the timed path is ``Generator.stream`` itself."""

    kind = "onnx-bundle"

    def __init__(self, path: str):
        from edgeshrink.runtime.generate import Generator

        self.path = Path(path)
        self.generator = Generator(self.path, verify=True)  # hashes checked once, here
        self.threads = None

    def set_threads(self, threads: int) -> None:
        from edgeshrink.runtime.generate import Generator

        if threads != self.threads:
            self.generator = None  # free the old session before the new one loads
            self.generator = Generator(self.path, threads=threads, verify=False)
            self.threads = threads

    def tokenize(self, text: str) -> list[int]:
        return self.generator.tokenizer.encode(text, add_special_tokens=False).ids

    def run(self, ids: list[int], new_tokens: int) -> tuple[float, float | None, list[int]]:
        info: dict = {}
        tokens = [t.id for t in self.generator.stream(ids, new_tokens, ignore_eos=True, info=info)]
        return info["first_token_ms"] / 1e3, info["decode_tokens_per_s"], tokens


class LlamaCppLM(LanguageModel):
    """llama.cpp on a GGUF file: prompt evaluated in one ``eval``, then one ``eval`` per token, greedy argmax
    over the last logits (read with ``llama_get_logits_ith``, as llama.cpp's own greedy sampler does)."""

    kind = "llama.cpp"

    def __init__(self, path: str, context: int):
        self.path = Path(path)
        self.context = context
        self.llm = None
        self.threads = None
        self.set_threads(1)

    def set_threads(self, threads: int) -> None:
        from llama_cpp import Llama

        if threads != self.threads:
            self.llm = None
            self.llm = Llama(model_path=str(self.path), n_threads=threads, n_threads_batch=threads, n_ctx=self.context,
                             n_batch=self.context, logits_all=False, verbose=False)
            self.threads = threads

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _greedy(self) -> int:
        import llama_cpp

        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.llm.n_vocab(),))
        return int(np.argmax(logits))

    def run(self, ids: list[int], new_tokens: int) -> tuple[float, float | None, list[int]]:
        self.llm.reset()
        started = time.perf_counter()
        self.llm.eval(ids)
        token = self._greedy()
        ttft = time.perf_counter() - started
        tokens = [token]
        decode_started = time.perf_counter()
        for _ in range(new_tokens - 1):
            self.llm.eval([token])
            token = self._greedy()
            tokens.append(token)
        steps = new_tokens - 1
        return ttft, (steps / (time.perf_counter() - decode_started) if steps else None), tokens
