"""Per-request hygiene as ASGI middleware: a deadline for the body, cancellation when the client goes away, and
draining on shutdown.

- A request body must arrive within ``body_timeout_s`` (slow-body clients get 408, not a worker held forever).
- Once the body is in, a request whose client disconnects is cancelled: work not yet started (decoding, a place
  in the batch queue) is dropped, and a batch already running ignores its result.
- On shutdown (:meth:`Drain.begin`), new requests get the JSON 503 at once; requests still running when the grace
  period ends are cancelled and answered with the JSON 503, so the server can exit cleanly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ApiError, error_response

__all__ = ["Drain", "RequestGuard"]

log = logging.getLogger(__name__)

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass
class Drain:
    """Shutdown state shared by the server (which starts it) and the middleware (which acts on it)."""

    draining: bool = False
    running: set[asyncio.Task[None]] = field(default_factory=set)
    """The app's tasks for requests in progress."""
    expired: set[asyncio.Task[None]] = field(default_factory=set)
    _timer: asyncio.TimerHandle | None = None

    def begin(self, grace_s: float) -> None:
        """Refuse new requests from now on and cancel those still running after ``grace_s`` (on the event loop)."""
        if self.draining:
            return
        self.draining = True
        log.info("draining: %d request(s) in progress get %g s to finish", len(self.running), grace_s)
        self._timer = asyncio.get_running_loop().call_later(grace_s, self._expire)

    def _expire(self) -> None:
        if self.running:
            log.warning("grace period over: answering %d unfinished request(s) with 503", len(self.running))
        for task in list(self.running):
            self.expired.add(task)
            task.cancel()


class RequestGuard:
    """The middleware; ``on_disconnect`` is called with nothing when a client's departure cancels its request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        drain: Drain,
        body_timeout_s: float,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.drain = drain
        self.body_timeout_s = body_timeout_s
        self.on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            await _unavailable()(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        body_deadline = loop.time() + self.body_timeout_s
        body_done = asyncio.Event()
        started = False
        finished = False

        async def guarded_receive() -> Message:
            if body_done.is_set():
                return await receive()
            try:
                async with asyncio.timeout_at(body_deadline):
                    message = await receive()
            except TimeoutError:
                raise ApiError(
                    408,
                    "request_timeout",
                    f"the request body did not arrive within {self.body_timeout_s:g} s",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done.set()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        inner: asyncio.Task[None] = loop.create_task(_run(self.app, scope, guarded_receive, guarded_send))
        self.drain.running.add(inner)
        waits: set[asyncio.Task[None]] = {inner}
        watcher = None
        if scope["method"] in _BODY_METHODS:
            watcher = loop.create_task(_client_gone(receive, body_done))
            waits.add(watcher)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if not inner.done() and not finished:  # the client went away first
                inner.cancel()
                if self.on_disconnect is not None:
                    self.on_disconnect()
            await asyncio.wait({inner})
        finally:
            if not inner.done():  # this task itself was cancelled (the server gave up on the connection)
                inner.cancel()
            if watcher is not None:
                watcher.cancel()
            self.drain.running.discard(inner)
        if inner.cancelled():
            if inner in self.drain.expired and not started:
                await _unavailable()(scope, receive, send)
            return
        inner.result()  # re-raise what the app raised


async def _run(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    await app(scope, receive, send)


async def _client_gone(receive: Receive, body_done: asyncio.Event) -> None:
    """Returns when the client disconnects after sending its whole body (what uvicorn's ``receive`` then says)."""
    await body_done.wait()
    while (await receive())["type"] != "http.disconnect":
        pass


def _unavailable() -> ASGIApp:
    return error_response(
        503,
        "unavailable",
        "the server is shutting down; retry on another instance or in a moment",
        headers={"Retry-After": "1", "Connection": "close"},
    )
