"""Open Inference Protocol (KServe V2) REST routes: health, metadata, infer, repository extension.

`infer` is a raw ASGI endpoint over the one inference path (`inference/path.py`): it resolves the
route decision, reads the body, decodes straight to numpy, runs the version, and sends the response
before the observers (shadow, windows, metrics, feedback) run, so that work can never delay or change
what the client gets. `InferFastPath` sends infer requests past Starlette's router.
"""

from __future__ import annotations

import logging
import re
import uuid
from functools import partial
from importlib.metadata import version as distribution_version
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import orjson
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

import modelserve.validation as validation
from modelserve.errors import (
    ModelServeError,
    NotFound,
    NotReady,
    PayloadTooLarge,
    RequestError,
    RequestTimeout,
    http_status,
)
from modelserve.inference.path import InferenceRecord
from modelserve.server import heap, protocol
from modelserve.server.admin import REASON_HEADER, audit_snapshot
from modelserve.server.auth import ADMIN, INFERENCE
from modelserve.server.http import (
    JSON_HEADERS,
    body_buffer,
    declared_length,
    header,
    int_header,
    read_body,
    read_into,
    send_response,
)
from modelserve.state.audit import Actor

if TYPE_CHECKING:
    from modelserve.server.services import Services
    from modelserve.serving.runtime import LoadedVersion

log = logging.getLogger("modelserve.server")

#: The version `GET /v2` reports: the installed distribution's (pyproject.toml is the one source).
SERVER_VERSION = distribution_version("modelserve")
#: What a request gets when modelserve's lifespan never ran: the usual cause is mounting its app.
LIFESPAN_NOT_RUN = (
    "modelserve has not started: its lifespan did not run. A mounted app (Mount, app.mount) gets no "
    "lifespan events: pass lifespan=ms.lifespan to the outer app, e.g. FastAPI(lifespan=ms.lifespan) or "
    "Starlette(..., lifespan=ms.lifespan), or enter `async with ms.lifespan():` in your own lifespan"
)


#: Bodies larger than this are decoded off the event loop, one at a time (a 60 MB JSON body takes
#: over a second to decode; a few kB take microseconds, cheaper than any thread hop).
LARGE_BODY_BYTES = 1024 * 1024
#: A large body must arrive within this grace plus its size at this rate (bytes/s), else 408.
LARGE_BODY_GRACE_S = 10.0
LARGE_BODY_MIN_RATE = 1024 * 1024
#: Requests whose body is a handful of options (the repository index) may not send more than this.
SMALL_BODY_BYTES = 64 * 1024
#: Route reasons whose requests join outcomes posted back by request id (experiments, bandits).
JOINED_REASONS = frozenset({"experiment", "bandit"})
_ECHOABLE = re.compile(r"^[\x21-\x7e]{1,128}$")


def json_too_large(size: int | None, limit: int) -> PayloadTooLarge:
    """The 413 for JSON the server will not parse: it says how to send large tensors instead."""
    what = f"{size} bytes of JSON" if size is not None else "the JSON"
    return PayloadTooLarge(
        f"{what} exceeds the JSON limit of {limit} bytes (--max-json-bytes; parsing large JSON stalls "
        "every request): send large tensors with the binary tensor extension (binary_data_size in the "
        "JSON header, Inference-Header-Content-Length; e.g. tritonclient with binary_data=True)"
    )


def echoable_id(value: str | None) -> str | None:
    """A client's request id if it is safe to echo in a header (1-128 visible ASCII characters)."""
    return value if value is not None and _ECHOABLE.match(value) else None


def release_memory(version: LoadedVersion | None) -> None:
    """Give back what a large request grew: `version`'s onnxruntime arena, then the heaps' free pages
    (`server/heap.py`). Blocking: call it in a thread."""
    if version is not None:
        version.shrink_arena()
    heap.trim()


