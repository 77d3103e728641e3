"""Render any bench report for people (rich tables) and for docs (Markdown); JSON is the report dict itself.
Each report's ``schema`` names its tables here; the header line, the tables and the notes render alike.

JSON schema ``edgeshrink-bench/1``, classifiers (classifier.py; all times in ms, sizes in bytes):
    machine: {cpu, logical_cores, isa, python, edgeshrink}
    peak_gemm_gflops: {threads: best fp32 GEMM GFLOP/s (ONNX Runtime 512³/1024³, numpy 1024³)}
    peak_gemm_detail: {threads: {source: GFLOP/s}}
    config: BenchConfig;  data: split info (dataset, seed, sizes, sha256) or null
    notes[]: plain-words flags (a quantized candidate slower than the first candidate)
    candidates[]: {name, path, kind, precision (fp32 or the quantization method), size_bytes, peak_rss_bytes, parameters, max_length, task,
                   torch_imported, accuracy: {value, correct, n, ci95}, agreement_with_first,
                   latency[]: {threads, batch=1, seq_len, p50_ms, p90_ms, p99_ms, mean_ms, n,
                               speedup_vs_first, flops, limit_ms, times_limit},
                   throughput[]: {threads, batch, seq_len, examples_per_s, n, speedup_vs_first}}

JSON schema ``edgeshrink-bench-llm/1``, language models (llm.py; times in ms, sizes in bytes, rates per second):
    machine: {cpu, logical_cores, isa, python, edgeshrink}
    peak_gemm_gflops, memory_bandwidth_gbps: {threads: best measured}; *_detail: {threads: {method: value}}
    config: LLMBenchConfig;  reference: {name, path, answers} of the agreement/KL reference, or null; its answers:
            {data, part, prompts, facts, answer_tokens, settings: {label: Sampling}} or null
    notes[]: plain-words remarks (peer skipped, no reference, ...)
    candidates[]: {name, path, kind (onnx-bundle | llama.cpp), precision, size_bytes, peak_rss_bytes,
                   torch_imported, same_prompt_ids_as_first, parent, gguf,
                   cost: {flops_per_token, attention_flops_per_context_token, weight_bytes_per_token, weight_bytes},
                   ttft[]: {threads, prompt_tokens, median_ms, min_ms, max_ms, n, limit_ms,
                            time_vs_peer (this TTFT ÷ llama.cpp's: < 1 answers sooner)},
                   decode[]: {threads, prompt_tokens, new_tokens, tokens_per_s (median), min/max_tokens_per_s, n,
                              same_tokens_as_first, flops_per_token, weight_bytes_per_token, limit_tokens_per_s,
                              bound (memory | compute), compute_ms_per_token, memory_ms_per_token,
                              fraction_of_limit, vs_peer (tokens/s ÷ llama.cpp's: > 1 faster)},
                   quality: {text: {perplexity, bits_per_byte, nll_nats, tokens, bytes, windows,
                                    top1_agreement, kl_to_reference (nats/token), part, split_sha256,
                                    window_nll_nats[], window_tokens[] (per window: paired intervals)}},
                   answers: {setting (greedy | penalized): {identical, looping, facts: {share, count, n, interval},
                             agreed_tokens (mean leading tokens shared with the reference's answer),
                             examples[]: {prompt, answer}}}}
"""

from __future__ import annotations

CLASSIFIER_SCHEMA = "edgeshrink-bench/1"
LLM_SCHEMA = "edgeshrink-bench-llm/1"


def _f(value, fmt: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, fmt) + suffix


def _pct(fraction, fmt: str) -> str:
    return "-" if fraction is None else format(100 * fraction, fmt)


def _mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}"


# -- classifiers ---------------------------------------------------------------------------------------------
def _acc(c: dict) -> str:
    a = c.get("accuracy")
    if not a:
        return "-"
    return f"{100 * a['value']:.1f} [{100 * a['ci95'][0]:.1f}, {100 * a['ci95'][1]:.1f}]"


