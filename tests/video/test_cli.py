"""``retinaserve video`` end to end on real clips: JSONL, drawn and anonymised MP4s, image sequences, bad sources
next to good ones (each with its own error, the others complete), a stream cut mid-way, and Ctrl-C."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from retinaserve.cli import main
from retinaserve.detection.results import Face, Landmarks
from retinaserve.video import IoUTracker, VideoWriter, anonymise, grown_box
from retinaserve.video.sources import source_kind

from ..conftest import WEIGHT_DIRS, WEIGHTS
from .clips import Clip, decode_frames, pan_clip, write_clip

SLIM = ["--model", "ultralight-slim", "--weights", str(WEIGHTS / "slim_Final.pth"), "--backend", "onnx"]
PICTURES = Path(__file__).resolve().parents[2] / "out" / "screenshots"


def _video(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = main(["video", *argv, *SLIM, "-q"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def _faces(line: dict[str, Any]) -> list[Face]:
    return [
        Face(tuple(f["box"]), f["score"], Landmarks(*[tuple(p) for p in f["landmarks"].values()]))  # type: ignore[arg-type]
        for f in line["faces"]
    ]


def test_jsonl_drawn_video_and_summary(
    crowd_pan: Clip, portraits: Clip, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl = tmp_path / "faces.jsonl"
    code, summary, _ = _video(
        [str(crowd_pan.path), str(portraits.path), "--draw", "--out", str(tmp_path), "--jsonl", str(jsonl)], capsys
    )
    assert code == 0
    assert [s["frames_processed"] for s in summary["streams"]] == [crowd_pan.frames, portraits.frames]
    assert all(s["complete"] for s in summary["streams"])
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for clip in (crowd_pan, portraits):
        own = [line for line in lines if line["source"] == str(clip.path)]
        assert [line["frame"] for line in own] == list(range(clip.frames))
        assert own[0]["pts"] == 0.0
        assert all("track_id" in face and face["track_id"] > 0 for line in own for face in line["faces"])
    drawn = tmp_path / "crowd_pan.mp4"
    assert [str(drawn), str(tmp_path / "portraits.mp4")] == summary["outputs"]
    frames = decode_frames(drawn)
    assert len(frames) == crowd_pan.frames and frames[0].shape == (360, 640, 3)
    # the box colour is drawn where the faces are
    green = np.all(np.abs(frames[10].astype(int) - (40, 220, 60)) < 40, axis=2).sum()
    assert green > 500
    PICTURES.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(PICTURES / "video_draw_crowd_pan.png"), cv2.cvtColor(frames[10], cv2.COLOR_RGB2BGR))


def test_blur_changes_the_faces_and_leaves_the_rest(
    six_zoom: Clip, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jsonl = tmp_path / "faces.jsonl"
    code, _summary, _ = _video([str(six_zoom.path), "--blur", "--out", str(tmp_path), "--jsonl", str(jsonl)], capsys)
    assert code == 0
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    before, after = decode_frames(six_zoom.path), decode_frames(tmp_path / "six_zoom.mp4")
    assert len(after) == len(before) == six_zoom.frames
    with VideoWriter(tmp_path / "plain.mp4", six_zoom.fps) as writer:  # the encoder's own loss, for comparison
        for frame in before:
            writer.write(frame)
    plain = decode_frames(tmp_path / "plain.mp4")
    tracker = IoUTracker()  # replays the run's tracks: where lost faces were expected is covered too
    held = [(tracker.update(i, _faces(line)), tracker.held(i, 12))[1] for i, line in enumerate(lines)]
    for index in (0, 15, 29):
        faces = _faces(lines[index])
        assert len(faces) >= 3, index  # faces leave the view as the pan goes on
        inside = np.zeros(before[index].shape[:2], bool)
        near = np.zeros_like(inside)
        for face in [*faces, *held[index]]:
            x1, y1, x2, y2 = grown_box(face, 960, 540)
            inside[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4] = True
            near[max(0, y1 - 16) : y2 + 16, max(0, x1 - 16) : x2 + 16] = True  # H.264 blocks around the edges
        diff = np.abs(after[index].astype(int) - before[index].astype(int)).mean(axis=2)
        loss = np.abs(plain[index].astype(int) - before[index].astype(int)).mean(axis=2)
        assert diff[inside].mean() > 4 * loss[inside].mean() + 4, "the faces are not hidden"
        assert diff[~near].mean() < 1.2 * loss[~near].mean() + 0.3, "the rest changed beyond the encoder's loss"
    cv2.imwrite(str(PICTURES / "video_blur_six_zoom.png"), cv2.cvtColor(after[15], cv2.COLOR_RGB2BGR))


def test_auto_backend_is_measured_on_the_frames(
    crowd_pan: Clip, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--backend auto`` times OpenVINO and ONNX Runtime on frames of the source's size and runs the faster."""
    argv = [str(crowd_pan.path), "--model", "ultralight-slim", "--weights", str(WEIGHTS / "slim_Final.pth")]
    assert main(["video", *argv, "--every", "10"]) == 0
    captured = capsys.readouterr()
    line = next(line for line in captured.err.splitlines() if line.startswith("engine for 640x360 frames"))
    measured = dict(re.findall(r"(openvino-fp32|onnx-fp32)\S* ?\w* ([0-9.]+) ms", line))
    assert set(measured) == {"openvino-fp32", "onnx-fp32"}, line
    summary = json.loads(captured.out)
    assert summary["backend"].startswith(min(measured, key=lambda k: float(measured[k])))
    assert summary["streams"][0]["frames_processed"] == 3


