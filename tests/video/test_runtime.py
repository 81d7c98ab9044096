"""The multi-stream runtime on real clips made from the shared photos: per-frame detections equal still-image
detections of the same decoded frames, streams complete in order with batches across them, track ids follow the
faces of a pan, and live mode drops stale frames instead of queueing them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from retinaserve.detection import Detector
from retinaserve.engine.bucketing import PaddedResize
from retinaserve.video import CollectSink, IoUTracker, StreamRuntime, open_source

from ..conftest import SIX_PEOPLE
from .clips import Clip, decode_frames, load_rgb


def _run(detector: Detector, clips: list[Clip], **options: Any) -> tuple[StreamRuntime, list[CollectSink], dict]:
    sources = [open_source(str(c.path), i) for i, c in enumerate(clips)]
    sinks = [CollectSink() for _ in clips]
    runtime = StreamRuntime(detector, sources, **options)
    summary = runtime.run([[s] for s in sinks])
    return runtime, sinks, summary


def _same_faces(a: list[Any], b: list[Any]) -> None:
    assert len(a) == len(b)
    if a:
        np.testing.assert_allclose([f.box for f in a], [f.box for f in b], atol=1e-3)
        np.testing.assert_allclose([f.score for f in a], [f.score for f in b], atol=1e-5)
        np.testing.assert_allclose([f.landmarks.points() for f in a], [f.landmarks.points() for f in b], atol=1e-3)


def test_per_frame_detections_equal_still_image_detections(detector: Detector, crowd_pan: Clip, six_zoom: Clip) -> None:
    """Two streams at different resolutions, batched together: each frame's faces are those of the same decoded
    frame run alone as a still image (the same 16:9 aspect, so the detector's own resize applies)."""
    runtime, sinks, summary = _run(detector, [crowd_pan, six_zoom], max_batch=4)
    assert runtime.resize == detector.resize  # one input shape already: nothing padded
    assert summary["mean_batch"] > 1.5
    assert max(runtime.batches) == 4
    for clip, sink in zip([crowd_pan, six_zoom], sinks):
        frames = decode_frames(clip.path)
        assert [r.frame.index for r in sink.results] == list(range(clip.frames))
        for result, frame in zip(sink.results, frames):
            np.testing.assert_array_equal(result.frame.image, frame)
            _same_faces(result.faces, detector.run([frame])[0].faces)
    crowd_faces = [len(r.faces) for r in sinks[0].results]
    assert min(crowd_faces) > 30  # the crowd is found in every frame, not an empty result


def test_mixed_aspect_ratios_batch_at_their_own_scale(detector: Detector, six_zoom: Clip, clip_dir: Any) -> None:
    """A 4:3 stream beside a 16:9 one is padded to one input shape (so they batch), at the scale each has alone:
    faces equal the still detection at that padded shape and match the plain still detection closely."""
    from .clips import pan_clip

    four_three = pan_clip(SIX_PEOPLE, clip_dir / "six_43.mp4", size=(640, 480), frames=12, fps=25, crop=0.9)
    runtime, sinks, _ = _run(detector, [six_zoom, four_three], max_batch=4)
    assert isinstance(runtime.resize, PaddedResize)
    assert runtime.resize.shape == (640, 480)
    assert any(b > 1 for b in runtime.batches)
    for clip, sink in zip([six_zoom, four_three], sinks):
        for result, frame in zip(sink.results[::5], decode_frames(clip.path)[::5]):
            _same_faces(result.faces, detector.run([frame], resize=runtime.resize)[0].faces)
            plain = detector.run([frame])[0].faces
            assert len(result.faces) == len(plain)
            np.testing.assert_allclose([f.box for f in result.faces], [f.box for f in plain], atol=1.5)


def test_streams_complete_in_order_at_their_own_rates(
    detector: Detector, crowd_pan: Clip, six_zoom: Clip, portraits: Clip
) -> None:
    """Three streams (640x360 at 25 fps, 960x540 at 30, portrait 480x640 at 15) with every 2nd frame: each ends
    complete, its results in frame order, with its pts."""
    _runtime, sinks, summary = _run(detector, [crowd_pan, six_zoom, portraits], max_batch=4, every=2)
    for clip, sink, stream in zip([crowd_pan, six_zoom, portraits], sinks, summary["streams"]):
        indices = [r.frame.index for r in sink.results]
        assert indices == list(range(0, clip.frames, 2))
        assert stream["complete"] and stream["error"] is None
        assert stream["frames_decoded"] == clip.frames
        assert stream["frames_processed"] + stream["frames_skipped"] == clip.frames
        pts = [r.frame.pts for r in sink.results]
        np.testing.assert_allclose(pts, np.array(indices) / clip.fps, atol=1e-3)
    portrait_faces = [len(r.faces) for r in sinks[2].results]
    assert portrait_faces[0] == 1 and portrait_faces[-1] == 6  # grace_hopper first, six_people last


def test_track_ids_follow_the_faces_of_a_pan(detector: Detector, six_zoom: Clip) -> None:
    """Every detection mapped back to the photo names which of its six faces it is: each face keeps one track id
    for as long as it is in view, and no two faces share one."""
    _, (sink,), summary = _run(detector, [six_zoom])
    still = detector.run([load_rgb(SIX_PEOPLE)])[0].faces
    assert len(still) == 6
    centres = np.array([[(f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2] for f in still])
    ids_of: dict[int, set[int]] = {}
    for result in sink.results:
        x0, y0, scale = six_zoom.windows[result.frame.index]
        for face, track in zip(result.faces, result.track_ids):
            x1, y1, x2, y2 = face.box
            centre = np.array([x0 + (x1 + x2) / 2 / scale, y0 + (y1 + y2) / 2 / scale])
            distance = np.linalg.norm(centres - centre, axis=1)
            who = int(np.argmin(distance))
            if distance[who] < still[who].width / 3:  # a whole face, not one cut by the frame's edge
                ids_of.setdefault(who, set()).add(track)
    assert len(ids_of) >= 5
    assert all(len(ids) == 1 for ids in ids_of.values()), ids_of
    tracks = [next(iter(ids)) for ids in ids_of.values()]
    assert len(set(tracks)) == len(tracks)
    assert summary["streams"][0]["tracks"] <= 8  # faces cut at the edges may start one more each


def test_live_mode_keeps_the_newest_frame_and_counts_drops(detector: Detector, crowd_pan: Clip) -> None:
    """Four copies of a 25 fps clip played live through an engine made slower than 100 frames/s: frames are
    dropped, never queued, so latency stays about one frame deep; every frame is accounted for."""
    slow = _SlowDetector(detector, delay_s=0.03)
    _runtime, sinks, summary = _run(slow, [crowd_pan] * 4, live=True, max_batch=1)  # type: ignore[arg-type]
    for sink, stream in zip(sinks, summary["streams"]):
        indices = [r.frame.index for r in sink.results]
        assert indices == sorted(set(indices))
        assert stream["frames_decoded"] == crowd_pan.frames
        assert stream["frames_processed"] + stream["frames_dropped"] == crowd_pan.frames
        assert stream["complete"]
    assert sum(s["frames_dropped"] for s in summary["streams"]) > 20
    # a frame waits at most about one round of the four streams (whatever the machine's load makes a call
    # cost), not behind a queue that grows for the whole clip
    one_round_ms = 4 * summary["infer_ms_per_frame"]
    assert max(s["latency_ms"]["p99"] for s in summary["streams"]) < 1.5 * one_round_ms + 150
    assert summary["mode"] == "live"


def test_a_frame_the_engine_refuses_fails_only_its_own_stream(
    detector_factory: Any, crowd_pan: Clip, six_zoom: Clip
) -> None:
    """Frames over the detector's pixel limit (960x540 against 300,000) share batches with frames under it: the
    large stream fails with the reason, every frame counted, and the other stream loses none of its frames."""
    small_limit = detector_factory("ultralight-slim", backend="onnx", max_pixels=300_000)
    _, sinks, summary = _run(small_limit, [crowd_pan, six_zoom], max_batch=4)
    crowd, six = summary["streams"]
    assert crowd["complete"] and crowd["frames_processed"] == crowd_pan.frames
    assert [r.frame.index for r in sinks[0].results] == list(range(crowd_pan.frames))
    assert not six["complete"] and six["frames_processed"] == 0
    assert six["frames_failed"] == six_zoom.frames
    assert "exceeds the limit of 300000 pixels" in six["error"]


def test_tracker_ages_out_and_refuses_frames_out_of_order() -> None:
    from retinaserve.detection.results import Face, Landmarks

    def face(x: float) -> Face:
        return Face((x, 10.0, x + 20.0, 30.0), 0.9, Landmarks(*[(x + 10.0, 20.0)] * 5))

    tracker = IoUTracker(max_age=2)
    assert tracker.update(0, [face(0), face(100)]) == [1, 2]
    assert tracker.update(1, [face(100 + 6), face(6)]) == [2, 1]  # order of faces does not matter
    assert tracker.update(2, [face(12)]) == [1]
    assert tracker.update(3, [face(18), face(118)]) == [1, 2]  # unseen for 1 frame: kept
    assert tracker.update(7, [face(42), face(142)]) == [3, 4]  # unseen for 4 frames: new tracks
    with pytest.raises(ValueError, match="in order"):
        tracker.update(7, [])


class _SlowDetector:
    """A real detector that takes at least ``delay_s`` per call (an engine slower than the cameras)."""

    def __init__(self, detector: Detector, delay_s: float) -> None:
        self._detector = detector
        self._delay_s = delay_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._detector, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._detector, name, value)

    def run(self, images: Any, **options: Any) -> Any:
        import time

        time.sleep(self._delay_s)
        return self._detector.run(images, **options)
