"""Start a service as a child process and wait until it answers (for scripts, benchmarks and tests).

    with ServerProcess(["serve", "runs/device", "--port", "0"]) as server:
        Client(server.url).classify(["..."])
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgeshrink.errors import EdgeshrinkError


class ServerProcess:
    def __init__(self, args: list, env: dict | None = None, timeout_s: float = 120.0):
        fd, log = tempfile.mkstemp(prefix="edgeshrink-serve-", suffix=".log")
        self.log = Path(log)
        self._err = os.fdopen(fd, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "edgeshrink", *map(str, args)], stdout=subprocess.PIPE,
                                        stderr=self._err, text=True, env={**os.environ, **(env or {})})
        self.url: str | None = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("listening on "):
                self.url = line.split()[-1]
                break
            if not line and self.process.poll() is not None:
                break
        if self.url is None:
            self.stop()
            raise EdgeshrinkError(f"`edgeshrink {' '.join(map(str, args))}` did not start: "
                                  f"{(self.stderr().strip().splitlines() or ['no output'])[-1]}")

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        """Kill -9, as a crash would."""
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if not self._err.closed:
            self._err.close()

    def stderr(self) -> str:
        if not self._err.closed:
            self._err.flush()
        return self.log.read_text(errors="replace")

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        self.log.unlink(missing_ok=True)
