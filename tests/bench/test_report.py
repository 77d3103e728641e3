"""bench tables as a log shows them: at 80 columns in a non-terminal, candidate names are never cut to "smollm2-…",
so the fp32 and INT4 rows of one model can be told apart."""

import io

from rich.console import Console

from edgeshrink.bench.report import _LAYOUTS, distinct_names, print_report


def _llm_report():
    names = [("smollm2-135m-instruct-fp32", "onnx-bundle", "fp32"), ("smollm2-135m-instruct-int4", "onnx-bundle", "int4-weight"),
             ("smollm2-135m-instruct-q4_k_m.gguf (llama.cpp)", "llama.cpp", "Q4_K_M")]
    cands = []
    for i, (name, kind, precision) in enumerate(names):
        cands.append({"name": name, "kind": kind, "precision": precision, "size_bytes": 1e8 * (3 - i),
                      "peak_rss_bytes": 2e8, "cost": {"weight_bytes_per_token": 1e8},
                      "decode": [{"threads": t, "prompt_tokens": 32, "tokens_per_s": 30.0 + i, "limit_tokens_per_s": 80.0,
                                  "bound": "memory", "fraction_of_limit": 0.4, "vs_peer": None if kind == "llama.cpp" else 1.2}
                                 for t in (1, 2)],
                      "ttft": [{"threads": 1, "prompt_tokens": p, "median_ms": 20.0 * (i + 1), "limit_ms": 5.0,
                                "time_vs_peer": None if kind == "llama.cpp" else 0.56} for p in (32, 128)],
                      "quality": {"wikitext": {"perplexity": 12.0, "bits_per_byte": 1.1, "top1_agreement": 0.95,
                                               "kl_to_reference": 0.01, "tokens": 4000}} if kind != "llama.cpp" else {}})
    return {"schema": "edgeshrink-bench-llm/1", "machine": {"cpu": "AMD EPYC", "logical_cores": 2, "isa": ["avx2"]},
            "config": {"repeats": 3, "new_tokens": 64}, "peak_gemm_gflops": {"1": 50.0}, "memory_bandwidth_gbps": {"1": 10.0},
            "reference": {"name": names[0][0]}, "notes": [], "candidates": cands}


def _classifier_report():
    names = ["minilm-sentiment-fp32", "minilm-sentiment-dynamic-int8", "minilm-sentiment-static-int8-pruned-2-layers"]
    cands = [{"name": n, "kind": "onnx-bundle", "precision": "fp32", "size_bytes": 9e7 / (i + 1), "peak_rss_bytes": 2e8,
              "accuracy": {"value": 0.9, "ci95": [0.88, 0.92]}, "agreement_with_first": 0.97, "torch_imported": False,
              "latency": [{"threads": 1, "seq_len": 64, "p50_ms": 3.0, "p90_ms": 3.5, "p99_ms": 4.0, "limit_ms": 1.0,
                           "times_limit": 3.0, "speedup_vs_first": 1.0}],
              "throughput": [{"threads": 1, "seq_len": 64, "batch": 8, "examples_per_s": 300.0, "speedup_vs_first": 1.0}]}
             for i, n in enumerate(names)]
    return {"schema": "edgeshrink-bench/1", "machine": {"cpu": "AMD EPYC", "logical_cores": 2, "isa": ["avx2"]},
            "peak_gemm_gflops": {"1": 50.0}, "data": None, "notes": [], "candidates": cands}


def _printed(report) -> str:
    out = io.StringIO()
    print_report(report, Console(file=out, width=80))  # a file: not a terminal, as in a log
    return out.getvalue()


def test_names_are_whole_and_distinct_in_every_table_at_80_columns():
    for report in (_llm_report(), _classifier_report()):
        text = _printed(report)
        assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
        names = [c["name"] for c in report["candidates"]]
        prefix, short = distinct_names(names)
        assert prefix and len(set(short)) == len(short)
        flat = " ".join(text.split())
        assert all(name in flat for name in names)  # each full name once, above the tables
        # every table's first column, top to bottom, wrapped lines joined: the short names of its rows in order
        column = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
        header, tables, _ = _LAYOUTS[report["schema"]]
        shorter = dict(zip(names, short))
        expected = "".join(shorter[row[0]] for _, _, _, rows in tables(report) for row in rows)
        assert column.replace(" ", "") == expected.replace(" ", "")  # a wrapped name loses its spaces at the fold


def test_distinct_names_drops_only_what_every_name_shares():
    assert distinct_names(["smollm2-135m-fp32", "smollm2-135m-int4"]) == ("smollm2-135m-", ["fp32", "int4"])
    assert distinct_names(["runs/a-fp32", "runs/a-fp32-int4"]) == ("runs/a-", ["fp32", "fp32-int4"])
    assert distinct_names(["model-a", "model-a-b"]) == ("model-", ["a", "a-b"])
    assert distinct_names(["cloud", "device"]) == ("", ["cloud", "device"])
    assert distinct_names(["only-one"]) == ("", ["only-one"])
    assert distinct_names(["ab-x", "ab-y"]) == ("", ["ab-x", "ab-y"])  # a prefix that short says nothing


def test_every_ttft_ratio_is_device_over_llama_cpp_and_the_header_says_so():
    from edgeshrink.bench.report import to_markdown

    md = to_markdown(_llm_report())
    ttft = md.split("Time to first token")[1].split("\n\n")[1].splitlines()
    header = next(line for line in ttft if line.startswith("| candidate"))
    assert header.endswith("| ÷ llama.cpp (lower is better) |")
    assert all(line.endswith("| 0.56x |") for line in ttft if "| fp32 |" in line or "-fp32 |" in line)
    decode = md.split("Decode (")[1].split("\n\n")[1]
    assert "÷ llama.cpp (higher is better)" in decode


def test_perplexity_against_the_reference_carries_a_paired_interval_over_windows():
    import math

    from edgeshrink.bench.report import perplexity_change, to_markdown

    report = _llm_report()
    fp32, int4 = report["candidates"][:2]
    tokens = [100, 120, 80, 100]
    fp32["quality"]["wikitext"].update(window_nll_nats=[300.0, 350.0, 250.0, 310.0], window_tokens=tokens)
    int4["quality"]["wikitext"].update(window_nll_nats=[310.0, 362.0, 262.0, 312.0], window_tokens=tokens)
    change = perplexity_change(int4, fp32, "wikitext")
    assert math.isclose(change["ratio"], math.exp((1246 - 1210) / 400))  # the pooled per-token NLL, not a mean of ratios
    lo, hi = change["ratio_ci95"]
    assert 1 < lo <= change["ratio"] <= hi  # INT4 is worse on every window: the whole interval lies above 1
    assert f"+{100 * (change['ratio'] - 1):.1f}% [" in to_markdown(report)
    int4["quality"]["wikitext"]["window_tokens"] = [100, 120, 80, 99]  # not the same windows: no pairing, no interval
    assert perplexity_change(int4, fp32, "wikitext") is None
    assert perplexity_change(report["candidates"][2], fp32, "wikitext") is None  # not scored at all
