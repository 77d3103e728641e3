import json

import pytest

from edgeshrink.data import DataConfig, load_data
from edgeshrink.data import builtin
from edgeshrink.errors import EdgeshrinkError
from tests.conftest import write_csv


def test_csv_with_named_columns(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("hello", "b"), ("there", "a"), ("you", "b")], header=("review", "y"))
    ex = load_data(DataConfig(source=str(path), text_column="review", label_column="y"))
    assert ex.texts == ["hello", "there", "you"]
    assert ex.label_names == ("a", "b")
    assert ex.ids == ["0", "1", "2"]


def test_jsonl_with_ids(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"id": f"x{i}", "text": f"t{i}", "label": i % 3}) for i in range(12)))
    ex = load_data(str(path))
    assert ex.ids[0] == "x0" and ex.labels[:3] == ["0", "1", "2"]
    assert ex.label_names == ("0", "1", "2")


def test_integer_labels_sort_numerically(tmp_path):
    path = write_csv(tmp_path / "d.csv", [(f"t{i}", str(i)) for i in (10, 2, 1)])
    assert load_data(str(path)).label_names == ("1", "2", "10")


def test_missing_text_column_is_clear(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("hello", "a")], header=("body", "label"))
    with pytest.raises(EdgeshrinkError, match="no text column 'text'.*--text-column"):
        load_data(str(path))


@pytest.mark.parametrize("content,match", [("", "no rows"), ("text,label\n,a\n", "empty"),
                                           ("id,text,label\n1,a,x\n1,b,y\n", "duplicate id")])
def test_bad_csv(tmp_path, content, match):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(EdgeshrinkError, match=match):
        load_data(str(path))


def test_bad_jsonl_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{not json\n')
    with pytest.raises(EdgeshrinkError, match=r"d.jsonl:2: invalid JSON"):
        load_data(str(path))


def test_unknown_source_and_format(tmp_path):
    with pytest.raises(EdgeshrinkError, match="neither an existing path nor a built-in"):
        load_data("no-such-data")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(EdgeshrinkError, match="must be .csv or .jsonl"):
        load_data(str(tmp_path / "d.txt"))
    with pytest.raises(EdgeshrinkError, match="not one saved by datasets"):
        load_data(str(tmp_path))


def test_load_from_disk_with_class_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 1]}, features=features)
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "ds"))
    ex = load_data(str(tmp_path / "ds"))
    assert len(ex) == 4 and ex.label_names == ("neg", "pos")
    assert sorted(ex.labels) == ["neg", "neg", "pos", "pos"]


def test_builtin_without_cache_names_the_command():
    with pytest.raises(EdgeshrinkError, match="run: edgeshrink data prepare sentiment-movies"):
        load_data("sentiment-movies")


def test_vader_rows_binarise_and_drop_zeros(tmp_path, monkeypatch):
    """The VADER parser on a hand-made archive of the same layout (no network)."""
    import io
    import tarfile

    inner_bytes = io.BytesIO()
    text = "1\t2.5\tA fine film.\r\n2\t0.0\tNeutral.\r\n3\t-1.2\tDull.\r\n"
    with tarfile.open(fileobj=inner_bytes, mode="w:gz") as inner:
        data = text.encode()
        info = tarfile.TarInfo("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
        info.size = len(data)
        inner.addfile(info, io.BytesIO(data))
    sdist_dir = tmp_path / "sdist"
    sdist_dir.mkdir()
    with tarfile.open(sdist_dir / "vaderSentiment-3.3.2.tar.gz", "w:gz") as outer:
        payload = inner_bytes.getvalue()
        info = tarfile.TarInfo("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz")
        info.size = len(payload)
        outer.addfile(info, io.BytesIO(payload))
    rows = builtin._vader_rows(tmp_path, "movieReviewSnippets_GroundTruth.txt")
    assert rows == [{"id": "1", "text": "A fine film.", "label": "positive"},
                    {"id": "3", "text": "Dull.", "label": "negative"}]


def test_sample_keeps_a_fixed_subset(tiny_csv):
    from edgeshrink.data import DataConfig, load_data

    full = load_data(str(tiny_csv))
    a = load_data(DataConfig(source=str(tiny_csv), sample=50))
    b = load_data(DataConfig(source=str(tiny_csv), sample=50))
    assert len(a) == 50 and a.ids == b.ids and set(a.ids) <= set(full.ids)
    assert a.label_names == full.label_names
    assert len(load_data(DataConfig(source=str(tiny_csv), sample=10_000))) == len(full)


def test_label_map_renames_the_datas_labels(tmp_path):
    from edgeshrink.data.sources import parse_label_map

    path = write_csv(tmp_path / "d.csv", [("good", "pos"), ("bad", "neg"), ("fine", "pos")])
    mapping = parse_label_map("pos=positive, neg=negative")
    assert mapping == {"pos": "positive", "neg": "negative"}
    examples = load_data(DataConfig(source=str(path), label_map=mapping))
    assert examples.labels == ["positive", "negative", "positive"]
    assert examples.label_names == ("negative", "positive")  # the data's order (neg, pos), renamed
    config = DataConfig(source=str(path), label_map=mapping)
    assert DataConfig.from_json(config.to_json()) == config
    assert "label_map" not in DataConfig(source="x.csv").to_dict()  # configs (and cache keys) from before hold


@pytest.mark.parametrize("text, match", [
    ("pos:positive", r"'pos:positive' is not DATA_LABEL=MODEL_LABEL"),
    ("pos=positive,=negative", r"'=negative' is not DATA_LABEL=MODEL_LABEL"),
    ("pos=positive,pos=negative", "label 'pos' is mapped twice"),
])
def test_label_map_syntax_errors(text, match):
    from edgeshrink.data.sources import parse_label_map

    with pytest.raises(EdgeshrinkError, match=match):
        parse_label_map(text)


def test_label_map_errors_are_one_line(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("good", "pos"), ("bad", "neg"), ("meh", "mixed")])
    with pytest.raises(EdgeshrinkError, match=r"labels 'pos' and 'good' both map to 'positive': a label map is one"):
        DataConfig.from_dict({"source": str(path), "label_map": {"pos": "positive", "good": "positive"}})
    with pytest.raises(EdgeshrinkError, match=r"labels the map does not cover: \['mixed'\] \(map every label"):
        load_data(DataConfig(source=str(path), label_map={"pos": "positive", "neg": "negative"}))
    shared = {"pos": "positive", "neg": "negative", "mixed": "m", "neutral": "n"}  # one map for several files
    assert load_data(DataConfig(source=str(path), label_map=shared)).label_names == ("m", "negative", "positive")


