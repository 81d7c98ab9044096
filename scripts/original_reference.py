# ruff: noqa: E402, E501  (the original repository is importable only after sys.path is set)
"""Runs Face-Detector-1MB-with-landmark's own detect.py pipeline (its networks, PriorBox, decode, py_cpu_nms, at
commit 2b075657) on the shared photos at long sides whose scales are not whole; writes the reference that
tests/test_reference_parity.py checks us against (tests/data/reference/face_detector_1mb_detect.json, after
keeping rows with score >= 0.3 and rounding).

    python scripts/original_reference.py CHECKOUT STUB_DIR

CHECKOUT: a checkout of biubug6/Face-Detector-1MB-with-landmark. Its models import torchvision only for
``IntermediateLayerGetter``; where no torchvision matches the installed torch, STUB_DIR holds a stand-in package
``torchvision/models/_utils.py`` with that class (return the named children's outputs in a dict), plus empty
``torchvision/__init__.py``, ``models/__init__.py`` and ``models/detection/{__init__,backbone_utils}.py``.
"""

import json
import sys

sys.path[:0] = [sys.argv[2], sys.argv[1]]
import cv2
import numpy as np
import torch
from layers.functions.prior_box import PriorBox
from models.net_rfb import RFB
from models.net_slim import Slim
from models.retinaface import RetinaFace
from utils.box_utils import decode, decode_landm
from utils.nms.py_cpu_nms import py_cpu_nms

from data import cfg_mnet, cfg_rfb, cfg_slim

torch.set_grad_enabled(False)
W = "/work/shared/weights/"
NETS = {
    "retinaface-mnet025-edge": (cfg_mnet, lambda: RetinaFace(cfg=cfg_mnet, phase="test"), "mobilenet0.25_Final.pth"),
    "ultralight-slim": (cfg_slim, lambda: Slim(cfg=cfg_slim, phase="test"), "slim_Final.pth"),
    "ultralight-rfb": (cfg_rfb, lambda: RFB(cfg=cfg_rfb, phase="test"), "RBF_Final.pth"),
}


def run(net, cfg, path, long_side):
    img_raw = cv2.imread(path, cv2.IMREAD_COLOR)
    img = np.float32(img_raw)
    target_size = long_side
    max_size = long_side
    im_size_min = np.min(img.shape[0:2])
    im_size_max = np.max(img.shape[0:2])
    resize = float(target_size) / float(im_size_min)
    if np.round(resize * im_size_max) > max_size:
        resize = float(max_size) / float(im_size_max)
    if resize != 1:
        img = cv2.resize(img, None, None, fx=resize, fy=resize, interpolation=cv2.INTER_LINEAR)
    im_height, im_width, _ = img.shape
    scale = torch.Tensor([img.shape[1], img.shape[0], img.shape[1], img.shape[0]])
    img -= (104, 117, 123)
    img = torch.from_numpy(img.transpose(2, 0, 1)).unsqueeze(0)
    loc, conf, landms = net(img)
    priors = PriorBox(cfg, image_size=(im_height, im_width)).forward()
    boxes = decode(loc.data.squeeze(0), priors.data, cfg["variance"]) * scale / resize
    boxes = boxes.numpy()
    scores = conf.squeeze(0).data.numpy()[:, 1]
    landms = decode_landm(landms.data.squeeze(0), priors.data, cfg["variance"])
    scale1 = torch.Tensor([img.shape[3], img.shape[2]] * 5)
    landms = (landms * scale1 / resize).numpy()
    inds = np.where(scores > 0.02)[0]
    boxes, landms, scores = boxes[inds], landms[inds], scores[inds]
    order = scores.argsort()[::-1][:5000]
    boxes, landms, scores = boxes[order], landms[order], scores[order]
    dets = np.hstack((boxes, scores[:, None])).astype(np.float32, copy=False)
    keep = py_cpu_nms(dets, 0.4)
    dets, landms = dets[keep][:750], landms[keep][:750]
    return resize, (im_height, im_width), np.concatenate((dets, landms), axis=1)


cases = [
    ("crowd_selfie.jpg", 640),
    ("crowd_selfie.jpg", 333),
    ("crowd_selfie.jpg", 500),
    ("six_people.jpg", 777),
    ("grace_hopper.jpg", 640),
    ("grace_hopper.jpg", 250),
]
out = {
    "protocol": "Face-Detector-1MB-with-landmark detect.py (commit 2b075657), run unchanged in its own repository "
    "code: cv2.imread BGR float32, resize = long_side / long side of the photo, cv2.resize(img, None, None, fx=resize, "
    "fy=resize, INTER_LINEAR), minus (104, 117, 123), its network with the checkpoint, PriorBox, decode with variance "
    "(0.1, 0.2), boxes * input size / resize, keep score > 0.02, top 5000, py_cpu_nms 0.4, keep 750. Rows with score >= 0.1.",
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
    "runs": [],
}
for model, (cfg, build, wfile) in NETS.items():
    net = build()
    sd = torch.load(W + wfile, map_location="cpu")
    sd = {k.split("module.", 1)[-1]: v for k, v in sd.items()}
    missing = net.load_state_dict(sd, strict=False)
    assert not missing.missing_keys and not missing.unexpected_keys, missing
    net.eval()
    for image, long_side in cases:
        resize, size, dets = run(net, cfg, "/work/shared/images/" + image, long_side)
        rows = dets[dets[:, 4] >= 0.1]
        out["runs"].append(
            {
                "model": model,
                "image": image,
                "long_side": long_side,
                "resize": resize,
                "input_hw": list(size),
                "detections": np.round(rows.astype(np.float64), 4).tolist(),
            }
        )
        print(model, image, long_side, resize, size, len(rows), int((rows[:, 4] >= 0.5).sum()))
json.dump(out, open("original_1mb_reference.json", "w"))
