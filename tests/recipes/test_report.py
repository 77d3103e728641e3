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


def test_the_curve_of_perplexity_against_decode_speed_has_intervals_and_a_front(tmp_path):
    import math

    from edgeshrink.recipes import generate

    tokens = [64, 64, 64]
    candidates = []
    for role, speed, nll in (("fp32", 20.0, [192, 208, 200]), ("source", 60.0, [193, 209, 200]),
                             ("device", 90.0, [204, 215, 212]), ("peer", 55.0, [195, 212, 202])):
        candidates.append({"name": role, "decode": [{"threads": 1, "tokens_per_s": speed}],
                           "ttft": [{"threads": 1, "prompt_tokens": 32, "median_ms": 1000 / speed}],
                           "quality": {"bbc-news": {"perplexity": math.exp(sum(nll) / sum(tokens)),
                                                    "window_nll_nats": nll, "window_tokens": tokens}}})
    candidates[0]["precision"] = "fp32"
    points = generate.decode_quality_points(list(zip(["fp32", "source", "device", "peer"], candidates)))
    assert [p["role"] for p in points] == ["fp32", "source", "device", "peer"]
    assert points[0]["increase"] == 0 and points[0]["interval"] == [0, 0]
    device = points[2]
    assert device["interval"][0] <= device["increase"] <= device["interval"][1] and device["interval"][0] > 0
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = generate.plot_decode_quality(plt, points, "t")
    assert len(ax.containers) == 4  # one point with its error bar per candidate
    front = next(line for line in ax.get_lines() if line.get_linestyle() == "--")
    assert sorted(front.get_xdata()) == [20.0, 60.0, 90.0]  # llama.cpp: slower and worse than the source, off it
    plt.close(fig)
    report = {"name": "small", "bench": {"roles": ["fp32", "source", "device", "peer"], "candidates": candidates}}
    assert generate.write_llm_plots(report, tmp_path) == ["decode.png", "ttft.png", "decode_vs_perplexity.png"]


# -- report.html as a person sees it: rendered by a headless browser ------------------------------------------
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome-headless-shell")
# Run in the page once it has loaded: what a reader sees (innerText), each image's decoded width, each table's
# rows and cells. The result goes into the DOM, which --dump-dom prints.
PROBE = """<script>window.addEventListener("load", () => {
  const seen = {text: document.body.innerText,
                images: [...document.images].map(i => i.naturalWidth),
                tables: [...document.querySelectorAll("table")].map(t => [t.rows.length, t.rows[0].cells.length])};
  const out = document.createElement("pre"); out.id = "probe"; out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});</script>"""


def _fake_report(tmp_path) -> dict:
    """A classifier recipe's report, as runner.py assembles it, from made-up figures (no model is built)."""
    def device(acc, ms, mb):
        return {"role": "device", "name": "device", "accuracy": acc, "p50_ms": ms, "size_mb": mb, "seq_len": 64}

    cloud = {"role": "cloud", "name": "cloud (fp32 bundle)", "accuracy": 0.91, "p50_ms": 21.0, "size_mb": 90.9,
             "seq_len": 64}
    targets = [{"target": "max_latency_ms (p50, 1 thread, 64 tokens)", "value": 3.4, "bound": 5.0, "met": True,
                "unit": "ms", "miss": None},
               {"target": "min_accuracy", "value": 0.86, "bound": 0.88, "met": False, "unit": "", "miss": 0.02}]
    candidates = [{"index": i, "choices": {"steps.1.prune.layers": layers}, "pruned": None, "targets": targets,
                   "calibration_accuracy": acc, "models": [cloud, device(acc, ms, mb)]}
                  for i, (layers, acc, ms, mb) in enumerate([(2, 0.86, 3.1, 12.0), (3, 0.88, 4.2, 15.5),
                                                             (4, 0.89, 6.0, 19.0)])]
    return {"name": "sentiment-edge", "recipe": "recipes/search.yaml", "recipe_sha256": "ab" * 32,
            "edgeshrink_version": "0.0.0", "seed": 0, "wall_seconds_this_run": 12.0,
            "machine": {"cpu": {"model": "a CPU", "isa": ["avx2"]}, "logical_cores": 2,
                        "versions": {"torch": "2.0", "onnxruntime": "1.0"}},
            "targets": targets, "all_targets_met": False, "candidates": candidates, "chosen": 1,
            "models": candidates[1]["models"],
            "steps": [{"step": "prune", "key": "k1", "seconds": 1.0, "seconds_this_run": 1.0}],
            "device_bundle": str(tmp_path / "bundle"), "cloud_bundle": str(tmp_path / "cloud")}


