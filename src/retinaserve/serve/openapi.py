"""The OpenAPI schema as the server really answers, and /docs from the Swagger UI files shipped in the package.

FastAPI documents what the route decorators declare. What a route can answer also follows from its dependencies
(the API key, a model that must be ready), its parameters (validation errors, in our error shape, not FastAPI's),
whether it reads an upload, and the middleware (every route answers 503 while the server drains).
``install_openapi`` derives those statuses from each route once, when the schema is first asked for, so the
documentation cannot drift from the code.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute

from .dependencies import get_reconstruction, get_service, require_api_key
from .schemas import ErrorResponse
from .settings import ServeSettings

__all__ = ["SECURITY_SCHEME", "SWAGGER_UI", "install_docs", "install_openapi"]

SECURITY_SCHEME = "ApiKey"
"""Name of the API-key scheme in ``components.securitySchemes`` (present only when the server has keys)."""

SWAGGER_UI = "/static/vendor/swagger-ui"
"""Where the vendored Swagger UI is served (``scripts/vendor_swagger.sh`` writes it)."""

_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_FASTAPI_VALIDATION = ("HTTPValidationError", "ValidationError")
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}

_DRAINING: dict[int, str] = {503: "the server is shutting down; see Retry-After"}
"""What every route answers while the server drains (``guard.py``: new requests, and those past the grace period)."""
_UNAUTHORIZED: dict[int, str] = {401: "missing or wrong API key"}
_VALIDATION: dict[int, str] = {422: "invalid parameter; `details` lists each invalid value"}
_UPLOAD: dict[int, str] = {
    400: "empty, corrupt or truncated image; malformed multipart",
    408: "the body was not received in time",
    413: "body, image or pixel count over the limit, or more work than the request's deadline allows",
    415: "not an image in a supported format (decided by content)",
    429: "the server is busy; see Retry-After",
    503: "model not ready or shutting down; see Retry-After",
    504: "no result within the request timeout",
}
"""What a route that reads an image upload can answer besides its result (``uploads.py``, ``routers/common.py``)."""

_BY_DEPENDENCY: dict[Callable[..., Any], dict[int, str]] = {
    get_service: {503: "model not ready or shutting down; see Retry-After"},
    get_reconstruction: {404: "3D turned off on this server", 503: "3D model not ready or shutting down"},
}
"""Statuses a dependency answers on its own, whatever the route does with it."""

_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "the header to send the key in", "schema": {"type": "string"}}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}
"""Headers that come with an error status (Retry-After is sent with every 429 and 503)."""


def install_openapi(app: FastAPI, settings: ServeSettings) -> None:
    """Make ``app.openapi`` build the schema once, then document what each route really answers (see module doc)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                summary=app.summary,
                description=app.description,
                terms_of_service=app.terms_of_service,
                contact=app.contact,
                license_info=app.license_info,
                routes=app.routes,
                webhooks=app.webhooks.routes,
                tags=app.openapi_tags,
                servers=app.servers,
                separate_input_output_schemas=app.separate_input_output_schemas,
                external_docs=app.openapi_external_docs,
            )
            app.openapi_schema = _document_errors(schema, app.routes, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_errors(schema: dict[str, Any], routes: list[Any], settings: ServeSettings) -> dict[str, Any]:
    """``schema`` with every status each route can answer documented (errors in the one JSON error shape), and the
    API-key scheme on the routes that check it, only when ``settings`` has keys."""
    components = schema.setdefault("components", {})
    for name, model in _error_schemas().items():
        components.setdefault("schemas", {}).setdefault(name, model)
    if settings.auth_enabled:
        components.setdefault("securitySchemes", {})[SECURITY_SCHEME] = {
            "type": "apiKey",
            "in": "header",
            "name": settings.api_key_header,
            "description": "one of the server's API keys",
        }
    for route in _api_routes(routes):
        if not route.include_in_schema:
            continue
        calls, has_parameters = _inspect(route.dependant)
        secured = settings.auth_enabled and require_api_key in calls
        statuses: dict[int, str] = dict(_DRAINING)
        if secured:
            statuses |= _UNAUTHORIZED
        if has_parameters:
            statuses |= _VALIDATION
        if "requestBody" in (route.openapi_extra or {}):  # upload routes read their body by hand and declare it
            statuses |= _UPLOAD
            if route.status_code == 202:  # a job is accepted at once; its own timeout fails the job, not the request
                statuses.pop(504)
        for call, answers in _BY_DEPENDENCY.items():
            if call in calls:
                statuses = answers | statuses
        for method in route.methods:
            operation = schema["paths"][route.path_format][method.lower()]
            _document(operation, statuses, secured=secured)
    if not settings.auth_enabled:
        components.pop("securitySchemes", None)  # nothing asks for a key on this server
    _drop_unused(components["schemas"], schema, _FASTAPI_VALIDATION)
    return schema


def _document(operation: dict[str, Any], statuses: dict[int, str], *, secured: bool) -> None:
    """Add the missing ``statuses`` to ``operation``; every error answers JSON in ``ErrorResponse``'s shape."""
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if not secured:
        operation.pop("security", None)
        responses.pop("401", None)  # a route may declare it for servers with keys; this one has none
    else:
        operation["security"] = [{SECURITY_SCHEME: []}]
    for status, description in statuses.items():
        entry = responses.setdefault(str(status), {"description": description})
        if status == 422 and entry.get("description") == "Validation Error":  # FastAPI's own, with its shape
            entry["description"] = description
    for code, entry in responses.items():
        if code.isdigit() and int(code) >= 400:
            entry["content"] = {"application/json": {"schema": dict(_ERROR_REF)}}
            if int(code) in _HEADERS:
                entry.setdefault("headers", copy.deepcopy(_HEADERS[int(code)]))
    operation["responses"] = dict(sorted(responses.items()))


def _api_routes(routes: list[Any]) -> Iterator[Any]:
    """The app's API routes as get_openapi sees them: with their router's prefix and dependencies (FastAPI resolves
    included routers lazily; older versions copied their routes into ``app.routes``)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:
        yield from (route for route in routes if isinstance(route, APIRoute))
        return
    for context in iter_route_contexts(routes):
        if isinstance(context.original_route, APIRoute):
            yield context


def _inspect(dependant: Dependant) -> tuple[set[Callable[..., Any]], bool]:
    """Every callable in ``dependant``'s tree, and whether any of them takes request parameters (which FastAPI
    validates: 422 when they are invalid)."""
    calls: set[Callable[..., Any]] = set()
    has_parameters = False
    for node in _walk(dependant):
        if node.call is not None:
            calls.add(node.call)
        params = (node.path_params, node.query_params, node.header_params, node.cookie_params, node.body_params)
        has_parameters = has_parameters or any(params)
    return calls, has_parameters


def _walk(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for child in dependant.dependencies:
        yield from _walk(child)


def _error_schemas() -> dict[str, Any]:
    """``ErrorResponse`` and the models it refers to, as OpenAPI components."""
    schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
    nested = schema.pop("$defs", {})
    return {**nested, "ErrorResponse": schema}


def _drop_unused(schemas: dict[str, Any], document: dict[str, Any], names: tuple[str, ...]) -> None:
    """Remove the component ``names`` that nothing refers to any more (FastAPI's validation error models)."""
    for name in names:
        if name in schemas:
            others = {key: value for key, value in schemas.items() if key != name}
            text = json.dumps({"paths": document.get("paths", {}), "schemas": others})
            if f'"#/components/schemas/{name}"' not in text:
                del schemas[name]


def install_docs(app: FastAPI) -> None:
    """Serve /docs with the vendored Swagger UI: the page loads nothing from outside the server."""
    openapi_url = app.openapi_url or "/openapi.json"
    title = f"{app.title} - API docs"

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy's prefix, as FastAPI's own /docs
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=title,
            swagger_js_url=f"{root}{SWAGGER_UI}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{SWAGGER_UI}/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/favicon.svg",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from validator.swagger.io
        )
