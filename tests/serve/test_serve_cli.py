"""The ``serve`` subcommand's parser and settings (flags over environment over defaults), and refusing a
precision this build cannot run instead of silently running fp32."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from retinaserve.serve.__main__ import main as serve_main
from retinaserve.serve.cli import add_serve_parser, settings_from_args
from retinaserve.serve.inference import ServeConfigError, build_detector, preflight
from retinaserve.serve.settings import ServeSettings

from .conftest import settings


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="retinaserve")
    add_serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASERVE_MAX_BATCH", "4")
    monkeypatch.setenv("RETINASERVE_PORT", "9000")
    monkeypatch.setenv("RETINASERVE_API_KEYS", "a, b,")
    args = parse(
        [
            "--host",
            "0.0.0.0",
            "--max-batch",
            "16",
            "--max-wait-ms",
            "7.5",
            "--model",
            "ultralight-rfb",
            "--max-upload-mb",
            "2",
            "--no-warmup",
        ]
    )
    s = settings_from_args(args)
    assert (s.host, s.port, s.max_batch, s.max_wait_ms, s.model) == ("0.0.0.0", 9000, 16, 7.5, "ultralight-rfb")
    assert s.api_keys == ("a", "b") and s.auth_enabled
    assert s.max_upload_bytes == 2 * 1024 * 1024 and s.warmup is False
    assert args.func.__name__ == "cmd_serve"
    defaults = settings_from_args(parse([]))
    assert defaults.max_batch == 4 and defaults.precision == "fp32" and defaults.warmup is True


def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETINASERVE_MAX_QUEUE", "lots")
    with pytest.raises(ValueError, match="RETINASERVE_MAX_QUEUE"):
        ServeSettings.from_env()


def test_non_fp32_without_an_engine_is_refused(shared: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("retinaserve.serve.inference._engine_detector_factory", lambda: None)
    with pytest.raises(ServeConfigError, match="precision fp16 on CPU needs an engine backend.*--precision fp32"):
        build_detector(settings(precision="fp16"))
    with pytest.raises(ServeConfigError, match="precision bf16 needs an engine backend"):
        preflight(settings(precision="bf16"))


def test_int8_is_refused_before_binding_with_a_way_out(shared: object) -> None:
    with pytest.raises(ServeConfigError, match="int8 needs calibration photos.*--calibration"):
        preflight(settings(precision="int8"))


def test_precision_is_passed_to_an_engine_backend(shared: object, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ServeSettings] = []

    def engine_detector(s: ServeSettings) -> str:
        seen.append(s)
        return "engine detector"

    monkeypatch.setattr("retinaserve.serve.inference._engine_detector_factory", lambda: engine_detector)
    assert build_detector(settings(precision="bf16", device="cuda")) == "engine detector"
    assert seen[0].precision == "bf16" and seen[0].device == "cuda" and seen[0].model == "ultralight-slim"


def test_module_entry_point_reports_errors_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert serve_main(["--model", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert serve_main(["--weights", str(tmp_path / "missing.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err
