"""serve-cloud --engine ray on a local two-node Ray cluster: the same application in Ray Serve replicas (one per
node), the same answers as the uvicorn engine over /v1/classify and the Open Inference Protocol, and the device
service escalating to it over v2 through the fault drill (500s, a stall past the deadline, the replica's node
killed) without losing a request."""

import time

import httpx
import numpy as np
import pytest

from edgeshrink.client import Client
from tests.ray_cluster import kill_node, local_cluster
from tests.serve.drill import TEXTS, answer_round, drill_until_killed

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(nodes=2) as (cluster, workers):
        yield cluster, workers


def _ray_cloud(start, cluster, model, *extra):
    return start("serve-cloud", model, "--engine", "ray", "--address", cluster.address, "--port", 0, *extra)


def test_replicas_on_both_nodes_answer_like_the_uvicorn_engine(cluster, serve_models, start):
    import ray
    import tritonclient.http as http

    cluster, _ = cluster
    on_ray = _ray_cloud(start, cluster, serve_models["cloud"], "--replicas", 2, "--max-batch-size", 8)
    try:
        assert ray.cluster_resources()["CPU"] == 2 and ray.available_resources().get("CPU", 0) == 0  # 1 per node
        plain = start("serve-cloud", serve_models["cloud"], "--port", 0)
        with Client(on_ray.url) as a, Client(plain.url) as b:
            ours, theirs = a.classify(TEXTS), b.classify(TEXTS)
        assert [r["label"] for r in ours] == [r["label"] for r in theirs]
        for x, y in zip(ours, theirs):
            assert x["probabilities"] == pytest.approx(y["probabilities"], abs=2e-6)
        name = serve_models["cloud"].name
        client = http.InferenceServerClient(on_ray.url.split("//", 1)[1])
        assert client.is_server_ready() and client.is_model_ready(name)
        tensor = http.InferInput("text", [len(TEXTS)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
        labels = [y.decode() for y in client.infer(name, [tensor]).as_numpy("label")]
        assert labels == [r["label"] for r in theirs]
        batches = sum(v for k, v in a_metrics(on_ray.url).items() if k.startswith("edgeshrink_batch_size_count"))
        assert batches >= 1  # Ray Serve's batcher fed the model (this replica's own count)
    finally:
        on_ray.stop()  # SIGTERM: the command deletes its application and gives the CPUs back
    deadline = time.monotonic() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2


def a_metrics(url: str) -> dict:
    from edgeshrink.serve.metrics import parse

    return parse(httpx.get(url + "/metrics").text)


def test_device_escalates_over_v2_to_ray_serve_through_the_fault_drill(cluster, serve_models, start, tmp_path):
    cluster, workers = cluster
    faults = tmp_path / "faults.json"
    cloud = _ray_cloud(start, cluster, serve_models["cloud"], "--replicas", 1, "--faults", faults)
    device = start("serve", serve_models["device"], "--cloud", cloud.url, "--cloud-protocol", "v2", "--cloud-model",
                   serve_models["cloud"].name, "--port", 0, "--deadline-ms", 400, "--retries", 1,
                   "--breaker-failures", 2, "--breaker-reset-s", 1)
    counts: dict[str, int] = {}
    with Client(device.url, timeout_s=60) as client:
        n = drill_until_killed(client, faults, counts)

        # The node holding the only replica dies: the device answers alone until Ray Serve has a replica again.
        replica_node = httpx.get(cloud.url + "/readyz").json()["node"]
        busy = [w for w in workers if w.node_id == replica_node]
        assert len(busy) == 1 and _cpus_used(busy[0]) == 1
        kill_node(cluster, busy[0])
        outage = [answer_round(client, counts) for _ in range(3)]
        assert all(r["source"] in ("device", "device-fallback") for rnd in outage for r in rnd)
        reasons = {r["fallback_reason"] for rnd in outage for r in rnd if r["source"] == "device-fallback"}
        assert reasons and reasons <= {"deadline", "timeout", "unreachable", "http_5xx", "breaker_open"}
        recovered, deadline = [], time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(1.1)
            recovered = answer_round(client, counts)
            if any(r["source"] == "cloud" for r in recovered):
                break
        assert {r["source"] for r in recovered} == {"device", "cloud"}, "Ray Serve did not bring the replica back"
        m = client.metrics()

    rounds = sum(counts.values()) // len(TEXTS)
    assert sum(counts.values()) == rounds * len(TEXTS)  # every text answered, every round
    assert m['edgeshrink_requests_total{path="/v1/classify",status="200"}'] == rounds  # no 5xx, no 4xx
    assert m["edgeshrink_escalations_total"] == rounds * n
    assert counts["cloud"] + counts["device-fallback"] == rounds * n
    assert m['edgeshrink_fallbacks_total{reason="http_5xx"}'] == 2 * n
    assert m['edgeshrink_cloud_calls_total{outcome="http_5xx"}'] == 4


def _cpus_used(node) -> float:
    """CPUs taken on ``node`` (a fully used resource is absent from the node's available resources)."""
    import ray
    from ray._private.state import available_resources_per_node

    for entry in ray.nodes():
        if entry["NodeID"] == node.node_id and entry["Alive"]:
            return entry["Resources"].get("CPU", 0) - available_resources_per_node().get(node.node_id, {}).get("CPU", 0)
    return 0.0
