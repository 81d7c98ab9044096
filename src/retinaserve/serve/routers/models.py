"""The registry as the server sees it: every registered model, and which one is loaded."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ...registry import get_model_spec, list_models
from ..dependencies import ServiceDep, SettingsDep, require_api_key
from ..schemas import ModelsResponse

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("/models", summary="Registered models and the one being served", response_model=ModelsResponse)
async def models(service: ServiceDep, settings: SettingsDep) -> dict[str, object]:
    out = []
    for name in list_models("detection"):  # the server serves detectors (3D reconstruction is not served yet)
        spec = get_model_spec(name)
        acc = spec.accuracy
        out.append(
            {
                "name": name,
                "description": spec.description,
                "loaded": name == service.model_name,
                "default_threshold": spec.default_threshold,
                "default_long_side": spec.default_long_side,
                "params_millions": spec.params_millions,
                "wider_face_val_ap": (
                    {"easy": acc.easy, "medium": acc.medium, "hard": acc.hard, "protocol": acc.protocol}
                    if acc
                    else None
                ),
                "licence": spec.weights.licence,
            }
        )
    return {"loaded": service.model_name, "precision": settings.precision, "models": out}
