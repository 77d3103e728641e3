"""A local multi-node Ray cluster on this machine for the tests: an empty head (the driver's node: no CPUs, so
no task runs there) and worker nodes of one CPU each, a small object store, no dashboard. Ray is an optional
extra: a module that uses this is skipped when Ray is not installed."""

from __future__ import annotations

import contextlib

import pytest

OBJECT_STORE_BYTES = 80 * 2**20  # Ray's floor is 75 MiB
# Find a dead node in about a second rather than Ray's default 15 s.
FAST_FAILURE = {"health_check_period_ms": 200, "health_check_failure_threshold": 5, "health_check_timeout_ms": 500}


@contextlib.contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1):
    """Yields (cluster, worker nodes); the test process is connected as the driver, on the head node."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "include_dashboard": False,
                                      "object_store_memory": OBJECT_STORE_BYTES, "_system_config": FAST_FAILURE})
    ray.init(address=cluster.address, logging_level="ERROR", log_to_driver=False)  # on the head: the only raylet yet
    workers = [cluster.add_node(num_cpus=cpus_per_node, object_store_memory=OBJECT_STORE_BYTES) for _ in range(nodes)]
    cluster.wait_for_nodes()
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


def kill_node(cluster, node) -> None:
    """The node dies as a machine would: its raylet and every process it started (workers, actors) at once.
    (``cluster.remove_node`` alone stops the raylet, and an actor's process can go on answering for a while.)"""
    import psutil

    started = []
    for infos in node.all_processes.values():
        for info in infos:
            try:
                started += psutil.Process(info.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
    cluster.remove_node(node, allow_graceful=False)
    for process in started:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
