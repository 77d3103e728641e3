"""A recipe run's report: report.md, a self-contained report.html (plots embedded) and the plots as PNG."""

from __future__ import annotations

import base64
import contextlib
import html
import re
import shutil
from pathlib import Path


def target_row(target: str, value, bound: float, met: bool, unit: str = "", note: str | None = None) -> dict:
    """One stated target in a report: the measured value, the bound, met or not (and by how much it missed)."""
    return {"target": target, "value": value, "bound": bound, "met": bool(met), "unit": unit,
            "miss": None if met or value is None else abs(value - bound), **({"note": note} if note else {})}


def targets_section(report: dict) -> list[str]:
    """The Markdown of a report's targets: measured, bound, met (and by how much a miss missed)."""
    lines = ["## Targets", "", "| target | measured | bound | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        value = "—" if t["value"] is None else f"{t['value']:.4g} {t['unit']}".strip()
        met = "yes" if t["met"] else ("NO" if t["miss"] is None else "NO (missed by %.3g %s)" % (t["miss"], t["unit"]))
        lines.append(f"| {t['target']} | {value} | {t['bound']:g} {t['unit']} | {met}"
                     + (f" — {t['note']}" if t.get("note") else "") + " |")
    return lines + ["", f"All targets met: **{'yes' if report['all_targets_met'] else 'no'}**.", ""]


def markdown(report: dict) -> str:
    lines = [f"# Recipe report: {report['name']}", "",
             f"Recipe `{report['recipe']}` (sha256 {report['recipe_sha256'][:12]}), edgeshrink "
             f"{report['edgeshrink_version']}, seed {report['seed']}; machine: {report['machine']['cpu']['model']}, "
             f"{report['machine']['logical_cores']} logical cores, ISA {' '.join(report['machine']['cpu']['isa'])}.",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["machine"]["versions"].items()) + "."
             + (f" Data split: {report['split']['dataset']} sha256 {report['split']['sha256'][:12]} "
                f"(train/calibration/test {'/'.join(str(n) for n in report['split']['sizes'].values())})."
                if report.get("split") else "")
             + f" Wall time this run: {report['wall_seconds_this_run']:.0f} s.", ""] + targets_section(report)
    if report.get("candidates"):
        lines += ["## Search", "", f"{len(report['candidates'])} candidate paths; chosen: #{report['chosen'] + 1}.", "",
                  "Chosen among the candidates that meet every target on calibration accuracy (then latency); "
                  "the test split is reported only.", "",
                  "| # | choices | outcome | calibration acc % | test acc % | p50 ms | size MB |",
                  "|---|---|---|---|---|---|---|"]
        for c in report["candidates"]:
            device = (c.get("models") or [None, None])[-1]
            if c["pruned"]:
                p = c["pruned"]
                outcome = f"stopped after {p['found_after']}: {p['target']} {p['value']:.4g} vs {p['bound']:g}"
            else:
                missed = [t["target"].split(" ")[0] for t in c["targets"] if not t["met"]]
                outcome = "all targets met" if not missed else "missed " + ", ".join(missed)
            choices = ", ".join(f"{k.split('.', 2)[-1]}={v}" for k, v in c["choices"].items())
            cal = c.get("calibration_accuracy")
            lines.append(f"| {c['index'] + 1} | {choices} | {outcome} | "
                         + (f"{100 * cal:.2f} | " if cal is not None else "— | ")
                         + (f"{100 * device['accuracy']:.2f} | {device['p50_ms']:.2f} | {device['size_mb']:.1f} |"
                            if device else "— | — | — |"))
        lines.append("")
    if report.get("models"):
        lines += ["## Models (one bench run)", "", "| model | size MB | p50 ms (batch 1, tokens) | test accuracy % |",
                  "|---|---|---|---|"]
        for m in report["models"]:
            tokens = f" ({m['seq_len']})" if m.get("seq_len") else ""
            lines.append(f"| {m['name']} | {m['size_mb']:.3g} | {m['p50_ms']:.2f}{tokens} | {100 * m['accuracy']:.2f} |")
        lines.append("")
    if report.get("router"):
        r = report["router"]
        lines += ["## Router", "", f"{100 * r['on_device_fraction']:.1f}% of test requests answered on the device; "
                  f"hybrid accuracy {100 * r['hybrid_accuracy']:.2f}% vs cloud {100 * r['cloud_accuracy']:.2f}%. "
                  f"Guarantee: {r['guarantee']}", ""]
    lines += ["## Steps", "", "| step | key | seconds (when run) | seconds this run |", "|---|---|---|---|"]
    for s in report["steps"]:
        lines.append(f"| {s['step']} | {s['key']} | {s['seconds']} | {s['seconds_this_run']} |")
    lines += ["", f"Device bundle: `{report['device_bundle']}`; cloud bundle: `{report['cloud_bundle']}`"
              + (f"; router: `{report['router_bundle']}/router.json`" if report.get("router_bundle") else "") + ".", ""]
    lines += [f"![{plot}](plots/{plot})" for plot in report.get("plots", [])]
    return "\n".join(lines) + "\n"


ROLE_NAMES = {"cloud": "cloud (fp32 bundle)", "peer": "peer (optimum + ORT dynamic INT8)", "device": "device"}


