"""Write a device bundle's manifest: what it is, where it came from, how it was validated, every file's hash.

The manifest is written last, inside the temporary directory that becomes the bundle in one rename,
so a directory with a manifest is always complete.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path

from edgeshrink import __version__
from edgeshrink._files import sha256_file
from edgeshrink.runtime.bundle import MANIFEST_NAME, SCHEMA_VERSION
from edgeshrink.runtime.trust import SIGNATURE_NAME


def graph_io(onnx_path: Path) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of an ONNX graph as data: name, element type, shape (symbolic dims by name)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}

    def describe(value) -> dict:
        tensor = value.type.tensor_type
        dims = [d.dim_param if d.dim_param else d.dim_value for d in tensor.shape.dim]
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                "shape": dims}

    inputs = [describe(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [describe(v) for v in model.graph.output]


# What write_manifest writes afresh for every bundle: a derived bundle's fields are its source's less these.
WRITTEN_KEYS = ("files", "size_bytes", "schema_version", "kind", "edgeshrink_version", "created_at", "created_on")


def write_manifest(bundle_dir: Path, fields: dict) -> dict:
    """Add file sizes and hashes of everything in ``bundle_dir`` to ``fields`` and write manifest.json. A
    signature copied from a source bundle is removed: it signed other files (sign the new bundle instead)."""
    (bundle_dir / SIGNATURE_NAME).unlink(missing_ok=True)
    files = {}
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        rel = path.relative_to(bundle_dir).as_posix()
        files[rel] = {"size_bytes": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": "edgeshrink-bundle",
        "edgeshrink_version": __version__,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "created_on": {"python": platform.python_version(), "machine": platform.machine()},
        **fields,
        "files": files,
        "size_bytes": sum(f["size_bytes"] for f in files.values()),
    }
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return manifest
