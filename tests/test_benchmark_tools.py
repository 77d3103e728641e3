"""The issue-26 evidence tools count and compare what they claim to: benchmarks/structure.py's kind branches
and longest function, refactor_equivalence.py's normalised comparison (timings and paths ignored, a gained
`task` key allowed, any other change reported)."""

import importlib.util
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kind_branches_are_found_on_the_syntax_tree(tmp_path):
    structure = _load("structure")
    pkg = tmp_path / "edgeshrink"
    (pkg / "runtime").mkdir(parents=True)
    (pkg / "a.py").write_text(
        "from edgeshrink.models.cnn import is_cnn\n"
        "def is_language_model(x):\n    return x\n"
        "def f(m, task):\n"
        "    # is_cnn(m) in a comment does not count\n"
        "    if is_cnn(m):\n        return 1\n"
        "    if task in ('text-generation', 'x'):\n        return 2\n"
        "    label = 'text-classification'\n"
        "    return m.manifest['task'] != 'tensor-classification'\n")
    (pkg / "tasks.py").write_text("def g(t):\n    return t == 'text-generation'\n")
    (pkg / "runtime" / "tasks.py").write_text("def g(t):\n    return t == 'text-generation'\n")
    files = structure.python_files(tmp_path)
    found = structure.kind_branches(tmp_path, files)
    assert found["branches"] == 3 and found["branch_files"] == 1
    assert (found["predicate_uses"], found["task_string_comparisons"]) == (1, 2)
    assert (found["definitions"], found["imports"]) == (1, 1)
    assert [h["line"] for h in found["hits"] if h["kind"] in ("predicate", "task-string")] == [6, 8, 11]
    longest = structure.longest_functions(tmp_path, files, top=1)[0]
    assert (longest["name"], longest["lines"]) == ("f", 8)
    assert structure.line_counts(files)["lines_wc_l"] == 11 + 2 + 2


def test_records_are_compared_without_timings_and_paths(tmp_path):
    equiv = _load("refactor_equivalence")
    roots = ["/w/old", "/w/new"]
    old = {"path": "/w/old/teacher", "train_seconds": 3.0, "created_at": "t1", "test": {"correct": 7}}
    new = {"path": "/w/new/teacher", "train_seconds": 9.0, "created_at": "t2", "test": {"correct": 7},
           "task": "text-classification"}
    diffs, added = equiv.json_diff(equiv.normalised(old, roots), equiv.normalised(new, roots))
    assert diffs == [] and added == ["task: only in new"]
    new["test"]["correct"] = 8
    diffs, _ = equiv.json_diff(equiv.normalised(old, roots), equiv.normalised(new, roots))
    assert diffs == ["test.correct: 7 != 8"]

    for side, record in (("old", old), ("new", new)):
        (tmp_path / side).mkdir()
        (tmp_path / side / "edgeshrink.json").write_text(json.dumps(record))
        (tmp_path / side / "model.onnx").write_bytes(b"same")
    result = equiv.compare_dirs(tmp_path / "old", tmp_path / "new", roots)
    assert not result["identical"] and result["files"]["model.onnx"] == "identical bytes"
