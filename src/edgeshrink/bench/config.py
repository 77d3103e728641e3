"""Settings of `edgeshrink bench`."""

from __future__ import annotations

from pydantic import Field, field_validator

from edgeshrink.config import Config
from edgeshrink.data.split import SplitConfig


class BenchConfig(Config):
    version: int = 1
    threads: list[int] = [1, 2]
    seq_lengths: list[int] = [32, 64, 128]  # capped at each model's max_length
    throughput_batch_sizes: list[int] = [8, 32]
    latency_runs: int = Field(40, ge=5)  # timed batch-1 runs per candidate and cell
    throughput_runs: int = Field(3, ge=1)  # timed runs per candidate and throughput cell
    rounds: int = Field(5, ge=1)  # each cell's runs are spread over up to this many round-robin passes
    warmup_runs: int = Field(3, ge=0)
    accuracy: bool = True
    accuracy_threads: int = Field(2, ge=1)
    max_accuracy_examples: int | None = Field(None, ge=1)
    split: SplitConfig = SplitConfig()

    @field_validator("threads", "seq_lengths", "throughput_batch_sizes")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError("must be positive integers")
        return values


class LLMBenchConfig(Config):
    """Settings of `edgeshrink bench` when the candidates are LLM bundles (see bench/llm.py)."""

    version: int = 1
    threads: list[int] = [1, 2]
    prompt_tokens: list[int] = [32, 128, 512]  # time to first token at each prompt length
    decode_prompt_tokens: int | None = Field(None, ge=1)  # prompt before the timed decode; None: the middle
    #                                                        prompt length (128 with the defaults)
    new_tokens: int = Field(128, ge=2)  # greedy tokens decoded per timed run, eos ignored
    repeats: int = Field(3, ge=1)  # timed runs per candidate and cell, one per round-robin pass
    warmup_runs: int = Field(1, ge=0)
    quality: bool = True
    texts: list[str] = ["bbc-news", "shakespeare"]  # held-out text: the test part of each
    windows: int = Field(8, ge=1)  # scored windows per text
    window_tokens: int = Field(512, ge=2)  # tokens per window (teacher-forced, from an empty cache)
    quality_threads: int = Field(2, ge=1)
    reference: str | None = None  # bundle the agreement/KL is taken against; None: the first fp32 candidate,
    #                               else the first candidate's quantization parent
    answers: int = Field(32, ge=0)  # chat prompts every bundle answers greedily, compared with the reference's
    #                                 answers (compress/answers.py); 0: none
    answer_data: str = "open-prompts"  # where the prompts come from (its test part), after answers.FACTS
    answer_tokens: int = Field(48, ge=1)  # tokens per answer, compared token for token
    peer: str = "auto"  # llama.cpp on a GGUF: "auto" (the GGUF the bundles were imported from, if
    #                     llama-cpp-python is installed), "none", "smollm2", or a .gguf path

    @field_validator("threads", "prompt_tokens")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if not values or any(v < 1 for v in values):
            raise ValueError("must be a non-empty list of positive integers")
        return values

    @property
    def decode_prompt(self) -> int:
        return self.decode_prompt_tokens or sorted(self.prompt_tokens)[len(self.prompt_tokens) // 2]
