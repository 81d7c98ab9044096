"""Bounded fuzz run of the upload endpoints (detect, batch, beautify, reconstruct, reconstruct jobs) and the job URLs
with malformed inputs: counts status codes per input kind, fails on any 5xx, and checks that the server is still
healthy (it still detects and reconstructs) and its memory flat afterwards.

    RETINASERVE_WEIGHTS_DIR=../shared/weights/3d python benchmarks/serve_fuzz.py \
        --image ../shared/images/six_people.jpg --requests 10000 --json out/fuzz.json

Starts the server on 127.0.0.1 (a free port) with a 2 MiB upload limit (so oversized bodies are cheap to send) and
its default 3D model (weights resolved through ``$RETINASERVE_WEIGHTS_DIR``, passed on to the server), sends
``--requests`` cases from ``--concurrency`` clients (bounded also by ``--max-seconds``; a case is one request, or a
few on one job), and samples the server's resident memory before, during and after. A 4xx must carry the service's
``{"error": {...}}`` shape; answers outside what a case's contract allows are listed with the failures. Jobs the run
created are waited for (``--drain-seconds``), then cancelled, before the checks after the run. Not part of the
test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import random
import re
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import psutil
from PIL import Image
from serve_common import running_server

UPLOAD_LIMIT_MB = 2
RECONSTRUCT_ENDPOINTS = ("/v1/reconstruct", "/v1/jobs/reconstruct")
JOB_URLS = "/v1/jobs/{id}"
ENDPOINTS = ("/v1/detect", "/v1/detect/batch", "/v1/beautify", *RECONSTRUCT_ENDPOINTS, JOB_URLS)
"""What the cases pick from (``--endpoints``): the upload endpoints, and JOB_URLS for requests on job URLs."""
REAL_JOBS_KEPT = 8
"""Ids of jobs the run created that job-URL cases reuse (the newest)."""
EVENTS_MAX_S = 2.0
EVENTS_MAX_BYTES = 64 * 1024
"""An events stream is read until it ends, for at most this long and this many bytes."""
TERMINAL_STATES = ("done", "failed", "cancelled")

Case = tuple[str, list[dict[str, Any]]]
"""(kind, the requests to send in order: keyword arguments for httpx2's request (method, url, content/files/headers/
params), plus optional ``expect``, the statuses the contract allows, and ``stream``, read as server-sent events).
A ``{job}`` in a url stands for the job an earlier request of the case created; without one the case stops."""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, rows: int | None = None) -> bytes:
    """A grayscale PNG declaring width x height whose zero rows compress to almost nothing (all rows if None)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def gif_huge_screen(width: int, height: int) -> bytes:
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00;"
    return header + image


def bmp_huge(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54 + 12, 0, 0, 54) + info + b"\x00" * 12


def jpeg_huge_sof(template: bytes, width: int, height: int) -> bytes:
    """The template JPEG with its frame header claiming another size."""
    data = bytearray(template)
    index = data.find(b"\xff\xc0")
    if index < 0:
        index = data.find(b"\xff\xc2")
    struct.pack_into(">HH", data, index + 5, height, width)
    return bytes(data)


def encodings(image: Image.Image) -> dict[str, bytes]:
    out = {}
    for fmt, kwargs in (("JPEG", {"quality": 85}), ("PNG", {}), ("WEBP", {"quality": 80}), ("GIF", {}),
                        ("BMP", {}), ("TIFF", {}), ("PPM", {})):  # fmt: skip
        buffer = io.BytesIO()
        (image.convert("P") if fmt == "GIF" else image).save(buffer, format=fmt, **kwargs)
        out[fmt] = buffer.getvalue()
    return out


NOT_IMAGES = [
    b"hello world\n",
    b"<!doctype html><html><body><img src=x></body></html>",
    b'{"image": "http://127.0.0.1/evil.jpg"}',
    b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
    b"PK\x03\x04" + bytes(100),
    b"\x7fELF\x02\x01\x01" + bytes(200),
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10000" height="10000"/>',
    b"\x00" * 1000,
    b"GIF8",
    b"\x89PN",
    b"RIFF\x00\x00\x00\x00WAVEfmt ",
    b"http://127.0.0.1:8080/v1/detect",
]

