"""The shape of a source tree, for issue 26's before/after figures.

    git worktree add /tmp/old c246c74       # the last commit before the task layer
    .venv/bin/python benchmarks/structure.py --src /tmp/old/src --json benchmarks/results/structure-before.json
    .venv/bin/python benchmarks/structure.py --src src --json benchmarks/results/structure-after.json

Figures:
- lines: `wc -l` of every *.py under --src (all lines), and the non-blank ones;
- kind branches: references to the old "which kind is this" predicates (is_language_model, is_llm_bundle,
  _is_llm_bundle, is_prompted, is_llm_recipe, is_cnn, refuse_cnn) and comparisons (==, !=, in, not in)
  against a task string ("text-generation", "text-classification", "tensor-classification"), found on the
  syntax tree (comments and docstrings do not count), outside edgeshrink/tasks.py and runtime/tasks.py.
  A definition or import of a predicate is listed but not counted as a branch;
- import cycles and private names imported across modules (tests/test_structure.py's checks, on --src);
- the longest functions (ast: from `def` to the last line);
- the `llm_*` modules (files named llm_*.py or llm.py);
- the pairs that the `duplicates` command reports over --src (when it is on PATH).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

PREDICATES = {"is_language_model", "is_llm_bundle", "_is_llm_bundle", "is_prompted", "is_llm_recipe", "is_cnn",
              "refuse_cnn"}
TASKS = {"text-generation", "text-classification", "tensor-classification"}
REGISTRIES = ("edgeshrink/tasks.py", "edgeshrink/runtime/tasks.py")  # the only places allowed to branch on kind
COMPARE_OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)


def python_files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*.py") if "__pycache__" not in p.parts)


def line_counts(files: list[Path]) -> dict:
    text = [p.read_text(encoding="utf-8") for p in files]
    # wc -l counts newlines; a file without a trailing newline has one line fewer there, as here
    return {"files": len(files), "lines_wc_l": sum(t.count("\n") for t in text),
            "lines_non_blank": sum(1 for t in text for line in t.splitlines() if line.strip())}


def _task_constants(node) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value} & TASKS
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_task_constants(e) for e in node.elts)) if node.elts else set()
    return set()


def kind_branches(src: Path, files: list[Path]) -> dict:
    hits = []
    for path in files:
        rel = path.relative_to(src).as_posix()
        if rel in REGISTRIES:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for node in ast.walk(tree):
            found = None
            if isinstance(node, ast.Name) and node.id in PREDICATES:
                found = ("predicate", node.id)
            elif isinstance(node, ast.Attribute) and node.attr in PREDICATES:
                found = ("predicate", node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in PREDICATES:
                found = ("definition", node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    if alias.name.rpartition(".")[2] in PREDICATES:
                        hits.append({"file": rel, "line": node.lineno, "kind": "import", "name": alias.name,
                                     "text": lines[node.lineno - 1].strip()})
            elif isinstance(node, ast.Compare) and any(isinstance(op, COMPARE_OPS) for op in node.ops):
                strings = set().union(*(_task_constants(n) for n in [node.left, *node.comparators]))
                if strings:
                    found = ("task-string", ",".join(sorted(strings)))
            if found:
                hits.append({"file": rel, "line": node.lineno, "kind": found[0], "name": found[1],
                             "text": lines[node.lineno - 1].strip()})
    hits.sort(key=lambda h: (h["file"], h["line"], h["kind"]))
    branches = [h for h in hits if h["kind"] in ("predicate", "task-string")]
    return {"branches": len(branches), "branch_files": len({h["file"] for h in branches}),
            "predicate_uses": sum(h["kind"] == "predicate" for h in hits),
            "task_string_comparisons": sum(h["kind"] == "task-string" for h in hits),
            "definitions": sum(h["kind"] == "definition" for h in hits),
            "imports": sum(h["kind"] == "import" for h in hits), "hits": hits}


def structure_checks(src: Path) -> dict:
    """tests/test_structure.py's cycle and private-name checks, pointed at ``src``."""
    path = Path(__file__).resolve().parents[1] / "tests" / "test_structure.py"
    spec = importlib.util.spec_from_file_location("edgeshrink_test_structure", path)
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    checks.SRC = src  # its module walk reads the global at call time
    found = checks.cycles(checks.import_graph())
    private = checks.private_imports()
    return {"import_cycles": len(found), "cycles": found, "private_imports": len(private),
            "private_import_list": private}


