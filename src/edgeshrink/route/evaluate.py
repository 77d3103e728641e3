"""Evaluate a calibrated router on the test split, and check its guarantee over many resplits.

    from edgeshrink.route.evaluate import evaluate, EvalConfig
    report = evaluate("runs/device", "runs/cloud-bundle", "sentiment-movies", EvalConfig(), plots="runs/route-plots")

Reports device-only, cloud-only and hybrid accuracy (Wilson intervals; McNemar hybrid vs cloud on the
same examples), the share escalated, realised risk among device answers, cost per 1,000 requests and
mean latency under the router's cost model, RouteLLM's APGR and CPT(50/80/95%), the accuracy-vs-
escalation and coverage–risk curves, ECE before and after temperature scaling, and the **guarantee
check** (see ``guarantee_check``): the risk policy recalibrated ``resplits`` times, for every α asked
for, with and without labels, and how often its risk stays ≤ α.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from pydantic import Field

from edgeshrink.config import Config
from edgeshrink.data import DataConfig, load_data, split_examples
from edgeshrink.route.calibrate import (PolicyConfig, calibration_data, fit, label_ids, load_models, show_progress,
                                        subset)
from edgeshrink.route.confidence import (SIGNALS, binary_ece, confidence_report, confidence_scores, ece,
                                         fit_confidence, reliability, scaled_probs)
from edgeshrink.route.policies import apgr_cpt, choose_threshold, curves, examples_needed, policy_split, too_small
from edgeshrink.route.router import as_prompted, read_router, request_cost, threshold_of
from edgeshrink.runtime import load
from edgeshrink.stats import accuracy_interval, mcnemar_p

SCHEMA = "edgeshrink-route-eval/1"


class EvalConfig(Config):
    version: int = 1
    resplits: int = Field(200, ge=0)  # guarantee check: random calibration/test resplits
    alphas: list[float] = [0.01, 0.02, 0.05]  # guarantee check: risk levels (δ is the router's)
    seed: int = 0
    latency_samples: int = Field(200, ge=1)  # single requests timed to measure device latency
    curve_points: int = Field(101, ge=3)


def guarantee_check(device_probs, cloud_probs, labels, policy: PolicyConfig, config: EvalConfig,
                    n_classes: int, answer_signals: dict | None = None) -> list[dict]:
    """How often the risk bound holds, two ways, with and without labels, for every α asked for.

    *population*: the pooled calibration + test examples are the population; ``resplits`` calibration
    sets of half its size are drawn from it independently (with replacement), and the risk of each
    chosen threshold is measured exactly on the whole pool. This is what the guarantee promises
    (P(risk ≤ α) ≥ 1 − δ over the calibration draw), with no test-set noise.
    *held-out half*: the pool is split in two at random; calibrate on one half, measure the realised
    risk on the other. This also counts the finite test half's own sampling noise, and the two halves
    are complements (a lucky calibration half means an unlucky test half), so it can fall below 1 − δ
    for a procedure whose guarantee holds — it answers "how often does a batch of this size exceed α".
    A check that half the pool is too small to run (at a small α: see ``policies.too_small``) is kept
    as a row with ``skipped`` saying why, and no figures; every other row has ``skipped`` None.
    """
    rng = np.random.default_rng(config.seed)
    n = len(labels)
    half = n // 2
    draws = [rng.choice(n, half, replace=True) for _ in range(config.resplits)]
    halvings = [rng.permutation(n) for _ in range(config.resplits)]
    device_pred, cloud_pred = device_probs.argmax(1), cloud_probs.argmax(1)
    rows = []
    for label_free in (False, True):
        wrong = device_pred != (cloud_pred if label_free else labels)
        for alpha in config.alphas:
            row = {"label_free": label_free, "risk_is": "disagreement" if label_free else "error", "alpha": alpha,
                   "delta": policy.delta, "resplits": config.resplits, "calibration_n": half,
                   "examples_needed": examples_needed(alpha, policy.delta, policy.min_examples),
                   "target": 1 - policy.delta, "skipped": None}
            reason = too_small(half, alpha, policy.delta, policy.min_examples)
            if reason:
                rows.append({**row, "skipped": f"{reason} (each draw calibrates on half of the {n} pooled "
                                               f"calibration and test examples)",
                             "population": None, "held_out_half": None, "ok": None})
                continue
            cfg = PolicyConfig(policy="risk", signal=policy.signal, alpha=alpha, delta=policy.delta,
                               label_free=label_free, p_value=policy.p_value,
                               temperature_scaling=policy.temperature_scaling, min_examples=policy.min_examples)

            def run(cal, test):
                a = subset(answer_signals, cal)
                t = fit(device_probs[cal], cloud_probs[cal], labels[cal], cfg, a)
                threshold = choose_threshold(calibration_data(device_probs[cal], cloud_probs[cal], labels[cal], t, cfg,
                                                              a), cfg, n_classes)
                on_device = confidence_scores(cfg.signal, device_probs[test], subset(answer_signals, test), t) \
                    >= threshold.value
                return (float(wrong[test][on_device].mean()) if on_device.any() else 0.0), float(on_device.mean())

            population = [run(cal, np.arange(n)) for cal in draws]
            held_out = [run(perm[:half], perm[half:]) for perm in halvings]
            for name, results in (("population", population), ("held_out_half", held_out)):
                risks = np.array([r for r, _ in results])
                row[name] = {"held_fraction": float((risks <= alpha).mean()) if len(risks) else None,
                             "mean_coverage": float(np.mean([c for _, c in results])) if results else None,
                             "mean_risk": float(risks.mean()) if len(risks) else None,
                             "escalated_everything": int(sum(c == 0 for _, c in results))}
            row["ok"] = row["population"]["held_fraction"] is not None and \
                row["population"]["held_fraction"] >= 1 - policy.delta
            rows.append(row)
    return rows


def _device_latency_ms(device, texts, samples: int) -> float:
    single = as_prompted(load(device.path, threads=1, verify=False), getattr(device, "prompt", None))
    for text in texts[:5]:
        single.predict([text])
    times = []
    for text in texts[:samples]:
        start = time.perf_counter()
        single.predict([text])
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def evaluate(device: str | Path, cloud, data: DataConfig | str | None = None, config: EvalConfig | None = None,
             plots: str | Path | None = None, progress=None) -> dict:
    """Route the test split with the bundle's calibrated router; return the report (and write plots).

    ``data`` defaults to the data the router was calibrated on, as recorded in router.json (refused if it
    no longer gives the recorded split). Other data is evaluated as given — e.g. a domain shift — and the
    report says whether it gives the calibration split (``same_split_as_calibration``): only then is
    the test split sure to hold no calibration example.
    """
    from edgeshrink.data.provenance import data_to_read, split_as_recorded
    from edgeshrink.data.images import model_inputs

    config = config or EvalConfig()
    router = read_router(device)
    if router.get("task") == "open":
        from edgeshrink.route.open_prompts import evaluate_open

        return {"schema": SCHEMA} | evaluate_open(device, cloud, data, config, router, plots, progress)
    policy = PolicyConfig.from_dict({k: v for k, v in router["policy"].items() if k in PolicyConfig.model_fields})
    device_model, cloud_model = load_models(device, cloud, router.get("prompt"))
    show_progress({"device": device_model, "cloud": cloud_model}, progress)
    recorded = (router.get("data") or {}).get("split")
    examples = load_data(data_to_read(recorded, data, "this router"))
    split = split_as_recorded(examples, recorded, "this router") if data is None else \
        split_examples(examples, policy_split(router))
    names = list(device_model.labels)
    test, cal = split.test, split.calibration
    y_test = label_ids(test.labels, names, "the test split")
    y_cal = label_ids(cal.labels, names, "the calibration split")
    outputs = {}
    for key, model, part in (("device_test", device_model, test), ("cloud_test", cloud_model, test),
                             ("device_cal", device_model, cal), ("cloud_cal", cloud_model, cal)):
        outputs[key] = model.predict(model_inputs(part))
        if progress:
            progress(key)
    d, c = outputs["device_test"].probabilities, outputs["cloud_test"].probabilities
    answer = getattr(outputs["device_test"], "signals", None)
    fitted = {"temperature": float(router["temperature"]), "bias": router.get("bias")}
    scores = confidence_scores(router["signal"], d, answer, fitted)
    truncated = np.array(outputs["device_test"].truncated)
    escalate = (scores < threshold_of(router)) | (truncated & router["rules"]["escalate_truncated"])
    device_correct, cloud_correct = d.argmax(1) == y_test, c.argmax(1) == y_test
    hybrid_correct = np.where(escalate, cloud_correct, device_correct)
    n = len(y_test)

    def acc(correct):
        low, high = accuracy_interval(int(correct.sum()), n)
        return {"accuracy": float(correct.mean()), "correct": int(correct.sum()), "ci95": [low, high]}

    cost = dict(router["cost"])
    if cost.get("device_latency_ms") is None:
        cost["device_latency_ms"] = _device_latency_ms(device_model, model_inputs(test), config.latency_samples)
        cost["device_latency_source"] = "measured here: median of single requests, 1 thread"
    per_request = [request_cost(cost, bool(e)) for e in escalate]
    cloud_only = request_cost(cost, True)
    on_device = ~escalate
    curve = curves(scores, device_correct, cloud_correct, config.curve_points)
    device_accuracy, cloud_accuracy = float(device_correct.mean()), float(cloud_correct.mean())
    only_hybrid = int((hybrid_correct & ~cloud_correct).sum())
    only_cloud = int((cloud_correct & ~hybrid_correct).sum())
    report = {
        "schema": SCHEMA, "device": str(device), "cloud": str(cloud), "data": test.name, "split": split.info(),
        "calibration_split_sha256": recorded["sha256"] if recorded else None,  # None: calibrated on unlabelled data
        "same_split_as_calibration": split.sha256 == recorded["sha256"] if recorded else None,
        "router": {k: router[k] for k in ("signal", "temperature", "threshold", "escalate_everything", "alpha",
                                          "delta", "label_free", "n", "guarantee", "feasible")}
        | {"policy": router["policy"]["policy"]},
        "n": n,
        "device_only": acc(device_correct), "cloud_only": acc(cloud_correct), "hybrid": acc(hybrid_correct),
        "hybrid_vs_cloud": {"only_hybrid_right": only_hybrid, "only_cloud_right": only_cloud,
                            "mcnemar_p": mcnemar_p(only_hybrid, only_cloud)},
        "escalated_fraction": float(escalate.mean()), "on_device_fraction": float(on_device.mean()),
        "escalated_by_rule_truncated": int((truncated & router["rules"]["escalate_truncated"]).sum()),
        "realised_risk": {"error": float((~device_correct[on_device]).mean()) if on_device.any() else None,
                          "disagreement": float((d.argmax(1) != c.argmax(1))[on_device].mean())
                          if on_device.any() else None},
        "cost": {"model": cost,
                 "hybrid": {"per_1000_requests": 1000 * float(np.mean([r["money"] for r in per_request])),
                            "mean_latency_ms": float(np.mean([r["latency_ms"] for r in per_request])),
                            "device_energy_per_1000_mj": None if cost.get("device_energy_mj") is None
                            else 1000 * cost["device_energy_mj"]},
                 "cloud_only": {"per_1000_requests": 1000 * cloud_only["money"],
                                "mean_latency_ms": cloud_only["latency_ms"] - (cost["device_latency_ms"] or 0)},
                 "cloud_calls_saved": float(on_device.mean())},
        "calibration_on_test": calibration_on_test(router["signal"], d, answer, y_test, fitted),
        "routing": apgr_cpt(curve, device_accuracy, cloud_accuracy),
        "curves": curve,
    }
    if config.resplits:
        pool_d = np.concatenate([outputs["device_cal"].probabilities, d])
        pool_c = np.concatenate([outputs["cloud_cal"].probabilities, c])
        pool_y = np.concatenate([y_cal, y_test])
        keep = ~np.concatenate([np.array(outputs["device_cal"].truncated), truncated])
        pool_a = None if answer is None else \
            {k: np.concatenate([outputs["device_cal"].signals[k], v]) for k, v in answer.items()}
        report["guarantee_check"] = guarantee_check(pool_d[keep], pool_c[keep], pool_y[keep], policy, config, len(names),
                                                    subset(pool_a, keep))
    if answer is not None:  # every signal on the same test answers, to choose between them
        report["signals"] = compare_signals(outputs["device_cal"], outputs["device_test"], y_cal, y_test,
                                            c.argmax(1) == y_test, config.curve_points)
    if plots is not None:
        write_plots(report, Path(plots))
        report["plots"] = str(plots)
    return report


def calibration_on_test(signal: str, probs, answer, labels, fitted: dict) -> dict:
    """ECE/NLL on the test split before and after the router's scaling, and the reliability bins.

    Label-distribution signals: of the label probabilities. Answer signals: of P(answer right), the
    bins then of that confidence against whether the device was right."""
    fit_report = confidence_report(signal, probs, answer, labels, fitted)
    report = {"temperature": fitted["temperature"]} | ({} if signal in SIGNALS else {"bias": fitted["bias"]}) | {
        f"{what}_{when}": fit_report[when][what] for what in ("ece", "nll") for when in ("before", "after")}
    if signal in SIGNALS:
        return report | {"reliability_before": reliability(probs, labels),
                         "reliability_after": reliability(scaled_probs(probs, fitted["temperature"]), labels)}
    correct = probs.argmax(1) == labels
    after = confidence_scores(signal, probs, answer, fitted)
    as_two = lambda p: np.stack([1 - p, p], axis=1)  # noqa: E731 - reliability() of P(right) vs right
    before = None if signal == "neg-mean-entropy" else np.exp(answer[signal])
    return report | {"reliability_before": [] if before is None else reliability(as_two(before), correct.astype(int)),
                     "reliability_after": reliability(as_two(after), correct.astype(int))}


def compare_signals(device_cal, device_test, y_cal, y_test, cloud_correct, points: int) -> dict:
    """For every signal a prompted device gives: its scaling fitted on the calibration split, then on the
    test split AUROC for telling right from wrong answers, ECE after scaling, and APGR."""
    from scipy.stats import mannwhitneyu

    device_correct = device_test.probabilities.argmax(1) == y_test
    rows = {}
    for signal in (*SIGNALS, *device_test.signals):
        fitted = fit_confidence(signal, device_cal.probabilities, device_cal.signals, y_cal)
        scores = confidence_scores(signal, device_test.probabilities, device_test.signals, fitted)
        right, wrong = scores[device_correct], scores[~device_correct]
        auroc = float(mannwhitneyu(right, wrong).statistic / (len(right) * len(wrong))) if len(right) and len(wrong) \
            else None
        curve = curves(scores, device_correct, cloud_correct, points)
        rows[signal] = {"auroc": auroc, "ece_after": binary_ece(scores, device_correct) if signal not in SIGNALS
                        else ece(scaled_probs(device_test.probabilities, fitted["temperature"]), y_test),
                        "apgr": apgr_cpt(curve, float(device_correct.mean()), float(cloud_correct.mean()))["apgr"],
                        "fitted": fitted}
    return rows


def write_plots(report: dict, out: Path) -> None:
    """accuracy_vs_escalation.png, coverage_risk.png, reliability.png, written to a temp dir and renamed.
    Characters that no installed font can draw go into ``report["plots_missing_glyphs"]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeshrink._files import atomic_output_dir
    from edgeshrink._plots import any_script

    def save(fig, ax, path: Path) -> None:
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    curve = report["curves"]
    dev, cloud = report["device_only"]["accuracy"], report["cloud_only"]["accuracy"]
    with atomic_output_dir(out, force=True) as tmp, any_script() as missing:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(100 * np.array(curve["escalation_rate"]), 100 * np.array(curve["hybrid_accuracy"]), label="router")
        ax.plot([0, 100], [100 * dev, 100 * cloud], "--", label="random router")
        ax.axhline(100 * dev, color="grey", lw=0.8, label="device only")
        ax.axhline(100 * cloud, color="black", lw=0.8, label="cloud only")
        ax.scatter([100 * report["escalated_fraction"]], [100 * report["hybrid"]["accuracy"]], color="red", zorder=3,
                   label="calibrated threshold")
        ax.set(xlabel="requests escalated to the cloud (%)", ylabel="test accuracy (%)", title="Accuracy vs escalation")
        save(fig, ax, tmp / "accuracy_vs_escalation.png")

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(100 * np.array(curve["coverage"]), 100 * np.array(curve["risk"]), label="device error among answered")
        if report["router"]["alpha"] is not None:
            ax.axhline(100 * report["router"]["alpha"], color="red", ls="--", label="α (guaranteed bound)")
        ax.scatter([100 * report["on_device_fraction"]], [100 * (report["realised_risk"]["error"] or 0)], color="red",
                   zorder=3, label="calibrated threshold")
        ax.set(xlabel="coverage: requests answered on the device (%)", ylabel="risk (%)", title="Coverage–risk")
        save(fig, ax, tmp / "coverage_risk.png")

        fig, ax = plt.subplots(figsize=(5, 5))
        for key, name in (("reliability_before", "before"), ("reliability_after", "after temperature scaling")):
            bins = [b for b in report["calibration_on_test"][key] if b["n"]]
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label=name)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="confidence", ylabel="accuracy", title="Reliability (test split)", xlim=(0.4, 1), ylim=(0.4, 1))
        save(fig, ax, tmp / "reliability.png")
    if missing:
        report["plots_missing_glyphs"] = "".join(sorted(missing))
