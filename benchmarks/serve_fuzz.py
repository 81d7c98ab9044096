"""Bounded fuzz run of the upload endpoints with malformed inputs: counts status codes per input kind, fails on
any 5xx, and checks that the server is still healthy and its memory flat afterwards.

    python benchmarks/serve_fuzz.py --image ../shared/images/six_people.jpg --requests 10000 --json out/fuzz.json

Starts the server on 127.0.0.1 (a free port) with a 2 MiB upload limit (so oversized bodies are cheap to send),
sends ``--requests`` requests from ``--concurrency`` clients (bounded also by ``--max-seconds``), and samples the
server's resident memory before, during and after. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import random
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx2
import psutil
from PIL import Image
from serve_common import running_server

UPLOAD_LIMIT_MB = 2
ENDPOINTS = ("/v1/detect", "/v1/detect/batch", "/v1/beautify")

Case = tuple[str, dict[str, Any]]
"""(kind, keyword arguments for httpx2's request: content/files/headers/params)."""


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


class CaseFactory:
    """Random malformed (and some valid) requests, reproducible from the seed."""

    def __init__(self, photo: Path, seed: int) -> None:
        self.rng = random.Random(seed)
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

    def params(self) -> dict[str, str]:
        if self.rng.random() > 0.15:
            return {}
        return self.rng.choice([
            {"threshold": "-1"}, {"threshold": "nan"}, {"threshold": "0.5"}, {"long_side": "1000000000"},
            {"long_side": "-3"}, {"det_size": "0x0"}, {"det_size": "99999x2"}, {"det_size": "640x640"},
            {"max_faces": "-5"}, {"max_faces": "x"}, {"landmarks": "perhaps"}, {"strength": "7"}, {"format": "gif"},
            {"long_side": "320", "det_size": "320x320"}, {"unknown": "1"}, {"nms": "0"},
        ])  # fmt: skip

    def case(self) -> Case:
        """One request: a payload as a raw body, a multipart file (lying name and type), or a broken envelope."""
        kind, data = self.payload()
        endpoint = self.rng.choice(ENDPOINTS)
        params = self.params()
        style = self.rng.random()
        name = self.rng.choice(["photo.jpg", "x.png", "a.txt", "../../etc/passwd", "", "évil.gif"])
        ctype = self.rng.choice(["image/jpeg", "image/png", "text/plain", "application/octet-stream", "video/mp4"])
        if endpoint == "/v1/detect/batch" or style < 0.4:
            files = [("files", (name, data, ctype))]
            if endpoint == "/v1/detect/batch":
                for _ in range(self.rng.randint(0, 20)):  # up to 21 files: more than 16 is refused
                    other_kind, other = self.payload()
                    if other_kind not in ("oversized", "valid"):
                        files.append(("files", (name, other, ctype)))
            return f"multipart/{kind}", {"url": endpoint, "files": files, "params": params}
        if style < 0.45:
            body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n' + data[:5000]
            if self.rng.random() < 0.5:
                body += b"\r\n--b--\r\n"
            boundary = self.rng.choice(["b", "", "x" * 300, "b; charset=utf-8"])
            headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            return "broken_multipart", {"url": endpoint, "content": body, "headers": headers, "params": params}
        if style < 0.5 and kind != "oversized":

            async def chunks(payload: bytes = data) -> AsyncIterator[bytes]:
                for start in range(0, len(payload), 65_536):
                    yield payload[start : start + 65_536]

            return f"chunked/{kind}", {"url": endpoint, "content": chunks(), "params": params}
        return f"raw/{kind}", {"url": endpoint, "content": data, "params": params, "headers": {"Content-Type": ctype}}


async def fuzz(base: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    factory = CaseFactory(args.image, args.seed)
    process = psutil.Process(pid)
    statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    failures: list[dict[str, Any]] = []
    memory: list[tuple[int, float]] = []
    sent = 0
    deadline = time.monotonic() + args.max_seconds
    lock = asyncio.Lock()
    async with httpx2.AsyncClient(base_url=base, timeout=60) as client:
        for _ in range(20):  # warm up with valid images so memory is measured after the pools are allocated
            await client.post("/v1/detect", content=factory.full_jpeg)
        memory.append((0, process.memory_info().rss / 2**20))

        async def worker() -> None:
            nonlocal sent
            while True:
                async with lock:
                    if sent >= args.requests or time.monotonic() > deadline:
                        return
                    sent += 1
                    number = sent
                    kind, request = factory.case()
                try:
                    response = await client.post(**request)
                    status = response.status_code
                    if status >= 400 and "error" not in response.json():
                        failures.append({"kind": kind, "status": status, "body": response.text[:300]})
                except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.WriteError) as exc:
                    status = 0  # the server closed the connection (e.g. it answered 413 before reading the rest)
                    if not kind.endswith("oversized"):
                        failures.append({"kind": kind, "status": 0, "error": repr(exc)})
                statuses[kind][status] += 1
                if status >= 500:
                    failures.append({"kind": kind, "status": status, "body": response.text[:300]})
                if number % 1000 == 0:
                    memory.append((number, process.memory_info().rss / 2**20))

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.monotonic() - started
        memory.append((sent, process.memory_info().rss / 2**20))
        health = (await client.get("/healthz")).status_code
        ready = (await client.get("/readyz")).status_code
        check = await client.post("/v1/detect", content=factory.full_jpeg)
    totals: collections.Counter[int] = collections.Counter()
    for counter in statuses.values():
        totals.update(counter)
    return {
        "requests": sent,
        "seconds": round(elapsed, 1),
        "status_totals": dict(sorted(totals.items())),
        "by_kind": {kind: dict(sorted(c.items())) for kind, c in sorted(statuses.items())},
        "server_errors_5xx": sum(n for status, n in totals.items() if status >= 500),
        "failures": failures[:50],
        "healthz_after": health,
        "readyz_after": ready,
        "detect_after": {"status": check.status_code, "faces": len(check.json().get("faces", []))},
        "rss_mib": [(n, round(mib, 1)) for n, mib in memory],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, required=True, help="a real photo (the valid inputs are made from it)")
    parser.add_argument("--model", default=None)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=900)
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
    print(json.dumps({k: v for k, v in report.items() if k != "by_kind"}, indent=1))
    print("\nby input kind:")
    for kind, counts in report["by_kind"].items():
        print(f"  {kind:32} {counts}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    if report["server_errors_5xx"] or report["healthz_after"] != 200 or report["detect_after"]["status"] != 200:
        raise SystemExit("FAILED: 5xx answers or an unhealthy server after the run")


if __name__ == "__main__":
    main()