def longest_functions(src: Path, files: list[Path], top: int = 5) -> list[dict]:
    rows = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                rows.append({"name": node.name, "file": path.relative_to(src).as_posix(), "line": node.lineno,
                             "lines": node.end_lineno - node.lineno + 1})
    rows.sort(key=lambda r: (-r["lines"], r["file"], r["line"]))
    return rows[:top]


def llm_modules(src: Path, files: list[Path]) -> list[str]:
    return [p.relative_to(src).as_posix() for p in files if p.name.startswith("llm_") or p.name == "llm.py"]


def duplicate_pairs(src: Path) -> dict:
    if shutil.which("duplicates") is None:
        return {"pairs": None, "note": "the duplicates command is not on PATH"}
    command = ["duplicates", "--repo", str(src), "--most", "200", "--seconds", "300"]
    out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    first = out.splitlines()[0] if out else ""
    match = re.match(r"(\d+) pairs?", first)
    pairs = int(match.group(1)) if match else (0 if first.startswith("no duplicates") else None)
    return {"pairs": pairs, "command": " ".join(command), "summary": first,
            "rows": [line for line in out.splitlines()[1:] if re.match(r"D\d+ ", line)],
            "incomplete": [line for line in out.splitlines() if line.startswith("incomplete:")]}


def measure(src: Path) -> dict:
    src = src.resolve()
    files = python_files(src)
    return {"src": str(src), **line_counts(files), "kind_branches": kind_branches(src, files),
            **structure_checks(src), "longest_functions": longest_functions(src, files),
            "llm_modules": llm_modules(src, files), "duplicates": duplicate_pairs(src)}


def table(figures: dict) -> str:
    kb, dup, top = figures["kind_branches"], figures["duplicates"], figures["longest_functions"][0]
    rows = [
        ("src", figures["src"]),
        ("python files", figures["files"]),
        ("lines (wc -l, all lines of *.py)", figures["lines_wc_l"]),
        ("lines (non-blank)", figures["lines_non_blank"]),
        ("kind branches (sites / files)", f"{kb['branches']} / {kb['branch_files']}"),
        ("  predicate uses", kb["predicate_uses"]),
        ("  task-string comparisons", kb["task_string_comparisons"]),
        ("  (predicate definitions / imports, not counted)", f"{kb['definitions']} / {kb['imports']}"),
        ("import cycles", figures["import_cycles"]),
        ("private names imported across modules", figures["private_imports"]),
        ("longest function", f"{top['name']} ({top['file']}:{top['line']}, {top['lines']} lines)"),
        ("llm_* / llm.py modules", len(figures["llm_modules"])),
        ("duplicate pairs (duplicates --repo SRC)", dup["pairs"]),
    ]
    width = max(len(r[0]) for r in rows)
    out = [f"{name:<{width}}  {value}" for name, value in rows]
    out.append("\nkind branches:")
    out += [f"  {h['file']}:{h['line']}  [{h['kind']}: {h['name']}]  {h['text']}" for h in kb["hits"]]
    out.append("\nimport cycles:")
    out += [f"  {' -> '.join(c)}" for c in figures["cycles"]] or ["  none"]
    out.append("\nprivate names imported across modules:")
    out += [f"  {p}" for p in figures["private_import_list"]] or ["  none"]
    out.append("\nlongest functions:")
    out += [f"  {r['lines']:4d}  {r['name']}  {r['file']}:{r['line']}" for r in figures["longest_functions"]]
    out.append("\nllm_* modules:")
    out += [f"  {m}" for m in figures["llm_modules"]] or ["  none"]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src",
                        help="the src/ folder to measure (default: this checkout's)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    if not (args.src / "edgeshrink").is_dir():
        parser.error(f"{args.src} holds no edgeshrink package")
    figures = measure(args.src)
    print(table(figures))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
