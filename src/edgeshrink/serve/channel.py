"""`serve-cloud --publish DIR`: the cloud service also serves an update channel (deploy/channel.py) at
``GET /v1/channel/<path>``, so devices (`serve --update-from http://cloud:8001/v1/channel`) need no other server.

Only regular files inside DIR are served, never through a link, never a listing, hidden names never; the files
are signed, so this server is trusted for nothing but availability.
"""

from __future__ import annotations

from pathlib import Path

from edgeshrink.errors import EdgeshrinkError

CHANNEL_PATH = "/v1/channel"


def install_channel(app, directory: str | Path) -> None:
    from fastapi.responses import FileResponse, JSONResponse

    from edgeshrink.runtime.bundle import check_relative, regular_file

    root = Path(directory).absolute()
    if not root.is_dir():
        raise EdgeshrinkError(f"--publish {directory}: not a folder (make one with `edgeshrink publish BUNDLE "
                              f"--channel {directory} --key KEY`)")

    @app.get(CHANNEL_PATH + "/{rel:path}", include_in_schema=True, summary="Update channel files (serve-cloud --publish)")
    async def channel_file(rel: str):
        try:
            check_relative(rel, "file")
            if any(part.startswith(".") for part in rel.split("/")):
                raise EdgeshrinkError("hidden")
            path = regular_file(root, rel)
        except EdgeshrinkError:
            return JSONResponse({"error": f"no channel file {rel[:120]!r}"}, status_code=404)
        return FileResponse(path, media_type="application/octet-stream")