DETECT_PARAMS = [
    {"threshold": "-1"}, {"threshold": "nan"}, {"threshold": "0.5"}, {"long_side": "1000000000"},
    {"long_side": "-3"}, {"det_size": "0x0"}, {"det_size": "99999x2"}, {"det_size": "640x640"},
    {"max_faces": "-5"}, {"max_faces": "x"}, {"landmarks": "perhaps"}, {"strength": "7"}, {"format": "gif"},
    {"long_side": "320", "det_size": "320x320"}, {"unknown": "1"}, {"nms": "0"},
]  # fmt: skip

RECONSTRUCT_PARAMS = [
    {"texture_size": "0"}, {"texture_size": "-1"}, {"texture_size": "333"}, {"texture_size": "99999"},
    {"texture_size": "x"}, {"texture_size": "256"}, {"max_faces": "0"}, {"max_faces": "1000"}, {"max_faces": "nan"},
    {"format": "gif"}, {"format": ""}, {"face": "-1"}, {"face": "99"}, {"face": "a"}, {"model": "nope"},
    {"model": "retinaface-mnv2"},  # a detector, not a 3D model
    {"model": "3ddfa-v2-mb05"},  # registered, not the one loaded
    {"format": "json", "max_faces": "1", "texture_size": "256"}, {"format": "obj", "face": "1"},
]  # fmt: skip

BAD_JOB_IDS = {
    "garbage": ["x", "0", "-1", "null", "%00", "a b", "id;rm", "id?format=json", "#", "*", "", "%"],
    "overlong": ["a" * 64, "a" * 65, "b" * 4000, "%41" * 1000],
    "unicode": ["ünïcødé", "😀" * 8, "\u202eevil", "ＡＢＣ", "%C0%AE%C0%AE", "Ω" * 64, "%FF%FE"],
    "traversal": ["../../healthz", "..%2F..%2Fhealthz", "%2e%2e", "%2e%2e%2f%2e%2e%2fv1%2fmodels", "../reconstruct",
                  "....//....//etc/passwd", "..\\..\\windows", "./.", "%2F"],
}  # fmt: skip
"""Ids no job has, by kind (the client resolves plain ``..`` segments itself; encoded ones reach the server)."""

RESULT_PARAMS = [
    {}, {"format": "gif"}, {"format": ""}, {"format": "GLB"}, {"format": "json"}, {"format": "obj"}, {"face": "-1"},
    {"face": "99"}, {"face": "a"}, {"face": "1e3"}, {"format": "obj", "face": "99"}, {"format": "json", "face": "-1"},
]  # fmt: skip

LAST_EVENT_IDS: list[str | bytes] = [
    "", "-1", "0", "1", "3", "abc", "1.5", "0x10", "1e9", "9" * 30, "9" * 5000, b"\xb2", b"\xb9\xb2", b"\xff\xfe",
]  # fmt: skip
"""Last-Event-ID values; bytes go as they are (0xB2, 0xB9: Latin-1 superscript digits, which str.isdigit accepts)."""

ODD_METHODS = ("POST", "PUT", "PATCH", "OPTIONS")


