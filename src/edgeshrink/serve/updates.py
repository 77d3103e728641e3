"""The device service updating itself (`edgeshrink serve BUNDLE --update-from URL|DIR --trust KEY.pub`).

Every ``every_s`` seconds the service reads the channel (deploy/channel.py). A newer release is downloaded in
a worker thread, its channel document and bundle signatures and hashes checked, moved into the version store
(deploy/store.py) uncommitted, loaded, and put through the canary (deploy/canary.py) against the version
running. Only then is it committed (state.json) and swapped in: one assignment, between two model calls, so
each micro-batch, and so each request, runs on one complete version from model to router, and its answer
names that version. Requests keep being served throughout; nothing waits for the download.

A new version is watched for ``watch_requests`` texts: if its model fails more than ``max_error_rate`` of
its calls, or a drift signal of its router fires (the router's own watch, serve/watch.py), the service goes
back to the version before (kept loaded until the new one is accepted), marks the new one rejected so it is
never taken again, and says so in the log, ``/metrics`` and ``/v1/version``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError
from edgeshrink.serve.config import UpdateConfig


def _log(message: str) -> None:
    print(f"edgeshrink serve: {message}", file=sys.stderr, flush=True)


@dataclass(eq=False)
class Active:
    """One complete version: its model, router and router watch; what every answer is made with."""

    version: int | None
    path: Path
    predictor: object
    router: object | None
    signed_by: dict | None = None
    watch: object | None = None
    since: float = field(default_factory=time.time)
    calls: int = 0
    errors: int = 0
    answered: int = 0

    def describe(self) -> dict:
        return {"version": self.version, "bundle": self.path.name, "signed_by": (self.signed_by or {}).get("key_id"),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since)), "answered": self.answered,
                "model_errors": self.errors}


class Updater:
    """The update loop and the rollback watch of one device service."""

    def __init__(self, config: UpdateConfig, store, keys: list[Path], threads: int | None, activate, metrics,
                 log=_log, needs_router: bool = False):
        self.config, self.store, self.keys, self.threads = config, store, keys, threads
        self.needs_router = needs_router  # the service escalates by router.json: every version must carry one
        self.failures = 0  # consecutive failed checks: the next one waits longer (up to 64 periods)
        self.activate, self.metrics, self.log = activate, metrics, log  # activate(path, predictor) -> Active
        self.active: Active | None = None
        self.previous: Active | None = None  # kept loaded while the active one is watched
        self.checks = {"installed": 0, "up_to_date": 0, "refused": 0, "failed": 0}
        self.last: dict = {}
        self.refused_logged: set = set()
        self.task: asyncio.Task | None = None
        self.busy = asyncio.Lock()

    # -- the loop --------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.every_s * 2 ** min(self.failures, 6))
            try:
                outcome = (await self.check())["outcome"]
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one check; say why
                self.log(f"update check failed: {type(exc).__name__}: {exc}")
                outcome = "failed"
            self.failures = self.failures + 1 if outcome == "failed" else 0

    async def check(self) -> dict:
        """One check of the channel; installs and swaps in a newer release that passes every check."""
        async with self.busy:
            started = time.time()
            try:
                outcome = await asyncio.to_thread(self._fetch, self.active)
            except EdgeshrinkError as exc:
                outcome = {"outcome": "failed", "reason": str(exc)}
            if outcome["outcome"] == "staged":
                new = self.activate(outcome["path"], outcome["predictor"], outcome["signed_by"])
                await asyncio.to_thread(self.store.commit_staged, outcome["name"], outcome["version"],
                                        outcome["canary"])
                new.path = self.store.current
                self.previous, self.active = self.active, new  # the swap: the next micro-batch runs on it
                self.metrics.model_version.set(new.version or 0)
                outcome = {"outcome": "installed", "version": new.version, "canary": outcome["canary"]}
                self.log(f"updated to version {new.version} (canary: {_canary_line(outcome['canary'])}); watching "
                         f"it for {self.config.watch_requests} texts")
            self.checks[outcome["outcome"]] += 1
            self.metrics.update_checks.labels(outcome=outcome["outcome"]).inc()
            self.last = {**outcome, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))}
            if outcome["outcome"] in ("failed", "refused"):
                key = (outcome["outcome"], outcome.get("version"), outcome["reason"][:80])
                if key not in self.refused_logged:  # a channel that keeps offering the same is logged once
                    self.refused_logged.add(key)
                    self.log(f"update {outcome['outcome']}: {outcome['reason']}")
            return self.last

    def _fetch(self, running: Active) -> dict:
        """In a worker thread: read the channel; download, verify, stage and canary a newer release."""
        from edgeshrink.deploy.updater import fetch_update

        return fetch_update(self.config.source, self.store, self.keys, running.predictor, self.config.canary,
                            self.config.timeout_s, self.config.stall_s, self.threads, self.needs_router)

    # -- the watch on a new version ----------------------------------------------------------------------------
    def after_answer(self, active: Active) -> None:
        """After each request: roll back a watched version whose errors or drift signals cross their bounds;
        accept it (and unload the one before) once it has answered ``watch_requests`` texts."""
        if self.previous is None or active is not self.active:
            return
        reason = None
        if active.errors >= self.config.min_errors and active.errors > self.config.max_error_rate * active.calls:
            reason = ("errors", f"model errors on {active.errors} of {active.calls} calls (bound "
                                f"{100 * self.config.max_error_rate:g}%)")
        elif active.watch is not None and active.watch.monitor.firing():
            reason = ("drift", f"drift signal {', '.join(active.watch.monitor.firing())} firing")
        if reason is not None:
            self.rollback(*reason)
        elif active.answered >= self.config.watch_requests:
            self.log(f"version {active.version} accepted after {active.answered} texts")
            self.store.event("accepted", version=active.version, answered=active.answered)
            self.previous = None

    def rollback(self, kind: str, reason: str) -> None:
        bad, good = self.active, self.previous
        self.active, self.previous = good, None  # the next micro-batch runs on the version before
        self.metrics.model_version.set(good.version or 0)
        self.metrics.rollbacks.labels(reason=kind).inc()
        self.log(f"rolled back from version {bad.version} to {good.version} after {bad.answered} texts: {reason}")
        good.path = self.store.rollback(f"{kind}: {reason}")

    def status(self) -> dict:
        active = self.active
        watching = self.previous is not None
        return {**active.describe(), "state": "watching" if watching else "accepted",
                **({"watch": {"answered": active.answered, "of": self.config.watch_requests,
                              "model_errors": active.errors, "calls": active.calls,
                              "drift_firing": active.watch.monitor.firing() if active.watch else []},
                    "previous": self.previous.version} if watching else {}),
                "updates": {"source": self.config.source, "every_s": self.config.every_s, "checks": dict(self.checks),
                            "last": {k: v for k, v in self.last.items() if k not in ("predictor", "path")}},
                "store": {"path": str(self.store.root), "versions": [self.store.version_of(n) for n in
                                                                     self.store.state["versions"]],
                          "rejected": dict(self.store.state["rejected"]), "events": self.store.state["events"][-20:]}}


def _canary_line(canary: dict) -> str:
    if not canary or not canary.get("examples"):
        return "none"
    agreement = "" if canary.get("agreement") is None else f", agreement {100 * canary['agreement']:.1f}%"
    return (f"{canary['examples']} texts, accuracy {100 * canary['accuracy']:.1f}% (recorded "
            f"{100 * canary['recorded_accuracy']:.1f}%){agreement}")
