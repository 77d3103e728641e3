"""The ray executor on a local two-node cluster: steps of a 4-candidate search run on both nodes at once,
shared prefixes run once, and the search chooses the same candidate with the same cache keys as the local
executor."""

import json

import pytest

from edgeshrink.recipes.executors import RayExecutor
from edgeshrink.recipes.runner import run
from tests.ray_cluster import local_cluster
from tests.recipes.ray_search import intervals, journals, write_search

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(nodes=2) as (cluster, workers):
        yield cluster, workers


@pytest.fixture(scope="module")
def searched(cluster, tiny_model, tmp_path_factory):
    """The search run on Ray and run locally (torch on one thread, as on the 1-CPU Ray nodes, so both compute
    the same numbers)."""
    import torch

    root = tmp_path_factory.mktemp("ray-search")
    recipe = write_search(root, tiny_model)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGESHRINK_CACHE", str(root / "data-cache"))
        on_ray = run(recipe, root / "ray", executor=RayExecutor(cluster[0].address))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            local = run(recipe, root / "local")
        finally:
            torch.set_num_threads(threads)
    return recipe, root, on_ray, local


def test_steps_of_different_candidates_run_on_both_nodes_at_once(cluster, searched):
    _, workers = cluster
    _, root, on_ray, _ = searched
    spans = intervals(root / "ray")
    assert {node for node, *_ in spans} == {w.node_id for w in workers}  # every node worked, the head none
    overlapping = [(a, b) for a in spans for b in spans
                   if a[0] != b[0] and a[1] < b[2] and b[1] < a[2]]
    assert overlapping, "no two steps ran at the same time on different nodes"
    assert on_ray["executor"]["name"] == "ray" and on_ray["executor"]["cpus"] == 2


def test_shared_prefixes_run_once_and_every_step_once(searched):
    _, root, on_ray, _ = searched
    runs = journals(root / "ray")
    # 2 prunes, 4 distills (2 seeds each), then 4 of export, quantize and bench: 18 unique steps of 20 listed
    assert len(runs) == 18 == len({s["key"] for c in on_ray["candidates"] for s in c["steps"]})
    assert all([e["event"] for e in events] == ["start", "finish"] for events in runs.values())
    assert all(s["executions"] == {"started": 1, "finished": 1} for c in on_ray["candidates"] for s in c["steps"])


def test_ray_chooses_the_same_candidate_with_the_same_keys_as_local(searched):
    _, _, on_ray, local = searched
    keys = [[s["key"] for s in c["steps"]] for c in on_ray["candidates"]]
    assert keys == [[s["key"] for s in c["steps"]] for c in local["candidates"]]
    accuracy = [c["calibration_accuracy"] for c in on_ray["candidates"]]
    assert accuracy == [c["calibration_accuracy"] for c in local["candidates"]]
    assert accuracy.count(max(accuracy)) == 1, "the test's search must have one best candidate (not a latency tie)"
    assert on_ray["chosen"] == local["chosen"] == accuracy.index(max(accuracy))
    assert [c["all_targets_met"] for c in on_ray["candidates"]] == [c["all_targets_met"] for c in local["candidates"]]


def test_cli_rerun_on_ray_reads_every_step_from_the_cache(cluster, searched):
    from typer.testing import CliRunner

    from edgeshrink.cli import app

    recipe, root, on_ray, _ = searched
    result = CliRunner().invoke(app, ["run", str(recipe), "--out", str(root / "ray"), "--executor", "ray",
                                      "--address", cluster[0].address, "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert all(s["cached"] for c in report["candidates"] for s in c["steps"])
    assert report["chosen"] == on_ray["chosen"]
    assert all([e["event"] for e in events] == ["start", "finish"] for events in journals(root / "ray").values())


def test_a_failing_step_on_ray_is_one_line_like_local(cluster, tiny_model, tmp_path):
    from typer.testing import CliRunner

    from edgeshrink.cli import app

    recipe = write_search(tmp_path, tiny_model)
    recipe.write_text(recipe.read_text().replace("{layers: 1,", "{layers: 5,"))  # the model has 2 layers
    results = [CliRunner().invoke(app, ["run", str(recipe), "--out", str(tmp_path / name), *extra])
               for name, extra in (("local", []), ("ray", ["--executor", "ray", "--address", cluster[0].address]))]
    assert [r.exit_code for r in results] == [2, 2]
    lines = [r.output.strip().splitlines()[-1] for r in results]
    assert lines[0] == lines[1] == "error: cannot keep 5 layers: the teacher has 2"


def test_a_step_no_node_can_hold_is_refused_not_left_waiting(cluster, tiny_model, tmp_path):
    from edgeshrink.errors import EdgeshrinkError

    recipe = write_search(tmp_path, tiny_model)
    recipe.write_text(recipe.read_text() + "resources:\n  distill: {cpus: 4}\n")
    with pytest.raises(EdgeshrinkError, match=r"step 2/5 distill: asks for 4 CPU, which no node of the Ray cluster "
                                              r"has \(the largest has 1 CPU\); lower resources.distill"):
        run(recipe, tmp_path / "out", executor=RayExecutor(cluster[0].address))