class CaseFactory:
    """Random malformed (and some valid) requests, reproducible from the seed (but for the job ids they reuse)."""

    def __init__(self, photo: Path, seed: int, endpoints: tuple[str, ...] = ENDPOINTS) -> None:
        self.rng = random.Random(seed)
        self.endpoints = endpoints
        self.jobs: collections.deque[str] = collections.deque(maxlen=REAL_JOBS_KEPT)
        """Ids of jobs the run created (the server's answers add them), for the job-URL cases."""
        image = Image.open(photo).convert("RGB")
        self.valid = encodings(image.resize((image.width // 2, image.height // 2)))
        self.full_jpeg = photo.read_bytes()
        self.bombs = [
            png_bomb(20_000, 20_000, rows=4),  # header says 400 Mpx
            png_bomb(6_000, 5_000),  # a real 30 Mpx all-zero image in ~30 KB: over the 25 Mpx limit
            png_bomb(4_000, 4_000),  # a real 16 Mpx all-zero image: under the limit, decoded and run
            gif_huge_screen(60_000, 60_000),
            bmp_huge(50_000, 50_000),
            bmp_huge(-5, 100),
            jpeg_huge_sof(self.full_jpeg, 65_000, 65_000),
            png_bomb(1, 100_000_000, rows=1),
            png_bomb(0, 0, rows=0),
        ]
        self.kinds: list[tuple[str, Callable[[], bytes], float]] = [
            ("valid", lambda: self.rng.choice(list(self.valid.values())), 0.06),
            ("empty", lambda: b"", 0.06),
            ("truncated", self.truncated, 0.18),
            ("corrupted", self.corrupted, 0.16),
            ("random_bytes", lambda: self.rng.randbytes(self.rng.randint(1, 20_000)), 0.08),
            ("magic_then_garbage", self.magic_then_garbage, 0.10),
            ("not_an_image", lambda: self.rng.choice(NOT_IMAGES), 0.10),
            ("bomb", lambda: self.rng.choice(self.bombs), 0.08),
            (
                "oversized",
                lambda: b"\xff\xd8\xff" + bytes(UPLOAD_LIMIT_MB * 1024 * 1024 + self.rng.randint(1, 50_000)),
                0.02,
            ),
        ]

    def truncated(self) -> bytes:
        data = self.rng.choice([*self.valid.values(), self.full_jpeg])
        return data[: self.rng.randint(1, len(data) - 1)]

    def corrupted(self) -> bytes:
        data = bytearray(self.rng.choice(list(self.valid.values())))
        for _ in range(self.rng.randint(1, 50)):
            position = (
                self.rng.randrange(len(data)) if self.rng.random() < 0.5 else self.rng.randrange(min(len(data), 400))
            )
            data[position] = self.rng.randrange(256)
        return bytes(data)

    def magic_then_garbage(self) -> bytes:
        magic = self.rng.choice([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
                                 b"RIFF\x10\x00\x00\x00WEBPVP8 ", b"P6\n", b"P5 "])  # fmt: skip
        return magic + self.rng.randbytes(self.rng.randint(0, 3000))

    def payload(self) -> tuple[str, bytes]:
        kinds, weights = [k for k, _, _ in self.kinds], [w for _, _, w in self.kinds]
        kind = self.rng.choices(kinds, weights)[0]
        make = next(m for k, m, _ in self.kinds if k == kind)
        return kind, make()

    def params(self, endpoint: str) -> dict[str, str]:
        """Mostly none; else bad (and a few good) options, the reconstruct ones mostly for the reconstruct endpoints."""
        reconstruct = endpoint in RECONSTRUCT_ENDPOINTS
        if self.rng.random() > (0.3 if reconstruct else 0.15):
            return {}
        own, other = (RECONSTRUCT_PARAMS, DETECT_PARAMS) if reconstruct else (DETECT_PARAMS, RECONSTRUCT_PARAMS)
        return self.rng.choice(own if self.rng.random() < 0.8 else other)

    def case(self) -> Case:
        endpoint = self.rng.choice(self.endpoints)
        return self.job_case() if endpoint == JOB_URLS else self.upload_case(endpoint)

    def upload_case(self, endpoint: str) -> Case:
        """One upload: a payload as a raw body, a multipart file (lying name and type), or a broken envelope."""
        kind, data = self.payload()
        post = {"method": "POST", "url": endpoint, "params": self.params(endpoint)}
        style = self.rng.random()
        name = self.rng.choice(["photo.jpg", "x.png", "a.txt", "../../etc/passwd", "", "évil.gif"])
        ctype = self.rng.choice(["image/jpeg", "image/png", "text/plain", "application/octet-stream", "video/mp4"])
        if endpoint == "/v1/detect/batch" or style < 0.4:
            files = [("files", (name, data, ctype))]
            # a batch takes up to 16 files (21 is refused), a reconstruct one (a second is refused)
            extra = 20 if endpoint == "/v1/detect/batch" else 1 if endpoint in RECONSTRUCT_ENDPOINTS else 0
            for _ in range(self.rng.randint(0, extra)):
                other_kind, other = self.payload()
                if other_kind not in ("oversized", "valid"):
                    files.append(("files", (name, other, ctype)))
            return f"multipart/{kind}", [{**post, "files": files}]
        if style < 0.45:
            body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n' + data[:5000]
            if self.rng.random() < 0.5:
                body += b"\r\n--b--\r\n"
            boundary = self.rng.choice(["b", "", "x" * 300, "b; charset=utf-8"])
            headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            return "broken_multipart", [{**post, "content": body, "headers": headers}]
        if style < 0.5 and kind != "oversized":

            async def chunks(payload: bytes = data) -> AsyncIterator[bytes]:
                for start in range(0, len(payload), 65_536):
                    yield payload[start : start + 65_536]

            return f"chunked/{kind}", [{**post, "content": chunks()}]
        return f"raw/{kind}", [{**post, "content": data, "headers": {"Content-Type": ctype}}]

    def job_case(self) -> Case:
        """Requests on job URLs: ids no job has (garbage, overlong, unicode, path traversal) or a real one (a job
        this run created, sometimes altered), with bad format/face, garbage Last-Event-ID on the events stream,
        methods the URL does not take; a real job deleted twice; or a new job's whole life (``job_life``)."""
        roll = self.rng.random()
        if roll < 0.1:
            return "job/life", self.job_life()
        if roll < 0.15 and self.jobs:
            url = f"/v1/jobs/{self.rng.choice(self.jobs)}"
            either = {200, 404}  # cancelled or deleted, then deleted or already gone
            return "job/real/delete_twice", [
                {"method": "DELETE", "url": url, "expect": either},
                {"method": "DELETE", "url": url, "expect": either},
                {"method": "GET", "url": url, "expect": either},
            ]
        if roll < 0.65 and self.jobs:
            job = self.rng.choice(self.jobs)
            ids, job = ("real", job) if self.rng.random() < 0.85 else ("real_altered", self.alter(job))
        else:
            ids = self.rng.choice(list(BAD_JOB_IDS))
            job = self.rng.choice(BAD_JOB_IDS[ids])
        actions = {"get": 2, "events": 2, "result": 3, "texture": 2, "delete": 1, "method": 1}
        action = self.rng.choices(list(actions), list(actions.values()))[0]
        suffix = {"events": "/events", "result": "/result", "texture": "/texture"}.get(action, "")
        request: dict[str, Any] = {"method": "GET", "url": f"/v1/jobs/{job}{suffix}"}
        if action in ("result", "texture"):
            request["params"] = self.rng.choice(RESULT_PARAMS)
        elif action == "events":
            request["stream"] = True
            if self.rng.random() < 0.8:
                request["headers"] = {"Last-Event-ID": self.rng.choice(LAST_EVENT_IDS)}
        elif action == "delete":
            request["method"] = "DELETE"
        elif action == "method":
            request["method"] = self.rng.choice(ODD_METHODS)
            request["url"] += self.rng.choice(["", "/events", "/result", "/texture"])
            if request["method"] != "OPTIONS":
                request["content"] = self.rng.choice(list(self.valid.values()))
        return f"job/{ids}/{action}", [request]

    def alter(self, job: str) -> str:
        return self.rng.choice([job.upper(), job[:-1], job + "x", job + "/", f"{job}%00", job[::-1], f"./{job}"])

    def job_life(self) -> list[dict[str, Any]]:
        """A new (small, cheap) job against the contract: result and texture before it is done (409), DELETE
        cancels it (200), a second DELETE removes it (200), a third and its URLs afterwards answer 404."""
        job = "/v1/jobs/{job}"
        create = {"method": "POST", "url": "/v1/jobs/reconstruct", "content": self.valid["JPEG"]}
        return [
            {**create, "params": {"max_faces": "1", "texture_size": "256"}, "expect": {202, 429}},
            {"method": "GET", "url": f"{job}/result", "expect": {409}},
            {"method": "GET", "url": f"{job}/texture", "params": {"face": "0"}, "expect": {409}},
            {"method": "DELETE", "url": job, "expect": {200}},
            {"method": "DELETE", "url": job, "expect": {200}},
            {"method": "DELETE", "url": job, "expect": {404}},
            {"method": "GET", "url": f"{job}/events", "stream": True, "expect": {404}},
            {"method": "GET", "url": f"{job}/result", "params": {"format": "json"}, "expect": {404}},
        ]


@dataclass
class Answer:
    """What came back for one request: its status (0: the server dropped the connection), body, what was wrong."""

    status: int
    text: str = ""
    problem: str | None = None
    cut_off: bool = False
    """An events stream still open after EVENTS_MAX_S: normal while its job runs."""


def error_shaped(text: str) -> bool:
    """Whether a body is the service's error shape, ``{"error": {"code": ..., "message": ...}}``."""
    try:
        body = json.loads(text)
    except ValueError:
        return False
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and "code" in error and "message" in error


def event_problem(text: str, last_event_id: str | bytes | None) -> str | None:
    """What is wrong with a stream of server-sent events, if anything: ids that are not ascending integers, or
    not after a numeric Last-Event-ID; data that is not JSON."""
    ids = []
    for line in text.splitlines():
        field, _, value = line.partition(":")
        if field == "id":
            if not value.strip().isdecimal():
                return f"event id is not a number: {line[:120]!r}"
            ids.append(int(value))
        elif field == "data":
            try:
                json.loads(value)
            except ValueError:
                return f"event data is not JSON: {line[:120]!r}"
    if ids != sorted(set(ids)):
        return f"event ids not ascending: {ids[:20]}"
    header = last_event_id.strip() if isinstance(last_event_id, str) else ""
    if header.isdecimal() and ids and ids[0] <= int(header[:30]):
        return f"event {ids[0]} sent after Last-Event-ID {header[:30]}"
    return None


async def read_events(client: httpx2.AsyncClient, request: dict[str, Any]) -> Answer:
    """GET a job's events: a 200's first EVENTS_MAX_BYTES, until the stream ends (after the job's terminal event)
    or EVENTS_MAX_S pass. A stream cut off although its job had ended well before it opened is a problem."""
    opened = time.time()
    async with client.stream(**request) as response:
        if response.status_code != 200:
            await response.aread()
            return Answer(response.status_code, response.text)
        data, cut_off, broke = b"", False, None
        try:
            async with asyncio.timeout(EVENTS_MAX_S):
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) >= EVENTS_MAX_BYTES:
                        break
        except TimeoutError:
            cut_off = True
        except httpx2.TransportError as exc:
            broke = f"the stream broke: {exc!r}"
    text = data.decode(errors="replace")
    answer = Answer(200, text, broke or event_problem(text, request.get("headers", {}).get("Last-Event-ID")), cut_off)
    if cut_off and answer.problem is None:
        job = await client.get(request["url"].removesuffix("/events"))
        state = job.json() if job.status_code == 200 else {}
        ended = state.get("created", 0.0) + state.get("timings_ms", {}).get("total", 0.0) / 1e3
        if state.get("state") in TERMINAL_STATES and ended < opened - 0.5:
            answer.problem = (
                f"the events stream of a job {state['state']} {opened - ended:.1f} s before it opened was still "
                f"open after {EVENTS_MAX_S:g} s"
            )
    return answer


async def send(client: httpx2.AsyncClient, request: dict[str, Any], *, stream: bool) -> Answer:
    try:
        if stream:
            return await read_events(client, request)
        response = await client.request(**request)
        return Answer(response.status_code, response.text)
    except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.WriteError) as exc:
        return Answer(0, problem=repr(exc))  # e.g. the server answered 413 and closed before reading the rest


def route(request: dict[str, Any]) -> str:
    """The endpoint a request went to, without the job id: "GET /v1/jobs/{id}/events"."""
    url = request["url"]
    if url.startswith("/v1/jobs/") and url not in RECONSTRUCT_ENDPOINTS:
        last = url.rsplit("/", 1)[-1]
        url = JOB_URLS + (f"/{last}" if last in ("events", "result", "texture") else "")
    return f"{request['method']} {url}"


def describe(request: dict[str, Any]) -> dict[str, Any]:
    """A request as the report lists it: method, url, params and headers as sent, the body's size and first bytes."""
    out = {key: request[key] for key in ("method", "url", "params") if request.get(key)}
    if request.get("headers"):
        out["headers"] = {k: (v if isinstance(v, str) else repr(v))[:100] for k, v in request["headers"].items()}
    content = request.get("content")
    if isinstance(content, bytes):
        out["body"] = f"{len(content)} bytes: {content[:48]!r}"
    elif content is not None:
        out["body"] = "sent in chunks"
    if request.get("files"):
        out["files"] = [
            f"{field}: {name!r} {ctype} {len(data)} bytes" for field, (name, data, ctype) in request["files"]
        ]
    return out


def keep_payload(request: dict[str, Any], path: Path) -> str | None:
    """Write a failing request's body (or first file) to ``path`` to replay it; None when it was streamed."""
    data = request["files"][0][1][1] if request.get("files") else request.get("content")
    if not isinstance(data, bytes):
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


async def drain(client: httpx2.AsyncClient, jobs: list[str], timeout_s: float) -> dict[str, int]:
    """Wait up to ``timeout_s`` for the jobs the run created to end, then cancel the rest: how many ended how."""
    deadline = time.monotonic() + timeout_s
    ended: collections.Counter[str] = collections.Counter()
    while jobs:
        running = []
        for job in jobs:
            response = await client.get(f"/v1/jobs/{job}")
            state = response.json().get("state") if response.status_code == 200 else None
            if state is None:
                ended["gone" if response.status_code == 404 else f"status {response.status_code}"] += 1
            elif state in TERMINAL_STATES:
                ended[state] += 1
            else:
                running.append(job)
        jobs = running
        if not jobs or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    for job in jobs:
        ended[f"cancelled by the fuzz (DELETE: {(await client.delete(f'/v1/jobs/{job}')).status_code})"] += 1
    return dict(sorted(ended.items()))


async def fuzz(base: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    factory = CaseFactory(args.image, args.seed, tuple(args.endpoints))
    process = psutil.Process(pid)
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    routes: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    cut_off: collections.Counter[str] = collections.Counter()
    failures: list[dict[str, Any]] = []
    created: list[str] = []
    memory: list[tuple[int, float]] = []
    sent = 0
    deadline = time.monotonic() + args.max_seconds
    lock = asyncio.Lock()
    async with httpx2.AsyncClient(base_url=base, timeout=60) as client:
        for _ in range(20):  # warm up with valid images so memory is measured after the pools are allocated
            await client.post("/v1/detect", content=factory.full_jpeg)
        for _ in range(2):
            await client.post("/v1/reconstruct", content=factory.full_jpeg, params={"format": "json"})
        memory.append((0, process.memory_info().rss / 2**20))

        async def worker() -> None:
            nonlocal sent
            while True:
                async with lock:
                    if sent >= args.requests or time.monotonic() > deadline:
                        return
                    sent += 1
                    number = sent
                    kind, steps = factory.case()
                job = None
                for step, template in enumerate(steps):
                    request = dict(template)
                    expect, stream = request.pop("expect", None), request.pop("stream", False)
                    if "{job}" in request["url"]:
                        if job is None:
                            break  # the case's job was not created (e.g. the queue was full)
                        request["url"] = request["url"].replace("{job}", job)
                    answer = await send(client, request, stream=stream)
                    status, problem = answer.status, answer.problem
                    statuses[kind][status] += 1
                    routes[route(request)][status] += 1
                    cut_off[kind] += answer.cut_off
                    if status == 0 and kind.endswith("oversized"):
                        problem = None
                    elif status >= 500:
                        problem = "server error"
                    elif status >= 400 and not error_shaped(answer.text):
                        problem = "a 4xx without the {'error': {...}} shape"
                    elif expect and status not in expect:
                        problem = problem or f"expected {sorted(expect)}"
                    if problem:
                        failure = {"kind": kind, "status": status, "problem": problem, "request": describe(request)}
                        if status >= 500 and len(failures) < 50:
                            failure["payload"] = keep_payload(request, args.log.parent / f"5xx/{number}-{step}.bin")
                        failures.append({**failure, "body": answer.text[:300]})
                    if status == 202:
                        job = json.loads(answer.text)["id"]
                        factory.jobs.append(job)
                        created.append(job)
                if number % 1000 == 0:
                    memory.append((number, process.memory_info().rss / 2**20))

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.monotonic() - started
        memory.append((sent, process.memory_info().rss / 2**20))
        jobs_after = await drain(client, created, args.drain_seconds)
        drained_mib = process.memory_info().rss / 2**20
        metrics = (await client.get("/metrics")).text
        held = re.search(r"^retinaserve_job_result_bytes (\S+)$", metrics, re.MULTILINE)
        health = (await client.get("/healthz")).status_code
        ready = (await client.get("/readyz")).status_code
        check = await client.post("/v1/detect", content=factory.full_jpeg)
        rebuilt = await client.post("/v1/reconstruct", content=factory.full_jpeg, params={"format": "json"})
    totals: collections.Counter[int] = collections.Counter()
    for counter in statuses.values():
        totals.update(counter)
    return {
        "requests": sent,
        "http_requests": sum(totals.values()),
        "seconds": round(elapsed, 1),
        "status_totals": dict(sorted(totals.items())),
        "by_kind": {kind: dict(sorted(c.items())) for kind, c in sorted(statuses.items())},
        "by_route": {name: dict(sorted(c.items())) for name, c in sorted(routes.items())},
        "server_errors_5xx": sum(n for status, n in totals.items() if status >= 500),
        "failures": failures[:50],
        "events_cut_off": {kind: n for kind, n in sorted(cut_off.items()) if n},
        "jobs_created": len(created),
        "jobs_after_run": jobs_after,
        "healthz_after": health,
        "readyz_after": ready,
        "detect_after": {"status": check.status_code, "faces": len(check.json().get("faces", []))},
        "reconstruct_after": {"status": rebuilt.status_code, "faces": len(rebuilt.json().get("faces", []))},
        "rss_mib": [(n, round(mib, 1)) for n, mib in memory],
        "rss_mib_after_jobs": round(drained_mib, 1),
        "job_results_mib_held": round(float(held[1]) / 2**20, 1) if held else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, required=True, help="a real photo (the valid inputs are made from it)")
    parser.add_argument("--model", default=None)
    parser.add_argument(
        "--endpoints", nargs="+", choices=ENDPOINTS, default=list(ENDPOINTS), help="what the cases pick from"
    )
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--drain-seconds", type=float, default=60, help="wait for the run's jobs, then cancel them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--log", type=Path, default=Path("out/serve_fuzz/server.log"))
    args = parser.parse_args()
    flags = [
        "--max-upload-mb",
        str(UPLOAD_LIMIT_MB),
        "--log-level",
        "warning",
        *(["--model", args.model] if args.model else []),
    ]
    with running_server(flags, log_path=args.log) as (base, pid):
        report = asyncio.run(fuzz(base, pid, args))
    log_text = args.log.read_text()
    report["server_log_tracebacks"] = log_text.count("Traceback")
    print(json.dumps({k: v for k, v in report.items() if k not in ("by_kind", "by_route")}, indent=1))
    print("\nby input kind:")
    for kind, counts in report["by_kind"].items():
        print(f"  {kind:32} {counts}")
    print("\nby route:")
    for name, counts in report["by_route"].items():
        print(f"  {name:32} {counts}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    rebuilt = report["reconstruct_after"]
    if (
        report["server_errors_5xx"]
        or report["healthz_after"] != 200
        or report["detect_after"]["status"] != 200
        or rebuilt["status"] != 200
        or rebuilt["faces"] < 1
    ):
        raise SystemExit("FAILED: 5xx answers or an unhealthy server after the run")


if __name__ == "__main__":
    main()
