"""The quantize configs, one per kind of bundle: QuantConfig (classifiers: ORT's INT8, INT4, FP16 and the mixed
search, per hardware target) and LLMQuantConfig (language models: INT4 weights on a GGUF's grid or rounded)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from edgeshrink.config import Config

Method = Literal["dynamic-int8", "static-int8", "int4-weight", "fp16", "auto"]
Target = Literal["host", "avx2", "avx512-vnni", "arm64"]
BlockSize = Literal[16, 32, 64, 128]
AccuracyLevel = Literal[0, 1, 2, 3, 4]

# Weight/activation types and range per hardware target. On AVX2 without VNNI, ORT's u8s8 kernels use
# VPMADDUBSW, which can saturate: 7-bit weights (reduce_range) avoid it. VNNI has no such issue; Arm's
# dot-product kernels prefer signed activations.
TARGETS: dict[str, dict] = {
    "avx2": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": True},
    "avx512-vnni": {"activation_type": "uint8", "weight_type": "int8", "reduce_range": False},
    "arm64": {"activation_type": "int8", "weight_type": "int8", "reduce_range": False},
}
MIN_CALIBRATION_EXAMPLES = 16

# One QuantConfig served every bundle until issue 26 split it in two. Recipe cache keys hash that config's
# shape (every field, these defaults), so both configs give it back in key_form(): a rerun over a cache made
# before the split reuses its quantize steps.
_UNSPLIT_DEFAULTS: dict[str, Any] = {
    "version": 1, "target": "host", "per_channel": True, "weight_type": None, "activation_type": None,
    "reduce_range": None, "op_types": None, "calibration_method": "minmax", "calibration_samples": 512,
    "calibration_batch_size": 16, "block_size": None, "symmetric": True, "quantize_embeddings": True,
    "accuracy_level": None, "grid": "auto", "head_bits": None, "fp16_block_list": [], "tolerance": 0.5,
    "max_eval_examples": None, "evaluate": True}


class _Keyed(Config):
    def key_form(self) -> dict[str, Any]:
        """What a recipe step's cache key hashes: the unsplit QuantConfig these values made (its defaults,
        overlaid with the fields given here; a default that moved, like block_size, keeps its old form)."""
        given = self.to_dict()
        return {**_UNSPLIT_DEFAULTS, **{name: given[name] for name in self.model_fields_set}}


class QuantConfig(_Keyed):
    """A classifier bundle's quantization (text or tensor inputs): one of compress/quantize/classifier.py's METHODS."""

    version: int = 1
    method: Method
    target: Target = Field("host", description="the CPU the types are chosen for (host: the one it runs on)")
    per_channel: bool = True  # per-channel weight scales: measured 0.6-0.9 pt better than per-tensor here
    weight_type: Literal["int8", "uint8"] | None = None  # None: the target's
    activation_type: Literal["int8", "uint8"] | None = None  # static only; None: the target's
    reduce_range: bool | None = None  # None: the target's
    op_types: list[str] | None = None  # None: the method's default
    calibration_method: Literal["minmax", "percentile", "entropy"] = "minmax"
    calibration_samples: int = Field(512, ge=1)
    calibration_batch_size: int = Field(16, ge=1)
    block_size: BlockSize = 128  # int4
    symmetric: bool = True
    quantize_embeddings: bool = True
    accuracy_level: AccuracyLevel | None = None  # MatMulNBits compute precision (4 = int8)
    fp16_block_list: list[str] = []  # op types kept in fp32 besides ORT's default block list
    tolerance: float = Field(0.5, ge=0)  # auto: max accuracy drop in points on the calibration split
    max_eval_examples: int | None = Field(None, ge=MIN_CALIBRATION_EXAMPLES)  # auto: cap per evaluation
    evaluate: bool = True  # score the test split (source and quantized) into the manifest

    def resolved(self) -> dict:
        """The concrete types this config means on its target (``host`` = the CPU it runs on)."""
        target = host_target() if self.target == "host" else self.target
        preset = TARGETS[target]
        return {"target": target,
                "weight_type": self.weight_type or preset["weight_type"],
                "activation_type": self.activation_type or preset["activation_type"],
                "reduce_range": preset["reduce_range"] if self.reduce_range is None else self.reduce_range}


class LLMQuantConfig(_Keyed):
    """A language model bundle's INT4 weights (compress/quantize/decoder.py)."""

    version: int = 1
    method: Literal["int4-weight"]
    block_size: BlockSize = 32  # a GGUF's block, onnxruntime-genai's default
    symmetric: bool = True  # blocks rounded to nearest (weights on no GGUF grid)
    accuracy_level: AccuracyLevel | None = None  # MatMulNBits compute precision (4 = int8)
    grid: Literal["auto", "gguf", "calibrated", "rtn"] = Field(
        "auto", description="keep the GGUF's own codes (gguf), search an importance-weighted grid on calibration "
                            "text (calibrated) or round to nearest (rtn); auto: gguf when the model was imported "
                            "from one, calibrated for every weight off that grid")
    head_bits: Literal[4, 8] | None = None  # cap on the embedding / LM-head bits (None: the grid's own, else 4)
    # calibrated grid: calibration documents run through the fp32 graph, and tokens taken from each one's start
    calibration_documents: int = Field(32, ge=1)
    calibration_tokens: int = Field(512, ge=2)
    # calibrated grid: also GPTQ, kept per weight where it lowers the output error on the calibration activations
    # (off: measured worse than the search alone on SmolLM2-135M, +17.1% vs +12.6% perplexity)
    error_feedback: bool = False
    max_eval_examples: int = Field(16, ge=1)  # calibration documents scored for perplexity and agreement
    evaluate: bool = True  # score the calibration documents (source and quantized) into the manifest
    # greedy chat answers of both bundles compared token for token (compress/answers.py): the factual questions,
    # then prompts of answer_data's calibration part, answer_prompts in all (0: none), answer_tokens each
    answer_prompts: int = Field(12, ge=0)
    answer_tokens: int = Field(32, ge=1)
    answer_data: str = "open-prompts"


def without_training_grid(values: dict[str, Any]) -> dict[str, Any]:
    """A training config's ``values`` less its quantization-aware fields while they are off: training without
    them is what it was before they existed, so a recipe step cached then keeps its key."""
    if values.get("quantization_aware"):
        return values
    return {k: v for k, v in values.items() if k not in ("quantization_aware", "quantization_block_size")}


def host_target() -> str:
    from edgeshrink.doctor import cpu_info

    isa = set(cpu_info()["isa"])
    if {"avx512-vnni", "avx-vnni", "amx-int8"} & isa:
        return "avx512-vnni"
    if {"neon", "arm-dotprod", "arm-i8mm"} & isa:
        return "arm64"
    return "avx2"
