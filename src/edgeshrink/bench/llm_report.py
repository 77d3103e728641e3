"""Render an LLM bench report for people (rich tables) and docs (Markdown). JSON is the report dict itself.

JSON schema ``edgeshrink-bench-llm/1`` (times in ms, sizes in bytes, rates per second):
    machine: {cpu, logical_cores, isa, python, edgeshrink}
    peak_gemm_gflops, memory_bandwidth_gbps: {threads: best measured}; *_detail: {threads: {method: value}}
    config: LLMBenchConfig;  reference: {name, path} of the agreement/KL reference, or null
    notes[]: plain-words remarks (peer skipped, no reference, ...)
    candidates[]: {name, path, kind (onnx-bundle | llama.cpp), precision, size_bytes, peak_rss_bytes,
                   torch_imported, same_prompt_ids_as_first, parent, gguf,
                   cost: {flops_per_token, attention_flops_per_context_token, weight_bytes_per_token, weight_bytes},
                   ttft[]: {threads, prompt_tokens, median_ms, min_ms, max_ms, n, limit_ms, vs_peer},
                   decode[]: {threads, prompt_tokens, new_tokens, tokens_per_s (median), min/max_tokens_per_s, n,
                              same_tokens_as_first, flops_per_token, weight_bytes_per_token, limit_tokens_per_s,
                              bound (memory | compute), compute_ms_per_token, memory_ms_per_token,
                              fraction_of_limit, vs_peer (> 1: faster than llama.cpp)},
                   quality: {text: {perplexity, bits_per_byte, nll_nats, tokens, bytes, windows,
                                    top1_agreement, kl_to_reference (nats/token), part, split_sha256}}}
"""

from __future__ import annotations


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}"


SUMMARY_HEADERS = ["candidate", "kind", "precision", "size MB", "peak RSS MB", "weights read MB/token"]
QUALITY_HEADERS = ["candidate", "text", "perplexity", "bits/byte", "top-1 agree %", "KL nats/token", "tokens"]
DECODE_HEADERS = ["candidate", "threads", "tok/s", "limit tok/s", "bound", "% of limit", "vs llama.cpp"]
TTFT_HEADERS = ["candidate", "threads", "prompt", "TTFT ms", "limit ms", "vs llama.cpp"]


def summary_rows(report: dict) -> list[list[str]]:
    return [[c["name"], c["kind"], c["precision"], _mb(c["size_bytes"]), _mb(c.get("peak_rss_bytes")),
             _mb(c["cost"].get("weight_bytes_per_token"))] for c in report["candidates"]]


def quality_rows(report: dict) -> list[list[str]]:
    rows = []
    for c in report["candidates"]:
        for text, q in (c.get("quality") or {}).items():
            agree = q.get("top1_agreement")
            rows.append([c["name"], text, f"{q['perplexity']:.2f}", f"{q['bits_per_byte']:.3f}",
                         "-" if agree is None else f"{100 * agree:.1f}", _f(q.get("kl_to_reference"), ".4f"),
                         str(q["tokens"])])
    return rows


def decode_rows(report: dict) -> list[list[str]]:
    rows = []
    for c in report["candidates"]:
        for r in c["decode"]:
            frac = r.get("fraction_of_limit")
            rows.append([c["name"], str(r["threads"]), f"{r['tokens_per_s']:.1f}", _f(r.get("limit_tokens_per_s"), ".1f"),
                         r.get("bound", "-"), "-" if frac is None else f"{100 * frac:.0f}",
                         "-" if "vs_peer" not in r else f"{r['vs_peer']:.2f}x"])
    return sorted(rows, key=lambda row: int(row[1]))


def ttft_rows(report: dict) -> list[list[str]]:
    rows = []
    for c in report["candidates"]:
        for r in c["ttft"]:
            rows.append([c["name"], str(r["threads"]), str(r["prompt_tokens"]), f"{r['median_ms']:.1f}",
                         _f(r.get("limit_ms"), ".1f"), "-" if "vs_peer" not in r else f"{r['vs_peer']:.2f}x"])
    return sorted(rows, key=lambda row: (int(row[1]), int(row[2])))


def header(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    peaks = ", ".join(f"{t} thr {g:.1f}" for t, g in report["peak_gemm_gflops"].items())
    bw = ", ".join(f"{t} thr {g:.1f}" for t, g in report["memory_bandwidth_gbps"].items())
    return (f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, ISA {' '.join(m['isa'])}; peak fp32 GEMM "
            f"GFLOP/s ({peaks}); memory read GB/s ({bw}). Medians of {cfg['repeats']} interleaved runs; decode = "
            f"{cfg['new_tokens']} greedy tokens after a {report['candidates'][0]['decode'][0]['prompt_tokens']}-token prompt, "
            "eos ignored.")


def _tables(report: dict):
    return (("Summary", SUMMARY_HEADERS, summary_rows(report)),
            ("Decode (limit = slower of FLOPs ÷ peak GEMM and weight bytes ÷ memory bandwidth)", DECODE_HEADERS,
             decode_rows(report)),
            ("Time to first token (limit = prefill FLOPs ÷ peak GEMM)", TTFT_HEADERS, ttft_rows(report)),
            (f"Held-out text (agreement and KL against {(report.get('reference') or {}).get('name', '-')})",
             QUALITY_HEADERS, quality_rows(report)))


def to_markdown(report: dict) -> str:
    parts = [header(report)]
    for title, headers, rows in _tables(report):
        if rows:
            parts += ["", f"{title}:", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            parts += ["| " + " | ".join(r) + " |" for r in rows]
    parts += [f"- **Note:** {note}" for note in report.get("notes", [])]
    return "\n".join(parts) + "\n"


def print_report(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(header(report))
    for title, headers, rows in _tables(report):
        if not rows:
            continue
        table = Table(title=title)
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i < 2 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for note in report.get("notes", []):
        console.print(f"[bold yellow]note:[/] {note}")
