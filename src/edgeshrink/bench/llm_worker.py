"""One LLM bench candidate, in its own process, driven by `bench_llm` over a pipe.

Two kinds answer the same commands: an LLM bundle run by the device runtime (``Generator``, torch-free)
and the llama.cpp peer on a GGUF file (llama-cpp-python). Both take the same token ids, choose greedily
and decode a fixed count of tokens with eos ignored, so every candidate does the same work per run.

    ("prompt", text, lengths)         -> {length: ids}   the first `length` tokens of `text` (no BOS)
    ("ttft", threads, length)         -> seconds: prefill of `length` tokens + choosing the first token
    ("decode", threads, length, new)  -> {"ttft_s", "tokens_per_s", "tokens"}: `new` greedy tokens
    ("stop",)                         -> {"peak_rss_bytes", "torch_imported"}
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import numpy as np

from edgeshrink.bench.worker import peak_rss_bytes
from edgeshrink.errors import EdgeshrinkError


class BundleLM:
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


class LlamaCppLM:
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


def open_lm(spec: dict):
    if spec["kind"] == "llama.cpp":
        return LlamaCppLM(spec["path"], spec["context"])
    return BundleLM(spec["path"])


def serve(conn, spec: dict) -> None:
    """Process entry point: answer (command, args) messages until "stop"."""
    try:
        candidate = open_lm(spec)
        conn.send(("ok", {"kind": candidate.kind}))
    except Exception as exc:  # reported to the parent, which turns it into one line
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    prompts: dict[int, list[int]] = {}
    while True:
        command, args = conn.recv()
        try:
            if command == "stop":
                conn.send(("ok", {"torch_imported": "torch" in sys.modules, "peak_rss_bytes": peak_rss_bytes()}))
                return
            if command == "prompt":
                text, lengths = args
                ids = candidate.tokenize(text)
                if len(ids) < max(lengths):
                    raise EdgeshrinkError(f"the prompt text has {len(ids)} tokens; {max(lengths)} are needed")
                prompts = {n: ids[:n] for n in lengths}
                conn.send(("ok", prompts))
            elif command == "ttft":
                threads, length = args
                candidate.set_threads(threads)
                conn.send(("ok", candidate.run(prompts[length], 1)[0]))
            elif command == "decode":
                threads, length, new_tokens = args
                candidate.set_threads(threads)
                ttft, rate, tokens = candidate.run(prompts[length], new_tokens)
                conn.send(("ok", {"ttft_s": ttft, "tokens_per_s": rate, "tokens": tokens}))
            else:
                conn.send(("error", f"unknown command {command}", ""))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
