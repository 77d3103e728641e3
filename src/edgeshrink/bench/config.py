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