def _summary_rows(report: dict) -> list[list[str]]:
    first_size = report["candidates"][0]["size_bytes"] if report["candidates"] else None
    return [[c["name"], c["kind"] + ("" if c.get("precision", "fp32") == "fp32" else f" {c['precision']}"),
             _mb(c["size_bytes"]), f"{100 * c['size_bytes'] / first_size:.1f}", _mb(c.get("peak_rss_bytes")), _acc(c),
             _pct(c.get("agreement_with_first"), ".2f"),
             {True: "yes", False: "no", None: "-"}[c.get("torch_imported")]] for c in report["candidates"]]


def _latency_rows(report: dict) -> list[list[str]]:
    rows = [[c["name"], str(r["threads"]), str(r["seq_len"] or "-"), f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
             f"{r['p99_ms']:.2f}", _f(r.get("limit_ms"), ".2f"), _f(r.get("times_limit"), ".2f"),
             f"{r['speedup_vs_first']:.2f}x"] for c in report["candidates"] for r in c["latency"]]
    return sorted(rows, key=lambda row: (int(row[1]), int(row[2]) if row[2] != "-" else 0))


def _throughput_rows(report: dict) -> list[list[str]]:
    rows = [[c["name"], str(r["threads"]), str(r["seq_len"] or "-"), str(r["batch"]), f"{r['examples_per_s']:.1f}",
             f"{r['speedup_vs_first']:.2f}x"] for c in report["candidates"] for r in c["throughput"]]
    return sorted(rows, key=lambda row: (int(row[1]), int(row[2]) if row[2] != "-" else 0, int(row[3])))


def _classifier_header(report: dict) -> str:
    m = report["machine"]
    peaks = ", ".join(f"{t} thread{'s' if t != '1' else ''}: {g:.1f}" for t, g in report["peak_gemm_gflops"].items())
    data = report.get("data")
    split = f"; test split of {data['dataset']}: n={data['sizes']['test']}, split sha256 {data['sha256'][:12]}" if data else ""
    return (f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, ISA {' '.join(m['isa'])}; "
            f"peak fp32 GEMM GFLOP/s ({peaks}){split}.")


def _classifier_tables(report: dict):
    """(rich title, Markdown title or None, headers, rows) per table."""
    return (("Summary", None, ["candidate", "kind", "size MB", "size % of 1st", "peak RSS MB", "test acc % [95% CI]",
                               "agrees w/ 1st %", "torch loaded"], _summary_rows(report)),
            ("Latency, batch 1", "Latency at batch 1 (limit = FLOPs ÷ peak GEMM at the same thread count)",
             ["candidate", "threads", "seq", "p50 ms", "p90 ms", "p99 ms", "limit ms", "× limit", "speedup vs 1st"],
             _latency_rows(report)),
            ("Throughput", "Throughput", ["candidate", "threads", "seq", "batch", "examples/s", "speedup vs 1st"],
             _throughput_rows(report)))


# -- language models -----------------------------------------------------------------------------------------
def perplexity_change(candidate: dict, reference: dict, text: str) -> dict | None:
    """``candidate``'s perplexity on ``text`` against ``reference``'s on the same windows: the ratio and its 95%
    interval from resampling the windows in pairs (stats.paired_perplexity_bootstrap), or None where either was
    not scored window by window (a report from before the windows were kept, or one window only)."""
    from edgeshrink.stats import paired_perplexity_bootstrap

    a, b = ((c.get("quality") or {}).get(text) or {} for c in (candidate, reference))
    if not a.get("window_nll_nats") or a.get("window_tokens") != b.get("window_tokens") or len(a["window_tokens"]) < 2:
        return None
    return paired_perplexity_bootstrap(a["window_nll_nats"], b["window_nll_nats"], a["window_tokens"])


