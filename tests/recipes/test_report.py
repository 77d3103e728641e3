import warnings

from edgeshrink.recipes.report import write_plots


def test_plots_of_a_recipe_named_in_cjk_are_saved_without_warnings(tmp_path):
    report = {"name": "情感分析-edge", "chosen": 0, "models": [
        {"role": "cloud", "name": "cloud", "accuracy": 0.9, "p50_ms": 20.0, "size_mb": 90.0},
        {"role": "device", "name": "device", "accuracy": 0.85, "p50_ms": 2.0, "size_mb": 5.0}]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a glyph warning would fail here
        names = write_plots(report, tmp_path)
    assert names == ["accuracy_vs_latency.png", "accuracy_vs_size.png"]
    assert all((tmp_path / name).read_bytes().startswith(b"\x89PNG") for name in names)
    # without a CJK font installed the characters are boxes, and the report says which
    assert set(report.get("plots_missing_glyphs", "")) <= set("情感分析")


def test_language_model_plots_use_the_same_font_fallback(tmp_path):
    from edgeshrink.recipes.generate import write_llm_plots

    decode = [{"threads": 1, "tokens_per_s": 30.0}]
    ttft = [{"threads": 1, "prompt_tokens": p, "median_ms": p / 2} for p in (32, 128)]
    report = {"name": "生成-edge", "bench": {"roles": ["fp32", "device"], "candidates": [
        {"name": "模型", "decode": decode, "ttft": ttft}, {"name": "device", "decode": decode, "ttft": ttft}]}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = write_llm_plots(report, tmp_path)
    assert names == ["decode.png", "ttft.png"]
    assert set(report.get("plots_missing_glyphs", "")) <= set("生成模型")