def _rendered(page, tmp_path) -> dict:
    import html
    import json
    import os
    import re
    import shutil
    import subprocess

    import pytest

    browser = next((path for path in map(shutil.which, BROWSERS) if path), None)
    if browser is None:
        pytest.skip("no headless browser installed")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    args = [browser, "--headless", "--disable-gpu", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--proxy-server=http://127.0.0.1:9", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    dom = subprocess.run(args, capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[:2000]
    return json.loads(html.unescape(found.group(1)))


def _assert_reads_clean(seen: dict, plots: list[str]) -> None:
    text = seen["text"]
    for leak in ("**", "`", "|---", "|", "<", ">", "!["):
        assert leak not in text, (leak, text)
    assert len(seen["images"]) == len(plots) and all(width > 0 for width in seen["images"]), seen["images"]
    assert seen["tables"] and all(rows >= 2 and cells >= 2 for rows, cells in seen["tables"]), seen["tables"]


def test_report_html_reads_clean_in_a_headless_browser(tmp_path):
    from edgeshrink.recipes.report import html_page, markdown

    report = _fake_report(tmp_path)
    report["plots"] = write_plots(report, tmp_path / "plots")
    seen = _rendered(html_page(report, markdown(report), tmp_path / "plots"), tmp_path)
    _assert_reads_clean(seen, report["plots"])
    assert "All targets met: no." in seen["text"]
    assert "recipes/search.yaml" in seen["text"] and "3 | " not in seen["text"]
    assert len(seen["tables"]) == 4  # targets, search, models, steps


def test_language_model_report_html_reads_clean_in_a_headless_browser(tmp_path):
    from edgeshrink.recipes.generate import llm_markdown, write_llm_plots
    from edgeshrink.recipes.report import html_page

    report = _fake_report(tmp_path)
    decode = [{"threads": 1, "tokens_per_s": 30.0, "fraction_of_limit": 0.4, "vs_peer": 1.2}]
    ttft = [{"threads": 1, "prompt_tokens": p, "median_ms": p / 2} for p in (32, 128)]
    report["bench"] = {"roles": ["fp32", "device"], "candidates": [
        {"name": name, "size_bytes": 5e8, "decode": decode, "ttft": ttft, "quality": {"wiki": {"perplexity": 9.0}}}
        for name in ("smollm2-fp32", "smollm2-int4")]}
    report["steps"] = [{"step": "export", "seconds": 3.0, "cached": False}]
    report["plots"] = write_llm_plots(report, tmp_path / "plots")
    seen = _rendered(html_page(report, llm_markdown(report), tmp_path / "plots"), tmp_path)
    _assert_reads_clean(seen, report["plots"])
    assert "smollm2-int4" in seen["text"]


def test_log_axes_are_labelled_with_plain_numbers(tmp_path, monkeypatch):
    """3, 4, 6, 20 ms on the axis, not 3×10⁰ … 2×10¹."""
    from edgeshrink.recipes import report as report_module

    labels = {}

    def keep_labels(fig, ax, out, name):
        fig.canvas.draw()
        labels[name] = [t.get_text() for t in ax.get_xticklabels() + ax.get_xticklabels(minor=True)
                        + ax.get_yticklabels() + ax.get_yticklabels(minor=True) if t.get_text()]
        return original(fig, ax, out, name)

    original = report_module.save_plot
    monkeypatch.setattr(report_module, "save_plot", keep_labels)
    report = _fake_report(tmp_path)
    write_plots(report, tmp_path)
    assert set(labels) == {"accuracy_vs_latency.png", "accuracy_vs_size.png"}
    for name, texts in labels.items():
        assert not any("10" in t and ("×" in t or "^" in t or "$" in t) for t in texts), (name, texts)
        assert all(t.replace(",", "").replace(".", "").replace("−", "").isdigit() for t in texts), (name, texts)
    assert {"4", "6"} <= set(labels["accuracy_vs_latency.png"]), labels