def _change_cell(candidate: dict, reference: dict | None, text: str) -> str:
    change = perplexity_change(candidate, reference, text) if reference is not None else None
    if change is None:
        return "-"
    lo, hi = change["ratio_ci95"]
    return f"{100 * (change['ratio'] - 1):+.1f}% [{100 * (lo - 1):+.1f}, {100 * (hi - 1):+.1f}]"


def _quality_rows(report: dict) -> list[list[str]]:
    name = (report.get("reference") or {}).get("name")
    reference = next((c for c in report["candidates"] if c["name"] == name), None)
    return [[c["name"], text, f"{q['perplexity']:.2f}", _change_cell(c, reference, text), f"{q['bits_per_byte']:.3f}",
             _pct(q.get("top1_agreement"), ".1f"), _f(q.get("kl_to_reference"), ".4f"),
             str(q["tokens"])] for c in report["candidates"] for text, q in (c.get("quality") or {}).items()]


def _share(row) -> str:
    if not row:
        return "-"
    return f"{100 * row['share']:.0f} [{100 * row['interval'][0]:.0f}, {100 * row['interval'][1]:.0f}]"


def _answer_rows(report: dict) -> list[list[str]]:
    return [[c["name"], label, _share(a["identical"]), _f(a.get("agreed_tokens"), ".1f"), _share(a["looping"]),
             _share(a.get("facts"))]
            for c in report["candidates"] for label, a in (c.get("answers") or {}).items()]


def _decode_rows(report: dict) -> list[list[str]]:
    rows = [[c["name"], str(r["threads"]), f"{r['tokens_per_s']:.1f}", _f(r.get("limit_tokens_per_s"), ".1f"),
             r.get("bound", "-"), _pct(r.get("fraction_of_limit"), ".0f"),
             _f(r.get("vs_peer"), ".2f", "x")] for c in report["candidates"] for r in c["decode"]]
    return sorted(rows, key=lambda row: int(row[1]))


def _ttft_rows(report: dict) -> list[list[str]]:
    rows = [[c["name"], str(r["threads"]), str(r["prompt_tokens"]), f"{r['median_ms']:.1f}",
             _f(r.get("limit_ms"), ".1f"), _f(r.get("time_vs_peer"), ".2f", "x")]
            for c in report["candidates"] for r in c["ttft"]]
    return sorted(rows, key=lambda row: (int(row[1]), int(row[2])))


