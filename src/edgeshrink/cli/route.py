"""`edgeshrink route calibrate|eval`: the device/cloud router."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeshrink.cli._common import (HELP_STYLE, JsonOut, LabelCol, LabelMap, SignKey, TextCol, config_help,
                                    data_config, fail, handled, sign_written, status_progress, write_json)

route_app = typer.Typer(no_args_is_help=True, **HELP_STYLE, help="Route requests between the device model and the cloud model.")

DeviceOpt = Annotated[Path, typer.Option("--device", help="Device bundle (router.json is written into it).")]
ROUTE, COST, MONITOR, PROMPT = ("edgeshrink.route.calibrate:RouteConfig", "edgeshrink.route.calibrate:CostConfig",
                              "edgeshrink.route.monitor:MonitorConfig", "edgeshrink.route.prompts:PromptConfig")
EVAL = "edgeshrink.route.evaluate:EvalConfig"
CloudOpt = Annotated[str, typer.Option("--cloud", help="Cloud model: a bundle or a PyTorch model directory.")]


def _print_open(out, report: dict, json_out) -> None:
    d, h = report["device_only"], report["hybrid"]
    out.print(f"route eval (open prompts, {report['data']}, n={report['n']}, answers of at most "
              f"{report['answer_tokens']} tokens): the device's answer is the cloud's own greedy answer for "
              f"{100 * d['agreement']:.1f}% [{100 * d['ci95'][0]:.1f}, {100 * d['ci95'][1]:.1f}]; with the router "
              f"{100 * h['agreement']:.1f}% [{100 * h['ci95'][0]:.1f}, {100 * h['ci95'][1]:.1f}] at "
              f"{100 * report['on_device_fraction']:.1f}% on the device (disagreement among device answers "
              f"{_num(report['realised_disagreement_on_device'])})")
    out.print(f"APGR {_num(report['routing'].get('apgr'), 3)}; ECE {_num(report['calibration_on_test']['ece_before'])}"
              f" -> {_num(report['calibration_on_test']['ece_after'])}")
    if report.get("same_rows_as_calibration"):
        out.print("note: these are the prompts the router was calibrated on, not held-out ones")
    if report.get("guarantee_check"):
        g = report["guarantee_check"]
        out.print(f"guarantee check: disagreement ≤ α={g['alpha']:g} held in {100 * g['held_fraction']:.1f}% of "
                  f"{g['resplits']} recalibrations (target {100 * g['target']:.0f}%): {'ok' if g['ok'] else 'NO'}")
    if report.get("handoff"):
        ho, at = report["handoff"], report["handoff"]["at_threshold"]
        token = ho.get("loss", "token") == "token"  # which of the two figures α bounds
        by_token, by_answer = (f" (α={ho['alpha']:g})", "") if token else ("", f" (the rest: α={ho['alpha']:g})")
        out.print(f"handoff ({ho['signal']}, {ho['prompts']} prompts): the device writes "
                  f"{100 * at['device_token_share']:.1f}% of the tokens, disagreement among them "
                  f"{_num(at['disagreement_among_kept'])}{by_token}; whole answers equal to the cloud's greedy ones "
                  f"{100 * at['whole_answer_agreement']:.1f}%{by_answer}; {100 * at['handed_off_answers']:.1f}% of "
                  f"answers handed off")
        if ho.get("guarantee_check"):
            g = ho["guarantee_check"]
            out.print(f"handoff guarantee check: held in {100 * g['held_fraction']:.1f}% of {g['resplits']} "
                      f"recalibrations (target {100 * g['target']:.0f}%): {'ok' if g['ok'] else 'NO'}")
    write_json(json_out, report)


def _num(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@route_app.command("calibrate")
@handled
def calibrate(device: DeviceOpt, cloud: CloudOpt,
              data: Annotated[Optional[str], typer.Option("--data", help="Built-in data set name, CSV/JSONL file, or "
                                                          "load_from_disk dir (--task open: default open-prompts, "
                                                          "the built-in chat prompts).")] = None,
              policy: Annotated[Optional[str], typer.Option(help=config_help(ROUTE, "policy", "budget | accuracy | risk | risk+budget."))] = None,
              alpha: Annotated[Optional[float], typer.Option(help="risk: tolerated error rate among device answers.")] = None,
              delta: Annotated[Optional[float], typer.Option(help=config_help(ROUTE, "delta", "risk: allowed probability the bound fails."))] = None,
              budget: Annotated[Optional[float], typer.Option(help="budget: most fraction of requests escalated.")] = None,
              target_accuracy: Annotated[Optional[float], typer.Option(help="accuracy: hybrid accuracy to reach (0-1).")] = None,
              max_drop: Annotated[Optional[float], typer.Option(help="accuracy: or at most this below the cloud (0-1).")] = None,
              signal: Annotated[Optional[str], typer.Option(help=config_help(ROUTE, "signal", "max-prob | margin | neg-entropy; a "
                                                            "language model also: mean-logprob | min-logprob | "
                                                            "neg-mean-entropy."))] = None,
              label_free: Annotated[bool, typer.Option("--label-free", help="Error = disagreement with the cloud.")] = False,
              p_value: Annotated[Optional[str], typer.Option(help=config_help(ROUTE, "p_value", "binomial | hoeffding-bentkus."))] = None,
              no_temperature: Annotated[bool, typer.Option("--no-temperature", help="Skip temperature scaling.")] = False,
              cloud_latency_ms: Annotated[Optional[float], typer.Option(help=config_help(COST, "cloud_latency_ms", "Cost model: cloud model time."))] = None,
              network_rtt_ms: Annotated[Optional[float], typer.Option(help=config_help(COST, "network_rtt_ms", "Cost model: network round trip."))] = None,
              cloud_cost_per_1000: Annotated[Optional[float], typer.Option(help=config_help(COST, "cloud_cost_per_1000", "Cost model: money per 1,000 cloud calls."))] = None,
              device_latency_ms: Annotated[Optional[float], typer.Option(help="Cost model: device time (default: measured by eval).")] = None,
              device_energy_mj: Annotated[Optional[float], typer.Option(help=config_help(COST, "device_energy_mj", "Cost model: energy per device inference, mJ."))] = None,
              keep_truncated: Annotated[bool, typer.Option("--keep-truncated", help="Do not escalate inputs the device truncates.")] = False,
              prompt: Annotated[Optional[Path], typer.Option(help="Language models: a prompt file (PromptConfig YAML; "
                                                             "default: the data's built-in prompt).")] = None,
              few_shot: Annotated[Optional[int], typer.Option(help=config_help(PROMPT, "few_shot", "Language models: train-split "
                                                                                    "examples shown in the prompt."))] = None,
              task: Annotated[Optional[str], typer.Option(help=config_help(ROUTE, "task", "Language models: classify (a "
                                                          "labelled task) | open (free answers; label-free agreement "
                                                          "with the cloud, on mean-logprob unless --signal says)."))] = None,
              answer_tokens: Annotated[Optional[int], typer.Option(help=config_help(ROUTE, "answer_tokens", "task open: the device's answer length."))] = None,
              handoff: Annotated[bool, typer.Option("--handoff", help="task open: also calibrate the token-level "
                                                    "handoff (the device streams, the cloud continues from the first "
                                                    "unsure token), bounded at the same --alpha and --delta.")] = False,
              handoff_signal: Annotated[Optional[str], typer.Option(help=config_help(ROUTE, "handoff_signal", "--handoff: the per-token signal, logprob | neg-entropy | margin."))] = None,
              handoff_loss: Annotated[Optional[str], typer.Option(help=config_help(ROUTE, "handoff_loss", "--handoff: what alpha bounds, token (disagreement among the tokens the device keeps) | answer (answers that are not the cloud's own greedy answer)."))] = None,
              text_column: TextCol = "text", label_column: LabelCol = "label", label_map: LabelMap = None,
              sign_key: SignKey = None, json_out: JsonOut = None) -> None:
    """Fit temperature and threshold on the calibration split; write router.json into the device bundle."""
    from edgeshrink.route.calibrate import DEFAULT_DATA, RouteConfig, calibrate as run

    cost = {k: v for k, v in {"cloud_latency_ms": cloud_latency_ms, "network_rtt_ms": network_rtt_ms,
                              "cloud_cost_per_1000": cloud_cost_per_1000, "device_latency_ms": device_latency_ms,
                              "device_energy_mj": device_energy_mj}.items() if v is not None}
    config = RouteConfig.build(policy=policy, alpha=alpha, delta=delta, budget=budget, target_accuracy=target_accuracy,
                               max_drop=max_drop, signal=signal, label_free=label_free or None, p_value=p_value,
                               temperature_scaling=False if no_temperature else None, cost=cost or None,
                               escalate_truncated=False if keep_truncated else None, task=task,
                               answer_tokens=answer_tokens, handoff=handoff or None, handoff_signal=handoff_signal,
                               handoff_loss=handoff_loss)
    data = data or DEFAULT_DATA.get(config.task)
    if data is None:
        raise fail("give --data: the data to calibrate on (a built-in data set name, CSV/JSONL file or "
                   "load_from_disk dir)")
    if prompt is not None or few_shot is not None:
        from edgeshrink.route.prompts import PROMPTS, PromptConfig, read_prompt

        base = read_prompt(prompt) if prompt is not None else PROMPTS.get(str(data), PromptConfig())
        config = RouteConfig.from_dict({**config.to_dict(), "prompt": base.to_dict()
                                        | ({"few_shot": few_shot} if few_shot is not None else {})})
    from rich.console import Console

    with Console(stderr=True).status("calibrating") as status:
        router = run(device, cloud, data_config(data, text_column, label_column, label_map), config,
                     progress=status_progress(status, lambda step: f"calibration split: {step}"))
    cal = router["calibration"]
    fit = cal["temperature_fit"]
    typer.echo(f"router ({router['policy']['policy']}, {router['signal']}) written to {device / 'router.json'}")
    scaling = f"temperature {router['temperature']:.3f}" + \
        (f", bias {router['bias']:+.3f} (Platt)" if router.get("bias") is not None else "")
    typer.echo(f"{scaling}: calibration ECE {_num(fit['before']['ece'])} -> {_num(fit['after']['ece'])}, "
               f"NLL {_num(fit['before']['nll'])} -> {_num(fit['after']['nll'])}")
    threshold = "escalate everything" if router["escalate_everything"] else \
        ("never escalate" if router["threshold"] is None else f"{router['threshold']:.6f}")
    typer.echo(f"threshold {threshold}: {100 * cal['escalation_rate']:.1f}% of {router['n']} calibration requests "
               f"escalated" + (f", device risk {100 * cal['device_risk']:.2f}%" if cal["device_risk"] is not None else ""))
    typer.echo(("guarantee: " if router["feasible"] else "warning: ") + router["guarantee"])
    if router.get("handoff"):
        h = router["handoff"]
        where = "the cloud writes every answer" if h["threshold"] is None else (
            f"hand off at the first token with {h['signal']} < {h['threshold']:.4f}: the device keeps "
            f"{100 * h['device_token_share']:.1f}% of the calibration answers' tokens, disagreement among them "
            f"{100 * h['disagreement_among_kept']:.2f}%" + (
                f"; {100 * h['answers_not_the_clouds']:.1f}% of the answers are not the cloud's own"
                if h.get("answers_not_the_clouds") is not None else ""))
        typer.echo(f"handoff ({h['prompts']} prompts): {where}")
        typer.echo(f"handoff guarantee: {h['guarantee']}")
    sign_written(device, sign_key)
    write_json(json_out, router)


@route_app.command("eval")
@handled
def evaluate(device: DeviceOpt, cloud: CloudOpt,
             data: Annotated[Optional[str], typer.Option("--data", help="Data (default: the data the router was "
                                                         "calibrated on, as recorded).")] = None,
             plots: Annotated[Optional[Path], typer.Option(help="Write the curves as PNG files into this directory.")] = None,
             resplits: Annotated[Optional[int], typer.Option(help=config_help(EVAL, "resplits", "Guarantee check: calibration/test resplits."))] = None,
             alphas: Annotated[Optional[str], typer.Option(help=config_help(EVAL, "alphas", "Guarantee check: comma list of α."))] = None,
             text_column: Annotated[Optional[str], typer.Option("--text-column", help="Column holding the text "
                                                               "(default: as recorded, else text).")] = None,
             label_column: Annotated[Optional[str], typer.Option("--label-column", help="Column holding the label "
                                                                "(default: as recorded, else label).")] = None,
             label_map: LabelMap = None, json_out: JsonOut = None) -> None:
    """Route the test split: device/cloud/hybrid accuracy, cost, APGR/CPT, curves, the guarantee check."""
    from rich.console import Console
    from rich.table import Table

    from edgeshrink.route.evaluate import EvalConfig, evaluate as run

    try:
        alpha_list = None if alphas is None else [float(a) for a in alphas.split(",") if a.strip()]
    except ValueError:
        raise fail(f"--alphas must be a comma list of numbers, got {alphas!r}") from None
    config = EvalConfig.build(resplits=resplits, alphas=alpha_list)
    if (text_column is not None or label_column is not None or label_map is not None) and data is None:
        raise fail("--text-column/--label-column/--label-map go with --data")
    # A bare --data path is read with the recorded columns; columns given here replace them.
    given = data if text_column is None and label_column is None and label_map is None else \
        data_config(data, text_column or "text", "label" if label_column is None else label_column, label_map)
    console = Console(stderr=True)
    with console.status("routing the test split") as status:
        report = run(device, cloud, given, config, plots=plots,
                     progress=status_progress(status, lambda step: f"routing the test split: {step}"))
    out = Console()
    if report.get("task") == "open":
        return _print_open(out, report, json_out)
    table = Table(title=f"route eval: {report['data']} test split (n={report['n']})")
    for column in ("", "accuracy % [95% CI]", "on device %", "cost / 1,000 req", "mean latency ms"):
        table.add_column(column, justify="right" if column else "left")
    c = report["cost"]

    def row(name, acc, on_device, cost, latency):
        table.add_row(name, f"{100 * acc['accuracy']:.2f} [{100 * acc['ci95'][0]:.1f}, {100 * acc['ci95'][1]:.1f}]",
                      f"{on_device:.1f}", f"{cost:.2f}", f"{latency:.1f}")

    row("device only", report["device_only"], 100.0, 0.0, c["model"]["device_latency_ms"])
    row("cloud only", report["cloud_only"], 0.0, c["cloud_only"]["per_1000_requests"], c["cloud_only"]["mean_latency_ms"])
    row("hybrid", report["hybrid"], 100 * report["on_device_fraction"], c["hybrid"]["per_1000_requests"],
        c["hybrid"]["mean_latency_ms"])
    out.print(table)
    r = report["routing"]
    hv = report["hybrid_vs_cloud"]
    out.print(f"hybrid − cloud: {100 * (report['hybrid']['accuracy'] - report['cloud_only']['accuracy']):+.2f} points "
              f"(McNemar p = {hv['mcnemar_p']:.3f}); realised risk among device answers: "
              f"error {100 * (report['realised_risk']['error'] or 0):.2f}%, disagreement with the cloud "
              f"{100 * (report['realised_risk']['disagreement'] or 0):.2f}%")
    if r.get("apgr") is not None:
        cpt = ", ".join(f"CPT({k}) {100 * v:.1f}%" if v is not None else f"CPT({k}) n/a" for k, v in r["cpt"].items())
        out.print(f"APGR {r['apgr']:.3f}; {cpt}")
    if report["same_split_as_calibration"] is False:
        out.print(f"note: {report['data']} does not give the split the router was calibrated on (split sha256 "
                  f"{report['split']['sha256'][:12]} != {report['calibration_split_sha256'][:12]}): these figures are "
                  "on other data, not on the calibration data's held-out test split")
    cal = report["calibration_on_test"]
    out.print(f"test ECE {_num(cal['ece_before'])} -> {_num(cal['ece_after'])} with temperature {cal['temperature']:.3f}"
              + (f", bias {cal['bias']:+.3f} (Platt)" if cal.get("bias") is not None else ""))
    if report.get("signals"):
        signals = Table(title="confidence signals of the language model (fitted on calibration, scored on test)")
        for column in ("signal", "AUROC right vs wrong", "ECE after scaling", "APGR"):
            signals.add_column(column)
        for name, row in report["signals"].items():
            signals.add_row(name + (" (router)" if name == report["router"]["signal"] else ""), _num(row["auroc"], 3),
                            _num(row["ece_after"]), _num(row["apgr"], 3))
        out.print(signals)
    if report.get("guarantee_check"):
        check = Table(title="guarantee check: how often risk ≤ α when the router is recalibrated")
        for column in ("risk", "α", "δ", "n cal", "held %: population", "held-out half", "needed", "coverage %", "ok"):
            check.add_column(column)
        skipped: dict[str, list[str]] = {}  # reason -> the checks it skipped
        for g in report["guarantee_check"]:
            if g.get("skipped"):
                skipped.setdefault(g["skipped"], []).append(f"{g['risk_is']} at α={g['alpha']:g}")
                check.add_row(g["risk_is"], f"{g['alpha']:g}", f"{g['delta']:g}", str(g["calibration_n"]), "-", "-",
                              f"{100 * g['target']:.0f}", "-", "skipped")
                continue
            pop, half = g["population"], g["held_out_half"]
            check.add_row(g["risk_is"], f"{g['alpha']:g}", f"{g['delta']:g}", str(g["calibration_n"]),
                          f"{100 * pop['held_fraction']:.1f}", f"{100 * half['held_fraction']:.1f}",
                          f"{100 * g['target']:.0f}", f"{100 * pop['mean_coverage']:.1f}", "yes" if g["ok"] else "NO")
        out.print(check)
        out.print(f"{report['guarantee_check'][0]['resplits']} calibration draws each; population = risk of the chosen "
                  "threshold on the whole pool (what the guarantee promises); held-out half = realised on the "
                  "complementary half, which adds that half's own sampling noise")
        for reason, checks in skipped.items():
            out.print(f"skipped ({', '.join(checks)}): {reason}")
    write_json(json_out, report)


@route_app.command("monitor")
@handled
def monitor(device: Annotated[Optional[Path], typer.Option("--device", help="Device bundle with its router.json "
                                                           "(replay --data through it).")] = None,
            data: Annotated[Optional[str], typer.Option("--data", help="Traffic to replay, in order: a built-in name, "
                                                        "CSV/JSONL file or load_from_disk dir.")] = None,
            cloud: Annotated[Optional[str], typer.Option("--cloud", help="Cloud model (bundle or PyTorch dir): audits "
                                                         "the device's answers; with labels, accuracies.")] = None,
            url: Annotated[Optional[str], typer.Option("--url", help="Instead: a running device service's "
                                                       "/v1/monitor (http://host:port).")] = None,
            audit_fraction: Annotated[float, typer.Option(help="Share of device answers audited against --cloud.")] = 0.1,
            window: Annotated[Optional[int], typer.Option(help=config_help(MONITOR, "window", "Requests each drift test looks at."))] = None,
            p_value: Annotated[Optional[float], typer.Option(help=config_help(MONITOR, "p_value", "A signal fires below this p-value."))] = None,
            limit: Annotated[Optional[int], typer.Option(help="Replay only the first N texts.")] = None,
            text_column: TextCol = "text", label_column: LabelCol = "label", label_map: LabelMap = None,
            json_out: JsonOut = None) -> None:
    """Drift signals of traffic against the router's calibration data: replay a file, or read a live service."""
    from rich.console import Console

    from edgeshrink.route.monitor import MonitorConfig, replay

    out = Console()
    if url is not None:
        if device is not None or data is not None or cloud is not None:
            raise fail("--url reads a running service: --device/--data/--cloud replay a file instead")
        result = {"url": url, "report": _live_monitor(url)}
    else:
        if device is None or data is None:
            raise fail("give --device and --data (a traffic file to replay), or --url of a running device service")
        config = MonitorConfig.build(audit_fraction=audit_fraction, window=window, p_value=p_value)
        with Console(stderr=True).status("replaying") as status:
            result = replay(device, data_config(data, text_column, label_column, label_map), cloud, config, limit,
                            progress=status_progress(status, lambda done, total: f"replayed {done}/{total}"))
    _print_monitor(out, result)
    write_json(json_out, result)


