"""Runs PyPI retinaface==1.1.1 (the TF wrapper whose frozen graph retinaface-mnv2 converts) in its own code on the
shared photos at long sides that give fractional short sides; writes the reference that
tests/test_reference_parity.py checks us against (tests/data/reference/retinaface_pypi_predict.json).

Needs tensorflow-cpu and retinaface==1.1.1 (pip install tensorflow-cpu retinaface==1.1.1 opencv-python-headless).
"""

# ruff: noqa: E501
import json

import numpy as np
import tensorflow as tf
from retinaface import RetinaFace

rf = RetinaFace(quality="none")
runs = []
for image, L in [
    ("crowd_selfie.jpg", 640),
    ("grace_hopper.jpg", 640),
    ("six_people.jpg", 777),
    ("crowd_selfie.jpg", 1000),
]:
    rgb = rf.read("/work/shared/images/" + image)
    h0, w0 = rgb.shape[:2]
    img = rf._resize_image(rgb, **({"height": L} if h0 > w0 else {"width": L}))
    h, w = img.shape[:2]
    ph = 32 - h % 32 if h % 32 else 0
    pw = 32 - w % 32 if w % 32 else 0
    x = tf.pad(tf.cast(img, tf.float32), [[0, ph], [0, pw], [0, 0]])
    out = tf.squeeze(rf._model(x[tf.newaxis, ...]), 0).numpy().astype(np.float64)
    pts = out[:, :14].reshape(-1, 7, 2) * [w + pw, h + ph] * [w0 / w, h0 / h]
    rows = np.concatenate([pts[:, :2].reshape(-1, 4), out[:, 15:16], pts[:, 2:].reshape(-1, 10)], 1)
    runs.append(
        {
            "model": "retinaface-mnv2",
            "image": image,
            "long_side": L,
            "input_hw": [h, w],
            "detections": np.round(rows, 3).tolist(),
        }
    )
    print(image, L, (h, w), len(rows))
json.dump(
    {
        "protocol": "PyPI retinaface==1.1.1 RetinaFace.predict, run in its own code with tensorflow-cpu 2.21: cv2 read, BGR->RGB float32, its _resize_image to long side L (cv2.resize to (W, H), short side int(L / long * short)), zero padding to multiples of 32, the frozen graph (its own threshold 0.5 and NMS), outputs times the padded size and times original/resized per axis, without the final int() truncation.",
        "columns": [
            "x1",
            "y1",
            "x2",
            "y2",
            "score",
            "left_eye_x",
            "left_eye_y",
            "right_eye_x",
            "right_eye_y",
            "nose_x",
            "nose_y",
            "mouth_left_x",
            "mouth_left_y",
            "mouth_right_x",
            "mouth_right_y",
        ],
        "runs": runs,
    },
    open("retinaface_pypi_predict.json", "w"),
    separators=(",", ":"),
)
