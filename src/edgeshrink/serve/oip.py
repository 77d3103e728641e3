"""The Open Inference Protocol (KServe v2 REST), what Triton, KServe and Seldon speak, on the cloud service.

    GET  /v2                                 server metadata (extensions: binary_tensor_data, classification)
    GET  /v2/health/live | /v2/health/ready  {"live": true} | {"ready": true} (503 until the model answers)
    GET  /v2/models/NAME[/versions/1]        inputs: text BYTES [-1]; outputs: logits FP32 [-1, C], label BYTES [-1]
    GET  /v2/models/NAME[/versions/1]/ready
    POST /v2/models/NAME[/versions/1]/infer
         {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a witty film", "a dull mess"]}],
          "outputs": [{"name": "logits"}, {"name": "label"}]}          (no "outputs": both)

Texts go through the same checks, limits, API key, micro-batcher and metrics as ``/v1/classify``, so both
give the same answers. Supported extensions, as Triton has them: *binary tensor data* (the header
``Inference-Header-Content-Length``; inputs and outputs with ``binary_data_size``; BYTES elements as a
4-byte little-endian length and the bytes) — what ``tritonclient`` sends by default — and *classification*
(an output asked with ``"parameters": {"classification": k}`` comes back as BYTES ``"score:index:label"``,
the top k per text, best first). Errors are ``{"error": "<one line>"}`` with 400 (404 for another model).
"""

from __future__ import annotations

import json
import struct

import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse, Response

from edgeshrink.serve.gate import MAX_JSON_DEPTH, json_too_deep, protected

VERSION = "1"
INPUT = "text"
BINARY_HEADER = "inference-header-content-length"


class ProtocolError(ValueError):
    """A request the protocol (or this model) cannot take: answered 400 with the message."""


