"""Run a service on uvicorn with a socket bound first: a port in use is a clear error, port 0 picks a free
one, and the address is printed (``listening on http://HOST:PORT``) once the model answers."""

from __future__ import annotations

import errno
import socket

from edgeshrink.errors import EdgeshrinkError


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP (else Nagle + delayed ACK
    # add ~40 ms to every small request)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise EdgeshrinkError(f"port {port} on {host} is in use; pick another with --port") from None
        raise EdgeshrinkError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(app, host: str, port: int, log_level: str = "warning") -> None:
    import uvicorn

    sock = bind(host, port)
    real_port = sock.getsockname()[1]

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)  # lifespan done: the model has answered once
            if not self.should_exit:
                print(f"listening on http://{host}:{real_port}", flush=True)

    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on", timeout_graceful_shutdown=2)
    try:
        Server(config).run(sockets=[sock])
    finally:
        sock.close()
