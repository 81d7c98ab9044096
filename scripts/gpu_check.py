"""``make gpu-check``: every CUDA test and the GPU benchmarks in one run, with one report.

    python scripts/gpu_check.py [--out out/gpu-check] [--images ../shared/images] [--models retinaface-mnv2] [--quick]
    python scripts/gpu_check.py --list-tests      # the CUDA tests it would run (works without a GPU)

On a machine without CUDA it stops at once with one line on stderr and exit status 2. Otherwise it runs, each in
its own process: the CUDA tests (marked ``gpu``, or skipped with a reason that names CUDA or a GPU when there is
none), then ``retinaserve bench`` on CUDA (every backend and precision the device runs, with ``--vs-floor``), its
``--parity`` against FP32 torch, ``retinaserve plan``, ``benchmarks/detect_latency.py --device cuda`` and
``benchmarks/serve_load.py --device cuda`` (needs Debian's ``wrk``; skipped without it). It writes
``report.md`` and ``report.json`` (nvidia-smi, the torch / ONNX Runtime / OpenVINO versions and providers, the
test summary, each benchmark's table and its JSON) plus each step's own files under ``--out``. Exit status 0 only
when every CUDA test passed (a skipped one fails the check: that path was not checked) and every benchmark that
could run did. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RETINASERVE_SHARED", ROOT.parent / "shared"))
_CUDA_REASON = re.compile(r"cuda|gpu", re.IGNORECASE)


# --- pytest plugin (loaded with -p gpu_check): keep only the CUDA tests -------------------------------------------


def needs_cuda(item: Any) -> bool:
    """A test marked ``gpu``, or one skipped with a reason that names CUDA or a GPU (e.g. "needs a CUDA device")."""
    if item.get_closest_marker("gpu") is not None:
        return True
    for mark in item.iter_markers("skipif"):
        reason = mark.kwargs.get("reason") or (mark.args[1] if len(mark.args) > 1 else "")
        if isinstance(reason, str) and _CUDA_REASON.search(reason):
            return True
    return False


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    keep = [item for item in items if needs_cuda(item)]
    dropped = [item for item in items if not needs_cuda(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


# --- the check ----------------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One command of the check and what came of it."""

    name: str
    command: list[str]
    status: str = "not run"  # passed, failed, skipped, timeout
    returncode: int | None = None
    duration_s: float = 0.0
    output: str = ""
    note: str = ""
    json_file: str | None = None
    data: Any = None


@dataclass
class CudaTestSummary:
    selected: int = 0
    passed: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def cuda_problem() -> str | None:
    """Why this machine cannot run the check (one line), or None when torch sees a CUDA device."""
    import torch

    if torch.version.cuda is None:
        return (
            f"gpu-check: torch {torch.__version__} is a CPU-only build (torch.version.cuda is None); install a CUDA "
            "build of torch (README, section GPU) on a machine with an NVIDIA GPU and run it again"
        )
    if not torch.cuda.is_available():
        smi = _run_quiet(["nvidia-smi", "-L"])
        seen = smi.splitlines()[0].strip() if smi.strip() else "nvidia-smi shows no GPU or is not installed"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hidden = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        return (
            f"gpu-check: no CUDA device available to torch {torch.__version__} (CUDA {torch.version.cuda}{hidden}; "
            f"{seen}); run it on a machine with an NVIDIA GPU and its driver"
        )
    return None