def latency_cell(candidate: dict, threads: int, seq: int | str) -> dict | None:
    """A bench candidate's batch-1 latency row at ``threads`` and ``seq`` tokens ("max": its own max_length;
    tensor models have no sequence length and match any)."""
    want = candidate.get("max_length") if seq == "max" else seq
    return next((c for c in candidate["latency"]
                 if c["threads"] == threads and (c["seq_len"] is None or c["seq_len"] == want)), None)


def models_table(bench_report: dict, threads: int = 1, seq: int | str = 64) -> list[dict]:
    roles = bench_report.get("roles") or (["cloud", "device"] if len(bench_report["candidates"]) == 2 else [])
    rows = []
    for i, cand in enumerate(bench_report["candidates"]):
        cell = latency_cell(cand, threads, seq) or cand["latency"][0]
        role = roles[i] if i < len(roles) else f"model {i + 1}"
        rows.append({"name": ROLE_NAMES.get(role, role), "role": role, "path": cand["path"],
                     "size_mb": cand["size_bytes"] / 1e6, "p50_ms": cell["p50_ms"], "seq_len": cell["seq_len"],
                     "accuracy": (cand.get("accuracy") or {}).get("value")})
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and accuracy (higher), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def write_plots(report: dict, out: Path) -> list[str]:
    """Accuracy vs latency and vs size: every measured device candidate with the Pareto front, the cloud
    model and the peer pipeline marked; then the router's plots. Return the file names."""
    from edgeshrink._plots import log_axis

    names = []
    references = [m for m in report.get("models") or [] if m["role"] != "device" and m["accuracy"] is not None]
    devices = []
    for c in report.get("candidates") or [{"index": report.get("chosen", 0), "models": report.get("models")}]:
        device = next((m for m in c.get("models") or [] if m["role"] == "device" and m["accuracy"] is not None), None)
        if device:
            devices.append((c["index"], device))
    with plotting(report, out) as plt:
        for key, label, name in (("p50_ms", "p50 latency, batch 1 (ms)", "accuracy_vs_latency.png"),
                                 ("size_mb", "size on disk (MB)", "accuracy_vs_size.png")):
            if not devices:
                break
            fig, ax = plt.subplots(figsize=(6, 4.2))
            points = [(m[key], 100 * m["accuracy"]) for _, m in devices]
            front = pareto_front(points)
            ax.scatter([p[0] for p in points], [p[1] for p in points], marker="o", s=36, color="tab:blue",
                       label="device candidates" if len(points) > 1 else "device")
            ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="tab:blue", alpha=0.6,
                    label="Pareto front" if len(points) > 1 else None)
            for (index, _), (x, y) in zip(devices, points):
                if index == report.get("chosen") and len(points) > 1:
                    ax.scatter([x], [y], marker="*", s=180, color="gold", edgecolor="black", zorder=3,
                               label="chosen")
            for m, marker, color in zip(references, ("s", "D"), ("tab:red", "tab:green")):
                ax.scatter([m[key]], [100 * m["accuracy"]], marker=marker, s=60, color=color, label=m["name"])
            ax.set(xlabel=label, ylabel="test accuracy (%)",
                   title=f"{report['name']}: accuracy vs {label.split(',')[0]}")
            log_axis(ax, "x")
            names.append(save_plot(fig, ax, out, name))
    if report.get("router") and Path(report["router"]["plots"]).exists():
        for png in sorted(Path(report["router"]["plots"]).glob("*.png")):
            shutil.copy(png, out / f"router_{png.name}")
            names.append(f"router_{png.name}")
    return names


@contextlib.contextmanager
def plotting(report: dict, out: Path):
    """pyplot (Agg) for figures saved into ``out``; characters that no installed font can draw go into
    ``report["plots_missing_glyphs"]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeshrink._plots import any_script

    out.mkdir(parents=True, exist_ok=True)
    with any_script() as missing:
        yield plt
    if missing:
        report["plots_missing_glyphs"] = "".join(sorted(missing))


def save_plot(fig, ax, out: Path, name: str) -> str:
    """Legend, layout, ``out/name`` at the reports' resolution; the figure closed. Returns ``name``."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def inline_html(text: str) -> str:
    """One line of the reports' Markdown as HTML: escaped, with ``**bold**`` and ```code``` made into tags
    (the only inline markup the reports write), so no asterisk or backtick shows on the page."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def html_page(report: dict, markdown_text: str, plots_dir: Path) -> str:
    """A self-contained page: the Markdown tables as HTML, every plot embedded as base64."""
    body, in_table = [], False
    for line in markdown_text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-:"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{inline_html(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            name = line[line.index("(") + 1:-1].split("/")[-1]
            data = base64.b64encode((plots_dir / name).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
        elif line.startswith("## "):
            body.append(f"<h2>{inline_html(line[3:])}</h2>")
        elif line.startswith("# "):
            body.append(f"<h1>{inline_html(line[2:])}</h1>")
        elif line:
            body.append(f"<p>{inline_html(line)}</p>")
    if in_table:
        body.append("</table>")
    style = ("body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}code{background:#f3f3f3;padding:0 2px}img{max-width:48%;margin:4px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report['name'])}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