def test_label_map_on_the_command_line_against_a_models_labels(tiny_bundle, tmp_path):
    from typer.testing import CliRunner

    from edgeshrink.cli import app

    path = write_csv(tmp_path / "d.csv", [(f"text {i}", "pos" if i % 2 else "neg") for i in range(40)])
    runner = CliRunner()
    base = ["bench", str(tiny_bundle), "--data", str(path), "--threads", "1", "--seq-lengths", "8",
            "--batch-sizes", "1", "--latency-runs", "5"]
    refused = runner.invoke(app, base)
    assert refused.exit_code == 2 and "map yours with --label-map" in refused.output
    ok = runner.invoke(app, base + ["--label-map", "pos=positive,neg=negative", "--json", str(tmp_path / "b.json")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "b.json").read_text())["candidates"][0]["accuracy"]["n"] > 0
    typo = runner.invoke(app, base + ["--label-map", "pos=postive,neg=negative"])
    assert typo.exit_code == 2 and "['postive']" in typo.output and "Traceback" not in typo.output


def test_open_prompts_are_one_chat_prompt_per_distinct_headline(monkeypatch):
    articles = [("tech", "tech/001", "Robots learn to cook\n\nBody one."),
                ("tech", "tech/002", "Robots learn to cook\n\nThe same story again."),
                ("sport", "sport/001", "  Late goal  wins\tthe cup \n\nBody.")]
    monkeypatch.setattr(builtin, "_bbc_articles", lambda: articles)
    rows = builtin.BUILTINS["open-prompts"].prepare(None)
    assert [r["id"] for r in rows] == ["tech/001", "sport/001"]  # the repeated headline gives one prompt
    assert rows[0]["text"] == 'What is the news story "Robots learn to cook" about? Answer in one sentence.'
    assert rows[1]["text"] == 'Explain the headline "Late goal wins the cup" to a child in one sentence.'
    assert [r["label"] for r in rows] == ["tech", "sport"]


def test_data_list_counts_the_prepared_rows(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from edgeshrink.cli.app import app

    monkeypatch.setenv(builtin.CACHE_ENV, str(tmp_path))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "sentiment-tweets.jsonl").write_text(
        "".join(json.dumps({"id": str(i), "text": "t", "label": "positive"}) + "\n" for i in range(7)))
    result = CliRunner().invoke(app, ["data", "list", "--json", "-"])
    assert result.exit_code == 0, result.output
    assert "sentiment-tweets   7 rows" in result.output
    assert "not prepared (edgeshrink data prepare bbc-news)" in result.output
    listing = {d["name"]: d["rows"] for d in json.loads(result.output[result.output.index("{"):])["data"]}
    assert listing["sentiment-tweets"] == 7 and listing["bbc-news"] is None and set(listing) == set(builtin.BUILTINS)
