"""A KV cache whose past and present are one buffer per layer, bound through ONNX Runtime's IOBinding.

The onnxruntime-genai builder's graphs attend with GroupQueryAttention, which reads each sequence's length
from ``seqlens_k`` and ``total_sequence_length`` (both computed in the graph from ``attention_mask``), not
from the past's shape. Given a past buffer longer than the sequence and the same buffer bound as the
present output, the kernel appends the new keys and values in place (its ``past_present_share_buffer``
mode, as in onnxruntime-genai): nothing is copied per token. Positions past the current length are never
read, so cutting the cache back to a prefix (speculative decoding, scoring several answers after one
prompt) is only a smaller ``total`` on the next step. Other graphs (optimum's, with a past that must be
exactly the sequence) keep generate.py's copying path.
"""

from __future__ import annotations

import numpy as np

from edgeshrink.errors import EdgeshrinkError

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
MIN_CAPACITY = 256  # positions first allocated; the buffers double (copying the prefix once) when a step needs more


def shares_buffers(manifest: dict, session, past_names: list[str]) -> bool:
    """Whether a bundle's graph takes shared past/present buffers: the builder's export (GroupQueryAttention),
    with [batch, kv heads, sequence, head dim] past tensors and no position_ids input (GQA's own rotary)."""
    export = manifest.get("export")  # free-form provenance: any JSON value in an untrusted bundle
    if not isinstance(export, dict) or export.get("exporter") != "builder" or not past_names:
        return False
    inputs = {i.name: i for i in session.get_inputs()}
    if "position_ids" in inputs or "attention_mask" not in inputs:
        return False
    return all(len(inputs[n].shape) == 4 and inputs[n].type in _NP for n in past_names)


class SharedCache:
    """The KV cache of one sequence: a [1, kv heads, capacity, head dim] buffer per past input, bound as both
    the past input and the present output of every step."""

    def __init__(self, session, past_names: list[str], context_length: int):
        self.session, self.past_names, self.context_length = session, past_names, context_length
        inputs = {i.name: i for i in session.get_inputs()}
        self.dims = {n: (int(inputs[n].shape[1]), int(inputs[n].shape[3])) for n in past_names}
        self.dtypes = {n: _NP[inputs[n].type] for n in past_names}
        self.capacity, self.length = 0, 0  # positions allocated, positions holding keys and values
        self.arrays: dict[str, np.ndarray] = {}
        self.values: dict = {}  # OrtValues over self.arrays' memory

    def reserve(self, total: int) -> None:
        """Make room for ``total`` positions (doubling, at most the context length), keeping the cached prefix."""
        if total <= self.capacity:
            return
        import onnxruntime as ort

        capacity = min(max(total, 2 * self.capacity, MIN_CAPACITY), max(total, self.context_length))
        for name in self.past_names:
            heads, head_dim = self.dims[name]
            array = np.zeros((1, heads, capacity, head_dim), self.dtypes[name])
            if self.length:
                array[:, :, :self.length] = self.arrays[name][:, :, :self.length]
            self.arrays[name] = array
            self.values[name] = ort.OrtValue.ortvalue_from_numpy(array)
        self.capacity = capacity

    def step(self, ids: list[int], total: int) -> np.ndarray:
        """Run ``ids`` after the first ``total - len(ids)`` cached positions; the logits of every new position."""
        if total - len(ids) > self.length:
            raise EdgeshrinkError(f"the KV cache holds {self.length} positions, the step needs {total - len(ids)}")
        self.reserve(total)
        binding = self.session.io_binding()
        binding.bind_output("logits", "cpu")  # first: get_outputs()[0] (the presents are the cache itself)
        binding.bind_cpu_input("input_ids", np.array([ids], dtype=np.int64))
        binding.bind_cpu_input("attention_mask", np.ones((1, total), np.int64))
        for name in self.past_names:
            binding.bind_ortvalue_input(name, self.values[name])
            binding.bind_ortvalue_output(name.replace("past_key_values.", "present."), self.values[name])
        self.session.run_with_iobinding(binding)
        self.length = total
        return binding.get_outputs()[0].numpy()[0]

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` positions (later ones are overwritten by the next step)."""
        self.length = min(self.length, length)