def _llm_header(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    peaks = ", ".join(f"{t} thr {g:.1f}" for t, g in report["peak_gemm_gflops"].items())
    bw = ", ".join(f"{t} thr {g:.1f}" for t, g in report["memory_bandwidth_gbps"].items())
    return (f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, ISA {' '.join(m['isa'])}; peak fp32 GEMM "
            f"GFLOP/s ({peaks}); memory read GB/s ({bw}). Medians of {cfg['repeats']} interleaved runs; decode = "
            f"{cfg['new_tokens']} greedy tokens after a {report['candidates'][0]['decode'][0]['prompt_tokens']}-token prompt, "
            "eos ignored.")


def _llm_tables(report: dict):
    summary = [[c["name"], c["kind"], c["precision"], _mb(c["size_bytes"]), _mb(c.get("peak_rss_bytes")),
                _mb(c["cost"].get("weight_bytes_per_token"))] for c in report["candidates"]]
    reference = (report.get("reference") or {}).get("name", "-")
    tables = (("Summary", ["candidate", "kind", "precision", "size MB", "peak RSS MB", "weights read MB/token"],
               summary),
              ("Decode (limit = slower of FLOPs ÷ peak GEMM and weight bytes ÷ memory bandwidth)",
               ["candidate", "threads", "tok/s", "limit tok/s", "bound", "% of limit", "÷ llama.cpp (higher is better)"],
               _decode_rows(report)),
              ("Time to first token (limit = prefill FLOPs ÷ peak GEMM)",
               ["candidate", "threads", "prompt", "TTFT ms", "limit ms", "÷ llama.cpp (lower is better)"],
               _ttft_rows(report)),
              (f"Held-out text (agreement and KL against {reference})",
               ["candidate", "text", "perplexity", f"vs {reference if reference != '-' else 'reference'} [95% CI]",
                "bits/byte", "top-1 agree %", "KL nats/token", "tokens"], _quality_rows(report)),
              (_answers_title(report), ["candidate", "sampling", "identical % [95% CI]", "agreed tokens", "loop %",
                                       "facts right %"],
               _answer_rows(report)))
    return [(title, title, headers, rows) for title, headers, rows in tables]


def _answers_title(report: dict) -> str:
    meta = (report.get("reference") or {}).get("answers")
    if not meta:
        return "Chat answers"
    penalized = meta["settings"].get("penalized")
    penalties = ", ".join(f"{k} {v}" for k, v in (penalized or {}).items() if "penalty" in k and v not in (0, 1, 0.0))
    return (f"Chat answers vs {report['reference']['name']} ({meta['prompts']} prompts of {meta['data']} "
            f"({meta['part']}), {meta['facts']} factual; {meta['answer_tokens']} greedy tokens, identical = token for "
            f"token{'; penalized: ' + penalties if penalties else ''})")


# schema -> (header, tables, columns justified left)
_LAYOUTS = {CLASSIFIER_SCHEMA: (_classifier_header, _classifier_tables, 1), LLM_SCHEMA: (_llm_header, _llm_tables, 2)}


def to_markdown(report: dict) -> str:
    header, tables, _ = _LAYOUTS[report["schema"]]
    parts = [header(report)]
    for _, title, headers, rows in tables(report):
        if rows:
            parts += [""] + ([f"{title}:", ""] if title else [])
            parts += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            parts += ["| " + " | ".join(r) + " |" for r in rows]
    if report.get("notes"):
        parts += [""] + [f"- **Note:** {note}" for note in report["notes"]]
    return "\n".join(parts) + "\n"


def distinct_names(names: list[str]) -> tuple[str, list[str]]:
    """The prefix every name shares, cut after its last ``-``, ``_``, ``/``, ``.`` or space, and each name
    without it: ``smollm2-135m-fp32`` and ``smollm2-135m-int4`` → ``("smollm2-135m-", ["fp32", "int4"])``. The
    names stay distinct (only what they all share is dropped); ``""`` and the names when nothing is shared."""
    import os

    shared = os.path.commonprefix(names) if len(names) > 1 else ""
    cut = max(shared.rfind(sep) for sep in "-_/. ") + 1
    prefix = shared[:cut]
    if len(prefix) < 4 or any(len(name) == cut for name in names):
        return "", list(names)
    return prefix, [name[cut:] for name in names]


def print_report(report: dict, console=None) -> None:
    """The report as rich tables. Candidate names are never cut: the tables drop the prefix all candidates
    share (said once above them) and wrap a long name or header cell instead of ending it in "…"."""
    from rich.console import Console
    from rich.table import Table

    header, tables, left = _LAYOUTS[report["schema"]]
    console = console or Console()
    console.print(header(report), markup=False)
    names = [c["name"] for c in report["candidates"]]
    prefix, short = distinct_names(names)
    if prefix:
        console.print(f"Candidates (the tables show each name after {prefix!r}): " + ", ".join(names) + ".",
                      markup=False)
    shorter = dict(zip(names, short))
    for title, _, headers, rows in tables(report):
        if not rows:
            continue
        table = Table(title=title)
        width = max(len(str(shorter.get(row[0], row[0]))) for row in rows)  # names stay whole; numbers wrap
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i < left else "right", overflow="fold",
                             **({"min_width": min(width, 32), "no_wrap": width <= 32} if i == 0 else {}))
        for row in rows:
            table.add_row(shorter.get(row[0], row[0]), *row[1:])
        console.print(table)
    for note in report.get("notes", []):
        console.print(f"[bold yellow]note:[/] {note}")
