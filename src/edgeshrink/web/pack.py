"""`edgeshrink pack BUNDLE --target web`: a self-contained folder that runs the bundle in a page or in Node.

    OUT/
      edgeshrink.mjs        the runtime (web/assets/edgeshrink.mjs): load, classify, route, generate, stream
      vendor/               onnxruntime-web's wasm build, the tokenizer (tokenizers.js) and the chat-template
                            engine (@huggingface/jinja), copied from node_modules at the versions package-lock.json
                            pins, with their licences
      model/                the bundle: manifest.json and every file it lists (hashes checked again by the page)
      index.html, demo.mjs  with --demo: the demo page (serve it with `edgeshrink serve-web OUT`)
      pack.json             what was packed: the bundle, the versions, every file's size and sha256

The bundle is checked (every hash) before anything is written; a task the web runtime does not run is refused
in one line; the folder appears in one rename, or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError

ASSETS = Path(__file__).parent / "assets"
MODULES_ENV = "EDGESHRINK_WEB_MODULES"  # a node_modules folder (default: the checkout's, from `npm ci`)
# package -> (file in node_modules/<package>, name in vendor/)
VENDORED = {
    "onnxruntime-web": [("dist/ort.wasm.min.mjs", "ort.wasm.min.mjs"),
                        ("dist/ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.mjs"),
                        ("dist/ort-wasm-simd-threaded.wasm", "ort-wasm-simd-threaded.wasm")],
    "@huggingface/tokenizers": [("dist/tokenizers.min.mjs", "tokenizers.min.mjs")],
    "@huggingface/jinja": [("dist/index.js", "jinja.mjs")],
}
DEMO_FILES = ("index.html", "demo.mjs")


def project_root() -> Path:
    """The checkout holding package.json / package-lock.json (src/edgeshrink/web -> the root)."""
    return Path(__file__).resolve().parents[3]


def node_modules() -> Path:
    """The node_modules folder to vendor from, checked against package-lock.json, or a one-line error."""
    root = project_root()
    given = os.environ.get(MODULES_ENV)
    modules = Path(given) if given else root / "node_modules"
    lock_path = root / "package-lock.json"
    if not (modules / "onnxruntime-web" / "package.json").is_file():
        raise EdgeshrinkError(f"onnxruntime-web is not installed in {modules}: run `npm ci` in {root} (or set "
                              f"{MODULES_ENV} to a node_modules folder)")
    locked = json.loads(lock_path.read_text()).get("packages", {}) if lock_path.is_file() else {}
    for package in VENDORED:
        meta = modules / package / "package.json"
        if not meta.is_file():
            raise EdgeshrinkError(f"{package} is not installed in {modules}: run `npm ci` in {root}")
        want = (locked.get(f"node_modules/{package}") or {}).get("version")
        have = json.loads(meta.read_text()).get("version")
        if want and have != want:
            raise EdgeshrinkError(f"{modules / package} is version {have}, package-lock.json pins {want}: run `npm ci` "
                                  f"in {root}")
    return modules


def vendored_versions(modules: Path) -> dict[str, str]:
    return {p: json.loads((modules / p / "package.json").read_text())["version"] for p in VENDORED}


def check_web_task(manifest: dict, bundle: Path) -> None:
    from edgeshrink.runtime.tasks import RUNTIME_TASKS, runtime_task

    if not runtime_task(manifest["task"]).web:
        supported = ", ".join(t.name for t in RUNTIME_TASKS.values() if t.web)
        raise EdgeshrinkError(f"{bundle} is a {manifest['task']} bundle: the web runtime does not run that task "
                              f"(it runs {supported})")


def file_table(root: Path) -> dict[str, dict]:
    from edgeshrink.runtime.bundle import sha256_of

    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != "pack.json":
            table[rel] = {"size_bytes": path.stat().st_size, "sha256": sha256_of(path)}
    return table


def copy_bundle(bundle: Path, manifest: dict, dst: Path) -> None:
    """The bundle's manifest and every file it lists, into ``dst`` (links refused), then checked again there."""
    from edgeshrink._files import copy_listed_files
    from edgeshrink.runtime.bundle import MANIFEST_NAME, read_manifest

    from edgeshrink.runtime.trust import SIGNATURE_NAME

    dst.mkdir(parents=True)
    signed = [SIGNATURE_NAME] if (Path(bundle) / SIGNATURE_NAME).is_file() else []  # load(url, {trust}) checks it
    copy_listed_files(bundle, [MANIFEST_NAME, *manifest["files"], *signed], dst)
    read_manifest(dst, verify=True)


def pack_web(bundle: str | Path, out: str | Path, demo: bool = False, force: bool = False, progress=None) -> dict:
    """Write the web folder of ``bundle`` to ``out`` (see the module docstring); returns pack.json's content."""
    from edgeshrink._files import atomic_output_dir
    from edgeshrink.runtime.bundle import read_manifest

    say = progress or (lambda message: None)
    bundle = Path(bundle)
    say(f"checking {bundle}")
    manifest = read_manifest(bundle, verify=True)
    check_web_task(manifest, bundle)
    modules = node_modules()
    with atomic_output_dir(out, force) as tmp:
        try:
            _write_web(bundle, manifest, modules, tmp, demo, say)
        except OSError as exc:
            raise EdgeshrinkError(f"cannot write {out}: {exc.strerror} ({exc.filename})") from None
        record = _record(bundle, manifest, modules, tmp, demo)
        (tmp / "pack.json").write_text(json.dumps(record, indent=2) + "\n")
    say(f"wrote {out}")
    return record


def _write_web(bundle: Path, manifest: dict, modules: Path, tmp: Path, demo: bool, say) -> None:
    say("copying the bundle")
    copy_bundle(bundle, manifest, tmp / "model")
    write_runtime(tmp, modules)
    if demo:
        for name in DEMO_FILES:
            shutil.copyfile(ASSETS / "demo" / name, tmp / name)


def write_runtime(tmp: Path, modules: Path) -> None:
    """edgeshrink.mjs and vendor/ (the packages it imports, with their licences) into ``tmp``."""
    vendor = tmp / "vendor"
    (vendor / "licenses").mkdir(parents=True)
    for package, files in VENDORED.items():
        for src, name in files:
            shutil.copyfile(modules / package / src, vendor / name)
        licence = modules / package / "LICENSE"
        if licence.is_file():
            shutil.copyfile(licence, vendor / "licenses" / f"{package.replace('/', '__')}.LICENSE")
    shutil.copyfile(ASSETS / "edgeshrink.mjs", tmp / "edgeshrink.mjs")


def _record(bundle: Path, manifest: dict, modules: Path, tmp: Path, demo: bool) -> dict:
    files = file_table(tmp)
    sizes = {"model_bytes": sum(v["size_bytes"] for k, v in files.items() if k.startswith("model/")),
             "runtime_wasm_bytes": files["vendor/ort-wasm-simd-threaded.wasm"]["size_bytes"],
             "runtime_js_bytes": sum(v["size_bytes"] for k, v in files.items()
                                     if k.startswith("vendor/") and k.endswith((".mjs", ".js"))),
             "tokenizer_bytes": manifest["files"][manifest["tokenizer"]["file"]]["size_bytes"],
             "total_bytes": sum(v["size_bytes"] for v in files.values())}
    record = {"kind": "edgeshrink-web-pack", "version": 1, "target": "web", "demo": demo,
              "bundle": {"path": str(bundle.absolute()), "task": manifest["task"],
                         "model_sha256": manifest["files"]["model.onnx"]["sha256"]},
              "runtime": vendored_versions(modules), "sizes": sizes, "files": files}
    return record