def _run_quiet(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_facts() -> dict[str, Any]:
    """nvidia-smi and the versions of what runs the networks (torch, ONNX Runtime and its providers, OpenVINO)."""
    import torch

    facts: dict[str, Any] = {
        "nvidia_smi": _run_quiet(["nvidia-smi"]).rstrip() or "nvidia-smi not found",
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "devices": [
            {
                "index": i,
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ],
    }
    try:
        import onnxruntime

        facts["onnxruntime"] = onnxruntime.__version__
        facts["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        facts["onnxruntime"] = None
    try:
        import openvino

        facts["openvino"] = openvino.__version__
    except ImportError:
        facts["openvino"] = None
    return facts


def run_step(step: Step, out: Path, timeout: float, env: dict[str, str]) -> Step:
    """Run ``step.command`` in the repository root; its output goes to ``out/<name>.log`` and into the step."""
    print(f"gpu-check: {step.name}: {' '.join(step.command)}", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(
            step.command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        step.returncode = done.returncode
        step.output = done.stdout + (f"\n[stderr]\n{done.stderr}" if done.stderr.strip() else "")
        step.status = "passed" if done.returncode == 0 else "failed"
    except subprocess.TimeoutExpired as exc:
        step.status = "timeout"
        step.note = f"stopped after {timeout:.0f} s"
        step.output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    step.duration_s = round(time.perf_counter() - start, 1)
    (out / f"{step.name}.log").write_text(step.output)
    if step.json_file and Path(step.json_file).is_file():
        try:
            step.data = json.loads(Path(step.json_file).read_text())
        except ValueError:
            step.note += " (its JSON did not parse)"
    print(f"gpu-check: {step.name}: {step.status} in {step.duration_s:.0f} s", flush=True)
    return step


def summarize_tests(junit: Path) -> CudaTestSummary:
    """Counts and names from pytest's JUnit XML."""
    summary = CudaTestSummary()
    if not junit.is_file():
        return summary
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        summary.selected += 1
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        skipped = case.find("skipped")
        if problem is not None:
            summary.failed.append({"test": name, "message": (problem.get("message") or "")[:500]})
        elif skipped is not None:
            summary.skipped.append({"test": name, "reason": skipped.get("message") or ""})
        else:
            summary.passed += 1
    return summary


def photos_folder(requested: Path | None, out: Path) -> Path:
    """The photos to benchmark on: ``--images``, else ../shared/images, else a folder with the shipped sample."""
    if requested is not None:
        return requested
    if (SHARED / "images").is_dir():
        return SHARED / "images"
    from retinaserve.data import SAMPLE_PHOTO

    folder = out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE_PHOTO, folder / SAMPLE_PHOTO.name)
    return folder


def benchmark_steps(args: argparse.Namespace, images: Path, out: Path) -> list[Step]:
    python = sys.executable
    models = list(args.models)
    quick = args.quick
    photo = next((p for p in sorted(images.iterdir()) if p.name == "six_people.jpg"), None) or next(
        p for p in sorted(images.iterdir()) if p.suffix.lower() in (".jpg", ".jpeg", ".png")
    )
    repeats, rounds, duration = ("3", "1", "3") if quick else ("10", "3", "10")
    steps = [
        Step(
            "bench",
            [python, "-m", "retinaserve", "bench", "--device", "cuda", "--photos", str(images), "--models", *models,
             "--batch-sizes", "1,8" if quick else "1,4,8,16", "--repeats", repeats, "--rounds", rounds, "--vs-floor",
             "--json", str(out / "bench.json")],
            json_file=str(out / "bench.json"),
        ),
        Step(
            "parity",
            [python, "-m", "retinaserve", "bench", "--parity", "--device", "cuda", "--photos", str(images),
             "--models", *models, "--json", str(out / "parity.json")],
            json_file=str(out / "parity.json"),
        ),
        Step(
            "plan",
            [python, "-m", "retinaserve", "plan", "--device", "cuda", "--models", *models,
             "--json", str(out / "plan.json")],
            json_file=str(out / "plan.json"),
        ),
        Step(
            "detect_latency",
            [python, "benchmarks/detect_latency.py", "--device", "cuda", "--images", str(images), "--models", *models,
             "--repeats", "5" if quick else "20", "--json", str(out / "detect_latency.json")],
            json_file=str(out / "detect_latency.json"),
        ),
        Step(
            "serve_load",
            [python, "benchmarks/serve_load.py", "--device", "cuda", "--image", str(photo), "--model", models[0],
             "--modes", "auto", "batching on", "--clients", "1", "8", "32", "--duration", duration,
             "--log-dir", str(out / "serve_load"), "--json", str(out / "serve_load.json")],
            json_file=str(out / "serve_load.json"),
        ),
    ]  # fmt: skip
    if shutil.which("wrk") is None:
        steps[-1].status = "skipped"
        steps[-1].note = "wrk not installed (apt-get install wrk)"
    return steps


def _code(text: str, limit: int = 80) -> str:
    lines = text.rstrip().splitlines()
    if len(lines) > limit:
        lines = [f"... ({len(lines) - limit} lines before; the whole output is in the step's .log)", *lines[-limit:]]
    return "```\n" + "\n".join(lines) + "\n```\n"


def markdown_report(report: dict[str, Any]) -> str:
    facts = report["machine"]
    tests = report["tests"]
    providers = facts.get("onnxruntime_providers") or []
    lines = [
        f"# GPU check: {report['status']}",
        "",
        f"{report['finished']}, {report['duration_s']:.0f} s; `{' '.join(report['command'])}`",
        "",
        "## Machine",
        "",
        "| what | version |",
        "|---|---|",
        f"| Python | {facts['python']} |",
        f"| torch | {facts['torch']} (CUDA {facts['torch_cuda']}, cuDNN {facts['cudnn']}) |",
        f"| ONNX Runtime | {facts.get('onnxruntime')} (providers: {', '.join(providers)}) |",
        f"| OpenVINO | {facts.get('openvino')} |",
        *(
            f"| GPU {d['index']} | {d['name']}, compute {d['capability']}, {d['memory_gib']} GiB |"
            for d in facts["devices"]
        ),
        "",
        _code(facts["nvidia_smi"], limit=60),
        "## CUDA tests",
        "",
        f"{tests['selected']} selected (marked `gpu`, or skipped without CUDA): {tests['passed']} passed, "
        f"{len(tests['failed'])} failed, {len(tests['skipped'])} skipped. `{' '.join(report['test_command'])}`",
        "",
    ]
    lines += [f"- FAILED `{t['test']}`: {t['message']}" for t in tests["failed"]]
    lines += [f"- skipped `{t['test']}`: {t['reason']}" for t in tests["skipped"]]
    lines += ["", "## Benchmarks", ""]
    for step in report["benchmarks"]:
        note = f" ({step['note']})" if step["note"] else ""
        lines += [f"### {step['name']}: {step['status']}{note}, {step['duration_s']:.0f} s", ""]
        lines += [f"`{' '.join(step['command'])}`", ""]
        if step["output"].strip():
            lines.append(_code(step["output"]))
    return "\n".join(lines) + "\n"


def list_tests(env: dict[str, str]) -> int:
    command = [sys.executable, "-m", "pytest", "-p", "gpu_check", "--collect-only", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    print(done.stdout.rstrip())
    return 0 if done.returncode == 0 else done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "gpu-check", help="report folder")
    parser.add_argument("--images", type=Path, help="photos to benchmark on (default ../shared/images)")
    parser.add_argument("--models", nargs="+", default=["retinaface-mnv2"], help="models to benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and shorter load runs")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per step at most")
    parser.add_argument("--list-tests", action="store_true", help="list the CUDA tests and stop (no GPU needed)")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parent), env.get("PYTHONPATH")]))
    if (SHARED / "weights").is_dir() and "RETINASERVE_WEIGHTS_DIR" not in env:
        env["RETINASERVE_WEIGHTS_DIR"] = str(SHARED / "weights")
    if args.list_tests:
        return list_tests(env)
    problem = cuda_problem()
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2

    start = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    junit = out / "pytest.xml"
    pytest = [sys.executable, "-m", "pytest", "-p", "gpu_check", "-p", "no:cacheprovider", "-rA", "-q"]
    test_step = run_step(Step("tests", [*pytest, f"--junitxml={junit}"]), out, args.timeout, env)
    summary = summarize_tests(junit)
    with tempfile.TemporaryDirectory() as scratch:
        images = photos_folder(args.images, Path(scratch))
        steps = [
            run_step(step, out, args.timeout, env) if step.status != "skipped" else step
            for step in benchmark_steps(args, images, out)
        ]
    tests_ok = summary.selected > 0 and not summary.failed and not summary.skipped and test_step.status == "passed"
    benchmarks_ok = all(step.status in ("passed", "skipped") for step in steps)
    report = {
        "status": "passed" if tests_ok and benchmarks_ok else "failed",
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "duration_s": round(time.perf_counter() - start, 1),
        "command": [Path(sys.executable).name, *sys.argv],
        "machine": facts,
        "test_command": test_step.command,
        "tests": asdict(summary),
        "benchmarks": [asdict(step) for step in steps],
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.md").write_text(markdown_report(report))
    failed = [f"{len(summary.failed)} tests failed"] if summary.failed else []
    failed += [f"{len(summary.skipped)} CUDA tests skipped"] if summary.skipped else []
    failed += ["no CUDA test ran"] if summary.selected == 0 else []
    failed += [f"{step.name} {step.status}" for step in steps if step.status not in ("passed", "skipped")]
    verdict = "passed" if not failed else "FAILED (" + ", ".join(failed) + ")"
    print(f"gpu-check: {verdict}; report in {out / 'report.md'} and {out / 'report.json'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
