"""Render a bench report for people (rich tables) and for docs (Markdown). JSON is the report dict itself.

JSON schema ``edgeshrink-bench/1`` (all times in ms, sizes in bytes):
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
"""

from __future__ import annotations


def _mb(n) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}"


def _acc(c: dict) -> str:
    a = c.get("accuracy")
    if not a:
        return "-"
    return f"{100 * a['value']:.1f} [{100 * a['ci95'][0]:.1f}, {100 * a['ci95'][1]:.1f}]"


def summary_rows(report: dict) -> list[list[str]]:
    rows = []
    first_size = report["candidates"][0]["size_bytes"] if report["candidates"] else None
    for c in report["candidates"]:
        agree = c.get("agreement_with_first")
        rows.append([c["name"], c["kind"] + ("" if c.get("precision", "fp32") == "fp32" else f" {c['precision']}"),
                     _mb(c["size_bytes"]), f"{100 * c['size_bytes'] / first_size:.1f}",
                     _mb(c.get("peak_rss_bytes")), _acc(c),
                     "-" if agree is None else f"{100 * agree:.2f}",
                     {True: "yes", False: "no", None: "-"}[c.get("torch_imported")]])
    return rows


SUMMARY_HEADERS = ["candidate", "kind", "size MB", "size % of 1st", "peak RSS MB", "test acc % [95% CI]", "agrees w/ 1st %",
                   "torch loaded"]
LATENCY_HEADERS = ["candidate", "threads", "seq", "p50 ms", "p90 ms", "p99 ms", "limit ms", "× limit",
                   "speedup vs 1st"]
THROUGHPUT_HEADERS = ["candidate", "threads", "seq", "batch", "examples/s", "speedup vs 1st"]


def latency_rows(report: dict) -> list[list[str]]:
    rows = []
    for c in report["candidates"]:
        for r in c["latency"]:
            rows.append([c["name"], str(r["threads"]), str(r["seq_len"] or "-"), f"{r['p50_ms']:.2f}",
                         f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
                         f"{r['limit_ms']:.2f}" if "limit_ms" in r else "-",
                         f"{r['times_limit']:.2f}" if "times_limit" in r else "-", f"{r['speedup_vs_first']:.2f}x"])
    return sorted(rows, key=lambda row: (int(row[1]), int(row[2]) if row[2] != "-" else 0))


def throughput_rows(report: dict) -> list[list[str]]:
    rows = []
    for c in report["candidates"]:
        for r in c["throughput"]:
            rows.append([c["name"], str(r["threads"]), str(r["seq_len"] or "-"), str(r["batch"]),
                         f"{r['examples_per_s']:.1f}", f"{r['speedup_vs_first']:.2f}x"])
    return sorted(rows, key=lambda row: (int(row[1]), int(row[2]) if row[2] != "-" else 0, int(row[3])))


def _header(report: dict) -> str:
    m = report["machine"]
    peaks = ", ".join(f"{t} thread{'s' if t != '1' else ''}: {g:.1f}" for t, g in report["peak_gemm_gflops"].items())
    data = report.get("data")
    split = f"; test split of {data['dataset']}: n={data['sizes']['test']}, split sha256 {data['sha256'][:12]}" if data else ""
    return (f"Machine: {m['cpu']}, {m['logical_cores']} logical cores, ISA {' '.join(m['isa'])}; "
            f"peak fp32 GEMM GFLOP/s ({peaks}){split}.")


def to_markdown(report: dict) -> str:
    def table(headers, rows):
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)

    parts = [_header(report), "", table(SUMMARY_HEADERS, summary_rows(report)), "",
             "Latency at batch 1 (limit = FLOPs ÷ peak GEMM at the same thread count):", "",
             table(LATENCY_HEADERS, latency_rows(report))]
    if any(c["throughput"] for c in report["candidates"]):
        parts += ["", "Throughput:", "", table(THROUGHPUT_HEADERS, throughput_rows(report))]
    if report.get("notes"):
        parts += [""] + [f"- **Note:** {note}" for note in report["notes"]]
    return "\n".join(parts) + "\n"


def print_report(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(_header(report))
    for title, headers, rows in (("Summary", SUMMARY_HEADERS, summary_rows(report)),
                                 ("Latency, batch 1", LATENCY_HEADERS, latency_rows(report)),
                                 ("Throughput", THROUGHPUT_HEADERS, throughput_rows(report))):
        if not rows:
            continue
        table = Table(title=title)
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for note in report.get("notes", []):
        console.print(f"[bold yellow]note:[/] {note}")
