"""The bundle gate (issue 25, items 2-4 and 12): a hostile or careless bundle is refused in one line, before the
runtime opens any file it should not, and never with a traceback — from Python and from the CLI."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.runtime import load, read_manifest
from tests import bundle_edit as be


@pytest.fixture
def llm_bundle(tiny_llm_bundle):
    return tiny_llm_bundle


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("the secret")
    return path


def _refused(bundle, match, verb="predict", args=("a film",)):
    """Refused from Python and from the CLI: exit 2, one line naming the rule, no traceback."""
    with pytest.raises(EdgeshrinkError, match=match):
        load(bundle)
    result = CliRunner().invoke(app, [verb, str(bundle), *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert __import__("re").search(match, lines[0]), lines[0]


# -- item 2: symbolic links are refused, never followed or copied ------------------------------------
def test_a_symlinked_stray_file_is_refused(tiny_bundle, tmp_path, secret):
    b = be.copy_bundle(tiny_bundle, tmp_path / "b")
    os.symlink(secret, b / "notes.txt")
    _refused(b, "notes.txt is a symbolic link")


def test_a_symlinked_model_is_refused_even_with_the_right_hash(tiny_bundle, tmp_path):
    b = be.copy_bundle(tiny_bundle, tmp_path / "b")
    outside = tmp_path / "elsewhere.onnx"
    os.replace(b / "model.onnx", outside)
    os.symlink(outside, b / "model.onnx")  # same bytes, same hash: the link itself is the offence
    _refused(b, "model.onnx is a symbolic link")


def test_a_symlinked_directory_inside_is_refused(tiny_bundle, tmp_path):
    b = be.copy_bundle(tiny_bundle, tmp_path / "b")
    (tmp_path / "dir").mkdir()
    os.symlink(tmp_path / "dir", b / "extra")
    _refused(b, "extra is a symbolic link")


def test_a_manifest_that_is_a_symlink_is_refused(tiny_bundle, tmp_path):
    b = be.copy_bundle(tiny_bundle, tmp_path / "b")
    os.replace(b / "manifest.json", tmp_path / "m.json")
    os.symlink(tmp_path / "m.json", b / "manifest.json")
    _refused(b, "manifest.json is a symbolic link")


# -- item 3: paths stay inside the bundle and are listed ---------------------------------------------
def _with_outside_tokenizer(bundle, tmp_path):
    """A copy of ``bundle`` whose manifest names a tokenizer outside it by its absolute path."""
    b = be.copy_bundle(bundle, tmp_path / "b")
    outside = tmp_path / "tok.json"
    outside.write_bytes((b / "tokenizer.json").read_bytes())
    be.edit(b, lambda m: m["tokenizer"].__setitem__("file", str(outside)))
    return b


def test_an_absolute_tokenizer_path_is_refused(tiny_bundle, tmp_path):
    b = _with_outside_tokenizer(tiny_bundle, tmp_path)
    _refused(b, "points outside the bundle")


def test_a_chat_template_outside_the_bundle_is_refused(llm_bundle, tmp_path):
    b = be.copy_bundle(llm_bundle, tmp_path / "b")
    be.edit(b, lambda m: m["tokenizer"].__setitem__("chat_template", "/etc/passwd"))
    _refused(b, "points outside the bundle", verb="generate", args=("--chat", "hi"))
    be.edit(b, lambda m: m["tokenizer"].__setitem__("chat_template", "../../../../etc/passwd"))
    _refused(b, "points outside the bundle", verb="generate", args=("--chat", "hi"))


def test_dot_dot_file_keys_are_refused_even_with_a_matching_hash(tiny_bundle, tmp_path, secret):
    b = be.copy_bundle(tiny_bundle, tmp_path / "b")
    rel = os.path.relpath(secret, b)
    be.edit(b, lambda m: m["files"].__setitem__(rel, be.entry(secret)))
    _refused(b, "points outside the bundle")


def test_triton_export_refuses_an_outside_tokenizer(tiny_bundle, tmp_path):
    b = _with_outside_tokenizer(tiny_bundle, tmp_path)
    result = CliRunner().invoke(app, ["export", str(b), "--format", "triton", "--out", str(tmp_path / "repo")])
    assert result.exit_code == 2 and "points outside the bundle" in result.stderr, result.output
    assert not (tmp_path / "repo").exists()


def test_an_unlisted_file_is_refused(tiny_bundle, tmp_path):
    b = be.copy_bundle(tiny_bundle, tmp_path / "b")
    (b / "model.onnx.data").write_bytes(b"weights nobody hashed")
    _refused(b, "model.onnx.data is not listed in the manifest")


def test_hidden_files_of_a_write_in_progress_are_ignored(tiny_bundle, tmp_path):
    b = be.copy_bundle(tiny_bundle, tmp_path / "b")
    (b / ".router.json.tmp-123").write_text("{}")
    assert load(b).predict(["a good film"]).labels


# -- item 4: a bundle cannot switch hash checking off ------------------------------------------------
def test_unlisting_the_model_does_not_skip_its_check(tiny_bundle, tmp_path):
    b = be.copy_bundle(tiny_bundle, tmp_path / "b")
    be.edit(b, lambda m: m["files"].pop("model.onnx"))
    _refused(b, "model.onnx is required for a text-classification bundle but not listed")


def test_unlisting_the_tokenizer_and_the_template_does_not_skip_their_check(llm_bundle, tmp_path):
    b = be.copy_bundle(llm_bundle, tmp_path / "b")
    be.edit(b, lambda m: m["files"].pop("tokenizer.json"))
    _refused(b, "tokenizer.json is required", verb="generate", args=("hi",))
    b = be.copy_bundle(llm_bundle, tmp_path / "c")
    be.edit(b, lambda m: m["files"].pop("chat_template.jinja"))
    _refused(b, "chat_template.jinja is required", verb="generate", args=("hi",))


def test_a_swapped_chat_template_is_caught_by_its_hash(llm_bundle, tmp_path):
    b = be.copy_bundle(llm_bundle, tmp_path / "b")
    (b / "chat_template.jinja").write_text("{{ messages }}")
    _refused(b, "chat_template.jinja is corrupt or was modified", verb="generate", args=("hi",))


# -- item 12: malformed manifests are one line, never a traceback ------------------------------------
CLASSIFIER_CASES = [
    (lambda m: m.__setitem__("files", list(m["files"])), "files: Input should be a valid dictionary"),
    (lambda m: m.__setitem__("labels", 5), "labels: Input should be a valid list"),
    (lambda m: m.__setitem__("labels", []), "labels: List should have at least 2 items"),
    (lambda m: m.__setitem__("labels", ["only"]), "labels: List should have at least 2 items"),
    (lambda m: m.__setitem__("labels", ["a", "a"]), "labels must be distinct"),
    (lambda m: [m], "not a device bundle"),
    (lambda m: m.__setitem__("max_length", "lots"), "max_length: Input should be a valid integer"),
    (lambda m: m.__setitem__("max_length", -5), "max_length: Input should be greater than or equal to 1"),
    (lambda m: m.__setitem__("schema_version", "1"), "schema_version: Input should be a valid integer"),
    (lambda m: m.__setitem__("schema_version", 2), "upgrade edgeshrink"),
    (lambda m: m.__setitem__("task", "summarise"), "task: Input should be"),
    (lambda m: m["tokenizer"].__setitem__("pad_id", 10**12), "tokenizer.pad_id: Input should be less than"),
    (lambda m: m["tokenizer"].__setitem__("pad_id", 5000), "pad_id 5000 is outside the tokenizer's vocabulary"),
    (lambda m: m.pop("tokenizer"), "needs 'tokenizer'"),
    (lambda m: m.__setitem__("surprise", 1), "surprise: unknown key"),
    (lambda m: m["files"]["model.onnx"].__setitem__("sha256", "x"), "sha256: String should match pattern"),
    (lambda m: m["files"]["model.onnx"].__setitem__("size_bytes", -1), "size_bytes: Input should be greater"),
    (lambda m: m.__setitem__("max_length", 4096), "model.onnx failed to run|position"),
]


@pytest.mark.parametrize("change,match", CLASSIFIER_CASES, ids=range(len(CLASSIFIER_CASES)))
def test_malformed_classifier_manifests(tiny_bundle, tmp_path, change, match):
    b = be.copy_bundle(tiny_bundle, tmp_path / "b")
    be.edit(b, change)
    if "failed to run" in match:  # loads; the first long text runs past the model's positions: one line
        with pytest.raises(EdgeshrinkError, match=match):
            load(b).predict(["good " * 1000])
        return
    _refused(b, match)


LLM_CASES = [
    (lambda m: m["generation"].__setitem__("context_length", "x"), "context_length: Input should be a valid integer"),
    (lambda m: m["generation"].__setitem__("context_length", 10**12), "context_length: Input should be less than"),
    (lambda m: m.pop("generation"), "needs 'generation'"),
    (lambda m: m["generation"].__setitem__("eos_token_ids", [-1]), "eos_token_ids.0: Input should be greater"),
    (lambda m: m["tokenizer"]["special_tokens"].__setitem__("messages", "x"), "may not be named 'messages'"),
    (lambda m: m["tokenizer"]["special_tokens"].__setitem__("bad name", "x"), "String should match pattern"),
]


@pytest.mark.parametrize("change,match", LLM_CASES, ids=range(len(LLM_CASES)))
def test_malformed_llm_manifests(llm_bundle, tmp_path, change, match):
    b = be.copy_bundle(llm_bundle, tmp_path / "b")
    be.edit(b, change)
    _refused(b, match, verb="generate", args=("hi",))


def test_a_tokenizer_file_that_is_not_a_tokenizer(tiny_bundle, llm_bundle, tmp_path):
    b = be.copy_bundle(tiny_bundle, tmp_path / "b")
    be.put_file(b, "tokenizer.json", '{"version": "1.0", "model": 5}')
    _refused(b, "tokenizer.json is not a tokenizer")
    b = be.copy_bundle(llm_bundle, tmp_path / "c")
    be.put_file(b, "tokenizer.json", b"\x00\xff not json")
    _refused(b, "tokenizer.json is not a tokenizer", verb="generate", args=("hi",))


def test_deep_and_huge_manifests(tiny_bundle, tmp_path):
    b = be.copy_bundle(tiny_bundle, tmp_path / "b")
    (b / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    _refused(b, "nested too deeply|not a device bundle")
    manifest = be.read(tiny_bundle)
    manifest["source"] = {"padding": "x" * (17 << 20)}
    be.write(b, manifest)
    _refused(b, "a manifest is at most 16 MiB")


def test_a_predictor_on_a_graph_with_the_wrong_number_of_labels(tiny_bundle, tmp_path):
    b = be.copy_bundle(tiny_bundle, tmp_path / "b")
    be.edit(b, lambda m: m.__setitem__("labels", ["a", "b", "c"]))
    with pytest.raises(EdgeshrinkError, match="gives 2 scores but the manifest names 3 labels|shape"):
        load(b).predict(["a good film"])


def test_the_exported_bundles_pass_the_gate(tiny_bundle, llm_bundle):
    for bundle in (tiny_bundle, llm_bundle):
        manifest = read_manifest(bundle)
        assert json.loads((bundle / "manifest.json").read_text()) == manifest