def _live_monitor(url: str) -> dict:
    import os

    import httpx

    from edgeshrink.errors import EdgeshrinkError

    try:
        response = httpx.get(url.rstrip("/") + "/v1/monitor", timeout=10,
                             headers={"X-API-Key": os.environ["EDGESHRINK_API_KEY"]}
                             if os.environ.get("EDGESHRINK_API_KEY") else {})
    except httpx.HTTPError as exc:
        raise EdgeshrinkError(f"cannot reach {url}: {type(exc).__name__}") from None
    if response.status_code != 200:
        try:
            detail = response.json().get("error", "")
        except ValueError:
            detail = response.text[:200]
        raise EdgeshrinkError(f"{url}/v1/monitor answered {response.status_code}: {detail}")
    return response.json()


def _print_monitor(out, result: dict) -> None:
    from rich.table import Table

    report = result["report"]
    where = result.get("url") or f"{result['data']} through {result['device']}"
    out.print(f"route monitor: {report['requests']} requests ({where}); window {report['window']}, a signal fires "
              f"below p={report['p_value_bound']:g}; firing now: {', '.join(report['firing']) or 'none'}")
    table = Table("signal", "firing", "p-value", "statistic", "n", "first fired at request", "times fired")
    for name, s in report["signals"].items():
        table.add_row(name, "YES" if s["firing"] else "no", _num(s["p_value"], 3) if s["p_value"] is not None and
                      s["p_value"] >= 1e-3 else ("n/a" if s["p_value"] is None else f"{s['p_value']:.1e}"),
                      _num(s["statistic"], 3), str(s["n"]), str(s["first_fired_at"] or "—"), str(s["fired"]))
    out.print(table)
    live, ref = report["live"], report["reference"]
    for key in ("escalation_rate", "truncated_rate", "unknown_rate"):
        out.print(f"{key.replace('_', ' ')}: live {_pct(live[key])}, calibration {_pct(ref[key])}")
    audit = report["audit"]
    if audit["audited"]:
        bound = "" if audit["bound"] is None else f" = {_pct(audit['bound'])}"
        out.print(f"audit: {audit['audited']} device answers checked, disagreement {_pct(audit['disagreement'])} "
                  f"[{_pct(audit['interval'][0])}, {_pct(audit['interval'][1])}] vs {audit['bound_is']}{bound}")
    for name, acc in (result.get("accuracy") or {}).items():
        out.print(f"{name.replace('_', ' ')} accuracy on the stream: {_pct(acc['accuracy'])} "
                  f"[{_pct(acc['ci95'][0])}, {_pct(acc['ci95'][1])}]")
    for record in report.get("recalibrations") or []:
        out.print(f"recalibrated at request {record['at_request']}: {record['file']} — {record['summary']}")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
