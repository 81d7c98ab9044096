"""``make gpu-check`` (scripts/gpu_check.py) where there is no CUDA: one line, non-zero status, no report; and which
tests it would run on a GPU (listing them needs none)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_without_cuda_it_fails_at_once_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device, even on a GPU machine
    out = tmp_path / "gpu-check"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: "), done.stderr
    assert "CPU-only build" in lines[0] or "no CUDA device" in lines[0]
    assert done.stdout == "" and not out.exists()


def test_it_runs_every_test_marked_gpu_or_skipped_without_cuda() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--list-tests"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    listed = {line for line in done.stdout.splitlines() if "::" in line}
    assert "tests/test_boxes.py::test_nms_on_cuda_returns_the_same_indices_there" in listed  # gpu + skipif
    assert "tests/engine/test_engine_backends.py::test_pinned_upload_on_cuda_round_trips" in listed
    assert not any("test_engine_logic" in line for line in listed)  # CPU tests, even with "cuda" in their names


def _load_script() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_the_report_holds_the_test_summary_and_each_benchmarks_table(tmp_path: Path) -> None:
    check: Any = _load_script()
    junit = tmp_path / "pytest.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_boxes" name="test_nms_on_cuda"/>'
        '<testcase classname="tests.engine.test_engine_backends" name="test_half[fp16]">'
        '<failure message="AssertionError: AP 0.97"/></testcase>'
        '<testcase classname="tests.engine.test_engine_backends" name="test_pinned">'
        '<skipped message="needs a CUDA device"/></testcase>'
        "</testsuite></testsuites>"
    )
    summary = check.summarize_tests(junit)
    assert (summary.selected, summary.passed) == (3, 1)
    assert summary.failed == [
        {"test": "tests.engine.test_engine_backends::test_half[fp16]", "message": "AssertionError: AP 0.97"}
    ]
    assert summary.skipped[0]["reason"] == "needs a CUDA device"

    table = "model | backend | p50 total\nretinaface-mnv2 | torch-fp16 (cuda:0) | 2.1"
    json_file = tmp_path / "latency.json"
    command = [
        sys.executable,
        "-c",
        f"import pathlib; print({table!r}); pathlib.Path({str(json_file)!r}).write_text('{{\"rows\": [1]}}')",
    ]
    step = check.run_step(
        check.Step("detect_latency", command, json_file=str(json_file)), tmp_path, 60, dict(os.environ)
    )
    assert step.status == "passed" and step.data == {"rows": [1]} and (tmp_path / "detect_latency.log").is_file()
    report = {
        "status": "failed",
        "finished": "now",
        "duration_s": 1.0,
        "command": ["python", "scripts/gpu_check.py"],
        "machine": {"python": "3.11", "torch": "2.13.0+cu128", "torch_cuda": "12.8", "cudnn": 91000,
                    "onnxruntime": "1.31.1", "onnxruntime_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
                    "openvino": None, "nvidia_smi": "NVIDIA-SMI 580", "devices": [
                        {"index": 0, "name": "NVIDIA H100", "capability": "9.0", "memory_gib": 79.6}]},
        "test_command": ["pytest", "-p", "gpu_check"],
        "tests": dataclasses.asdict(summary),
        "benchmarks": [dataclasses.asdict(step)],
    }  # fmt: skip
    markdown = check.markdown_report(report)
    assert markdown.startswith("# GPU check: failed")
    assert "3 selected (marked `gpu`, or skipped without CUDA): 1 passed, 1 failed, 1 skipped" in markdown
    assert "NVIDIA H100, compute 9.0, 79.6 GiB" in markdown and "CUDAExecutionProvider" in markdown
    assert "### detect_latency: passed" in markdown and table in markdown
