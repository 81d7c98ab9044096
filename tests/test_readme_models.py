"""The README's models table says what the registry (and so `retinaserve models`) says: the reported WIDER FACE AP
of every detector, unrounded, and its default threshold."""

from __future__ import annotations

import re
from pathlib import Path

from retinaserve.registry import ModelSpec, get_spec, list_models

README = Path(__file__).resolve().parents[1] / "README.md"


def _models_table() -> dict[str, list[str]]:
    section = README.read_text().split("\n## Models\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| `([\w.-]+)`", line)
        if match:
            rows[match[1]] = [cell.strip() for cell in line.strip().strip("|").split("|")]
    return rows


def test_every_detector_has_its_registry_accuracy_in_the_readme() -> None:
    rows = _models_table()
    detectors = [name for name in list_models() if isinstance(get_spec(name), ModelSpec)]
    assert sorted(rows) == sorted(detectors)
    for name in detectors:
        spec = get_spec(name)
        assert isinstance(spec, ModelSpec) and spec.accuracy is not None
        acc = spec.accuracy
        ap = rows[name][3].split(" (")[0]
        assert ap == f"{acc.easy:g} / {acc.medium:g} / {acc.hard:g}", name
        assert float(rows[name][5]) == spec.default_threshold, name
