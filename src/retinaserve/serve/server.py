"""Running the app under uvicorn with connection hygiene and a clean, draining shutdown.

uvicorn (h11) is kept, with two additions it lacks (checked in its source: its keep-alive timer is armed only
after a response, so an idle or slow-header connection is held as long as the client likes):

- a request head must arrive within ``header_timeout_s`` of the connection opening or of the previous response,
  else the connection is closed (with a 408 when part of a head came);
- at most ``max_connections`` are open at once; beyond that a new connection gets a JSON 503 and is closed.

WebSocket upgrades (``/v1/stream``) are handed to uvicorn's wsproto protocol, without permessage-deflate (camera
frames are JPEGs, which do not compress) and with messages up to twice ``max_upload_bytes`` (larger ones are refused
mid-stream with close code 1009; ``stream.py`` answers the ones in between with an error).

Bodies have their own deadline in :class:`~retinaserve.serve.guard.RequestGuard`. On SIGTERM or Ctrl-C the server
stops accepting, finishes what it can within ``graceful_shutdown_s``, answers the rest with the JSON 503, and the
process exits 0 (uvicorn itself would re-raise the signal and die by it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys
from types import FrameType
from typing import Any, ClassVar

import h11
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from .guard import Drain
from .settings import ServeSettings

__all__ = ["GuardedH11Protocol", "Server", "guarded_protocol", "server_for"]

log = logging.getLogger(__name__)

_MARGIN_S = 1.0
"""uvicorn's own shutdown timeout runs this much past the drain, so it never has to cancel anything itself."""


def _raw_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n"
    )
    if status == 503:
        head += "retry-after: 1\r\n"
    return (head + "\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and a cap on open connections."""

    header_timeout_s: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 1024

    _head_timer: asyncio.TimerHandle | None = None
    _timed_cycle: Any = None
    _partial_head = False
    _refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refused = True  # answered 503 when its request comes (answering first would race it into a reset)
            log.warning("refusing a connection: %d open (max_connections)", len(self.connections) - 1)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            if not self.transport.is_closing():
                message = "too many open connections; retry shortly"
                self.transport.write(_raw_response(503, "Service Unavailable", "unavailable", message))
                self.transport.close()
            return
        super().data_received(data)
        if self.cycle is not None and self.cycle is not self._timed_cycle:  # a new request's head is complete
            self._timed_cycle = self.cycle
            self._cancel_head_timer()
        elif self._head_timer is not None:
            self._partial_head = True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head, on this keep-alive connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # the head is complete and the socket is the WebSocket protocol's from here on: without this, the head
        # timer (armed at connection_made, never cancelled since no request cycle starts) would write a 408 into
        # the WebSocket and close it ``header_timeout_s`` after it opened
        self._cancel_head_timer()
        super().handle_websocket_upgrade(event)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._partial_head = False
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and self.cycle is not self._timed_cycle:  # a head arrived meanwhile
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return
        if self._partial_head:
            message = f"the request head did not arrive within {self.header_timeout_s:g} s"
            self.transport.write(_raw_response(408, "Request Timeout", "request_timeout", message))
        self.transport.close()


def guarded_protocol(settings: ServeSettings) -> type[GuardedH11Protocol]:
    """The protocol class with this server's limits."""
    return type(
        "GuardedH11Protocol",
        (GuardedH11Protocol,),
        {"header_timeout_s": settings.header_timeout_s, "max_connections": settings.max_connections},
    )


class Server(uvicorn.Server):
    """uvicorn's server that drains through the app's :class:`Drain` and exits 0 after a signal."""

    def __init__(self, config: uvicorn.Config, drain: Drain, grace_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.grace_s = grace_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """As uvicorn's, but the signal is not re-raised after the graceful stop: the process exits 0."""
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.drain.begin(self.grace_s)
        await super().shutdown(sockets)


_SWITCH_INTERVAL_S = 0.001
"""How long a thread running Python code (a header parse on the worker pool) may keep the GIL while the event loop
waits for it: 1 ms instead of CPython's 5 ms, since the loop needs the GIL several times per request."""


def server_for(app: FastAPI, settings: ServeSettings, **config: Any) -> Server:
    """A :class:`Server` for ``app`` (made by ``create_app``) with the settings' connection limits; ``config`` is
    passed on to ``uvicorn.Config`` (e.g. ``log_level``). Sets the process's GIL switch interval (see above)."""
    sys.setswitchinterval(_SWITCH_INTERVAL_S)
    drain: Drain = app.state.drain
    uvicorn_config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=guarded_protocol(settings),
        timeout_keep_alive=max(1, round(settings.keep_alive_s)),
        timeout_graceful_shutdown=round(settings.graceful_shutdown_s + _MARGIN_S + 0.5),
        ws="wsproto",
        ws_max_size=2 * settings.max_upload_bytes,
        ws_per_message_deflate=False,
        **config,
    )
    return Server(uvicorn_config, drain, settings.graceful_shutdown_s)
