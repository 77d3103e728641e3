"""Triton's Python-backend model that tokenizes texts for a classifier (copied as ``model.py`` into the
tokenizer model of a repository written by ``edgeshrink export --format triton``; nothing in edgeshrink
imports it). It needs numpy and ``tokenizers`` in Triton's Python environment, not edgeshrink.

Input ``text`` (BYTES, [batch, 1]) → the ONNX model's integer inputs ([batch, tokens]), encoded exactly as the
device runtime encodes them (runtime/predictor.py ``Predictor.encode``): no padding inside the tokenizer,
truncation at the bundle's max_length, padding to the longest text of the request with the pad id.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

DTYPES = {"TYPE_INT64": np.int64, "TYPE_INT32": np.int32}


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "tokenizer_config.json"), encoding="utf-8") as fh:
            config = json.load(fh)
        self.tokenizer = Tokenizer.from_file(os.path.join(here, "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(int(config["max_length"]))
        self.pad_id = int(config["pad_id"])
        self.outputs = [(o["name"], DTYPES[o["data_type"]]) for o in config["outputs"]]

    def encode(self, texts):
        encodings = self.tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(texts), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        types = np.zeros((len(texts), width), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: feeds[name].astype(dtype) for name, dtype in self.outputs}

    def execute(self, requests):
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "text").as_numpy().reshape(-1)
            texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in raw]
            feeds = self.encode(texts)
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, feeds[name]) for name, _ in self.outputs]))
        return responses
