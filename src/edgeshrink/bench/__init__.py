"""Honest benchmarks: latency percentiles, throughput, memory, size and accuracy, side by side."""

from edgeshrink.bench.config import BenchConfig
from edgeshrink.bench.run import bench

__all__ = ["BenchConfig", "bench"]
