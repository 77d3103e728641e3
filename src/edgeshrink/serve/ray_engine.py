"""`serve-cloud --engine ray`: the cloud model's application on Ray Serve.

    edgeshrink serve-cloud runs/bundle --engine ray --address auto --replicas 2 --port 8001
    edgeshrink serve-cloud runs/bundle --engine ray --min-replicas 1 --max-replicas 4   # autoscaling

Each replica builds the same FastAPI application as the uvicorn engine (``/v1/classify``, the Open Inference
Protocol ``/v2``, health, metrics, docs, the same limits and fault drills), with one difference: texts of
concurrent requests are batched by Ray Serve's own ``@serve.batch`` instead of edgeshrink's micro-batcher
(same ``--max-batch-size`` and ``--max-wait-ms``). Ray Serve's proxy (one, on the head node) listens on
``--host``/``--port`` and spreads requests over the replicas; each replica asks for ``--replica-cpus`` CPUs and
runs ONNX Runtime on that many threads. ``/metrics`` is the answering replica's own.

The command deploys the application and stays in the foreground; on Ctrl-C or SIGTERM it deletes the
application (and stops Ray if it started it). Killed with -9 it leaves the application running, as any
Ray Serve application does (``serve shutdown`` removes it).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path

from pydantic import Field, model_validator

from edgeshrink.config import Config
from edgeshrink.errors import EdgeshrinkError
from edgeshrink.serve.batcher import MicroBatcher

RAY_SERVE_MISSING = "--engine ray needs Ray Serve: pip install 'edgeshrink[ray]'"


class RayServeConfig(Config):
    address: str | None = None  # the Ray cluster (auto, ray://host:10001, host:6379); None: a new local Ray
    replicas: int = Field(1, ge=1)  # fixed number of replicas (without min/max_replicas)
    min_replicas: int | None = Field(None, ge=0)  # autoscaling bounds: both set, Ray Serve scales between them
    max_replicas: int | None = Field(None, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)  # autoscaling: requests in flight per replica it aims at
    replica_cpus: float = Field(1.0, gt=0)
    # Requests a replica holds at once. Ray Serve's default (5) is below what the batcher needs: with 16
    # concurrent clients the proxy kept the rest waiting and backing off, and one replica served 26 req/s
    # at 0.7 busy cores (benchmarks/ray_serve_load.py); the micro-batch is the real queue.
    max_ongoing_requests: int = Field(64, ge=1)
    app_name: str = "edgeshrink-cloud"

    @model_validator(mode="after")
    def _bounds(self):
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("autoscaling needs both min_replicas and max_replicas")
        if self.min_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas is above max_replicas")
        return self

    def deployment_options(self) -> dict:
        options = {"ray_actor_options": {"num_cpus": self.replica_cpus}, "max_ongoing_requests": self.max_ongoing_requests}
        if self.min_replicas is None:
            options["num_replicas"] = self.replicas
        else:
            options["autoscaling_config"] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                             "target_ongoing_requests": self.target_ongoing_requests}
        return options


class ServeBatcher(MicroBatcher):
    """The micro-batcher over Ray Serve's ``@serve.batch`` instead of its own queue: each text is one item; a batch
    runs in the same worker thread, its size and CPU time counted the same way."""

    def __init__(self, fn, max_batch_size: int, max_wait_ms: float, on_batch=None, on_model_cpu=None):
        from ray import serve

        super().__init__(fn, max_batch_size, max_wait_ms, on_batch, on_model_cpu)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=max_wait_ms / 1000)
        async def batched(texts: list[str]) -> list:
            self.on_batch(len(texts))
            return await asyncio.get_running_loop().run_in_executor(self.executor, self._call, texts)

        self.batched = batched

    def start(self) -> None:
        pass  # Ray Serve runs the batches: no queue loop of our own

    async def run(self, texts: list[str]) -> list:
        return list(await asyncio.gather(*(self.batched(text) for text in texts)))


def _deployment():
    from ray import serve

    @serve.ingress()
    class CloudModel:
        """One replica: the cloud application, built in the replica (the model loads there, not in the driver)."""

        def __init__(self, model: str, config_json: str, faults: str | None):
            self.model, self.config_json, self.faults = model, config_json, faults

        def __serve_build_asgi_app__(self):
            import ray

            from edgeshrink.serve.cloud import cloud_app
            from edgeshrink.serve.config import ServeConfig

            config = ServeConfig.from_json(self.config_json)
            where = {"engine": "ray", "replica": serve.get_replica_context().replica_id.unique_id,
                     "node": ray.get_runtime_context().get_node_id()}  # /readyz says which replica answered
            return cloud_app(self.model, config, Path(self.faults) if self.faults else None, batcher=ServeBatcher,
                             extra_ready=lambda: where)

    return serve.deployment(CloudModel, name="CloudModel")


def _proxy_address(host: str, port: int) -> tuple[str, int]:
    """Where Ray Serve's proxy listens: a cluster whose Serve already runs keeps its own HTTP options."""
    import sys

    try:
        from ray.serve.context import _get_global_client

        http = _get_global_client().http_config
        actual = (http.host, int(http.port))
    except Exception:  # noqa: BLE001 - a private API: if it moved, trust what was asked for
        return host, port
    if actual != (host, port):
        print(f"warning: Ray Serve on this cluster already listens on {actual[0]}:{actual[1]}; serving there",
              file=sys.stderr, flush=True)
    return actual


def serve_on_ray(model: str | Path, config, ray_config: RayServeConfig, faults: Path | None = None,
                 stop: threading.Event | None = None) -> None:
    """Deploy the cloud model on Ray Serve, print ``listening on URL`` once it answers, wait for ``stop`` (or
    SIGINT/SIGTERM), then delete the application."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise EdgeshrinkError(RAY_SERVE_MISSING) from None
    from edgeshrink.serve.server import bind

    model = str(Path(model).resolve())
    if not Path(model).exists():
        raise EdgeshrinkError(f"model {model} does not exist")
    port = config.port
    if not port:  # Ray Serve needs a real port: take a free one
        sock = bind(config.host, 0)
        port = sock.getsockname()[1]
        sock.close()
    threads = config.threads or max(1, int(ray_config.replica_cpus))
    replica_config = config.model_copy(update={"threads": threads, "port": port})
    started_here = not ray.is_initialized()
    if started_here:
        from edgeshrink.recipes.executors import connect_ray

        connect_ray(ray, ray_config.address)
    stop = stop or threading.Event()
    try:
        serve.start(http_options={"host": config.host, "port": port}, proxy_location="HeadOnly")
        host, port = _proxy_address(config.host, port)
        app = _deployment().options(**ray_config.deployment_options()).bind(
            model, replica_config.to_json(), str(Path(faults).resolve()) if faults else None)
        try:
            serve.run(app, name=ray_config.app_name, route_prefix="/", blocking=False)
        except Exception as exc:  # noqa: BLE001 - Ray Serve's deployment errors are many kinds; say it in one line
            raise EdgeshrinkError(f"Ray Serve did not deploy {ray_config.app_name!r}: "
                                  f"{(str(exc).strip().splitlines() or [type(exc).__name__])[-1]}") from None
        print(f"listening on http://{host}:{port}", flush=True)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
    finally:
        try:
            serve.delete(ray_config.app_name)
        finally:
            if started_here:
                serve.shutdown()
                ray.shutdown()
