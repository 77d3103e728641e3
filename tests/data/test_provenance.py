import shutil

import pytest

from edgeshrink.data import DataConfig, load_data, split_examples
from edgeshrink.data.provenance import data_to_read, split_as_recorded
from edgeshrink.errors import EdgeshrinkError
from tests.conftest import make_texts, write_csv


def _reviews(path):
    return write_csv(path, [(text, label, f"r{i}") for i, (text, label) in enumerate(make_texts(200))],
                     header=("review", "label", "id"))


def test_split_info_keeps_the_resolved_source_and_how_it_was_read(tmp_path, monkeypatch):
    _reviews(tmp_path / "d.csv")
    monkeypatch.chdir(tmp_path)
    split = split_examples(load_data(DataConfig(source="d.csv", text_column="review", sample=150)))
    info = split.info()
    assert info["dataset"] == "d.csv"  # the short name, for tables
    assert info["data"] == {"version": 1, "source": str(tmp_path.resolve() / "d.csv"), "text_column": "review",
                            "label_column": "label", "id_column": "id", "sample": 150}
    assert split.data_record() == {"source": info["data"]["source"], "name": "d.csv", "split": info}
    assert DataConfig.from_dict(info["data"]).resolved() == DataConfig.from_dict(info["data"])  # round-trips


def test_recorded_data_is_read_again_from_anywhere(tmp_path, monkeypatch):
    (tmp_path / "made").mkdir()
    _reviews(tmp_path / "made" / "d.csv")
    monkeypatch.chdir(tmp_path / "made")
    recorded = split_examples(load_data(DataConfig(source="d.csv", text_column="review"))).info()
    monkeypatch.chdir(tmp_path)
    config = data_to_read(recorded)
    assert config.source == str(tmp_path.resolve() / "made" / "d.csv") and config.text_column == "review"
    assert split_as_recorded(load_data(config), recorded).sha256 == recorded["sha256"]
    # a copy elsewhere, given as a bare path, is read with the recorded columns
    copy = shutil.copy(tmp_path / "made" / "d.csv", tmp_path / "copy.csv")
    assert data_to_read(recorded, "copy.csv").text_column == "review"
    assert split_as_recorded(load_data(data_to_read(recorded, copy)), recorded).sha256 == recorded["sha256"]
    (tmp_path / "made" / "d.csv").unlink()
    with pytest.raises(EdgeshrinkError, match=r"d.csv, which is not there any more: pass --data"):
        data_to_read(recorded, what="this bundle")


def test_other_rows_are_refused_naming_both_hashes(tmp_path):
    recorded = split_examples(load_data(str(write_csv(tmp_path / "a.csv", make_texts(200))))).info()
    other = load_data(str(write_csv(tmp_path / "b.csv", make_texts(201))))
    with pytest.raises(EdgeshrinkError) as caught:
        split_as_recorded(other, recorded, "this bundle")
    message = str(caught.value)
    assert "does not give the split this bundle was made with" in message and "\n" not in message
    assert recorded["sha256"][:12] in message and split_examples(other).sha256[:12] in message


def test_records_from_before_the_resolved_source_was_kept(tmp_path):
    old = {"dataset": "digits", "seed": 0, "fractions": {"train": 0.7, "calibration": 0.15}, "sha256": "0" * 64}
    assert data_to_read(old) == DataConfig(source="digits")  # a built-in name still works
    with pytest.raises(EdgeshrinkError, match="only as 'data.csv', not a built-in data set .* pass --data"):
        data_to_read({**old, "dataset": "data.csv"})
    assert data_to_read({**old, "dataset": "data.csv"}, "/elsewhere/data.csv") == DataConfig(source="/elsewhere/data.csv")
    with pytest.raises(EdgeshrinkError, match="records no data split: pass --data"):
        data_to_read(None)
