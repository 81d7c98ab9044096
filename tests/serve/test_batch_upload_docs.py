"""The batch route's multipart field: documented in OpenAPI as ``files`` (what the README's curl example sends),
and in fact free: every file part is an image, whatever its field name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from .conftest import make_app


@pytest.fixture(scope="module")
def client(shared: object) -> Iterator[TestClient]:
    with TestClient(make_app()) as test_client:
        yield test_client


def test_openapi_names_the_batch_field(client: TestClient) -> None:
    body = client.get("/openapi.json").json()["paths"]["/v1/detect/batch"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["files"] == {"type": "array", "items": {"type": "string", "format": "binary"}}
    assert "`files`" in body["description"] and "whatever its field name" in body["description"]


@pytest.mark.parametrize("field", ["files", "image", "photo[]"])
def test_any_field_name_is_one_image_each(client: TestClient, six_people_bytes: bytes, field: str) -> None:
    files = [(field, ("a.jpg", six_people_bytes, "image/jpeg")), (field, ("b.jpg", six_people_bytes, "image/jpeg"))]
    response = client.post("/v1/detect/batch", files=files, data={"note": "not a file: ignored"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [(r["index"], r["filename"], r["status"], len(r["faces"])) for r in results] == [
        (0, "a.jpg", 200, 6),
        (1, "b.jpg", 200, 6),
    ]
