"""`edgeshrink pack` (a bundle for a web page, Node or ONNX Runtime Mobile) and `edgeshrink serve-web`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeshrink.cli._common import Force, JsonOut, fail, handled, progress_lines, write_json


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@handled
def pack(bundle: Annotated[Path, typer.Argument(help="The device bundle (every file's hash is checked first).")],
         target: Annotated[str, typer.Option("--target", help="web (a folder a page or Node loads with "
                                             "onnxruntime-web) | mobile (the ORT format for ONNX Runtime Mobile).")],
         out: Annotated[Path, typer.Option("--out", help="Output folder (a new one).")],
         demo: Annotated[bool, typer.Option("--demo", help="web: add the demo page (index.html); serve it with "
                                            "`edgeshrink serve-web OUT`.")] = False,
         platform: Annotated[Optional[str], typer.Option(help="mobile: arm (phones) | x86. [default: arm]")] = None,
         force: Force = False, json_out: JsonOut = None) -> None:
    """Pack a bundle for a device without Python: --target web writes the runtime (edgeshrink.mjs: classify, route,
    generate, stream), onnxruntime-web, the tokenizer and the bundle, checked by hash in the page; --target mobile
    writes the ORT-format model and its operator list, checked against the bundle with Python's ONNX Runtime."""
    if target == "web":
        if platform is not None:
            raise fail("--platform applies to --target mobile")
        from edgeshrink.web.pack import pack_web

        record = pack_web(bundle, out, demo=demo, force=force, progress=progress_lines())
        sizes = record["sizes"]
        typer.echo(f"web folder {out}: model {_mb(sizes['model_bytes'])}, runtime wasm {_mb(sizes['runtime_wasm_bytes'])}"
                   f" + js {_mb(sizes['runtime_js_bytes'])}, tokenizer {_mb(sizes['tokenizer_bytes'])}; onnxruntime-web "
                   f"{record['runtime']['onnxruntime-web']}" + (f"; demo: edgeshrink serve-web {out}" if demo else ""))
    elif target == "mobile":
        if demo:
            raise fail("--demo applies to --target web")
        from edgeshrink.web.mobile import pack_mobile

        record = pack_mobile(bundle, out, platform=platform or "arm", force=force, progress=progress_lines())
        rewritten = len(record["rewritten_four_bit"])
        typer.echo(f"mobile folder {out}: model.ort {_mb(record['sizes']['model_bytes'])} for {record['platform']}"
                   + (f", {rewritten} 4-bit tensors rewritten" if rewritten else "") +
                   f"; Python ONNX Runtime loads it and matches the bundle within "
                   f"{record['check']['max_abs_difference']:.1e}")
    else:
        raise fail(f"unknown target {target!r}; expected web or mobile")
    write_json(json_out, record)


@handled
def serve_web(folder: Annotated[Path, typer.Argument(help="A web folder from `edgeshrink pack --target web`.")],
              host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
              port: Annotated[int, typer.Option(help="Port (0: a free one, printed at start).")] = 8080) -> None:
    """Serve a web folder over HTTP with the headers its page needs (cross-origin isolation for wasm threads, the
    .mjs and .wasm types). A local test and demo server; open the printed URL in a browser."""
    from edgeshrink.web.serve import make_server

    server = make_server(folder, host, port)
    typer.echo(f"serving {folder} with cross-origin isolation (COOP/COEP); open the page at")
    typer.echo(f"listening on http://{host}:{server.server_address[1]}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(app: typer.Typer) -> None:
    app.command("pack")(pack)
    app.command("serve-web")(serve_web)