class InferEndpoint:
    """POST /v2/models/{model}[/versions/{version}]/infer."""

    def __init__(self, services: Services) -> None:
        self.services = services
        # Large bodies: one at a time is read and decoded (in a thread of its own), so they neither
        # stall the event loop nor pile up in memory; small ones take the fast path on the loop.
        self.large_bodies = anyio.CapacityLimiter(1)
        self.large_bodies_threads = anyio.CapacityLimiter(1)  # never anyio's default pool

    async def _decode_large(
        self, receive: Receive, headers: list[tuple[bytes, bytes]], header_length: int | None, inputs: Any
    ) -> protocol.InferRequest:
        async with self.large_bodies:
            size = declared_length(headers, self.services.config.max_body_bytes)
            assert size is not None  # a large body is one that declares its size
            # Binary tensor data starts right after the JSON header: aligned there, numpy uses it in place.
            allocate = partial(body_buffer, size, aligned_at=header_length or 0)
            buffer = await anyio.to_thread.run_sync(allocate, limiter=self.large_bodies_threads)
            # One large body at a time: a client trickling one in must not hold the slot for ever
            # (the connection's idle timeout restarts with every chunk), so it gets a minimum rate.
            allowed_s = LARGE_BODY_GRACE_S + size / LARGE_BODY_MIN_RATE
            with anyio.move_on_after(allowed_s) as late:
                body = await read_into(receive, buffer)
            if late.cancelled_caught:
                raise RequestTimeout(
                    f"the request body of {size} bytes did not arrive within {allowed_s:.0f} s "
                    f"(large bodies must arrive at {LARGE_BODY_MIN_RATE // 1024} kB/s or faster)"
                )
            decode = partial(protocol.decode_infer_request, body, header_length=header_length, inputs=inputs)
            return await anyio.to_thread.run_sync(decode, limiter=self.large_bodies_threads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = self.services
        services.requests_in_flight += 1  # a drain shows how many requests it still waits for
        try:
            large_run = await self._infer(scope, receive, send)
        finally:
            services.requests_in_flight -= 1
        if large_run is not None:  # only now is nothing of the request referenced any more
            await anyio.to_thread.run_sync(release_memory, large_run, limiter=self.large_bodies_threads)

    async def _infer(self, scope: Scope, receive: Receive, send: Send) -> LoadedVersion | None:
        """Answer one infer request; the version it ran if the request was large (memory to give back)."""
        services = self.services
        path = services.inference
        params = scope["path_params"]
        model: str = params["model"]
        headers = scope["headers"]
        record: InferenceRecord | None = None
        request_id: str | None = None
        large = False
        try:
            if not services.started:
                raise NotReady(LIFESPAN_NOT_RUN)
            if services.tokens.inference is not None:
                raw_auth = header(headers, b"authorization")
                services.authorize(raw_auth.decode("latin-1") if raw_auth else None, INFERENCE)
            record = path.begin(scope, model, params.get("version"))
            loaded = record.loaded
            assert loaded is not None
            header_length = int_header(headers, b"inference-header-content-length")
            declared = int_header(headers, b"content-length")
            # JSON is parsed holding the GIL: more than max_json_bytes of it is refused before it is read.
            max_json = services.config.max_json_bytes
            json_size = declared if header_length is None else header_length
            if json_size is not None and json_size > max_json:
                raise json_too_large(json_size, max_json)
            large = declared is not None and declared > LARGE_BODY_BYTES
            if large:
                request = await self._decode_large(receive, headers, header_length, loaded.inputs)
            else:
                limit = services.config.max_body_bytes if header_length is not None else max_json
                try:
                    body = await read_body(receive, headers, limit)
                except PayloadTooLarge:
                    if header_length is not None:
                        raise
                    raise json_too_large(None, max_json) from None
                inputs = loaded.inputs
                request = protocol.decode_infer_request(body, header_length=header_length, inputs=inputs)
            wanted = services.wants_request_id(model)
            raw_id = header(headers, b"x-request-id")
            client_id = echoable_id(request.id) or (echoable_id(raw_id.decode("latin-1")) if raw_id else None)
            if wanted and record.decision.reason in JOINED_REASONS:
                # Outcomes are joined by this id: the server issues it, so no client can reuse
                # another request's id to move or reopen its outcome. The client's id is kept
                # beside it (labels join by either).
                request_id = uuid.uuid4().hex
                record.client_request_id = client_id
            else:
                request_id = client_id or (uuid.uuid4().hex if wanted else None)
            record.request_id = request_id
            names = protocol.requested_output_names(request, loaded.outputs)
            outputs = await path.run(record, request.inputs, names)
            encode = partial(
                protocol.encode_infer_response,
                model_name=model,
                model_version=loaded.version,
                request_id=request.id,
                outputs=outputs,
                request=request,
                output_specs=loaded.outputs,
            )
            if protocol.large_outputs(outputs):  # written in pieces in a thread: the loop runs between them
                large = True
                payload, extra = await anyio.to_thread.run_sync(encode, limiter=self.large_bodies_threads)
            else:
                payload, extra = encode()
            status = 200
            response_headers = [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        except Exception as exc:
            status = http_status(exc)
            if record is not None:
                record.fail(exc)
            if status >= 500 and not isinstance(exc, NotReady):
                log.error(
                    "inference on %s failed: %s", model, exc, exc_info=not isinstance(exc, ModelServeError)
                )
            payload = protocol.error_body(str(exc) if isinstance(exc, ModelServeError) else "internal error")
            response_headers = list(JSON_HEADERS)
            if status in (408, 413):  # the rest of the body is not wanted: closing stops the upload
                response_headers.append((b"connection", b"close"))
            if status == 401:
                response_headers.append((b"www-authenticate", b"Bearer"))
        if record is not None:
            response_headers.append((b"x-model-version", record.decision.version.encode()))
            response_headers.append((b"x-route-reason", record.decision.reason.encode()))
        if request_id is not None:
            response_headers.append((b"x-request-id", request_id.encode("latin-1", "replace")))
        await send_response(send, status, payload, response_headers)
        if record is None:
            return None
        path.finish(record)
        return record.loaded if large else None


class InferFastPath:
    """Pure ASGI: send `POST /v2/models/{m}[/versions/{v}]/infer` straight to the infer endpoint.

    The hot path skips Starlette's router and exception middleware (a few µs a request, which is
    several percent for a µs model); everything else, and any mounted (root_path) use, goes through
    the app as usual. Matching is the same as the routes': one path segment per parameter.
    """

    def __init__(self, app: ASGIApp, *, unversioned: Route, versioned: Route) -> None:
        self.app = app
        self.unversioned = unversioned
        self.versioned = versioned
        self.endpoint = unversioned.endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            parts = scope["path"].split("/")
            if (
                len(parts) == 5
                and parts[4] == "infer"
                and parts[1] == "v2"
                and parts[2] == "models"
                and parts[3]
            ):
                scope["route"] = self.unversioned
                scope["path_params"] = {"model": parts[3]}
                await self.endpoint(scope, receive, send)
                return
            if (
                len(parts) == 7
                and parts[6] == "infer"
                and parts[4] == "versions"
                and parts[1] == "v2"
                and parts[2] == "models"
                and parts[3]
                and parts[5]
            ):
                scope["route"] = self.versioned
                scope["path_params"] = {"model": parts[3], "version": parts[5]}
                await self.endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


def infer_fast_path(routes: list[Route]) -> Middleware:
    """The `InferFastPath` middleware for the infer routes among `routes` (from `routes()`)."""
    unversioned = next(r for r in routes if r.path == "/v2/models/{model}/infer")
    versioned = next(r for r in routes if r.path == "/v2/models/{model}/versions/{version}/infer")
    return Middleware(InferFastPath, unversioned=unversioned, versioned=versioned)


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(exc: BaseException) -> Response:
    message = str(exc) if isinstance(exc, ModelServeError) else "internal error"
    return Response(protocol.error_body(message), status_code=http_status(exc), media_type="application/json")


def routes(services: Services) -> list[Route]:
    registry = services.registry
    infer = InferEndpoint(services)

    async def server_metadata(request: Request) -> Response:
        return _json(protocol.server_metadata(version=SERVER_VERSION))

    async def live(request: Request) -> Response:
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        missing = services.missing_models()
        ok = services.started and not services.draining and not missing
        body: dict[str, Any] = {"ready": ok}
        if not services.started:
            body["error"] = "draining" if services.draining else LIFESPAN_NOT_RUN
        elif services.draining:
            body["error"] = "draining: the server is shutting down"
            body["in_flight"] = services.requests_in_flight
            body["replica"] = services.replica.replica_id  # which process of several is draining
        if missing:
            body["missing"] = missing
        return _json(body, 200 if ok else 503)

    async def model_metadata(request: Request) -> Response:
        params = request.path_params
        try:
            slots = registry.slots(params["model"])
            loaded = slots.get(params.get("version"))
            versions = sorted(slots.ready_versions, key=int)
            return _json(
                protocol.model_metadata(
                    name=slots.model,
                    versions=versions,
                    platform="onnxruntime_onnx",
                    inputs=loaded.inputs,
                    outputs=loaded.outputs,
                )
            )
        except Exception as exc:
            return _error(exc)

    async def model_ready(request: Request) -> Response:
        params = request.path_params
        try:
            slots = registry.slots(params["model"])
            slots.get(params.get("version"))
            return _json({"name": slots.model, "ready": True})
        except NotReady as exc:
            return _json({"name": params["model"], "ready": False, "error": str(exc)}, 503)
        except Exception as exc:
            return _error(exc)

    async def repository_index(request: Request) -> Response:
        try:  # its options are a few bytes: a large body is refused, whatever --max-body-bytes says
            body = await read_body(request.receive, request.scope["headers"], SMALL_BODY_BYTES)
            options = orjson.loads(body) if body.strip() else {}
            if not isinstance(options, dict):
                raise RequestError("repository index request must be a JSON object")
            only_ready = validation.flag(options.get("ready", False), "ready")
        except orjson.JSONDecodeError as exc:
            return _error(RequestError(f"malformed JSON: {exc}"))
        except RequestError as exc:
            return _error(exc)
        index = []
        for name in registry.repository.model_names():
            slots = registry.models.get(name)
            for version in registry.repository.versions(name):
                ready = slots is not None and version in slots.ready_versions
                state = "READY" if ready else "UNAVAILABLE"
                if only_ready and state != "READY":
                    continue
                entry = {"name": name, "version": version, "state": state}
                if state != "READY":
                    entry["reason"] = "unloaded"
                index.append(entry)
        return _json(index)

    async def repository_load(request: Request) -> Response:
        """Load the model (its live version); `{"parameters": {"version": "3"}}` adds that version warm."""
        try:
            model = request.path_params["model"]
            granted = services.authorize(request.headers.get("authorization"), ADMIN)
            version = await _version_parameter(request)
            before = audit_snapshot(services, model)
            if model not in registry.models:
                await services.load_model(model)
            if version is not None:
                await services.replica.commands.load(model, version)
            actor = Actor(scope=granted, reason=request.headers.get(REASON_HEADER, "")[:500])
            services.audit.record(
                model, "load", actor=actor, before=before, after=audit_snapshot(services, model)
            )
            return _json({})
        except Exception as exc:
            return _error(exc)

    async def repository_unload(request: Request) -> Response:
        """Unload the model; `{"parameters": {"version": "3"}}` unloads only that warm, non-live version."""
        try:
            model = request.path_params["model"]
            granted = services.authorize(request.headers.get("authorization"), ADMIN)
            version = await _version_parameter(request)
            if model not in registry.models:
                if model not in registry.repository.model_names():
                    raise NotFound(f"unknown model {model!r}")
                raise RequestError(f"model {model!r} is not loaded")
            before = audit_snapshot(services, model)
            if version is None:
                await registry.unload(model)
                services.policies.remove(model)
            else:
                await services.replica.commands.unload(model, version)
            actor = Actor(scope=granted, reason=request.headers.get(REASON_HEADER, "")[:500])
            services.audit.record(
                model, "unload", actor=actor, before=before, after=audit_snapshot(services, model)
            )
            return _json({})
        except Exception as exc:
            return _error(exc)

    model = "/v2/models/{model}"
    versioned = model + "/versions/{version}"
    return [  # infer first: the router tries routes in order, and infer is the hot path
        Route(model + "/infer", infer, methods=["POST"]),
        Route(versioned + "/infer", infer, methods=["POST"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route(model, model_metadata, methods=["GET"]),
        Route(model + "/ready", model_ready, methods=["GET"]),
        Route(versioned, model_metadata, methods=["GET"]),
        Route(versioned + "/ready", model_ready, methods=["GET"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", repository_unload, methods=["POST"]),
    ]


async def _version_parameter(request: Request) -> str | None:
    """The `parameters.version` of a repository load/unload body (Triton-style), if any; any other
    parameter (such as `config`) is refused, never silently ignored."""
    body = await read_body(request.receive, request.scope["headers"], SMALL_BODY_BYTES)
    if not body.strip():
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"malformed JSON: {exc}") from None
    parameters = data.get("parameters", {}) if isinstance(data, dict) else None
    if not isinstance(parameters, dict):
        raise RequestError('the body must be a JSON object like {"parameters": {"version": "2"}}')
    unsupported = sorted(set(parameters) - {"version", "unload_dependents"})  # no model has dependents
    if unsupported:
        raise RequestError(
            f"parameters {', '.join(unsupported)[:200]} are not supported: a model loads from its folder and "
            "config.toml in the repository (only parameters.version is used)"
        )
    version = parameters.get("version")
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, str | int):
        raise RequestError(f"parameters.version must be a version string, got {version!r}")
    return str(version)
