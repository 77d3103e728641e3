"""Fuzzing the untrusted files (issue 25): mutated manifests, router files and recipes give a result or one
EdgeshrinkError line, never another exception (which the CLI would show as a traceback, a service as a 500).

Each case starts from a real file (a tiny bundle's manifest, a calibrated router, the shipped recipes) and applies
one to three mutations at random places: delete a key, replace a value by another JSON value (huge and negative
numbers, NaN, paths outside the bundle, wrong types, nesting), add an unknown key; recipes also get YAML-level
edits (anchors, aliases, tags, brackets). Then the file is used as the program would: the bundle loaded and run
(predict / generate / chat), the router loaded, run and watched by the drift monitor, the recipe validated.

Cases per target are set below (EDGESHRINK_FUZZ_SCALE multiplies them for a longer hunt); hypothesis runs
derandomized so CI sees the same cases every time.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeshrink.errors import EdgeshrinkError
from tests import bundle_edit as be

SCALE = float(os.environ.get("EDGESHRINK_FUZZ_SCALE", "1"))
CASES = {"classifier": 260, "llm": 450, "router": 650, "recipe": 650}  # CI runs under 15 minutes on 2 cores
REPO = Path(__file__).resolve().parent.parent


def run_case(use, outcomes: Counter) -> None:
    """``use()`` must succeed or raise EdgeshrinkError; count which."""
    try:
        use()
        outcomes["used"] += 1
    except EdgeshrinkError:
        outcomes["refused"] += 1


def check_outcomes(target: str, outcomes: Counter) -> None:
    """Both outcomes must be common: a fuzz whose every case is refused at the first check reaches nothing."""
    total = sum(outcomes.values())
    print(f"\nfuzz {target}: {total} cases, {outcomes['used']} used, {outcomes['refused']} refused in one line")
    assert total >= CASES[target] * SCALE * 0.9
    assert outcomes["used"] >= 0.05 * total and outcomes["refused"] >= 0.05 * total, outcomes


def fuzz_settings(target: str):
    return settings(max_examples=int(CASES[target] * SCALE), deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


INTERESTING = st.sampled_from([
    "", "../../etc/passwd", "/etc/passwd", "model.onnx", "tokenizer.json", "chat_template.jinja", "router.json",
    "C:\\x", "a/../../b", "x" * 300, "\x00", "1", "-5", "NaN", "text-generation", "text-classification",
    "tensor-classification", "0" * 64, "messages", "risk", "max-prob", "mean-logprob", "{text}",
    "{{ 'a' * 300000000 }}", "edgeshrink-bundle", "edgeshrink-router"])
NUMBERS = st.one_of(st.integers(-2**63, 2**63), st.sampled_from([0, 1, -1, 2, 10**12, 2**31, 2**70]),
                    st.floats(allow_nan=True, allow_infinity=True))
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=12), INTERESTING)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.one_of(st.text(max_size=8), INTERESTING),
                                                                       inner, max_size=4)), max_leaves=8)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _paths(value, prefix + (i,))


def _same_type(value):
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.one_of(st.integers(-2**63, 2**63), st.sampled_from([0, 1, -1, 2, 10**12, 2**31]),
                         st.integers(value - 3, value + 3))
    if isinstance(value, float):
        return st.floats(allow_nan=True, allow_infinity=True)
    if isinstance(value, str):
        return st.one_of(INTERESTING, st.text(max_size=12))
    if isinstance(value, list) and value:
        return st.lists(st.sampled_from(value), max_size=len(value) + 1)
    return VALUES


@st.composite
def mutated(draw, original):
    """``original`` (a JSON-like document) with one to three random mutations."""
    doc = json.loads(json.dumps(original))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "nudge", "nudge", "delete", "add"]))
        if not path:
            if op == "replace":
                doc = draw(VALUES)
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if op == "replace":
            parent[key] = draw(VALUES)
        elif op == "nudge":  # a value of the same type: these get past the type checks to the bounds and the use
            parent[key] = draw(_same_type(parent[key]))
        elif op == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.one_of(st.text(max_size=8), INTERESTING))] = draw(VALUES)
        else:
            parent.insert(key, draw(VALUES))
    return doc


def _write_json(path: Path, doc) -> None:
    path.write_text(json.dumps(doc))  # NaN and Infinity are written as JSON extensions, as an attacker may


# -- bundle manifests ----------------------------------------------------------------------------------------
@pytest.fixture
def llm_bundle(tiny_llm_bundle):
    return tiny_llm_bundle


def _use_bundle(bundle: Path, chat: bool) -> None:
    from edgeshrink.runtime import load

    model = load(bundle)
    if hasattr(model, "predict"):
        model.predict(["a good film", "good " * 300])
    else:
        model.generate("a film", max_new_tokens=2)
        if chat:
            model.generate([{"role": "user", "content": "hi"}], max_new_tokens=2)


def _fuzz_manifest(source: Path, work: Path, target: str):
    original, outcomes = be.read(source), Counter()

    @fuzz_settings(target)
    @given(doc=mutated(original), chat=st.integers(0, 3))
    def case(doc, chat):
        _write_json(work / "manifest.json", doc)
        run_case(lambda: _use_bundle(work, chat == 0), outcomes)

    be.copy_bundle(source, work)
    case()
    check_outcomes(target, outcomes)


def test_fuzz_classifier_manifests(tiny_bundle, tmp_path):
    _fuzz_manifest(tiny_bundle, tmp_path / "b", "classifier")


def test_fuzz_llm_manifests(llm_bundle, tmp_path):
    _fuzz_manifest(llm_bundle, tmp_path / "b", "llm")


# -- router files --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def routed_bundle(tiny_bundle, tmp_path_factory):
    from edgeshrink.route.calibrate import RouteConfig, calibrate
    from tests.conftest import make_texts, make_tiny_bert, write_csv

    root = tmp_path_factory.mktemp("fuzz-router")
    data = write_csv(root / "d.csv", make_texts(600, seed=4))
    device = be.copy_bundle(tiny_bundle, root / "device")
    calibrate(device, make_tiny_bert(root / "cloud", seed=1), str(data), RouteConfig(policy="budget", budget=0.3))
    return device


def test_fuzz_router_files(routed_bundle, tmp_path):
    from edgeshrink.route.monitor import DriftMonitor, MonitorConfig, Observation, router_bound, router_reference
    from edgeshrink.route.router import Router

    work = be.copy_bundle(routed_bundle, tmp_path / "b")
    manifest = be.read(work)
    original = json.loads((work / "router.json").read_text())
    monitor_config = MonitorConfig(window=20, min_requests=10, check_every=5, min_audited=10)
    outcomes = Counter()

    def use():
        router = Router.from_bundle(work, cloud=None, threads=1)
        answers = router.predict(["a good film", "good " * 300, "dull"])
        bound, what = router_bound(router.settings)
        monitor = DriftMonitor(router_reference(router.settings), monitor_config, router.device.labels, bound, what)
        for i in range(30):
            monitor.observe(Observation(score=answers[i % 3].confidence, routed=i % 2 == 0, escalated=i % 3 == 0,
                                        truncated=i % 5 == 0, unknown=None, label=answers[i % 3].label))
            monitor.audit(i % 4 != 0)

    @fuzz_settings("router")
    @given(doc=mutated(original), rehash=st.integers(0, 9))
    def case(doc, rehash):
        _write_json(work / "router.json", doc)
        if rehash:  # mostly the manifest is rewritten to match, so the mutation reaches the router's own checks
            entry = be.entry(work / "router.json")
            be.write(work, {**manifest, "files": {**manifest["files"], "router.json": entry},
                            "router": {**manifest["router"], "sha256": entry["sha256"]}})
        run_case(use, outcomes)

    case()
    check_outcomes("router", outcomes)


# -- recipes -------------------------------------------------------------------------------------------------
RECIPES = ["quick.yaml", "sentiment-edge.yaml", "smollm2-edge.yaml", "digits-cnn.yaml", "search4.yaml"]
YAML_EDITS = st.sampled_from(["&a ", "*a", "*b", "<<: *a\n", "[", "]", "{", "}", ": ", "- ", "!!python/object:os.system ",
                              "!!binary ", "? ", "|\n", "\t", "%YAML 1.1\n", "---\n", "...\n", "'", '"', "#", "~"])


def test_fuzz_recipes(tmp_path):
    from edgeshrink.recipes.schema import load_recipe

    originals = [yaml.safe_load((REPO / "recipes" / name).read_text()) for name in RECIPES]
    path = tmp_path / "recipe.yaml"
    outcomes = Counter()

    @fuzz_settings("recipe")
    @given(which=st.integers(0, len(RECIPES) - 1), data=st.data(), text_edits=st.one_of(
        st.just([]), st.just([]), st.lists(st.tuples(st.floats(0, 1), YAML_EDITS), min_size=1, max_size=3)))
    def case(which, data, text_edits):
        doc = data.draw(mutated(originals[which]))
        text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
        for where, edit in text_edits:
            at = int(where * len(text))
            text = text[:at] + edit + text[at:]
        path.write_text(text, encoding="utf-8")
        run_case(lambda: load_recipe(path), outcomes)

    case()
    check_outcomes("recipe", outcomes)
