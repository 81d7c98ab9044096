"""The OpenAPI schema tells the truth: the API-key scheme only on servers with keys, every status each route can
answer documented (errors in the one JSON shape), /docs served from the vendored Swagger UI with nothing from
outside; then a bounded Schemathesis run against the real app checks the answers against the schema."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.schemas import BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from retinaserve.serve import create_app
from retinaserve.serve.app import STATIC_DIR
from retinaserve.serve.openapi import SECURITY_SCHEME, SWAGGER_UI
from retinaserve.serve.schemas import ErrorBody, ErrorResponse

from .conftest import headless_chromium, live_server, make_app, needs_chromium, settings

KEY = "k"
UPLOAD = {400, 408, 413, 415, 422, 429, 503, 504}
"""What a route reading an image upload can answer besides its result."""
STATUSES = {
    ("get", "/healthz"): {200, 503},
    ("get", "/readyz"): {200, 503},
    ("post", "/v1/detect"): {200, *UPLOAD},
    ("post", "/v1/detect/batch"): {200, *UPLOAD},
    ("post", "/v1/beautify"): {200, *UPLOAD},
    ("post", "/v1/reconstruct"): {200, 404, *UPLOAD},
    ("post", "/v1/jobs/reconstruct"): {202, 404, *UPLOAD}
    - {504},  # accepted at once: a late job fails, not the request
    ("get", "/v1/jobs/{job_id}"): {200, 404, 422, 503},
    ("delete", "/v1/jobs/{job_id}"): {200, 404, 422, 503},
    ("get", "/v1/jobs/{job_id}/events"): {200, 404, 422, 503},
    ("get", "/v1/jobs/{job_id}/result"): {200, 404, 409, 422, 503},
    ("get", "/v1/jobs/{job_id}/texture"): {200, 404, 409, 422, 503},
    ("get", "/v1/models"): {200, 503},
    ("get", "/metrics"): {200, 503},
}
"""Every operation and what it can answer on a server without keys (with keys, 401 too, but not on health); every
route answers 503 while the server drains."""
OPEN = {("get", "/healthz"), ("get", "/readyz")}


def operations(schema: dict[str, Any]) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield (method, path), operation


@pytest.fixture(scope="module")
def client(shared: object) -> Iterator[TestClient]:
    with TestClient(make_app()) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def schema(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()  # type: ignore[no-any-return]


def keyed_schema(**overrides: Any) -> dict[str, Any]:
    """The schema of a server with keys (building it needs no model: the lifespan does not run)."""
    return create_app(settings(api_keys=(KEY,), **overrides)).openapi()


def test_no_api_key_scheme_without_keys(schema: dict[str, Any]) -> None:
    assert "securitySchemes" not in schema["components"]
    for label, operation in operations(schema):
        assert "security" not in operation, label
        assert "401" not in operation["responses"], label
        assert not [p for p in operation.get("parameters", []) if p["name"].lower() == "x-api-key"], label


def test_api_key_scheme_on_every_route_that_checks_it() -> None:
    schema = keyed_schema()
    assert schema["components"]["securitySchemes"] == {
        SECURITY_SCHEME: {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "one of the server's API keys",
        }
    }
    for label, operation in operations(schema):
        if label in OPEN:
            assert "security" not in operation and "401" not in operation["responses"], label
        else:
            assert operation["security"] == [{SECURITY_SCHEME: []}], label
            assert set(map(int, operation["responses"])) == STATUSES[label] | {401}, label
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], label
    custom = keyed_schema(api_key_header="X-Token")["components"]["securitySchemes"][SECURITY_SCHEME]
    assert custom["name"] == "X-Token"  # the header the server reads, not a hard-coded one


def test_every_status_each_route_answers_is_documented(schema: dict[str, Any]) -> None:
    documented = {label: set(map(int, operation["responses"])) for label, operation in operations(schema)}
    assert documented == STATUSES
    for label, operation in operations(schema):
        for status, response in operation["responses"].items():
            if int(status) >= 400:  # every error is JSON in the one shape, SSE and binary routes included
                assert response["content"] == {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
                }, (label, status)
            if int(status) in (429, 503):
                assert "Retry-After" in response["headers"], (label, status)
    assert not {"HTTPValidationError", "ValidationError"} & set(schema["components"]["schemas"])
    assert set(schema["components"]["schemas"]["ErrorBody"]["properties"]) == {"code", "message", "details"}


def test_validation_errors_have_the_documented_shape(client: TestClient) -> None:
    response = client.get("/v1/jobs/" + "x" * 65)  # job ids are at most 64 characters
    assert response.status_code == 422
    body = response.json()
    ErrorResponse.model_validate(body)
    assert set(body["error"]) <= set(ErrorBody.model_fields)
    assert body["error"]["details"][0]["location"] == "path.job_id"


def test_docs_page_and_its_assets_are_served_by_the_app(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", page.text), "the docs page refers to another server"
    assets = sorted(re.findall(r'(?:src|href)="([^"]+)"', page.text))
    assert assets == ["/static/favicon.svg", f"{SWAGGER_UI}/swagger-ui-bundle.js", f"{SWAGGER_UI}/swagger-ui.css"]
    kinds = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",), ".svg": ("image/svg+xml",)}
    for asset in assets:
        answer = client.get(asset)
        assert answer.status_code == 200, asset
        assert answer.headers["content-type"].startswith(kinds[asset[asset.rfind(".") :]]), asset
    assert "'/openapi.json'" in page.text and '"validatorUrl": null' in page.text
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN: off


def test_vendored_swagger_ui_matches_its_recorded_checksums() -> None:
    folder = STATIC_DIR / "vendor" / "swagger-ui"
    rows = re.findall(r"^\| `([^`]+)` \| `[^`]+` \| `([0-9a-f]{64})` \|$", (folder / "README.md").read_text(), re.M)
    assert {name for name, _ in rows} == {p.name for p in folder.iterdir()} - {"README.md"}
    for name, digest in rows:
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name


@needs_chromium
def test_docs_render_in_a_browser_from_the_server_alone(shared: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with live_server(make_app()) as (base, _), headless_chromium("--disable-gpu", window="1280,1000") as browser:
        browser.get(f"{base}/docs")
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock"))
        assert len(browser.find_elements(By.CSS_SELECTOR, ".opblock")) == len(STATUSES)
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(url.startswith(base) for url in loaded), loaded
        errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors


# A bounded Schemathesis run: examples, coverage (boundary and invalid values, other methods) and a few fuzzed
# cases per operation, derandomised so CI sees the same requests each time (~15 s on 2 cores). Requests go to the
# app in process; Schemathesis runs its lifespan (the model loads on the first request of each operation's test).
# Nothing is skipped: the job routes see unknown ids (404) and jobs created from tiny generated images.

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz_config(*, max_examples: int, coverage: bool, auth: dict[str, Any] | None = None) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": 20240601,
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large", "large_base_example"],
            "generation": {"max-examples": max_examples, "database": "none", "deterministic": True},
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": coverage},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            **({"auth": auth} if auth else {}),
        }
    )


def in_process(app: FastAPI, config: SchemathesisConfig) -> BaseSchema:
    """``app``'s schema, its requests sent to ``app`` in process (what ``from_asgi`` does, without starting the
    lifespan at import: building the app is cheap, the model loads when the first request arrives)."""
    schema = schemathesis.openapi.from_dict(app.openapi(), config=config)
    schema.app = app
    return schema


api = in_process(make_app(), fuzz_config(max_examples=10, coverage=True))
keyed_api = in_process(
    make_app(api_keys=(KEY,)),
    fuzz_config(max_examples=2, coverage=False, auth={"openapi": {SECURITY_SCHEME: {"api_key": KEY}}}),
)


@api.parametrize()
def test_schemathesis(case: schemathesis.Case, shared: object) -> None:
    case.call_and_validate(checks=CHECKS)


@keyed_api.parametrize()
def test_schemathesis_with_api_keys(case: schemathesis.Case, shared: object) -> None:
    """With keys: the same checks on requests carrying the key, and each is resent without it (expect 401)."""
    case.call_and_validate(checks=[*CHECKS, ignored_auth])


def test_schemathesis_covers_every_operation() -> None:
    labels = {(op.method, op.path) for op in (result.ok() for result in api.get_all_operations())}
    assert labels == set(STATUSES), json.dumps(sorted(labels))