def bytes_elements(raw: bytes) -> list[bytes]:
    """Triton's BYTES serialisation → its elements (each a 4-byte little-endian length, then the bytes)."""
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise ProtocolError("binary BYTES data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + size > len(raw):
            raise ProtocolError("binary BYTES data ends inside an element")
        out.append(raw[at:at + size])
        at += size
    return out


def serialize_bytes(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def _flatten(data) -> list:
    if isinstance(data, list):
        return [x for item in data for x in _flatten(item)]
    return [data]


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The request's JSON header and its binary part (empty without the binary extension)."""
    if header_length is None:
        head, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ProtocolError(f"Inference-Header-Content-Length {header_length!r} does not fit a body of "
                                f"{len(body)} bytes")
        head, binary = body[:int(header_length)], body[int(header_length):]
    if json_too_deep(head):  # Python's parser would give up with a RecursionError
        raise ProtocolError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        request = json.loads(head.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"the JSON header is not UTF-8 (byte {exc.start})") from None
    except ValueError as exc:
        raise ProtocolError(f"the body is not valid JSON ({exc})") from None
    if not isinstance(request, dict):
        raise ProtocolError("the body is a JSON object with 'inputs'")
    return request, binary


def parse_texts(request: dict, binary: bytes) -> list[str]:
    """The texts of the one BYTES input ``text``, from JSON data or the binary part."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f"this model takes exactly one input, {INPUT!r} (BYTES, shape [n])")
    tensor = inputs[0]
    if tensor.get("name") != INPUT:
        raise ProtocolError(f"unknown input {tensor.get('name')!r}; this model takes {INPUT!r}")
    if tensor.get("datatype") != "BYTES":
        raise ProtocolError(f"input {INPUT!r} is BYTES, got {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d >= 0 for d in shape)
            or len(shape) > 2 or (len(shape) == 2 and shape[1] != 1)):
        raise ProtocolError(f"input {INPUT!r} has shape [n] or [n, 1], got {shape!r}")
    count = shape[0]
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("parameters: expected an object")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise ProtocolError(f"binary_data_size {size!r} does not fit the {len(binary)} binary bytes sent")
        raw = bytes_elements(binary[:size])
    elif "data" in tensor:
        raw = _flatten(tensor["data"])
        if not all(isinstance(x, str) for x in raw):
            raise ProtocolError(f"input {INPUT!r}: data must be strings")
        return _counted(raw, count)
    else:
        raise ProtocolError(f"input {INPUT!r} has neither data nor binary_data_size")
    texts = []
    for i, element in enumerate(raw):
        try:
            texts.append(element.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"text {i} is not UTF-8 (byte {exc.start})") from None
    return _counted(texts, count)


def _counted(texts: list[str], count: int) -> list[str]:
    if len(texts) != count:
        raise ProtocolError(f"input {INPUT!r} has shape [{count}] but {len(texts)} elements")
    if not texts:
        raise ProtocolError(f"input {INPUT!r} is empty")
    return texts


def requested_outputs(request: dict, num_labels: int) -> list[tuple[str, bool, int]]:
    """(name, binary, classification k or 0) per requested output; none listed: every output."""
    default_binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    outputs = request.get("outputs")
    if outputs is None:
        return [("logits", default_binary, 0), ("label", default_binary, 0)]
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise ProtocolError("outputs: expected a list of objects")
    chosen = []
    for output in outputs:
        name, params = output.get("name"), output.get("parameters") or {}
        if name not in ("logits", "label"):
            raise ProtocolError(f"unknown output {name!r}; this model gives 'logits' and 'label'")
        k = params.get("classification", 0)
        if not isinstance(k, int) or k < 0:
            raise ProtocolError(f"output {name!r}: classification must be a non-negative integer")
        if k and name != "logits":
            raise ProtocolError("classification applies to the 'logits' output")
        chosen.append((name, bool(params.get("binary_data", default_binary)), min(k, num_labels)))
    return chosen


def classification(logits: np.ndarray, labels: list[str], k: int) -> list[list[str]]:
    """Triton's classification extension: per row the top k as ``"score:index:label"``, best first."""
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return [[f"{row[j]:f}:{j}:{labels[j]}" for j in top] for row, top in zip(logits, order)]


def encode_response(model: str, request_id, outputs: list[tuple[str, bool, int]], labels: list[str],
                    answer_labels: list[str], logits: np.ndarray) -> Response:
    """The v2 response: JSON, or the JSON header followed by binary outputs where they were asked for."""
    tensors, chunks = [], []
    for name, binary, k in outputs:
        if name == "label":
            datatype, shape, values = "BYTES", [len(answer_labels)], answer_labels
        elif k:
            rows = classification(logits, labels, k)
            datatype, shape, values = "BYTES", [len(rows), k], [x for row in rows for x in row]
        else:
            datatype, shape, values = "FP32", list(logits.shape), logits.astype(np.float32)
        tensor = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            raw = (serialize_bytes([v.encode() for v in values]) if datatype == "BYTES"
                   else np.ascontiguousarray(values, dtype="<f4").tobytes())
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = list(values) if datatype == "BYTES" else [float(x) for x in values.reshape(-1)]
        tensors.append(tensor)
    body = {"model_name": model, "model_version": VERSION, "outputs": tensors}
    if isinstance(request_id, str) and request_id:
        body["id"] = request_id
    head = json.dumps(body).encode()
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(head + b"".join(chunks), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


def install_v2(app, model_name: str, labels: list[str]) -> None:
    """Add the v2 endpoints to a classifier app made by ``serve.app.build_app`` (it shares its helpers)."""
    from edgeshrink import __version__

    shared = app.state.edgeshrink
    metrics, error = shared.metrics, shared.error
    infer_path = "/v2/models/{name}/infer"
    metadata = {"name": model_name, "versions": [VERSION], "platform": "edgeshrink",
                "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, len(labels)]},
                            {"name": "label", "datatype": "BYTES", "shape": [-1]}]}

    def known(name: str, version: str | None, path: str) -> JSONResponse | None:
        if name != model_name:
            return error(404, f"unknown model {name!r}; this service serves {model_name!r}", path)
        if version is not None and version != VERSION:
            return error(404, f"model {name!r} has version {VERSION} only, not {version!r}", path)
        return None

    @app.get("/v2", include_in_schema=True, tags=["v2"])
    async def server_metadata():
        return {"name": "edgeshrink", "version": __version__, "extensions": ["binary_tensor_data", "classification"]}

    @app.get("/v2/health/live", tags=["v2"])
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"])
    async def ready():
        if not shared.ready():
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True}

    async def model_metadata(name: str, version: str | None = None):
        return known(name, version, "/v2/models/{name}") or metadata

    async def model_ready(name: str, version: str | None = None):
        ok = shared.ready()
        return known(name, version, "/v2/models/{name}/ready") or JSONResponse({"name": model_name, "ready": ok},
                                                                               status_code=200 if ok else 503)

    async def infer(name: str, request: Request, version: str | None = None):
        refused = known(name, version, infer_path)  # the API key and the rate limit: checked by gate.Gate
        if refused is not None:
            return refused
        try:
            body, binary = split_body(await request.body(), request.headers.get(BINARY_HEADER))
            raw_texts = parse_texts(body, binary)
            outputs = requested_outputs(body, len(labels))
        except ProtocolError as exc:
            metrics.rejected.labels(reason="invalid").inc()
            return error(400, str(exc), infer_path)
        checked = shared.check_texts(raw_texts, infer_path)
        if isinstance(checked, Response):
            return checked
        texts, _ = checked
        rows = await request.app.state.batcher.run(texts)
        logits = np.stack([row[3] for row in rows]).astype(np.float32)
        response = encode_response(model_name, body.get("id"), outputs, labels, [row[0] for row in rows], logits)
        metrics.requests.labels(path=infer_path, status="200").inc()
        metrics.texts.labels(source="cloud").inc(len(texts))
        return response

    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.add_api_route(prefix, model_metadata, methods=["GET"], tags=["v2"])
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"], tags=["v2"])
        protected(app, prefix + "/infer", tags=["v2"],
                  openapi_extra={"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}},
                                                 "required": True}})(infer)
