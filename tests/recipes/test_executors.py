"""Executors without a cluster: resources as config, the one-line errors when Ray is absent, the executions
journal of the local executor, and a step's error surfacing in one line under Ray."""

import json
import socket
import sys

import pytest
from typer.testing import CliRunner

from edgeshrink.cli import app
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.recipes.executors import (RAY_MISSING, LocalExecutor, StepResources, executions, make_executor,
                                          resources_for)
from edgeshrink.recipes.runner import run
from edgeshrink.recipes.schema import load_recipe
from tests.conftest import make_texts, write_csv
from tests.recipes.test_schema import GOOD


def test_step_resources_check_themselves_and_round_trip():
    res = StepResources(cpus=2, gpus=1, memory_gb=4)
    assert StepResources.from_json(res.to_json()) == res
    assert StepResources.from_dict({"cpus": "node"}).cpus == "node"
    for bad in ({"cpus": 0}, {"cpus": "all"}, {"gpus": -1}, {"cpu": 1}):
        with pytest.raises(EdgeshrinkError):
            StepResources.from_dict(bad)
    assert resources_for("bench", {}).cpus == "node"  # a bench step has a node to itself
    assert resources_for("distill", {}).cpus == 1
    assert resources_for("bench", {"bench": StepResources(cpus=4)}).cpus == 4


def test_recipe_resources_are_validated_with_the_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(GOOD.format(model="m", data="d.csv") + "resources:\n  distill: {cpus: 2, gpus: 0}\n")
    recipe, _ = load_recipe(path)
    assert recipe.resources["distill"].cpus == 2
    path.write_text(GOOD.format(model="m", data="d.csv") + "resources:\n  finetune: {cpus: 2}\n")
    with pytest.raises(EdgeshrinkError, match=r"line 20: resources.finetune: the recipe has no 'finetune' step"):
        load_recipe(path)
    path.write_text(GOOD.format(model="m", data="d.csv") + "resources:\n  distill: {cpus: -1}\n")
    with pytest.raises(EdgeshrinkError, match=r"resources.distill.cpus"):
        load_recipe(path)


def test_without_ray_the_ray_executor_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(EdgeshrinkError, match="pip install 'edgeshrink\\[ray\\]'"):
        make_executor("ray")
    path = tmp_path / "r.yaml"
    path.write_text(GOOD.format(model="m", data="d.csv"))
    result = CliRunner().invoke(app, ["run", str(path), "--executor", "ray"])
    assert result.exit_code == 2 and result.output.strip() == f"error: {RAY_MISSING}"
    assert not (tmp_path / "runs").exists()


def test_executor_names_and_address_are_checked(tmp_path):
    assert isinstance(make_executor("local"), LocalExecutor)
    with pytest.raises(EdgeshrinkError, match="unknown executor 'dask'; expected one of local, ray"):
        make_executor("dask")
    with pytest.raises(EdgeshrinkError, match="--address applies to --executor ray"):
        make_executor("local", "auto")


def test_the_local_executor_journals_each_execution_once(tiny_model, tmp_path):
    data = write_csv(tmp_path / "d.csv", make_texts(120))
    path = tmp_path / "r.yaml"
    path.write_text(GOOD.format(model=tiny_model, data=data).replace("max_accuracy_drop: 50", "max_accuracy_drop: 100"))
    first = run(path, tmp_path / "out")
    again = run(path, tmp_path / "out")
    assert first["executor"] == {"name": "local"}
    assert all(s["executions"] == {"started": 1, "finished": 1} and s["ran_on"]["executor"] == "local"
               for s in first["steps"])
    assert all(s["cached"] and s["executions"] == {"started": 1, "finished": 1} for s in again["steps"])
    events = executions(tmp_path / "out" / "cache" / f"00-prune-{first['steps'][0]['key']}")
    assert [e["event"] for e in events] == ["start", "finish"] and events[0]["pid"] == events[1]["pid"]
    assert json.loads(json.dumps(events)) == events  # plain JSON lines


def test_an_unreachable_cluster_is_one_line_at_once_and_leaves_nothing(tmp_path):
    pytest.importorskip("ray")
    path = tmp_path / "r.yaml"
    path.write_text(GOOD.format(model="m", data="d.csv"))
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out"), "--executor", "ray",
                                      "--address", f"127.0.0.1:{port}"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: cannot reach a Ray cluster at 127.0.0.1:{port}: Connection refused"
    assert not (tmp_path / "out").exists()
