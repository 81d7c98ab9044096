"""WebSocket /v1/stream: faces in live camera frames, through the same path and batcher as POST /v1/detect.

Frames of every open socket and the HTTP requests share the detection batcher, so frames of several browsers run in
one model call. A socket has at most one frame in flight and one waiting: a frame that arrives while another waits
replaces it, and the replaced one is answered ``dropped`` (a stale frame is never queued, so latency stays at about
one model call however fast the client sends).

Client to server, on one socket:

- a binary message is a frame: JPEG, or any format /v1/detect takes, at most ``max_upload_bytes``; its id is its
  number among this socket's frames, from 1, unless a ``frame`` message named it;
- ``{"type": "frame", "id": 17}`` names the next frame (an integer, or a string of at most 64 characters);
- ``{"type": "options", "threshold": 0.6, "long_side": 640}`` sets the detection options of the frames that follow,
  as /v1/detect's query: ``threshold``, ``nms``, ``long_side`` or ``det_size`` (``"WxH"``), ``max_faces``,
  ``landmarks`` (default true); the ones left out take their defaults;
- ``{"type": "auth", "key": "..."}`` is the first message, within ``header_timeout_s``, when the server has API
  keys and the handshake did not carry the key header (browsers cannot set headers on a WebSocket).

Server to client, JSON text messages:

- ``{"type": "ready", "model", "max_frame_bytes"}`` once frames may be sent (after the key, when one is needed);
- ``{"type": "result", "id", "faces", "image": {"width", "height"}, "timings_ms", "batch_size", "dropped"}``: the
  faces as in /v1/detect's answer; ``timings_ms`` has ``wait`` (for the frame ahead), /v1/detect's stages (``decode``,
  ``queue``, ``inference``, ...) and ``total`` from arrival to answer; ``dropped`` counts this socket's dropped frames;
- ``{"type": "dropped", "id", "dropped"}``: the frame was replaced by a newer one before it ran;
- ``{"type": "error", "id", "status", "error": {"code", "message"}}``: the HTTP API's status, code and message for
  the same fault (400 ``invalid_image``, 413 ``payload_too_large``, 415, 422 ``invalid_parameter`` with ``details``,
  429 ``too_many_requests`` with ``retry_after`` seconds, ...); ``id`` is null for a control message's error
  (400 ``invalid_message``: not JSON, or an unknown type). The socket stays open.

Every frame gets exactly one answer, ``result``, ``dropped`` or ``error``, unless the socket closes first. Close
codes: 1008 for a missing or wrong API key, 1012 when the server shuts down (uvicorn closes every socket at the start
of its shutdown), 1013 while the model is not loaded yet; 1009 from the server itself for a message over twice
``max_upload_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from ..dependencies import key_matches
from ..errors import ApiError
from ..guard import Drain
from ..inference import DetectionService
from ..metrics import ServiceMetrics
from ..settings import ServeSettings
from ..uploads import Upload
from .common import DetectContext, deadline, detect_options, ms_since
from .detect import detect_uploads, unwrap_group

__all__ = ["router"]

router = APIRouter(prefix="/v1")

_MAX_CONTROL_BYTES = 4096
"""Largest JSON control message; they are a few dozen bytes."""

POLICY_VIOLATION = 1008
SERVICE_RESTART = 1012
TRY_AGAIN_LATER = 1013


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptionsMessage(_Message):
    """Detection options for the frames that follow (the bounds of /v1/detect's query parameters)."""

    type: Literal["options"]
    threshold: float | None = Field(None, ge=0.0, lt=1.0)
    nms: float | None = Field(None, gt=0.0, le=1.0)
    long_side: int | None = Field(None, ge=16)
    det_size: str | None = None
    max_faces: int | None = Field(None, ge=1)
    landmarks: bool = True


class FrameMessage(_Message):
    """Names the next binary frame."""

    type: Literal["frame"]
    id: int | Annotated[str, StringConstraints(max_length=64)]


class AuthMessage(_Message):
    type: Literal["auth"]
    key: str


_CONTROL: TypeAdapter[OptionsMessage | FrameMessage | AuthMessage] = TypeAdapter(
    Annotated[OptionsMessage | FrameMessage | AuthMessage, Field(discriminator="type")]
)


@dataclass(frozen=True)
class _Frame:
    id: int | str
    data: bytes
    ctx: DetectContext
    """The options in force when the frame arrived."""
    landmarks: bool
    received: float
    """``time.perf_counter()`` at arrival."""


@dataclass(frozen=True)
class _Close:
    code: int
    reason: str


class _Stream:
    """One socket: reads messages as they come (so stale frames can be replaced), answers frames one at a time."""

    def __init__(self, websocket: WebSocket, ctx: DetectContext, drain: Drain) -> None:
        self.websocket = websocket
        self.ctx = ctx
        self.drain = drain
        self.landmarks = True
        self.metrics: ServiceMetrics = ctx.metrics
        self.frames = 0
        self.dropped = 0
        self.next_id: int | str | None = None
        self.waiting: _Frame | None = None
        self.has_waiting = asyncio.Event()
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._send_lock:  # the reader (drops, errors) and the worker (results) both send
            await self.websocket.send_text(json.dumps(message, separators=(",", ":")))

    async def send_error(self, frame_id: int | str | None, exc: ApiError, **extra: Any) -> None:
        message: dict[str, Any] = {"type": "error", "id": frame_id, "status": exc.status, "error": exc.to_dict()}
        retry_after = (exc.headers or {}).get("Retry-After")
        if retry_after is not None:
            message["retry_after"] = int(retry_after)
        message["error"].update(extra)
        await self.send(message)

    async def read(self) -> _Close | None:
        """Take messages until the client leaves (None) or the socket must close."""
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return None
            if self.drain.draining:
                await self.send_error(None, _shutting_down())
                return _Close(SERVICE_RESTART, "the server is shutting down")
            if message.get("bytes") is not None:
                await self.take_frame(message["bytes"])
            else:
                await self.take_control(message.get("text") or "")

    async def take_frame(self, data: bytes) -> None:
        self.frames += 1
        frame_id = self.next_id if self.next_id is not None else self.frames
        self.next_id = None
        self.metrics.stream_received.inc()
        limit = self.ctx.settings.max_upload_bytes
        if len(data) > limit:
            self.metrics.stream_frames.labels("failed").inc()
            message = f"frame of {len(data)} bytes exceeds the limit of {limit} bytes; send a smaller JPEG"
            await self.send_error(frame_id, ApiError(413, "payload_too_large", message))
            return
        frame = _Frame(frame_id, data, self.ctx, self.landmarks, time.perf_counter())
        replaced, self.waiting = self.waiting, frame
        self.has_waiting.set()
        if replaced is not None:
            self.dropped += 1
            self.metrics.stream_frames.labels("dropped").inc()
            await self.send({"type": "dropped", "id": replaced.id, "dropped": self.dropped})

    async def take_control(self, text: str) -> None:
        if len(text.encode()) > _MAX_CONTROL_BYTES:
            message = f"control message over {_MAX_CONTROL_BYTES} bytes; frames go in binary messages"
            await self.send_error(None, ApiError(413, "payload_too_large", message))
            return
        try:
            control = _CONTROL.validate_python(json.loads(text))
        except json.JSONDecodeError as exc:
            await self.send_error(None, ApiError(400, "invalid_message", f"control message is not JSON: {exc}"))
            return
        except ValidationError as exc:
            await self.send_invalid(exc)
            return
        if isinstance(control, FrameMessage):
            self.next_id = control.id
        elif isinstance(control, OptionsMessage):
            try:
                options = await detect_options(
                    control.threshold,
                    control.nms,
                    control.long_side,
                    control.det_size,
                    control.max_faces,
                    settings=self.ctx.settings,
                )
            except ApiError as exc:
                await self.send_error(None, exc)
                return
            self.ctx = DetectContext(self.ctx.service, self.ctx.settings, self.metrics, options)
            self.landmarks = control.landmarks
        # an auth message once authorised (or on a server without keys) changes nothing

    async def send_invalid(self, exc: ValidationError) -> None:
        """Pydantic's complaint as the HTTP API's 422 (``details`` with each location), or 400 ``invalid_message``
        when the message is not an object or has no known ``type``."""
        errors = exc.errors(include_url=False)
        if any(err["type"] in ("union_tag_invalid", "union_tag_not_found", "model_attributes_type") for err in errors):
            message = "a control message is a JSON object whose type is options, frame or auth"
            await self.send_error(None, ApiError(400, "invalid_message", message))
            return
        details = [{"location": ".".join(str(part) for part in err["loc"]), "message": err["msg"]} for err in errors]
        summary = "; ".join(f"{d['location']}: {d['message']}" for d in details)
        await self.send_error(None, ApiError(422, "invalid_parameter", summary), details=details)

    async def work(self) -> _Close | None:
        """Answer the waiting frame, one at a time, until the service goes away."""
        while True:
            await self.has_waiting.wait()
            self.has_waiting.clear()
            frame, self.waiting = self.waiting, None
            if frame is not None and await self.answer(frame):
                return _Close(SERVICE_RESTART, "the server is shutting down")

    async def answer(self, frame: _Frame) -> bool:
        """Detect faces in ``frame`` and send the result or the error; True when the service is shutting down."""
        started = time.perf_counter()
        try:
            async with deadline(frame.ctx):
                (answer,) = await unwrap_group(detect_uploads([Upload(frame.data)], frame.ctx, frame.landmarks))
            if isinstance(answer, ApiError):
                raise answer
        except ApiError as exc:
            self.metrics.stream_frames.labels("failed").inc()
            await self.send_error(frame.id, exc)
            return exc.status == 503
        body, detection = answer
        self.metrics.stream_frames.labels("processed").inc()
        wait = round((started - frame.received) * 1e3, 3)
        timings = {"wait": wait, **body["timings_ms"], "total": ms_since(frame.received)}
        await self.send(
            {
                "type": "result",
                "id": frame.id,
                **body,
                "timings_ms": timings,
                "batch_size": detection.batch_size,
                "dropped": self.dropped,
            }
        )
        return False


@router.websocket("/stream")
async def stream(websocket: WebSocket) -> None:
    """Live detection over a WebSocket (see the module docstring for the protocol)."""
    await websocket.accept()
    state = websocket.app.state
    settings: ServeSettings = state.settings
    drain: Drain = state.drain
    service: DetectionService | None = state.service
    if drain.draining:
        await _refuse(websocket, _shutting_down(), _Close(SERVICE_RESTART, "the server is shutting down"))
        return
    if service is None or not service.ready:
        message = "the model is not loaded yet (or the server is shutting down); reconnect shortly"
        refusal = ApiError(503, "not_ready", message, headers={"Retry-After": "1"})
        await _refuse(websocket, refusal, _Close(TRY_AGAIN_LATER, "the model is not loaded yet"))
        return
    try:
        if not await _authorised(websocket, settings):
            return
        options = await detect_options(None, None, None, None, None, settings=settings)
        session = _Stream(websocket, DetectContext(service, settings, state.metrics, options), drain)
        await session.send({"type": "ready", "model": service.model_name, "max_frame_bytes": settings.max_upload_bytes})
    except WebSocketDisconnect:
        return
    reader = asyncio.create_task(session.read(), name="stream-reader")
    worker = asyncio.create_task(session.work(), name="stream-worker")
    session.metrics.stream_connections.inc()
    try:
        done, _ = await asyncio.wait({reader, worker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        session.metrics.stream_connections.dec()
        for task in (reader, worker):
            task.cancel()  # a frame in flight leaves the batcher's queue, or its answer is ignored
        # wait, not gather: if this task is being cancelled (the server gives up on it), that cancellation must
        # propagate as itself, not as a child's CancelledError (anyio, under Starlette's TestClient, tells them apart)
        await asyncio.wait({reader, worker})
    close = None
    for task in (reader, worker):
        error = None if task.cancelled() else task.exception()
        if task in done and error is None:
            close = close or task.result()
        elif error is not None and not isinstance(error, WebSocketDisconnect):
            raise error
    if close is not None:
        with contextlib.suppress(WebSocketDisconnect):
            await websocket.close(close.code, close.reason)


async def _authorised(websocket: WebSocket, settings: ServeSettings) -> bool:
    """True when the server has no keys or the client gave one of them, in the key header of the handshake or in an
    ``auth`` message sent first (within ``header_timeout_s``); otherwise the socket is closed with 1008."""
    if not settings.auth_enabled:
        return True
    given = websocket.headers.get(settings.api_key_header)
    if given is None:
        try:
            async with asyncio.timeout(settings.header_timeout_s):
                first = await websocket.receive()
        except TimeoutError:
            first = {}
        if first.get("type") == "websocket.disconnect":
            return False
        try:
            control = _CONTROL.validate_json(first.get("text") or "")
        except ValidationError:
            control = None
        given = control.key if isinstance(control, AuthMessage) else None
    if key_matches(settings, given):
        return True
    message = (
        f"missing or wrong API key: send it in the {settings.api_key_header} header of the handshake, or as "
        'the first message, {"type": "auth", "key": "..."}'
    )
    refusal = ApiError(401, "unauthorized", message)
    await _refuse(websocket, refusal, _Close(POLICY_VIOLATION, "missing or wrong API key"))
    return False


async def _refuse(websocket: WebSocket, exc: ApiError, close: _Close) -> None:
    """Send ``exc`` as an error message, then close the socket (the client may already be gone)."""
    message: dict[str, Any] = {"type": "error", "id": None, "status": exc.status, "error": exc.to_dict()}
    try:
        await websocket.send_text(json.dumps(message, separators=(",", ":")))
        await websocket.close(close.code, close.reason)
    except WebSocketDisconnect:
        pass


def _shutting_down() -> ApiError:
    return ApiError(503, "unavailable", "the server is shutting down; reconnect in a moment")
