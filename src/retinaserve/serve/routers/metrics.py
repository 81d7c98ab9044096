"""Prometheus exposition of the app's own registry."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..dependencies import MetricsDep, require_api_key

router = APIRouter(tags=["operations"], dependencies=[Depends(require_api_key)])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"description": "the Prometheus text format", "content": {"text/plain": {}}}},
)
async def metrics(service_metrics: MetricsDep) -> Response:
    return Response(generate_latest(service_metrics.registry), media_type=CONTENT_TYPE_LATEST)