@pytest.mark.parametrize("mode", ["blur", "pixelate"])
def test_anonymise_touches_only_the_grown_boxes(mode: str) -> None:
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    face = Face((100.0, 50.0, 160.0, 130.0), 0.9, Landmarks(*[(130.0, 90.0)] * 5))
    out = anonymise(image, [face], mode)  # type: ignore[arg-type]
    x1, y1, x2, y2 = grown_box(face, 300, 200)
    assert (x1, y1, x2, y2) == (91, 38, 169, 142)
    mask = np.zeros((200, 300), bool)
    mask[y1:y2, x1:x2] = True
    np.testing.assert_array_equal(out[~mask], image[~mask])
    assert np.abs(out[mask].astype(int) - image[mask].astype(int)).mean() > 40  # noise averaged away
    assert out[mask].std() < image[mask].std() / 2


def test_image_sequences_by_glob_and_printf_pattern(
    portraits: Clip, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames = decode_frames(portraits.path)[::5]
    for i, frame in enumerate(frames):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    assert source_kind(str(tmp_path / "*.png")) == "sequence" == source_kind(str(tmp_path / "%03d.png"))
    jsonl = tmp_path / "faces.jsonl"
    code, _summary, _ = _video([str(tmp_path / "*.png"), str(tmp_path / "%03d.png"), "--jsonl", str(jsonl)], capsys)
    assert code == 0
    counts = {}
    for line in map(json.loads, jsonl.read_text().splitlines()):
        counts.setdefault(line["source"], []).append(len(line["faces"]))
    assert list(counts.values()) == [[1, 1, 6], [1, 1, 6]]  # grace_hopper, astronaut, six_people


class _CutStream(http.server.BaseHTTPRequestHandler):
    """Serves an MPEG-TS that promises its full length and stops half way (a camera stream that drops)."""

    payload = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "video/mp2t")
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload[: len(self.payload) // 2])
        self.wfile.flush()
        self.connection.close()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def cut_stream(crowd_pan: Clip, tmp_path: Path) -> Iterator[str]:
    ts = tmp_path / "clip.ts"
    with av.open(str(ts), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        for frame in decode_frames(crowd_pan.path):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    handler = type("Handler", (_CutStream,), {"payload": ts.read_bytes()})
    with socketserver.TCPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{server.server_address[1]}/clip.ts"
        server.shutdown()


def test_bad_sources_get_their_own_error_and_the_others_complete(
    crowd_pan: Clip, cut_stream: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    data = crowd_pan.path.read_bytes()
    no_index = tmp_path / "no_index.mp4"  # cut before the index that MP4 writes last
    no_index.write_bytes(data[: len(data) // 2])
    faststart = tmp_path / "faststart.mp4"  # index first, so the cut shows as missing frames
    frames = decode_frames(crowd_pan.path)
    write_clip(faststart, frames, 25, movflags_faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(faststart.read_bytes()[: faststart.stat().st_size // 2])
    sources = [
        str(crowd_pan.path),
        str(corrupt),
        str(no_index),
        str(cut),
        cut_stream,
        "/dev/video9",
        str(tmp_path / "missing.mp4"),
        "rtsp://127.0.0.1:9/none",
    ]
    start = time.perf_counter()
    code, summary, err = _video([*sources, "--timeout", "5"], capsys)
    assert time.perf_counter() - start < 60
    assert code == 1
    by_source = {s["source"]: s for s in summary["streams"]}
    assert by_source[str(crowd_pan.path)]["complete"]
    assert by_source[str(crowd_pan.path)]["frames_processed"] == crowd_pan.frames
    expected = {
        str(corrupt): "cannot open",
        str(no_index): "cannot open",
        str(cut): f"of its {crowd_pan.frames} frames",  # "read failed after" or "ended after"
        cut_stream: "read failed after",
        "/dev/video9": "no such device",
        str(tmp_path / "missing.mp4"): "no such file",
        "rtsp://127.0.0.1:9/none": "Connection refused",
    }
    for source, message in expected.items():
        assert not by_source[source]["complete"]
        assert message in by_source[source]["error"], by_source[source]["error"]
    assert by_source[str(cut)]["frames_processed"] > 0  # what was readable before the cut was still processed
    assert "Traceback" not in err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_ends_cleanly_with_the_summary_so_far(clip_dir: Path, tmp_path: Path, signum: int) -> None:
    """A live run interrupted by Ctrl-C (or a service manager's SIGTERM) exits 130 with the JSON summary, and its
    MP4 is finished and playable."""
    from ..conftest import CROWD

    long_clip = pan_clip(CROWD, clip_dir / "crowd_long.mp4", size=(640, 360), frames=250, fps=25)
    env = dict(os.environ, RETINASERVE_WEIGHTS_DIR=WEIGHT_DIRS)
    command = [sys.executable, "-m", "retinaserve", "video", str(long_clip.path), "--live", "--draw"]
    process = subprocess.Popen(
        [*command, "--out", str(tmp_path), *SLIM],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # SIGINT's default disposition, as in a terminal: a shell's background job (a CI runner's, say) starts with
        # it ignored, and Python then installs no KeyboardInterrupt handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 60
    while not process.stderr.readline().startswith("stream "):  # the live table's header: frames are flowing
        assert time.monotonic() < deadline and process.poll() is None
    process.send_signal(signum)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    summary = json.loads(out)
    assert summary["interrupted"] is True
    processed = summary["streams"][0]["frames_processed"]
    assert 0 < processed < long_clip.frames
    assert "Traceback" not in err
    assert len(decode_frames(tmp_path / "crowd_long.mp4")) == processed


def test_writer_keeps_the_source_times(tmp_path: Path) -> None:
    """Frames written with gaps (every 3rd frame of 30 fps) play at their own times."""
    path = tmp_path / "gaps.mp4"
    image = np.zeros((64, 96, 3), np.uint8)
    times = [i / 30 for i in range(0, 30, 3)]
    with VideoWriter(path, 10.0) as writer:
        for t in times:
            writer.write(image, t)
    with av.open(str(path)) as container:
        read = [float(frame.time) for frame in container.decode(video=0)]
    np.testing.assert_allclose(read, times, atol=1e-3)
