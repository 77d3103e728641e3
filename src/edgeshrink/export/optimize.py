"""ONNX Runtime graph optimisation of an exported model, saved offline so the device does not redo it."""

from __future__ import annotations

from pathlib import Path

def optimize_onnx(src: Path, dst: Path, level: str, fusion_type: str | None = None,
                  num_heads: int = 0, hidden_size: int = 0) -> str:
    """Write an optimised copy of ``src`` to ``dst``; return what was applied ("fusion:bert", "basic").

    ``fusion_type`` is the model type ORT's transformer optimizer knows the family as (the registry's
    ``ort_fusion``, models/arch.py); without one, ``fusion`` falls back to the basic passes.
    """
    import onnxruntime as ort

    if level == "fusion" and fusion_type:
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(str(src), model_type=fusion_type, num_heads=num_heads,
                                   hidden_size=hidden_size, opt_level=0, use_gpu=False)
        optimized.save_model_to_file(str(dst))
        return f"fusion:{fusion_type}"
    from edgeshrink.runtime.bundle import session_options

    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return "basic"
